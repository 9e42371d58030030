//! The child's hygiene, all of it, first thing after the fork: forget the
//! master's signal handlers (a signal to the worker must not write into the
//! master's self-pipe), close every fd of the master's the worker does not use,
//! and ask the kernel for SIGTERM when the master dies.

use std::os::fd::RawFd;

use nix::unistd::{getppid, Pid};

use crate::sys::signals::Signals;

/// Right after the fork, before anything else runs in the child: forgets the
/// master's signal handlers and closes `master_fds`.
pub(crate) fn forget_the_master(signals: &Signals, master_fds: &[RawFd]) {
    signals.forget_in_child();
    crate::sys::output::in_child();
    for fd in master_fds {
        // Owned by master structures that are never dropped in this process.
        let _ = nix::unistd::close(*fd);
    }
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
