//! Where a hung worker hung: its stack in the log before it dies.
//!
//! The master sends a worker that missed its heartbeat (`--timeout`) SIGABRT,
//! and SIGKILL a second later. A worker's SIGABRT handler runs on the thread
//! that hung (its runtime's, the only one that beats), takes the return
//! addresses of its stack there (`_Unwind_Backtrace`), names them (symbols,
//! files and lines, from the binary's own tables), logs them as one record,
//! and ends the process with SIGABRT as before (a core dump, where they are
//! on, shows the same place).
//!
//! Walking the stack (`_Unwind_Backtrace` may take the dynamic loader's
//! lock), naming and logging allocate and take locks, which a signal handler
//! should not. The process is being killed either way; what this risks is
//! only the report: interrupted inside the allocator (malloc, or the
//! binary allocator's shelf), a report that allocates may corrupt the
//! heap and die of SIGSEGV (then the log says so instead of SIGABRT); hung holding a lock the report needs (the
//! `--log-file` writer's, stuck on a dead disk), it waits, and the master's
//! SIGKILL a second later ends the worker as it would have without a report.
//! (A thread of its own, started at boot to report, would avoid both, but a
//! second thread makes glibc take the multi-threaded path of every `send`
//! and `recv`: about 100 more instructions per keep-alive request, measured with
//! `scripts/instructions.sh`, more than the report is worth. An app that
//! starts threads of its own pays that anyway.)
//!
//! Only the master's SIGABRT is taken for a report: a SIGABRT of the process's
//! own (`abort()`) or from anyone else is the default action, at once.

use std::ffi::c_void;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering::SeqCst};
use std::sync::OnceLock;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The innermost frames kept: where it hung, and what called it.
const FRAMES: usize = 64;

/// The thread whose stack is wanted: the runtime's (the main thread).
static HUNG_THREAD: AtomicI32 = AtomicI32::new(0);
static MASTER: AtomicI32 = AtomicI32::new(0);
/// The worker's name, for the record ("worker 0 (pid 123)").
static NAME: OnceLock<String> = OnceLock::new();
/// A SIGABRT passed on to the runtime's thread by this handler itself.
static PASSED_ON: AtomicBool = AtomicBool::new(false);
/// One report per process.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// In a worker, at boot, on the runtime's thread: the handler. `name` is the
/// worker's ("worker 0 (pid 123)").
pub fn install(name: String) -> nix::Result<()> {
    // SAFETY: gettid and getppid cannot fail.
    let (thread, master) = unsafe { (libc::gettid(), libc::getppid()) };
    HUNG_THREAD.store(thread, SeqCst);
    MASTER.store(master, SeqCst);
    let _ = NAME.set(name);
    let action = SigAction::new(
        SigHandler::SigAction(on_abort),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: installing a handler; what it does, and why that is acceptable
    // here, is in the module's comment.
    unsafe { sigaction(Signal::SIGABRT, &action) }?;
    Ok(())
}

extern "C" fn on_abort(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let (code, sender) = unsafe { ((*info).si_code, (*info).si_pid()) };
    let from_master = code == libc::SI_USER && sender == MASTER.load(SeqCst);
    let passed_on = PASSED_ON.swap(false, SeqCst);
    if !(from_master || passed_on) || REPORTING.swap(true, SeqCst) {
        return abort_now(signal);
    }
    let hung = HUNG_THREAD.load(SeqCst);
    // SAFETY: gettid, getpid and tgkill are async-signal-safe; errno is
    // restored before returning to the thread the signal interrupted.
    unsafe {
        if libc::gettid() != hung {
            // A process-directed signal may land on another thread (the app's):
            // the stack wanted is the runtime's.
            let errno = *libc::__errno_location();
            REPORTING.store(false, SeqCst);
            PASSED_ON.store(true, SeqCst);
            libc::syscall(libc::SYS_tgkill, libc::getpid(), hung, signal);
            *libc::__errno_location() = errno;
            return;
        }
    }
    let mut frames = [0usize; FRAMES];
    let mut count = 0;
    // SAFETY: the walk only reads this thread's stack and the unwind tables;
    // "unsynchronized" is about other threads walking at once, and this
    // handler reports once per process (REPORTING). It is not
    // async-signal-safe (see the module's comment for what that risks).
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            frames[count] = frame.ip() as usize;
            count += 1;
            count < FRAMES
        });
    }
    let name = NAME.get().map_or("worker", String::as_str);
    crate::log::error!(
        "{name} hung here (its stack, innermost call first; SIGKILL follows):\n{}",
        describe(&frames[..count], interrupted_at(context))
    );
    abort_now(signal);
}

/// SIGABRT's default action: the process ends (with a core dump, where on),
/// the signal taken by this thread, so that the core's first thread is it.
fn abort_now(signal: libc::c_int) {
    // SAFETY: signal(2), getpid, gettid and tgkill are async-signal-safe; the
    // signal is delivered as soon as this handler returns.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), signal);
    }
}

/// The program counter saved in the signal's context (0: not known).
fn interrupted_at(context: *mut c_void) -> usize {
    let context = context.cast::<libc::ucontext_t>();
    if context.is_null() {
        return 0;
    }
    // SAFETY: the kernel passes an SA_SIGINFO handler the interrupted context.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return unsafe { (*context).uc_mcontext.gregs[libc::REG_RIP as usize] as usize };
    // SAFETY: as above.
    #[cfg(all(target_os = "linux", target_arch = "aarch64"))]
    return unsafe { (*context).uc_mcontext.pc as usize };
    #[allow(unreachable_code)]
    0
}

/// The frames from the interrupted one out, named: `N: function at file:line`
/// (several lines for one address where calls were inlined).
fn describe(frames: &[usize], interrupted: usize) -> String {
    // Above the interrupted instruction: this module's handler and the
    // kernel's signal trampoline.
    let start = frames.iter().position(|ip| *ip == interrupted).unwrap_or(0);
    let mut text = String::new();
    for (depth, ip) in frames[start..].iter().enumerate() {
        // A return address is the instruction after the call: one byte back
        // is the call's line. The interrupted one is exact.
        let looked_up = if depth == 0 { *ip } else { ip.saturating_sub(1) };
        let mut named = false;
        backtrace::resolve(looked_up as *mut c_void, |symbol| {
            named = true;
            let function = symbol.name().map_or("?".to_owned(), |name| format!("{name:#}"));
            let _ = write!(text, "{depth:4}: {function}");
            if let (Some(file), Some(line)) = (symbol.filename(), symbol.lineno()) {
                let _ = write!(text, "\n          at {}:{line}", file.display());
            }
            text.push('\n');
        });
        if !named {
            let _ = writeln!(text, "{depth:4}: {ip:#x}");
        }
    }
    text.truncate(text.trim_end().len());
    text
}
