//! USR2 on the old master's side: start the new master, wait for its "ready",
//! then drain and exit; roll back if it dies or is late. The mechanism (fds,
//! environment, pipe) is in `crate::upgrade`.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use nix::sys::signal::Signal as Sig;
use nix::unistd::Pid;
use tracing::{error, info};

use super::{Master, Stop};
use crate::process::{self, human, Exit};
use crate::upgrade::{self, Successor};

/// An upgrade in progress: the new master has been started, not yet ready.
pub(super) struct Upgrade {
    successor: Successor,
    deadline: Instant,
    /// The pipe hit EOF without "ready": stop polling it; the reap says why.
    closed: bool,
}

impl Upgrade {
    /// The readiness pipe, while it is worth polling.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        (!self.closed).then(|| self.successor.ready.as_fd())
    }

    pub(super) fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Master<'_> {
    pub(super) fn upgrade(&mut self) {
        if let Some(upgrade) = &self.upgrade {
            return info!(
                "master: ignoring USR2: the upgrade to pid {} is in progress",
                upgrade.successor.pid
            );
        }
        let Some(binary) = self
            .config
            .upgrade_binary
            .clone()
            .or_else(|| self.origin.binary.clone())
        else {
            return error!("master: upgrade refused: the path of this binary is unknown; set --upgrade-binary");
        };
        match upgrade::spawn_successor(&binary, &self.origin.args, &self.listeners) {
            Ok(successor) => {
                let timeout = human(self.config.upgrade_timeout);
                info!(
                    "master: upgrade: started {} as pid {}; waiting up to {timeout}",
                    binary.display(),
                    successor.pid
                );
                let deadline = Instant::now() + self.config.upgrade_timeout;
                self.upgrade = Some(Upgrade {
                    successor,
                    deadline,
                    closed: false,
                });
            }
            Err(err) => error!(
                "master: upgrade failed: cannot start {}: {err}; this master keeps serving",
                binary.display()
            ),
        }
    }

    /// After each wakeup: has the new master said ready, or run out of time?
    pub(super) fn watch_upgrade(&mut self) {
        let Some(upgrade) = &mut self.upgrade else { return };
        let pid = upgrade.successor.pid;
        let mut said = [0u8; 16];
        match upgrade.successor.ready.read(&mut said) {
            Ok(n) if said[..n].starts_with(b"ready") => {
                info!("master: upgrade: the new master (pid {pid}) is ready; this master drains and exits");
                // Still the main pid systemd knows: tell it who is main now.
                self.notifier
                    .send(&format!("MAINPID={pid}\nSTATUS=upgraded: pid {pid} is the master"));
                self.upgrade = None;
                self.successor = Some(pid);
                return self.begin_stop(Stop::Graceful);
            }
            Ok(0) => upgrade.closed = true,
            _ => {}
        }
        if Instant::now() >= upgrade.deadline {
            let timeout = human(self.config.upgrade_timeout);
            error!("master: upgrade failed: the new master (pid {pid}) is not ready after {timeout}; stopping it, this master keeps serving");
            process::signal(pid, Sig::SIGTERM);
            self.upgrade = None;
        }
    }

    /// Called for every reaped pid; true if it was a new master of ours.
    pub(super) fn reap_successor(&mut self, pid: Pid, exit: Exit) -> bool {
        if self
            .upgrade
            .as_ref()
            .is_some_and(|upgrade| upgrade.successor.pid == pid)
        {
            error!("master: upgrade failed: the new master (pid {pid}) {exit} before it was ready; this master keeps serving");
            self.upgrade = None;
            return true;
        }
        self.successor == Some(pid)
    }
}
