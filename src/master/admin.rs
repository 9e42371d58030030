//! Exec mode: the admin process. With the Rust app every worker answers on
//! the admin listener; commands do not, and the master stays HTTP-free, so one
//! more child serves it: forked like a worker (the master's fds closed but the
//! admin listener, the workers' user, death with the master), respawned a
//! second after it dies, and stopped once the last worker has exited, so that
//! `/readyz` and `/status` answer through the whole graceful stop.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::log::{error, info, warn};
use nix::sys::signal::Signal as Sig;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::Master;
use crate::sys::process::{self, Exit};
use crate::sys::spawn;

/// The wait before an admin process that died is started again.
const RESPAWN_DELAY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct AdminProcess {
    pid: Option<Pid>,
    /// Not before this (after a death).
    next_start: Option<Instant>,
}

impl AdminProcess {
    /// Its pid, while it runs.
    pub(super) fn pid(&self) -> Option<Pid> {
        self.pid
    }

    /// When the master must wake to start it again.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_start.filter(|_| self.pid.is_none())
    }
}

impl Master<'_> {
    /// Starts the admin process when exec mode needs one and it is not running;
    /// stops it when nothing needs it (a reload back to the Rust app).
    pub(super) fn keep_admin_process(&mut self) {
        let wanted = self.config.command.is_some() && self.sockets.listeners.admin().is_some();
        match (wanted, self.exec.admin.pid) {
            (false, Some(_)) => self.stop_admin_process(),
            (true, None) if self.exec.admin.next_start.map_or(true, |at| self.now >= at) => match self.fork_admin() {
                Ok(pid) => {
                    info!("admin process (pid {pid}) serves --admin for the commands");
                    self.exec.admin = AdminProcess {
                        pid: Some(pid),
                        next_start: None,
                    };
                }
                Err(err) => {
                    error!("master: cannot start the admin process: {err}; retrying in 1s");
                    self.exec.admin.next_start = Some(self.now + RESPAWN_DELAY);
                }
            },
            _ => {}
        }
    }

    fn fork_admin(&self) -> Result<Pid, crate::error::Error> {
        let Some(admin) = self.sockets.listeners.admin() else {
            unreachable!("only started with an admin listener")
        };
        let keep = [admin.as_raw_fd()];
        let start = spawn::Spawn {
            who: "admin process".into(),
            keep: &keep,
            name: Some("prefork-admin"),
            run_as: self.run_as,
            // KILL: the master's handlers are gone, and TERM would be ignored.
            death_signal: Sig::SIGKILL,
            failure_code: process::exit_code::BOOT_FAILED,
        };
        let (serve, config, scoreboard) = (self.entries.admin, &self.config, self.scoreboard);
        spawn::spawn(&self.signals, start, (), move |()| {
            if process::unblock_all_signals().is_err() {
                return process::exit_code::BOOT_FAILED;
            }
            serve(admin, scoreboard, config)
        })
    }

    /// Whether `pid` was the admin process (then it is reaped here).
    pub(super) fn reap_admin(&mut self, pid: Pid, exit: Exit) -> bool {
        if self.exec.admin.pid != Some(pid) {
            return false;
        }
        self.exec.admin.pid = None;
        if self.phase.is_running() {
            warn!("admin process (pid {pid}) {exit}; starting another in 1s");
            self.exec.admin.next_start = Some(self.now + RESPAWN_DELAY);
        }
        true
    }

    /// Kills the admin process and waits for it (it holds nothing to drain).
    pub(super) fn stop_admin_process(&mut self) {
        if let Some(pid) = self.exec.admin.pid.take() {
            process::signal(pid, Sig::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}
