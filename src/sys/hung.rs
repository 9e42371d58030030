//! Where a hung worker hung: its stack in the log before it dies.
//!
//! The master sends a worker that missed its heartbeat (`--timeout`) SIGABRT,
//! and SIGKILL a second later. A worker's SIGABRT handler runs on the thread
//! that hung (its runtime's, the only one that beats) and takes the return
//! addresses of its stack there: `_Unwind_Backtrace` into a static array, no
//! allocation, no lock of ours. Naming them (symbols, files and lines, from the
//! binary's own tables) allocates and reads files, which a signal handler must
//! not do: a thread started at boot, which waits on a pipe, does it and
//! logs the stack as one record, then ends the process with SIGABRT as before
//! (a core dump, where they are on, shows the same place).
//!
//! Only the master's SIGABRT is taken for a report: a SIGABRT of the process's
//! own (`abort()`) or from anyone else is the default action, at once.

use std::ffi::c_void;
use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering::SeqCst};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// The innermost frames kept: where it hung, and what called it.
const FRAMES: usize = 64;

static TAKEN: [AtomicUsize; FRAMES] = [const { AtomicUsize::new(0) }; FRAMES];
static TAKEN_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The instruction the signal interrupted (0: not known): frames above it are
/// the handler's own.
static INTERRUPTED_AT: AtomicUsize = AtomicUsize::new(0);
/// The reporting thread's pipe, the end the handler writes to.
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The thread whose stack is wanted: the runtime's (the main thread).
static HUNG_THREAD: AtomicI32 = AtomicI32::new(0);
static MASTER: AtomicI32 = AtomicI32::new(0);
/// A SIGABRT passed on to the runtime's thread by this handler itself.
static PASSED_ON: AtomicBool = AtomicBool::new(false);
/// One report per process.
static REPORTING: AtomicBool = AtomicBool::new(false);

/// In a worker, at boot, while every signal is still blocked (the reporting
/// thread keeps them all blocked): the handler and the thread. `name` is the
/// worker's ("worker 0 (pid 123)").
pub fn install(name: String) -> std::io::Result<()> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: gettid and getppid cannot fail.
    let (thread, master) = unsafe { (libc::gettid(), libc::getppid()) };
    HUNG_THREAD.store(thread, SeqCst);
    MASTER.store(master, SeqCst);
    let wake = write.as_raw_fd();
    std::thread::Builder::new()
        .name("hung-report".into())
        .stack_size(256 << 10)
        .spawn(move || wait_and_report(read, &name))?;
    // The write end lives as long as the process (the handler may need it).
    std::mem::forget(write);
    WAKE.store(wake, SeqCst);
    let action = SigAction::new(
        SigHandler::SigAction(on_abort),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only does async-signal-safe work: atomics, the
    // unwinder's walk of the stack, write(2), kill(2), tgkill(2), signal(2).
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
    // SAFETY: gettid, getpid and tgkill are async-signal-safe.
    unsafe {
        let hung = HUNG_THREAD.load(SeqCst);
        if libc::gettid() != hung {
            // A process-directed signal may land on another thread (the app's):
            // the stack wanted is the runtime's.
            REPORTING.store(false, SeqCst);
            PASSED_ON.store(true, SeqCst);
            libc::syscall(libc::SYS_tgkill, libc::getpid(), hung, signal);
            return;
        }
    }
    INTERRUPTED_AT.store(interrupted_at(context), SeqCst);
    let mut count = 0;
    // SAFETY: the walk only reads this thread's stack and the unwind tables;
    // "unsynchronized" is about other threads walking at once, and this
    // handler runs once per process (REPORTING).
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            TAKEN[count].store(frame.ip() as usize, SeqCst);
            count += 1;
            count < FRAMES
        });
    }
    TAKEN_COUNT.store(count, SeqCst);
    // SAFETY: write(2) of one byte from a static; async-signal-safe.
    unsafe { libc::write(WAKE.load(SeqCst), b"!".as_ptr().cast(), 1) };
}

/// SIGABRT's default action: the process ends (with a core dump, where on).
fn abort_now(signal: libc::c_int) {
    // SAFETY: signal(2) and kill(2) are async-signal-safe; the signal is
    // delivered as soon as this handler returns.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::kill(libc::getpid(), signal);
    }
}

/// The program counter saved in the signal's context.
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

/// The reporting thread: waits for the handler, logs the stack, ends the process.
fn wait_and_report(wake: OwnedFd, name: &str) {
    let mut byte = [0u8; 1];
    // SAFETY: `wake` is the read end of the pipe, owned here.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(wake.as_raw_fd()) };
    std::mem::forget(wake);
    if pipe.read_exact(&mut byte).is_err() {
        return;
    }
    let count = TAKEN_COUNT.load(SeqCst);
    let frames: Vec<usize> = TAKEN[..count].iter().map(|ip| ip.load(SeqCst)).collect();
    crate::log::error!(
        "{name} hung here (its stack, innermost call first; SIGKILL follows):\n{}",
        describe(&frames, INTERRUPTED_AT.load(SeqCst))
    );
    abort_now(libc::SIGABRT);
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
