//! Changing the whole fleet: stop, reload (HUP), resize (TTIN / TTOU).

use crate::log::{error, info};
use nix::sys::signal::Signal as Sig;

use super::pool::Timeouts;
use super::workers::Order;
use super::{Master, Phase, Stop, FAST_STOP_DEADLINE, KILL_MARGIN};
use crate::config::Config;
use crate::sys::listener::Layout;
use crate::sys::listener::{bind_admin, Listeners};
use crate::sys::process::human;

impl Master<'_> {
    /// TERM or INT: with `--shutdown-delay`, first leave the load balancers'
    /// rotation (`/readyz` fails while everything keeps serving and accepting),
    /// then drain; without one, drain now.
    pub(super) fn leave_rotation(&mut self, signal: crate::sys::signals::Signal) {
        let delay = self.config.shutdown_delay;
        if delay.is_zero() {
            return self.begin_stop(Stop::Graceful);
        }
        info!(
            "master: {signal}: leaving rotation: /readyz fails, and everything keeps serving for {} (--shutdown-delay); \
             then the workers drain (another TERM skips the wait)",
            human(delay)
        );
        self.scoreboard
            .header()
            .stopping
            .store(1, std::sync::atomic::Ordering::Relaxed);
        self.systemd.send("STOPPING=1");
        self.phase = Phase::Leaving(self.now + delay);
    }

    pub(super) fn begin_stop(&mut self, stop: Stop) {
        let now = self.now;
        let (signal, kill_at) = match stop {
            Stop::Graceful => (Sig::SIGTERM, now + self.config.graceful_timeout + KILL_MARGIN),
            Stop::Fast => (Sig::SIGQUIT, now + FAST_STOP_DEADLINE),
        };
        let pids = self.fleet.pool.retire_all(kill_at);
        match stop {
            Stop::Graceful => {
                let timeout = human(self.config.graceful_timeout);
                info!(
                    "master: graceful stop: {} workers drain, killed after {timeout}",
                    pids.len()
                )
            }
            Stop::Fast => info!("master: fast stop: {} workers exit now", pids.len()),
        }
        self.systemd.send("STOPPING=1");
        self.scoreboard
            .header()
            .stopping
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let order = match stop {
            Stop::Graceful => Order::Drain,
            Stop::Fast => Order::FastStop,
        };
        for pid in pids {
            self.order(pid, order);
        }
        self.abandon_upgrade_for_stop(signal, kill_at);
        if self.phase.is_running() {
            // The workers take what is queued and close their copies; with these
            // closed too, new connections are refused at once.
            match self.upgrade.handed_over() {
                true => {
                    info!("master: closing this master's copies of the listening sockets (the new master serves them)")
                }
                false => info!("master: closing the listening sockets: new connections are refused from now on"),
            }
            self.sockets.close_for_stop();
        }
        self.phase = std::mem::replace(&mut self.phase, Phase::Running).with_stop(stop);
    }

    /// Stops because the master cannot go on: exit 1 with `error` once every
    /// worker is gone.
    pub(super) fn halt(&mut self, error: crate::error::Error, stop: Stop) {
        self.begin_stop(stop);
        self.phase = std::mem::replace(&mut self.phase, Phase::Running).halt(stop, error);
    }

    /// HUP: re-reads the config file and replaces every worker, slot by slot, each
    /// new worker ready before the old one drains. A config that cannot be applied
    /// is refused as a whole; the running one stays.
    pub(super) fn reload(&mut self) {
        self.systemd.reloading();
        let mut new = match self.config.reload() {
            Ok(new) => new,
            Err(err) => return error!("master: reload refused: {err}; the current config stays"),
        };
        // A command that cannot run would replace every worker with a failing one.
        if let Some(Err(cause)) = new
            .command
            .as_ref()
            .and_then(|c| c.first())
            .map(|p| crate::sys::exec::find(p))
        {
            return error!("master: reload refused: cannot run the command: {cause}; the current config stays");
        }
        // A new admin address is bound before anything changes: if it cannot be,
        // nothing does.
        let admin = match (new.admin != self.config.admin).then(|| new.admin.map(bind_admin).transpose()) {
            None => None,
            Some(Ok(admin)) => Some(admin),
            Some(Err(err)) => return error!("master: reload refused: {err}; the current config stays"),
        };
        // So is a new plain port.
        let plain = match (new.plain_addr() != self.config.plain_addr()).then(|| {
            new.plain_addr()
                .map(|addr| crate::sys::listener::bind_plain(addr, new.backlog))
                .transpose()
        }) {
            None => None,
            Some(Ok(plain)) => Some(plain),
            Some(Err(err)) => return error!("master: reload refused: {err}; the current config stays"),
        };
        // New users and groups are looked up before anything changes, too.
        let run_as = match (new.user != self.config.user || new.group != self.config.group)
            .then(|| crate::sys::privileges::resolve(new.user.as_deref(), new.group.as_deref()))
        {
            None => self.run_as,
            Some(Ok(run_as)) => run_as,
            Some(Err(err)) => return error!("master: reload refused: {err}; the current config stays"),
        };
        if let Some(change) = needs_new_sockets(&self.sockets.listeners, &new) {
            if let Err(err) = self.move_to_new_sockets(&new, change) {
                return error!("master: reload refused: {change}: {err}; the current config stays");
            }
        }
        if new.backlog != self.config.backlog {
            if let Err(err) = self.sockets.listeners.set_backlog(new.backlog) {
                return error!("master: reload refused: cannot change the backlog: {err}; the current config stays");
            }
        }
        if let Some(plain) = plain {
            match plain.as_ref().and_then(|plain| plain.local_addr().ok()) {
                Some(addr) => info!("master: reload: plain HTTP on {addr} (the workers of this reload serve it)"),
                None => info!("master: reload: plain HTTP off (the workers of this reload do not serve it)"),
            }
            self.sockets.listeners.replace_plain(plain);
        }
        if let Some(admin) = admin {
            match admin.as_ref().and_then(|admin| admin.local_addr().ok()) {
                Some(addr) => info!("master: reload: admin on {addr} (the workers of this reload serve it)"),
                None => info!("master: reload: admin off (the workers of this reload do not serve it)"),
            }
            self.sockets.listeners.replace_admin(admin);
        }
        // Before the first ready line the pid file is not written yet: the new
        // path is simply the one written then.
        if new.pid_file != self.config.pid_file && self.sockets.announced_once() {
            new.pid_file = self.move_pid_file(new.pid_file.as_deref());
        }
        if new.log_level != self.config.log_level {
            error!("master: log_level changes need a restart; the other settings are applied");
        }
        let workers = self.workers_after_reload(&new);
        if let Some(tls) = &new.tls {
            info!(
                "master: reload: TLS: {} (the workers of this reload serve it)",
                tls.describe()
            );
        }
        self.config = new;
        self.run_as = run_as;
        self.arrange_tickets();
        // The sockets may be new, or `--balance` another.
        self.arrange_steering();
        self.warn_not_for_commands();
        self.fleet
            .pool
            .begin_reload(self.config.reload_batch.get(), self.timeouts());
        let (generation, batch) = (self.fleet.pool.generation(), self.config.reload_batch);
        info!(
            "master: reload (generation {generation}): replacing {} workers, {batch} at a time",
            self.fleet.pool.len()
        );
        self.publish_pool();
        if workers != self.fleet.pool.len() {
            self.resize(workers, "reload");
        }
    }

    /// How many workers a reload to `new` leaves. A count set at run time
    /// (TTIN, TTOU, `prefork-server scale`) is kept unless `workers` itself
    /// changed in the config (an operator who scaled up under load and then
    /// deploys keeps the capacity; one who edits `workers` gets the edit); a
    /// change is logged on every HUP.
    fn workers_after_reload(&self, new: &Config) -> usize {
        let (running, loaded, wanted) = (self.fleet.pool.len(), self.config.workers.get(), new.workers.get());
        let source = match &new.file {
            Some(file) => file.display().to_string(),
            None => "the flags and the environment".into(),
        };
        match (running == loaded, wanted == loaded) {
            (true, _) => wanted,
            (false, false) => {
                info!("master: reload: workers: {running} (set by scale) -> {wanted} (from {source})");
                wanted
            }
            (false, true) => {
                info!("master: reload: workers: {running} (set by scale) kept; {source} still says {wanted}");
                running
            }
        }
    }

    /// Binds the sockets `new` asks for and makes them the ones new workers get.
    /// The old ones stay open until every worker alive now has exited (the rolling
    /// reload that follows replaces them all), then close.
    fn move_to_new_sockets(&mut self, new: &Config, change: &str) -> Result<(), crate::error::Error> {
        let mut fresh = Listeners::bind_serving(new.wanted_sockets())?;
        // The admin and plain sockets are not part of the move (a change of
        // them is applied on its own): they go to the new set, the old set
        // closes without them.
        let old_admin = self.sockets.listeners.replace_admin(None);
        fresh.replace_admin(old_admin);
        let old_plain = self.sockets.listeners.replace_plain(None);
        fresh.replace_plain(old_plain);
        let old = std::mem::replace(&mut self.sockets.listeners, fresh);
        let (addr, balance) = (self.sockets.listeners.addr(), self.sockets.listeners.layout().as_str());
        info!(
            "master: reload: {change}: listening on {addr} ({balance}); {} closes once its workers have exited",
            old.addr()
        );
        self.sockets.keep_old(old, self.fleet.pool.pids());
        self.fleet.pool.drop_vacant();
        if self.sockets.listeners.layout() == Layout::PerSlot {
            self.sockets.listeners.ensure_slots(self.fleet.pool.slot_count())?;
        }
        Ok(())
    }

    /// A reload named another pid file (or none): this master's pid is written
    /// there, and the old file removed. If the new one cannot be written, the
    /// old one stays. Returns the path in force.
    fn move_pid_file(&self, to: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
        let from = self.config.pid_file.clone();
        if let Some(path) = to {
            if let Err(err) = crate::sys::pidfile::write(path, std::process::id()) {
                let kept = from.as_ref().map_or("none".into(), |from| from.display().to_string());
                error!(
                    "master: reload: cannot write the pid file {}: {err}; it stays {kept}",
                    path.display()
                );
                return from;
            }
            info!("master: reload: the pid file is {} now", path.display());
        }
        if let Some(old) = &from {
            crate::sys::pidfile::remove_if_ours(old, std::process::id());
        }
        to.map(ToOwned::to_owned)
    }

    /// How long a replacement (reload or recycle) may take, from the config.
    pub(super) fn timeouts(&self) -> Timeouts {
        Timeouts {
            ready: self.config.ready_timeout,
            drain: self.config.graceful_timeout + KILL_MARGIN,
        }
    }

    /// Grows or shrinks the pool to `workers` (at least 1). A removed slot's worker
    /// drains; its socket stays open in the master, adopted by a sibling, so nothing
    /// queued on it is reset; a later TTIN takes the slot back first.
    pub(super) fn resize(&mut self, workers: usize, why: &str) {
        let workers = workers.max(1);
        if workers == self.fleet.pool.len() {
            return info!("master: {why}: already {workers} workers (the minimum is 1)");
        }
        let slots = match slots_for(self.fleet.pool.slot_count(), workers) {
            Ok(slots) => slots,
            Err(err) => return error!("master: {why} refused: {err}"),
        };
        if self.sockets.listeners.layout() == Layout::PerSlot {
            if let Err(err) = self.sockets.listeners.ensure_slots(slots) {
                return error!("master: {why} refused: {err}");
            }
            self.arrange_steering();
        }
        let now = self.now;
        let kill_at = now + self.config.graceful_timeout + KILL_MARGIN;
        let (_, retired) = self.fleet.pool.resize(workers, now, kill_at);
        info!("master: {why}: {workers} workers");
        self.publish_pool();
        for pid in retired {
            info!("master: pid {pid} drains (its slot's socket stays open, served by a sibling)");
            self.order(pid, Order::Drain);
        }
    }
}

/// The slots a pool of `slots` needs for `workers` (vacant slots are kept, and
/// taken back first), within what the scoreboard has room for.
fn slots_for(slots: usize, workers: usize) -> Result<usize, String> {
    let needed = slots.max(workers);
    match needed <= crate::sys::scoreboard::SLOTS {
        true => Ok(needed),
        false => Err(format!(
            "{workers} workers would need {needed} slots; the most is {}",
            crate::sys::scoreboard::SLOTS
        )),
    }
}

/// The first setting that differs in a way only new sockets could apply. Compared
/// with the address actually bound: a file naming the port already in use (where
/// 0 was asked for) is no change, and port 0 in the new config keeps the port.
fn needs_new_sockets(bound: &Listeners, new: &Config) -> Option<&'static str> {
    let addr = bound.addr();
    if addr.ip() != new.addr().ip() {
        Some("changing host")
    } else if new.addr().port() != 0 && addr.port() != new.addr().port() {
        Some("changing port")
    } else if bound.layout() != new.balance.layout() {
        Some("changing balance")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::slots_for;
    use crate::sys::scoreboard::SLOTS;

    #[test]
    fn growing_past_the_scoreboard_is_refused_and_vacant_slots_are_reused() {
        assert_eq!(slots_for(2, 3), Ok(3));
        assert_eq!(slots_for(52, 3), Ok(52), "vacant slots are kept");
        assert_eq!(slots_for(SLOTS, SLOTS), Ok(SLOTS));
        assert_eq!(slots_for(SLOTS, 5), Ok(SLOTS));
        let refused = slots_for(SLOTS, SLOTS + 1).unwrap_err();
        assert_eq!(refused, "4097 workers would need 4097 slots; the most is 4096");
    }
}
