//! Mechanism: `fork`, `kill`, `waitpid`, and the worker exit-code contract.
//!
//! This is the only module that creates or reaps processes. It holds no policy:
//! which slot to spawn, when to kill, what an exit means for the pool, all live in
//! `master`.

use std::fmt;
use std::io::Write;
use std::os::fd::RawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork as nix_fork, ForkResult, Pid};

use crate::error::Error;

/// Worker exit codes. Death by signal is observed, never chosen.
pub mod exit_code {
    /// Clean stop (drained, or told to stop fast).
    pub const OK: i32 = 0;
    /// Could not start: bad service, cannot build the runtime. The master never
    /// crash-loops on it: it backs off, and halts if no worker ever booted.
    pub const BOOT_FAILED: i32 = 3;
    /// Panicked (`EX_SOFTWARE`).
    pub const PANICKED: i32 = 70;
}

/// How a child ended, as reported by `waitpid(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal {
        signal: Signal,
        core_dumped: bool,
    },
    /// Killed by the signal the master asked it to stop with (exec mode's
    /// `--stop-signal`, which most programs leave at its default action): a
    /// stop, not a failure.
    Stopped(Signal),
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Exit::Code(code) => {
                let meaning = match code {
                    exit_code::OK => "",
                    exit_code::BOOT_FAILED => " (boot failure)",
                    exit_code::PANICKED => " (panic)",
                    _ => "",
                };
                write!(f, "exited with code {code}{meaning}")
            }
            Exit::Signal { signal, core_dumped } => {
                let core = if core_dumped { " (core dumped)" } else { "" };
                write!(f, "killed by {}{core}", signal.as_str())
            }
            Exit::Stopped(signal) => write!(f, "stopped by {} (as asked)", signal.as_str()),
        }
    }
}

impl Exit {
    /// This exit, for a process the master asked to stop with `stop`: death by
    /// that very signal is [`Exit::Stopped`].
    pub fn asked_to_stop_with(self, stop: Signal) -> Exit {
        match self {
            Exit::Signal {
                signal,
                core_dumped: false,
            } if signal == stop => Exit::Stopped(signal),
            other => other,
        }
    }

    /// Whether the process ended as it should: code 0, or the stop it was asked for.
    pub fn is_clean(self) -> bool {
        matches!(self, Exit::Code(0) | Exit::Stopped(_))
    }

    /// As stored in the scoreboard: `1 << 32 | code`, `2 << 32 | signal` or
    /// `3 << 32 | signal` (stopped as asked).
    pub fn encode(self) -> u64 {
        match self {
            Exit::Code(code) => 1 << 32 | u64::from(code as u32),
            Exit::Signal { signal, .. } => 2 << 32 | signal as u64,
            Exit::Stopped(signal) => 3 << 32 | signal as u64,
        }
    }

    /// The inverse of [`Exit::encode`]; `None` for 0 (no exit yet).
    pub fn decode(stored: u64) -> Option<Exit> {
        let low = (stored & 0xffff_ffff) as i32;
        match stored >> 32 {
            1 => Some(Exit::Code(low)),
            2 => Signal::try_from(low).ok().map(|signal| Exit::Signal {
                signal,
                core_dumped: false,
            }),
            3 => Signal::try_from(low).ok().map(Exit::Stopped),
            _ => None,
        }
    }
}

/// Resident set size of `pid`, from the `VmRSS:` line of `/proc/<pid>/status`.
pub fn resident_bytes(pid: Pid) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Resident set size of `pid` and of the processes it started (at most 64 in
/// all): exec mode's measure of a worker. `None` if `pid` itself is gone.
pub fn family_resident_bytes(pid: Pid) -> Option<u64> {
    let own = resident_bytes(pid)?;
    let started = family(pid, 64).into_iter().skip(1).filter_map(resident_bytes);
    Some(own + started.sum::<u64>())
}

/// `pid` and its descendants, at most `most` of them, from
/// `/proc/<pid>/task/<tid>/children` (exec mode: a command and what it started).
pub fn family(pid: Pid, most: usize) -> Vec<Pid> {
    let mut found = vec![pid];
    let mut next = 0;
    while next < found.len() && found.len() < most {
        let parent = found[next];
        next += 1;
        found.extend(children(parent));
    }
    found.truncate(most);
    found
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T` for stopped, `Z`...);
/// `None` if the process is gone.
pub fn state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The children of `parent` (live or not), from `/proc/<pid>/task/<tid>/children`.
pub fn children(parent: Pid) -> Vec<Pid> {
    let mut children = Vec::new();
    for task in tasks(parent) {
        let Ok(list) = std::fs::read_to_string(format!("/proc/{parent}/task/{task}/children")) else {
            continue;
        };
        children.extend(
            list.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .map(Pid::from_raw),
        );
    }
    children
}

/// The thread ids of `pid` (`/proc/<pid>/task`).
pub fn tasks(pid: Pid) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect()
}

/// Forks. In the parent, returns the child's pid. In the child, runs `child` and
/// exits with the code it returns (70 if it panics): the child never returns into
/// the caller's code.
///
/// All signals are blocked across the fork and stay blocked in the child: a signal
/// sent to a brand-new worker waits until the worker has installed its own
/// handlers (see `worker::run`) instead of running the master's.
pub fn fork(child: impl FnOnce() -> i32) -> Result<Pid, Error> {
    let threads = thread_count().map_err(Error::ThreadCount)?;
    if threads != 1 {
        return Err(Error::Multithreaded { threads });
    }
    // Buffered bytes would otherwise be written twice, once by each process.
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();

    let mut saved = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut saved))
        .map_err(|errno| Error::SignalMask(errno.into()))?;
    // SAFETY: the master has exactly one thread (checked just above, and nothing
    // between the check and here starts one), so the child cannot inherit a lock
    // held by a thread that does not exist in it; it may allocate and run Rust.
    let forked = unsafe { nix_fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            restore_mask(&saved)?;
            Ok(child)
        }
        Ok(ForkResult::Child) => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child)).unwrap_or(exit_code::PANICKED);
            std::process::exit(code)
        }
        Err(errno) => {
            restore_mask(&saved)?;
            Err(Error::Fork(errno.into()))
        }
    }
}

fn restore_mask(saved: &SigSet) -> Result<(), Error> {
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(saved), None).map_err(|errno| Error::SignalMask(errno.into()))
}

/// Unblocks every signal in the calling thread: the last step of a worker's
/// after-fork hygiene.
pub fn unblock_all_signals() -> nix::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// Collects every child that has exited so far, without blocking, known or not
/// (the caller decides whether an unknown pid matters; reaping it prevents a zombie).
pub fn reap_exited() -> Vec<(Pid, Exit)> {
    let mut exited = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exited.push((pid, Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => {
                exited.push((pid, Exit::Signal { signal, core_dumped }))
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return exited,
            // Stopped / continued are not exits.
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => {
                crate::log::error!("master: waitpid failed: {errno}");
                return exited;
            }
        }
    }
}

/// Sends `signal` to a child that has not been reaped yet (so its pid cannot have
/// been reused). A child that already exited is not an error: its SIGCHLD is
/// on its way.
pub fn signal(pid: Pid, signal: Signal) {
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => crate::log::warn!("master: cannot send {} to pid {pid}: {errno}", signal.as_str()),
    }
}

/// Sends `signal` to the process group `leader` leads (exec mode: a worker and
/// the processes it started). A group that is gone is not an error. The
/// leader's pid names the group until its last member exits, even once the
/// leader itself is reaped: the kernel does not reuse it meanwhile.
pub fn signal_group(leader: Pid, signal: Signal) {
    match nix::sys::signal::killpg(leader, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => crate::log::warn!(
            "master: cannot send {} to process group {leader}: {errno}",
            signal.as_str()
        ),
    }
}

/// Raises the soft limit on open files to the hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: every connection is a file, and
/// the usual soft limit (1,024) would cap a worker at about that many clients.
/// Workers inherit it. Returns (old, new) soft limits when it changed anything.
pub fn raise_file_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    Some((soft, hard))
}

/// `Threads:` of `/proc/self/status`: fork without exec is only sound at 1.
pub fn thread_count() -> std::io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no Threads: line in /proc/self/status"))
}

/// Right after the fork, before anything else runs in the child: forgets the
/// master's signal handlers, then closes every fd but stdin, stdout, stderr,
/// the log file and `keep` (what this child needs: its socket, its channel).
/// One rule for every kind of child (a worker, a command before its exec, the
/// admin process), so that none holds what the master holds for the others:
/// their channels, the other slots' sockets, the notify sockets, an upgrade's
/// pipes, and whatever the master inherited itself.
pub fn forget_the_master(signals: &super::signals::Signals, keep: &[RawFd]) {
    // The handlers first: none may write into a self-pipe closed below.
    signals.forget_in_child();
    super::output::in_child();
    let keep: Vec<RawFd> = keep.iter().copied().chain(super::logfile::raw_fd()).collect();
    // The fds closed belong to master structures never dropped in this process.
    close_all_but(&keep);
}

/// Sets this process's `comm` (at most 15 bytes; longer is cut by the kernel).
pub fn name_process(name: &str) {
    let Ok(name) = std::ffi::CString::new(name) else { return };
    if let Err(err) = nix::sys::prctl::set_name(&name) {
        crate::log::debug!("cannot set the process name: {err}");
    }
}

/// Closes every fd of this process but stdin, stdout, stderr and `keep`: what
/// a child forked from the master does first, so that it holds only what it
/// needs (the master's other sockets, pipes and channels, and whatever the
/// master itself inherited, stay with the master).
pub fn close_all_but(keep: &[RawFd]) {
    let mut kept: Vec<RawFd> = keep.iter().copied().chain(0..=2).filter(|fd| *fd >= 0).collect();
    kept.sort_unstable();
    kept.dedup();
    let close_range = |low: RawFd, high: RawFd| {
        if low > high {
            return;
        }
        // SAFETY: close_range(2) only closes fds; none in the range is used again
        // by this process (their owners are the master's structures, never
        // dropped in a child, or are left for the exec).
        let rc = unsafe { libc::syscall(libc::SYS_close_range, low as libc::c_uint, high as libc::c_uint, 0) };
        if rc != 0 {
            // Before Linux 5.9: one by one, as listed in /proc.
            for fd in open_fds().into_iter().filter(|fd| (low..=high).contains(fd)) {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    };
    let mut low = 0;
    for fd in kept {
        close_range(low, fd - 1);
        low = fd + 1;
    }
    close_range(low, RawFd::MAX);
}

/// This process's open fds, from `/proc/self/fd` (without the one that read it).
pub fn open_fds() -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let listed: Vec<RawFd> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // SAFETY: F_GETFD only reads the fd's flags; the directory's own fd is
    // closed by now and fails it.
    listed
        .into_iter()
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } >= 0)
        .collect()
}

/// Formats a duration for log lines: `120ms`, `3.4s`.
pub fn human(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_reads_like_a_log_line() {
        assert_eq!(Exit::Code(3).to_string(), "exited with code 3 (boot failure)");
        let killed = Exit::Signal {
            signal: Signal::SIGKILL,
            core_dumped: false,
        };
        assert_eq!(killed.to_string(), "killed by SIGKILL");
        let aborted = Exit::Signal {
            signal: Signal::SIGABRT,
            core_dumped: true,
        };
        assert_eq!(aborted.to_string(), "killed by SIGABRT (core dumped)");
    }

    #[test]
    fn exits_round_trip_through_the_scoreboard_encoding() {
        for exit in [
            Exit::Code(0),
            Exit::Code(70),
            Exit::Stopped(Signal::SIGTERM),
            Exit::Signal {
                signal: Signal::SIGKILL,
                core_dumped: false,
            },
        ] {
            assert_eq!(Exit::decode(exit.encode()), Some(exit));
        }
        assert_eq!(Exit::decode(0), None);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(100)), "100ms");
        assert_eq!(human(Duration::from_millis(3400)), "3.4s");
    }
}
