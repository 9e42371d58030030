//! The child's hygiene, all of it, first thing after the fork: forget the
//! master's signal handlers (a signal to the worker must not write into the
//! master's self-pipe), close every fd of the master's the worker does not use,
//! and ask the kernel for SIGTERM when the master dies.

use std::os::fd::RawFd;

use nix::unistd::{getppid, Pid};

use crate::sys::signals::Signals;

/// Right after the fork, before anything else runs in the child: forgets the
/// master's signal handlers, then closes every fd but stdin, stdout, stderr,
/// the log file and `keep` (what this child needs: its socket, its channel).
/// One rule for every kind of child (a worker, a command before its exec, the
/// admin process), so that none holds what the master holds for the others:
/// their channels, the other slots' sockets, the notify sockets, an upgrade's
/// pipes, and whatever the master inherited itself.
pub(crate) fn forget_the_master(signals: &Signals, keep: &[RawFd]) {
    // The handlers first: none may write into a self-pipe closed below.
    signals.forget_in_child();
    crate::sys::output::in_child();
    let keep: Vec<RawFd> = keep.iter().copied().chain(crate::sys::logfile::raw_fd()).collect();
    // The fds closed belong to master structures never dropped in this process.
    crate::sys::process::close_all_but(&keep);
}

/// Asks the kernel for SIGTERM when the master dies, then checks it is not dead
/// already (the request only covers deaths after it is made). The channel EOF
/// covers what PDEATHSIG misses.
pub(super) fn die_with_master(master: Pid) -> Result<(), &'static str> {
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).is_err() {
        return Err("cannot set PR_SET_PDEATHSIG");
    }
    if getppid() != master {
        return Err("the master died before this worker started");
    }
    Ok(())
}
