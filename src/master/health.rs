//! Health checks from the scoreboard: hung workers (`--timeout`) are killed and
//! replaced; bloated ones (`--max-worker-memory`) are recycled gracefully.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::log::{info, warn};
use nix::unistd::Pid;

use super::Master;
use crate::sys::process::human;
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

impl Health {
    /// Starts the check due at `now` (`now_ms` on the workers' monotonic clock),
    /// if it is due: false if not. If the master itself did not run for a while
    /// (more than two intervals and a second late: SIGSTOP, a frozen VM), the
    /// workers may have been stopped too, their beats stale through no fault of
    /// theirs: every worker gets a full `timeout` before it is judged. Returns
    /// how long the master was away then.
    fn begin(&mut self, now: Instant, now_ms: u64, interval: Duration, timeout: Duration) -> Option<Option<Duration>> {
        if now < self.next {
            return None;
        }
        let late = now.saturating_duration_since(self.last);
        let away = (late > interval * 2 + Duration::from_secs(1)).then_some(late);
        if away.is_some() {
            self.grace_until_ms = now_ms + timeout.as_millis() as u64;
        }
        self.last = now;
        self.next = now + interval;
        Some(away)
    }

    /// Whether a ready worker whose last beat was `beat_ms` is hung as of `now_ms`.
    fn is_hung(&self, now_ms: u64, beat_ms: u64, timeout: Duration) -> bool {
        let silent_ms = now_ms.saturating_sub(beat_ms);
        !timeout.is_zero() && now_ms >= self.grace_until_ms && silent_ms >= timeout.as_millis() as u64
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
        if !self.phase.is_running() {
            return;
        }
        let Some(away) = self.health.begin(now, monotonic_ms(), interval, self.config.timeout) else {
            return;
        };
        if let Some(away) = away {
            info!(
                "master: did not run for {}; giving every worker a fresh timeout",
                human(away)
            );
        }
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
        let beat_ms = self.scoreboard.record(record).heartbeat_ms.load(Relaxed);
        if !self.health.is_hung(monotonic_ms(), beat_ms, timeout) {
            return;
        }
        warn!(
            "worker {slot} (pid {pid}) timed out after {}; sending SIGABRT, then SIGKILL",
            human(timeout)
        );
        self.order(pid, super::workers::Order::Abort);
        self.scoreboard.slot(slot).timed_out.fetch_add(1, Relaxed);
        self.fleet.pool.retire_hung(pid, now, now + ABORT_GRACE);
    }

    fn check_memory(&mut self, slot: usize, pid: Pid, record: usize) {
        let rss = self.fleet.kind(pid).and_then(|kind| kind.resident_bytes(pid));
        let (Some(limit), Some(rss)) = (self.config.max_worker_memory, rss) else {
            return;
        };
        let requests = self.scoreboard.record(record).requests.load(Relaxed);
        let served = self.fleet.has_served(pid, requests, rss <= limit);
        if rss > limit && !served {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_that_did_not_run_judges_nobody_for_a_full_timeout() {
        let start = Instant::now();
        let (interval, timeout) = (Duration::from_millis(500), Duration::from_secs(2));
        let mut health = Health::new(start);
        assert_eq!(health.begin(start, 10_000, interval, timeout), Some(None));
        assert_eq!(
            health.begin(start + interval / 2, 10_250, interval, timeout),
            None,
            "not due"
        );
        // On time: a worker silent for the timeout is hung.
        assert_eq!(health.begin(start + interval, 10_500, interval, timeout), Some(None));
        assert!(health.is_hung(10_500, 8_500, timeout));
        assert!(!health.is_hung(10_500, 9_000, timeout));
        // The master was stopped for 10 s: the stale beats are not held against anyone...
        let back = start + Duration::from_secs(11);
        let away = health.begin(back, 21_000, interval, timeout).expect("due");
        assert_eq!(away, Some(Duration::from_millis(10_500)));
        assert!(!health.is_hung(21_000, 10_500, timeout));
        assert!(!health.is_hung(22_999, 10_500, timeout));
        // ...until they have had a full timeout to beat again.
        assert!(health.is_hung(23_000, 10_500, timeout));
        assert!(
            !health.is_hung(23_000, 10_500, Duration::ZERO),
            "--timeout 0 judges nobody"
        );
    }
}
