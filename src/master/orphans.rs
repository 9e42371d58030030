//! Orphans reparented to the master (it is a child subreaper, see `sys::orphans`):
//! ended with the command they came from, and all of them when the master
//! exits. Nothing the server started outlives it unsupervised.

use std::time::{Duration, Instant};

use crate::log::{info, warn};
use nix::sys::signal::Signal as Sig;
use nix::unistd::Pid;

use super::Master;
use crate::sys::orphans;
use crate::sys::process;

/// How long the master waits, at its exit, for the orphans it killed to be reaped.
const REAP_WITHIN: Duration = Duration::from_secs(1);

impl Master<'_> {
    /// Becomes the reaper of every orphaned descendant, and notes the
    /// children the process had before (a program that embeds the server may
    /// have some): they are not orphans of the server's.
    pub(super) fn become_subreaper(&mut self) {
        self.children_before = orphans::children();
        if let Err(errno) = orphans::set_subreaper(true) {
            warn!("master: cannot become a child subreaper ({errno}): a daemon a command leaves behind goes to init, out of reach");
        }
    }

    /// After the handover to a new master: orphans from now on go where they would without this master.
    pub(super) fn stop_being_subreaper(&self) {
        if let Err(errno) = orphans::set_subreaper(false) {
            warn!("master: cannot stop being a child subreaper ({errno})");
        }
    }

    /// A command (`command`, exited) leaves nothing behind: its process group
    /// is killed, and so is every orphan that came from it (a daemon that left
    /// the group with `setsid`).
    pub(super) fn end_what_the_command_left(&self, command: Pid) {
        process::signal_group(command, Sig::SIGKILL);
        for orphan in orphans::reparented(|pid| self.is_known_child(pid)) {
            if orphans::descends_from(orphan, command) {
                let line = orphans::command_line(orphan);
                info!("master: pid {orphan} (`{line}`), left behind by the command pid {command} outside its process group: killed");
                process::signal(orphan, Sig::SIGKILL);
            }
        }
    }

    /// At the master's exit: every orphan still there is killed and reaped.
    pub(super) fn end_orphans(&self) {
        let left = orphans::reparented(|pid| self.is_known_child(pid));
        if left.is_empty() {
            return;
        }
        for orphan in &left {
            let line = orphans::command_line(*orphan);
            info!("master: pid {orphan} (`{line}`), left behind (its parent exited): killed as the master exits");
            process::signal(*orphan, Sig::SIGKILL);
        }
        let deadline = Instant::now() + REAP_WITHIN;
        let mut waiting = left;
        while !waiting.is_empty() && Instant::now() < deadline {
            let reaped: Vec<Pid> = process::reap_exited().into_iter().map(|(pid, _)| pid).collect();
            waiting.retain(|pid| !reaped.contains(pid));
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A child the master started itself (a worker, the admin process, a new
    /// master), or one the process had before the server ran.
    fn is_known_child(&self, pid: Pid) -> bool {
        self.fleet.is_live(pid)
            || self.exec.admin.pid() == Some(pid)
            || self.upgrade.pid() == Some(pid)
            || self.children_before.contains(&pid)
    }
}
