//! Health checks from the scoreboard: hung workers (`--timeout`) are killed and
//! replaced; bloated ones (`--max-worker-memory`) are recycled gracefully.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal as Sig;
use nix::unistd::Pid;
use tracing::{info, warn};

use super::Master;
use crate::sys::process::{self, human};
use crate::sys::scoreboard::monotonic_ms;

/// A hung worker gets SIGABRT (a core dump shows where it was stuck), then
/// SIGKILL this much later.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// When the master checks next, and when it last did.
pub(super) struct Health {
    pub next: Instant,
    last: Instant,
    /// No worker is judged before this (monotonic ms): after the master itself
    /// was not running, every worker gets a full timeout to beat again.
    grace_until_ms: u64,
    /// Workers found over the memory limit before they served anything: their
    /// boot footprint alone is over it, so recycling them would loop. Warned once.
    too_big_at_boot: Vec<Pid>,
}

impl Health {
    pub fn new(now: Instant) -> Health {
        Health {
            next: now,
            last: now,
            grace_until_ms: 0,
            too_big_at_boot: Vec::new(),
        }
    }
}

impl Master<'_> {
    fn check_interval(&self) -> Option<Duration> {
        let timeout = self.config.timeout;
        match (timeout.is_zero(), self.config.max_worker_memory) {
            (true, None) => None,
            (true, Some(_)) => Some(Duration::from_secs(1)),
            (false, _) => Some((timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1))),
        }
    }

    /// When the next health check is due, if any check is on.
    pub(super) fn next_health_check(&self) -> Option<Instant> {
        self.check_interval().map(|_| self.health.next)
    }

    pub(super) fn check_health(&mut self) {
        let Some(interval) = self.check_interval() else { return };
        let now = self.now;
        if now < self.health.next || !self.phase.is_running() {
            return;
        }
        let late = now.saturating_duration_since(self.health.last);
        if late > interval * 2 + Duration::from_secs(1) {
            // The master was not running (SIGSTOP, a frozen VM...): the workers may
            // have been stopped too, so their beats are stale through no fault of
            // theirs. Judge nobody until they have had a full timeout.
            info!(
                "master: did not run for {}; giving every worker a fresh timeout",
                human(late)
            );
            self.health.grace_until_ms = monotonic_ms() + self.config.timeout.as_millis() as u64;
        }
        self.health.last = now;
        self.health.next = now + interval;
        let serving: Vec<(usize, Pid, usize)> = self
            .fleet
            .records()
            .filter_map(|(pid, record)| Some((self.fleet.pool.slot_of(pid)?, pid, record)))
            .collect();
        for (slot, pid, record) in serving {
            self.check_heartbeat(slot, pid, record, now);
            self.check_memory(slot, pid, record);
        }
    }

    fn check_heartbeat(&mut self, slot: usize, pid: Pid, record: usize, now: Instant) {
        // Booting: `--ready-timeout` bounds it (`Pool::late_boots`), not the heartbeat.
        if !self.fleet.pool.is_ready(pid) {
            return;
        }
        let timeout = self.config.timeout;
        let now_ms = monotonic_ms();
        let silent_ms = now_ms.saturating_sub(self.scoreboard.record(record).heartbeat_ms.load(Relaxed));
        if timeout.is_zero() || now_ms < self.health.grace_until_ms || silent_ms < timeout.as_millis() as u64 {
            return;
        }
        warn!(
            "worker {slot} (pid {pid}) timed out after {}; sending SIGABRT, then SIGKILL",
            human(timeout)
        );
        process::signal(pid, Sig::SIGABRT);
        self.scoreboard.slot(slot).timed_out.fetch_add(1, Relaxed);
        self.fleet.pool.retire_hung(pid, now, now + ABORT_GRACE);
    }

    fn check_memory(&mut self, slot: usize, pid: Pid, record: usize) {
        let (Some(limit), Some(rss)) = (self.config.max_worker_memory, process::resident_bytes(pid)) else {
            return;
        };
        let served = self.scoreboard.record(record).requests.load(Relaxed);
        if rss > limit && served == 0 {
            let warned = &mut self.health.too_big_at_boot;
            warned.retain(|warned| self.fleet.is_live(*warned));
            if !warned.contains(&pid) {
                warned.push(pid);
                let (rss, limit) = (rss >> 20, limit >> 20);
                warn!(
                    "worker {slot} (pid {pid}) uses {rss} MiB before serving anything, over --max-worker-memory \
                     {limit} MiB: not recycling it (a new worker would be as big); raise the limit"
                );
            }
            return;
        }
        if rss > limit && self.fleet.pool.recycle(pid).is_some() {
            self.scoreboard.slot(slot).recycled.fetch_add(1, Relaxed);
            let (rss, limit) = (rss >> 20, limit >> 20);
            info!("worker {slot} (pid {pid}) uses {rss} MiB, over --max-worker-memory {limit} MiB: recycling it");
        }
    }
}
