//! USR2 on the old master's side: start the new master, wait for its "ready",
//! then drain and exit; roll back if it dies or is late. The mechanism (fds,
//! environment, pipe) is in `crate::sys::upgrade`.
//!
//! A new master that is abandoned (late, or this master is told to stop first)
//! is stopped, killed if it does not go, and reaped before this master exits:
//! it holds the listening sockets, and left running it would accept
//! connections that nobody serves, or serve on as an orphan.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::log::{error, info, warn};
use nix::sys::signal::Signal as Sig;
use nix::unistd::Pid;

use super::{Master, Stop};
use crate::sys::process::{self, human, Exit};
use crate::sys::upgrade::{self, Successor};

/// A new master abandoned at `--upgrade-timeout` is killed this long after its TERM.
const ABANDON_GRACE: Duration = Duration::from_secs(5);

/// Where a hot upgrade stands.
pub(super) enum Upgrade {
    /// None under way.
    Idle,
    /// The new master is started, not ready yet.
    Waiting {
        successor: Successor,
        deadline: Instant,
        /// The pipe hit EOF without "ready": stop polling it; the reap says why.
        closed: bool,
    },
    /// The new master was told to stop (late, or this master stops first); it
    /// is killed at `kill_at` if it is still there (`None`: it has been).
    Abandoning { pid: Pid, kill_at: Option<Instant> },
    /// The new master is ready and in charge; this one drains and exits.
    HandedOver(Pid),
}

impl Upgrade {
    /// This master has handed over to a new one.
    pub fn handed_over(&self) -> bool {
        matches!(self, Upgrade::HandedOver(_))
    }

    /// The readiness pipe, while it is worth polling.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Upgrade::Waiting {
                successor,
                closed: false,
                ..
            } => Some(successor.ready.as_fd()),
            _ => None,
        }
    }

    /// When the master must look at the upgrade again, whatever else happens.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self {
            Upgrade::Waiting { deadline, .. } => Some(*deadline),
            Upgrade::Abandoning { kill_at, .. } => *kill_at,
            Upgrade::Idle | Upgrade::HandedOver(_) => None,
        }
    }

    /// The new master, while there is one (this master's child).
    pub(super) fn pid(&self) -> Option<Pid> {
        match self {
            Upgrade::Waiting { successor, .. } => Some(successor.pid),
            Upgrade::Abandoning { pid, .. } | Upgrade::HandedOver(pid) => Some(*pid),
            Upgrade::Idle => None,
        }
    }

    /// False while an abandoned new master has not been reaped: this master
    /// must not exit before it.
    pub(super) fn settled(&self) -> bool {
        !matches!(self, Upgrade::Abandoning { .. })
    }

    /// What is due as of `now`, and done as far as the state goes: a new master
    /// late past its deadline is abandoned (stopped now, killed `ABANDON_GRACE`
    /// later); an abandoned one still there at its deadline is killed, once.
    fn overdue(&mut self, now: Instant) -> Option<Overdue> {
        match self {
            Upgrade::Waiting {
                successor, deadline, ..
            } if now >= *deadline => {
                let pid = successor.pid;
                *self = Upgrade::Abandoning {
                    pid,
                    kill_at: Some(now + ABANDON_GRACE),
                };
                Some(Overdue::Abandon(pid))
            }
            Upgrade::Abandoning { pid, kill_at } if kill_at.is_some_and(|at| now >= at) => {
                *kill_at = None;
                Some(Overdue::Kill(*pid))
            }
            _ => None,
        }
    }
}

/// What [`Upgrade::overdue`] found due.
#[derive(Debug, PartialEq, Eq)]
enum Overdue {
    /// Stop the late new master (TERM).
    Abandon(Pid),
    /// Kill the abandoned one, still there at its deadline.
    Kill(Pid),
}

impl Master<'_> {
    pub(super) fn upgrade(&mut self) {
        match &self.upgrade {
            Upgrade::Idle => {}
            Upgrade::Waiting { successor, .. } => {
                return info!(
                    "master: ignoring USR2: the upgrade to pid {} is in progress",
                    successor.pid
                )
            }
            Upgrade::Abandoning { pid, .. } => {
                return info!("master: ignoring USR2: the abandoned new master (pid {pid}) has not exited yet")
            }
            Upgrade::HandedOver(pid) => return info!("master: ignoring USR2: pid {pid} is the master now"),
        }
        let Some(binary) = self
            .config
            .upgrade_binary
            .clone()
            .or_else(|| self.origin.binary.clone())
        else {
            return error!("master: upgrade refused: the path of this binary is unknown; set --upgrade-binary");
        };
        match upgrade::spawn_successor(
            &binary,
            &self.origin.args,
            &self.sockets.listeners,
            self.steer.fds(),
            self.tickets.fd(),
        ) {
            Ok(successor) => {
                let timeout = human(self.config.upgrade_timeout);
                info!(
                    "master: upgrade: started {} as pid {}; waiting up to {timeout}",
                    binary.display(),
                    successor.pid
                );
                self.upgrade = Upgrade::Waiting {
                    successor,
                    deadline: self.now + self.config.upgrade_timeout,
                    closed: false,
                };
            }
            Err(err) => error!(
                "master: upgrade failed: cannot start {}: {err}; this master keeps serving",
                binary.display()
            ),
        }
    }

    /// After each wakeup: has the new master said ready, or run out of time? Is
    /// an abandoned one due to be killed?
    pub(super) fn watch_upgrade(&mut self) {
        if let Upgrade::Waiting { successor, closed, .. } = &mut self.upgrade {
            let pid = successor.pid;
            let mut said = [0u8; 16];
            match successor.ready.read(&mut said) {
                Ok(n) if said[..n].starts_with(b"ready") => {
                    info!("master: upgrade: the new master (pid {pid}) is ready; this master drains and exits");
                    // Still the main pid systemd knows: tell it who is main now.
                    self.systemd
                        .send(&format!("MAINPID={pid}\nSTATUS=upgraded: pid {pid} is the master"));
                    self.upgrade = Upgrade::HandedOver(pid);
                    // What the new master leaves behind from now on is its own
                    // business: were this one still the subreaper, a master the
                    // new one upgrades to would become this one's orphan.
                    self.stop_being_subreaper();
                    return self.begin_stop(Stop::Graceful);
                }
                Ok(0) => *closed = true,
                _ => {}
            }
        }
        match self.upgrade.overdue(self.now) {
            Some(Overdue::Abandon(pid)) => {
                let (timeout, grace) = (human(self.config.upgrade_timeout), human(ABANDON_GRACE));
                error!("master: upgrade failed: the new master (pid {pid}) is not ready after {timeout}; stopping it (killed after {grace} if it stays), this master keeps serving");
                process::signal(pid, Sig::SIGTERM);
            }
            Some(Overdue::Kill(pid)) => {
                warn!("master: the abandoned new master (pid {pid}) did not stop; killing it");
                process::signal(pid, Sig::SIGKILL);
            }
            None => {}
        }
    }

    /// A stop while a new master is starting stops it too: it holds the
    /// listening sockets, and would otherwise go on serving without this master.
    /// It gets the stop's own signal and kill deadline.
    /// (A fast stop after a graceful one brings an abandoned one's deadline forward.)
    pub(super) fn abandon_upgrade_for_stop(&mut self, signal: Sig, kill_at: Instant) {
        let pid = match &self.upgrade {
            Upgrade::Waiting { successor, .. } => successor.pid,
            Upgrade::Abandoning { pid, kill_at: Some(at) } if kill_at < *at => *pid,
            _ => return,
        };
        info!("master: stopping during an upgrade: the new master (pid {pid}) stops too");
        process::signal(pid, signal);
        self.upgrade = Upgrade::Abandoning {
            pid,
            kill_at: Some(kill_at),
        };
    }

    /// Called for every reaped pid; true if it was a new master of ours.
    pub(super) fn reap_successor(&mut self, pid: Pid, exit: Exit) -> bool {
        match &self.upgrade {
            Upgrade::Waiting { successor, .. } if successor.pid == pid => {
                error!("master: upgrade failed: the new master (pid {pid}) {exit} before it was ready; this master keeps serving");
                self.upgrade = Upgrade::Idle;
                true
            }
            Upgrade::Abandoning { pid: abandoned, .. } if *abandoned == pid => {
                info!("master: the abandoned new master (pid {pid}) {exit}");
                self.upgrade = Upgrade::Idle;
                true
            }
            Upgrade::HandedOver(successor) => *successor == pid,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(pid: i32, deadline: Instant) -> Upgrade {
        let (read, _write) = nix::unistd::pipe().unwrap();
        Upgrade::Waiting {
            successor: Successor {
                pid: Pid::from_raw(pid),
                ready: std::fs::File::from(read),
            },
            deadline,
            closed: false,
        }
    }

    #[test]
    fn a_late_new_master_is_stopped_at_its_deadline_then_killed_once_after_the_grace() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut upgrade = waiting(42, start + 60 * second);
        assert_eq!(upgrade.overdue(start), None);
        assert_eq!(upgrade.deadline(), Some(start + 60 * second));
        let late = start + 60 * second;
        assert_eq!(upgrade.overdue(late), Some(Overdue::Abandon(Pid::from_raw(42))));
        assert!(!upgrade.settled(), "the master waits for it to be reaped");
        assert_eq!(upgrade.deadline(), Some(late + ABANDON_GRACE));
        assert_eq!(upgrade.overdue(late + ABANDON_GRACE / 2), None);
        assert_eq!(
            upgrade.overdue(late + ABANDON_GRACE),
            Some(Overdue::Kill(Pid::from_raw(42)))
        );
        assert_eq!(upgrade.overdue(late + ABANDON_GRACE * 2), None, "killed once");
        assert_eq!(upgrade.deadline(), None);
        assert!(!upgrade.settled());
    }

    #[test]
    fn nothing_is_due_when_idle_or_handed_over() {
        let now = Instant::now();
        for mut upgrade in [Upgrade::Idle, Upgrade::HandedOver(Pid::from_raw(7))] {
            assert_eq!(upgrade.overdue(now + Duration::from_secs(3600)), None);
            assert!(upgrade.settled());
            assert_eq!(upgrade.deadline(), None);
        }
    }
}
