//! The worker's death with the master: the kernel is asked for SIGTERM when
//! the master dies (what every child does first, forgetting the master's
//! handlers and fds, is `sys::process::forget_the_master`, run by the fork).

use nix::unistd::{getppid, Pid};

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
