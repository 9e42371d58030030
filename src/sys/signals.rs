//! The signal table, and the master's record-only handlers.
//!
//! | signal     | master                                                        | worker              |
//! |------------|---------------------------------------------------------------|---------------------|
//! | TERM, INT  | graceful stop; a second TERM/INT during the stop = fast stop  | drain, exit 0       |
//! | QUIT       | fast stop                                                     | exit now (code 0)   |
//! | HUP        | reload: re-read the config file, replace workers slot by slot | ignored             |
//! | TTIN, TTOU | one worker more / fewer (down to 1)                           | ignored             |
//! | CHLD       | wake up and reap                                              | default             |
//! | USR2       | hot upgrade: start the binary on disk with the sockets; drain once it is ready | ignored |
//! | USR1       | reopen the log files, and tell every worker to                | reopen its logs     |
//! | any other catchable signal (ALRM, IO, PROF, VTALRM, PWR, SYS, XCPU, XFSZ, STKFLT, TRAP, PIPE, real-time) | logged and ignored | ignored |
//!
//! ABRT and BUS keep their default action (a core dump is what an operator who
//! sends ABRT wants), as do the signals no process can catch (KILL, STOP) and the
//! faults a handler cannot return from (SEGV, ILL, FPE).
//!
//! TERM is graceful, as systemd, Kubernetes, gunicorn and Puma expect (nginx and
//! unicorn treat TERM as fast and QUIT as graceful).
//!
//! A handler only sets a flag and writes a byte to a self-pipe (both through
//! signal-hook, so no thread is started); the master's loop `poll`s the pipe, drains
//! it, then reads the flags and acts. Workers inherit all of this across fork and
//! must call [`Signals::forget_in_child`] first, or a signal sent to a worker would
//! also wake and steer the master.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::signal::*;
use signal_hook::SigId;

/// The table above, as `--help` prints it.
pub const HELP_TABLE: &str = "\
Signals (send them to the master):
  TERM, INT   graceful stop (after --shutdown-delay, if set, with /readyz failing):
              workers stop accepting, finish in-flight requests and exit 0;
              at --graceful-timeout a worker closes what is left, and the master SIGKILLs
              any worker still alive 1 s later. A second TERM/INT is a fast stop.
  QUIT        fast stop: workers exit at once.
  HUP         reload: re-read --config, then replace the workers slot by slot, each new
              worker ready before the old one drains; a failure aborts it and the old
              workers keep serving.
  TTIN, TTOU  one worker more / fewer (down to 1).
  CHLD        the master reaps the worker and respawns its slot (with backoff if it keeps dying young).
  USR2        hot upgrade: start the binary on disk as a new master with the same sockets;
              once it is ready, this master drains and exits; if it is not, this one
              keeps serving.
  USR1        reopen the log files (--log-file, --access-log) in the master and every
              worker, after logrotate has renamed them: nothing is lost.
  others      ALRM, IO, PROF, VTALRM, PWR, SYS, XCPU, XFSZ, STKFLT, TRAP, PIPE and the
              real-time signals are logged and ignored (they would kill the master).
TERM is graceful, as systemd, Kubernetes, gunicorn and Puma expect; nginx and unicorn
use QUIT for that and treat TERM as fast.

Exit codes: 0 clean stop, 1 runtime failure (bind error, no worker could boot), 2 usage error.";

/// What the master was told. Variants mirror the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Interrupt,
    Quit,
    Child,
    /// HUP.
    Reload,
    /// TTIN.
    AddWorker,
    /// TTOU.
    RemoveWorker,
    /// USR2.
    Upgrade,
    /// USR1: reopen the log files (after logrotate renamed them).
    Reopen,
    /// Not in the table: recorded so that its
    /// default action, which for most of them terminates the master, does not run.
    Ignored(i32),
}

/// The table's signals: the master cannot run without a handler for each.
const TABLE: [i32; 9] = [
    SIGTERM, SIGINT, SIGQUIT, SIGCHLD, SIGHUP, SIGUSR1, SIGUSR2, SIGTTIN, SIGTTOU,
];

/// Every other signal whose default action would end the master for no reason
/// of its own. One the system keeps for itself (valgrind, for one, reserves a
/// real-time signal) keeps its default action.
fn stray() -> impl Iterator<Item = i32> {
    let named = [
        SIGALRM,
        SIGIO,
        SIGPROF,
        SIGVTALRM,
        libc::SIGPWR,
        SIGSYS,
        SIGXCPU,
        SIGXFSZ,
        libc::SIGSTKFLT,
        SIGTRAP,
        SIGPIPE,
    ];
    named.into_iter().chain(libc::SIGRTMIN()..=libc::SIGRTMAX())
}

/// The signal's name, as `kill -l` and the logs say it (`SIGHUP`, `SIGRTMIN+3`).
impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let raw = match self {
            Signal::Terminate => SIGTERM,
            Signal::Interrupt => SIGINT,
            Signal::Quit => SIGQUIT,
            Signal::Child => SIGCHLD,
            Signal::Reload => SIGHUP,
            Signal::AddWorker => SIGTTIN,
            Signal::RemoveWorker => SIGTTOU,
            Signal::Upgrade => SIGUSR2,
            Signal::Reopen => SIGUSR1,
            Signal::Ignored(raw) => *raw,
        };
        f.write_str(&name(raw))
    }
}

/// `SIGALRM`, or `SIGRTMIN+3` for a real-time signal nix has no name for.
pub fn name(raw: i32) -> String {
    match nix::sys::signal::Signal::try_from(raw) {
        Ok(signal) => signal.as_str().to_owned(),
        Err(_) => format!("SIGRTMIN+{}", raw - libc::SIGRTMIN()),
    }
}

impl Signal {
    fn from_raw(raw: i32) -> Signal {
        match raw {
            SIGTERM => Signal::Terminate,
            SIGINT => Signal::Interrupt,
            SIGQUIT => Signal::Quit,
            SIGCHLD => Signal::Child,
            SIGHUP => Signal::Reload,
            SIGTTIN => Signal::AddWorker,
            SIGTTOU => Signal::RemoveWorker,
            SIGUSR2 => Signal::Upgrade,
            SIGUSR1 => Signal::Reopen,
            other => Signal::Ignored(other),
        }
    }
}

/// The master's handlers: one flag per watched signal, and the pipe they wake.
pub struct Signals {
    wake: UnixStream,
    /// The pipe's write end, shared by every handler: one fd, however many
    /// signals are watched (the master may run under a low file limit).
    write: UnixStream,
    flags: Vec<(i32, Arc<AtomicBool>)>,
    ids: Vec<SigId>,
}

impl Signals {
    /// Installs the handlers. Call before the first fork, and before readiness is
    /// announced, so that a signal sent right after the ready line is never lost.
    pub fn install() -> io::Result<Signals> {
        let (wake, write) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        let mut signals = Signals {
            wake,
            write,
            flags: Vec::new(),
            ids: Vec::new(),
        };
        let write = signals.write.as_raw_fd();
        for raw in TABLE {
            signals.watch(raw, write)?;
        }
        for raw in stray() {
            if let Err(err) = signals.watch(raw, write) {
                crate::log::debug!("master: signal {raw} keeps its default action: {err}");
            }
        }
        Ok(signals)
    }

    /// Records `raw` in a flag of its own and wakes the loop through `write`.
    fn watch(&mut self, raw: i32, write: std::os::fd::RawFd) -> io::Result<()> {
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        let action = move || {
            // The flag first, so it is set by the time the pipe wakes the loop.
            set.store(true, Ordering::SeqCst);
            // SAFETY: send(2) is async-signal-safe; `write` stays open as long
            // as the action is registered (both live in `Signals`, never
            // dropped while the master runs); the buffer is a valid byte. A
            // full pipe already holds a wake-up, so the result is not needed.
            unsafe { libc::send(write, [1u8].as_ptr().cast(), 1, libc::MSG_DONTWAIT) };
        };
        // SAFETY: the action only stores to an atomic and calls send(2), both
        // async-signal-safe; signal-hook saves and restores errno around it.
        let id = unsafe { signal_hook::low_level::register(raw, action) }?;
        self.ids.push(id);
        self.flags.push((raw, flag));
        Ok(())
    }

    /// The fd for `poll`: readable when a signal arrived.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Drains the pipe, then returns every signal recorded since the last call.
    /// Draining first means a signal landing in between is not lost: its byte
    /// wakes the next `poll`.
    pub fn take(&mut self) -> Vec<Signal> {
        let mut buf = [0u8; 64];
        while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, flag)| flag.swap(false, Ordering::SeqCst))
            .map(|(raw, _)| Signal::from_raw(*raw))
            .collect()
    }

    /// In a freshly forked worker: removes the master's actions and closes both
    /// ends of the pipe. Signals must still be blocked when this runs.
    ///
    /// The signal-hook handler stays installed with no action, so a signal the
    /// worker does not watch (HUP, USR2, TTIN... sent to the whole process group)
    /// is ignored instead of killing it.
    pub fn forget_in_child(&self) {
        for id in &self.ids {
            signal_hook::low_level::unregister(*id);
        }
        // The owner (`self`) is never dropped in the child, which never returns
        // into master code, so these fds are closed exactly once.
        let _ = nix::unistd::close(self.wake.as_raw_fd());
        let _ = nix::unistd::close(self.write.as_raw_fd());
    }
}
