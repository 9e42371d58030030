//! The master's dealings with individual workers: spawning them, reading what
//! they say, reaping them, and handing them sockets.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Duration;

use crate::log::{debug, error, info, warn};
use nix::unistd::Pid;

use super::fleet::{Delivery, Kind};
use super::pool::{Departure, Ready, Spawn};
use super::{Master, Stop, FAST_STOP_DEADLINE};
use crate::error::Error;
use crate::sys::channel::{self, Channel, ToMaster, ToWorker};
use crate::sys::listener::Layout;
use crate::sys::process::{self, human, Exit};
use crate::sys::spawn;

impl Master<'_> {
    /// Logs the end of a reload that ended without a last promotion (its last
    /// queued slots were vacated by a lower `workers`).
    pub(super) fn settle_reload(&mut self) {
        if self.fleet.pool.reload_settled() {
            self.reload_complete();
        }
    }

    fn reload_complete(&self) {
        let generation = self.fleet.pool.generation();
        info!("master: reload complete: every worker is of generation {generation}");
        self.scoreboard
            .header()
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn spawn_due(&mut self) {
        for (slot, spawn) in self.fleet.pool.due(self.now) {
            match self.spawn(slot, spawn) {
                Ok(pid) => {
                    let generation = self.fleet.pool.generation();
                    match spawn {
                        Spawn::Fill => info!("worker {slot} (pid {pid}) spawned"),
                        Spawn::Replace => info!("worker {slot} (pid {pid}) spawned (generation {generation})"),
                    }
                }
                Err(err @ (Error::Multithreaded { .. } | Error::ThreadCount(_))) => {
                    error!("master: {err}; halting");
                    return self.halt(err, Stop::Graceful);
                }
                Err(err) if spawn == Spawn::Replace => {
                    error!("master: reload aborted: worker {slot}: {err}; the old workers keep serving");
                    self.abort_reload();
                }
                Err(err) => {
                    let delay = self.fleet.pool.on_spawn_failed(slot, self.now);
                    error!("worker {slot}: {err}; retrying in {}", human(delay));
                }
            }
        }
    }

    /// Forks a worker for `slot`. The child closes every fd of the master's except
    /// its own listener and its end of the channel, then runs `worker_main`.
    fn spawn(&mut self, slot: usize, spawn: Spawn) -> Result<Pid, Error> {
        let generation = self.fleet.pool.generation();
        let record = self.scoreboard.claim(slot, generation).ok_or(Error::ScoreboardFull)?;
        let forked = match self.config.command.clone() {
            Some(command) => self.fork_exec(slot, record, &command),
            None => self
                .fork_worker(slot, record)
                .map(|(pid, channel)| (pid, channel, Kind::App)),
        };
        match forked {
            Ok((pid, channel, kind)) => {
                self.fleet.add(pid, channel, record, kind);
                self.fleet.pool.on_spawned(slot, spawn, pid, self.now);
                Ok(pid)
            }
            Err(err) => {
                self.scoreboard.release(record);
                Err(err)
            }
        }
    }

    fn fork_worker(&self, slot: usize, record: usize) -> Result<(Pid, Channel), Error> {
        let (master_end, worker_end) = channel::pair().map_err(Error::Channel)?;
        let channel = Channel::new(master_end).map_err(Error::Channel)?;
        let listener = self.sockets.listeners.for_slot(slot);
        // What the worker keeps of the master's: its slot's socket, the admin
        // socket, its end of the channel (see `forget_the_master`); and what
        // the app opened before `run_with`, which its code may still use.
        let keep: Vec<RawFd> = [listener.as_raw_fd(), worker_end.as_raw_fd()]
            .into_iter()
            .chain(self.sockets.listeners.admin().map(AsRawFd::as_raw_fd))
            .chain(self.sockets.listeners.plain().map(AsRawFd::as_raw_fd))
            .chain(self.app_fds.iter().copied())
            .collect();
        let start = spawn::Spawn {
            who: format!("worker {slot}"),
            keep: &keep,
            name: Some(super::WORKER_PROCESS_NAME),
            run_as: self.run_as,
            // TERM: a worker drains on it, within --graceful-timeout.
            death_signal: nix::sys::signal::Signal::SIGTERM,
            failure_code: process::exit_code::BOOT_FAILED,
        };
        let (worker_main, config, scoreboard, listeners) = (
            self.entries.worker,
            &self.config,
            self.scoreboard,
            &self.sockets.listeners,
        );
        let steer = self.steer.slot_load(slot);
        let shared = self.steer.shared();
        let tickets = self.tickets.keys();
        let pid = spawn::spawn(&self.signals, start, worker_end, move |channel| {
            if let Some(shared) = shared {
                shared.protect_for_worker();
            }
            crate::sys::tickets::TicketMemory::protect_for_worker(tickets);
            worker_main(super::WorkerStart {
                slot,
                listener,
                channel,
                config,
                record: scoreboard.record(record),
                scoreboard,
                admin: listeners.admin(),
                plain: listeners.plain(),
                steer,
                tickets,
            })
        })?;
        self.scoreboard
            .record(record)
            .pid
            .store(pid.as_raw() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok((pid, channel))
    }

    pub(super) fn read_channels(&mut self) {
        let mut closed = Vec::new();
        let mut ready = Vec::new();
        let received: Vec<_> = self
            .fleet
            .channels_mut()
            .map(|(pid, channel)| (pid, channel.receive()))
            .collect();
        for (pid, received) in received {
            let failed = received
                .messages
                .iter()
                .any(|message| matches!(message, ToMaster::BootError(_)));
            for message in received.messages {
                match message {
                    ToMaster::Ready => ready.push(pid),
                    ToMaster::Recycle => {
                        if let Some(slot) = self.fleet.pool.recycle(pid) {
                            self.scoreboard
                                .slot(slot)
                                .recycled
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            info!("worker {slot} (pid {pid}) served its --max-requests: replacing it, new one ready first");
                        }
                    }
                    ToMaster::Refused(slot) => {
                        if self.fleet.pool.adoption_refused(slot, pid, self.now) {
                            warn!("master: pid {pid} could not take slot {slot}'s socket; offering it to another worker, if any");
                        }
                    }
                    ToMaster::BootError(text) => {
                        let slot = self.fleet.pool.slot_of(pid).map_or("?".into(), |s| s.to_string());
                        self.boot_error = Some(format!("worker {slot} (pid {pid}): {text}"));
                    }
                }
            }
            if received.closed {
                closed.push((pid, failed));
            }
        }
        // The exit itself is handled when the pid is reaped.
        for (pid, failed) in closed {
            if self.on_executed(pid, failed) {
                ready.push(pid);
            }
            self.fleet.close_channel(pid);
        }
        for pid in ready {
            self.worker_ready(pid);
        }
    }

    /// `pid` is ready: it serves its slot, and the worker it replaces drains.
    pub(super) fn worker_ready(&mut self, pid: Pid) {
        let Some(ready) = self.fleet.pool.on_ready(pid, self.now) else {
            return; // already ready, or no longer wanted
        };
        self.exec_ready(pid);
        match ready {
            Ready::Serving { slot } => info!("worker {slot} (pid {pid}) ready"),
            Ready::Replaced { slot, old, reload_done } => {
                let generation = self.fleet.pool.generation();
                info!("worker {slot} (pid {pid}) ready (generation {generation})");
                if let Some(old) = old {
                    info!("worker {slot} (pid {old}) replaced: draining");
                    self.order(old, Order::Drain);
                }
                if reload_done {
                    self.reload_complete();
                }
            }
        }
    }

    pub(super) fn reap(&mut self) {
        for (pid, exit) in process::reap_exited() {
            if self.reap_successor(pid, exit) || self.reap_admin(pid, exit) {
                continue;
            }
            self.sockets.worker_gone(pid);
            let kind = self.fleet.kind(pid);
            if let Some(record) = self.fleet.remove(pid) {
                self.scoreboard.release(record);
            }
            let departure = self.fleet.pool.on_exit(pid, self.now);
            let exit = match kind {
                Some(Kind::Exec(_)) => self.command_reaped(pid, exit, departure),
                _ => exit,
            };
            log_departure(pid, exit, departure, self.replacing());
            self.record_departure(exit, departure);
            if let Departure::ReplacementFailed { .. } = departure {
                self.abort_reload();
            }
        }
    }

    /// Keeps the per-slot counters of the scoreboard (for the status views).
    fn record_departure(&self, exit: Exit, departure: Departure) {
        let slot = match departure {
            Departure::Died { slot, respawn_in, .. } => {
                if respawn_in.is_some() {
                    self.scoreboard
                        .slot(slot)
                        .died
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                slot
            }
            Departure::Retired { slot, .. } | Departure::ReplacementFailed { slot, .. } => slot,
            Departure::Unknown => return,
        };
        self.scoreboard
            .slot(slot)
            .last_exit
            .store(exit.encode(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Stops a reload whose replacement failed: the remaining old workers keep
    /// serving; replacements still booting are killed (they never served).
    pub(super) fn abort_reload(&mut self) {
        for pid in self.fleet.pool.abort_reload(self.now + FAST_STOP_DEADLINE) {
            self.order(pid, Order::Kill);
        }
    }

    /// What a replacement in progress is part of, for the logs.
    fn replacing(&self) -> &'static str {
        if self.fleet.pool.reloading() {
            "reload"
        } else {
            "recycling"
        }
    }

    pub(super) fn abort_late_reload(&mut self) {
        if let Some((slot, pid)) = self.fleet.pool.late_replacement(self.now) {
            let limit = human(self.config.ready_timeout);
            let replacing = self.replacing();
            error!("master: {replacing} aborted: worker {slot} (pid {pid}) not ready within {limit}; the old workers keep serving");
            self.abort_reload();
        }
    }

    pub(super) fn kill_overdue(&mut self) {
        let now = self.now;
        for (slot, pid) in self.fleet.pool.overdue(now) {
            warn!("worker {slot} (pid {pid}) still running at its deadline; sending SIGKILL");
            self.order(pid, Order::Kill);
        }
        for (slot, pid) in self.fleet.pool.late_boots(now) {
            let limit = human(self.config.ready_timeout);
            let hint = self.unready_hint(pid);
            let cause = format!("worker {slot} (pid {pid}): not ready within {limit} (--ready-timeout){hint}");
            error!("{cause}: a boot failure; sending SIGKILL");
            self.order(pid, Order::Kill);
            self.boot_error = Some(cause);
        }
    }

    /// Gives the socket of each slot without a ready worker to a ready sibling, and
    /// takes it back once the slot serves again (reuseport only: a shared socket is
    /// accepted on by every worker anyway).
    pub(super) fn arrange_adoptions(&mut self) {
        // Refusals expire whatever happens next (their expiry is a deadline
        // of the pool's: one left in place would wake the master at once, forever).
        self.fleet.pool.ask_again(self.now);
        // Before the first ready line every slot is booting at once: nobody to hand to.
        // A command cannot take another socket: its slot's queue waits for its respawn.
        if self.sockets.listeners.layout() != Layout::PerSlot
            || !self.sockets.announced_once()
            || self.config.command.is_some()
        {
            return;
        }
        for (slot, pid) in self.fleet.pool.releases() {
            self.tell(pid, ToWorker::Release(slot));
        }
        let stalled = self.fleet.pool.stalled();
        for (slot, pid) in self.fleet.pool.adoptions() {
            match stalled.contains(&slot) {
                true => info!("slot {slot}'s worker is stalled: pid {pid} accepts on its socket meanwhile"),
                false => info!("slot {slot} has no ready worker: pid {pid} accepts on its socket meanwhile"),
            }
            self.tell(pid, ToWorker::Adopt(slot));
        }
    }

    /// Asks `pid` for `order`, in the words of what it runs: the Rust app's
    /// signal table, or, for a command, `--stop-signal` to stop and SIGKILL to
    /// its whole process group.
    pub(super) fn order(&self, pid: Pid, order: Order) {
        let kind = self.fleet.kind(pid).unwrap_or(Kind::App);
        if matches!(order, Order::Drain | Order::FastStop) {
            // A command cannot say so in its record itself (a no-op for the app).
            self.exec_draining(pid);
        }
        match kind.delivery(order, self.config.stop_signal.signal()) {
            Some(Delivery::Process(signal)) => process::signal(pid, signal),
            Some(Delivery::Group(signal)) => process::signal_group(pid, signal),
            None => {}
        }
    }

    fn tell(&self, pid: Pid, order: ToWorker) {
        let Some(channel) = self.fleet.channel(pid) else {
            return; // exiting: its departure clears the adoption
        };
        let socket = match order {
            ToWorker::Adopt(slot) => Some(self.sockets.listeners.for_slot(slot).as_fd()),
            ToWorker::Release(_) => None,
        };
        if let Err(err) = channel.send(order, socket) {
            warn!("master: cannot tell pid {pid} to {order}: {err}");
        }
    }
}

/// What the master asks of a worker (see [`Master::order`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// Finish what is in flight, then exit.
    Drain,
    /// Exit now.
    FastStop,
    /// SIGKILL.
    Kill,
    /// SIGABRT: hung; a core dump shows where.
    Abort,
    /// Reopen the log files.
    Reopen,
}

/// One line per exit: slot, pid, exit code or signal, uptime, respawn delay.
fn log_departure(pid: Pid, exit: Exit, departure: Departure, replacing: &str) {
    match departure {
        Departure::Died {
            slot,
            uptime,
            was_ready,
            respawn_in,
        } => {
            let boot = if was_ready { "" } else { " before it was ready" };
            let respawn = match respawn_in {
                None => String::new(),
                Some(Duration::ZERO) => "; respawning now".into(),
                Some(delay) => format!("; respawning in {} (backing off)", human(delay)),
            };
            warn!(
                "worker {slot} (pid {pid}) {exit} after {}{boot}{respawn}",
                human(uptime)
            );
        }
        Departure::Retired { slot, uptime } if exit.is_clean() => {
            info!("worker {slot} (pid {pid}) {exit} after {}", human(uptime))
        }
        Departure::Retired { slot, uptime } => warn!("worker {slot} (pid {pid}) {exit} after {}", human(uptime)),
        Departure::ReplacementFailed { slot, uptime } => error!(
            "master: {replacing} aborted: worker {slot} (pid {pid}) {exit} after {} before it was ready; \
             the old workers keep serving",
            human(uptime)
        ),
        Departure::Unknown => debug!("master: reaped pid {pid}, not a worker ({exit})"),
    }
}
