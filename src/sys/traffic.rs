//! What the workers count of their traffic, in the scoreboard: a histogram of
//! request durations, one of the time new connections waited in the kernel's
//! accept queue, responses by status class and response body bytes.
//!
//! Each [`Traffic`] has one writer (a worker its record's, the master a slot's
//! sums of the workers it reaped), so a count is a load and a store, not a
//! locked read-modify-write: on the request path that is the difference
//! between a few instructions and a bus lock per field. Readers (the admin
//! views) take a [`Snapshot`]: each field read on its own, so a snapshot taken
//! while a request ends may count it in one field and not yet in another.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The buckets' upper bounds, in µs: Prometheus's default buckets
/// (`DefBuckets` of client_golang, 5 ms to 10 s: what dashboards and alerts
/// written for other servers expect), and below them five more, down to
/// 100 µs, so that the quantiles of `/status` and `top` tell a 300 µs p99
/// from a 4 ms one. `/metrics` merges those into the 5 ms bucket.
pub const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];
/// The index of the first of Prometheus's default bounds (5 ms) in [`BOUNDS_US`].
pub const PROMETHEUS_FROM: usize = 5;

/// What the histograms count in: 1,024 ns, the monotonic clock's nanoseconds
/// shifted right by 10 ([`crate::sys::scoreboard::monotonic_ticks`]). A shift
/// where µs would take a division on each of a request's two clock reads:
/// the request path is counted in instructions.
pub const TICK_NS: u64 = 1 << 10;

/// [`BOUNDS_US`] in ticks, rounded to the nearest.
const BOUNDS: [u64; BOUNDS_US.len()] = {
    let mut ticks = [0; BOUNDS_US.len()];
    let mut i = 0;
    while i < BOUNDS_US.len() {
        ticks[i] = (BOUNDS_US[i] * 1000 + TICK_NS / 2) / TICK_NS;
        i += 1;
    }
    ticks
};

/// `micros` in ticks (off the request path: a connection's queue wait).
pub fn ticks_from_us(micros: u64) -> u64 {
    micros * 1000 / TICK_NS
}

/// `ticks` in µs.
pub fn us_from_ticks(ticks: u64) -> u64 {
    ticks * TICK_NS / 1000
}
/// The buckets: one per bound, and the last for everything above (`+Inf`).
pub const BUCKETS: usize = BOUNDS_US.len() + 1;
/// `1xx` to `5xx`.
pub const CLASSES: usize = 5;

/// A histogram in shared memory: a count per bucket (not cumulative) and the
/// sum of what was observed.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    /// In ticks.
    sum: AtomicU64,
}

/// One writer's counter: a load and a store (see the module's comment).
#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

impl Histogram {
    /// One observation, in ticks ([`TICK_NS`]).
    #[inline]
    pub fn observe(&self, ticks: u64) {
        // A linear search: fast requests, the most, end it in a few steps.
        let bucket = BOUNDS.iter().position(|bound| ticks <= *bound).unwrap_or(BUCKETS - 1);
        bump(&self.buckets[bucket], 1);
        bump(&self.sum, ticks);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            sum_ticks: self.sum.load(Relaxed),
        }
    }

    fn add(&self, other: &HistogramSnapshot) {
        for (bucket, count) in self.buckets.iter().zip(other.buckets) {
            bump(bucket, count);
        }
        bump(&self.sum, other.sum_ticks);
    }

    fn clear(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Relaxed);
        }
        self.sum.store(0, Relaxed);
    }
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket, not cumulative; the last is `+Inf`.
    pub buckets: [u64; BUCKETS],
    pub sum_ticks: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (bucket, count) in self.buckets.iter_mut().zip(other.buckets) {
            *bucket += count;
        }
        self.sum_ticks += other.sum_ticks;
    }

    /// The sum of what was observed, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_ticks as f64 * TICK_NS as f64 / 1e9
    }

    /// The buckets as `/metrics` shows them: (upper bound in seconds, count)
    /// over Prometheus's default bounds, the last `+Inf`.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        let first = self.buckets[..=PROMETHEUS_FROM].iter().sum();
        let bounds = BOUNDS_US[PROMETHEUS_FROM..].iter().map(|bound| *bound as f64 / 1e6);
        let counts = std::iter::once(first).chain(self.buckets[PROMETHEUS_FROM + 1..].iter().copied());
        bounds.chain([f64::INFINITY]).zip(counts).collect()
    }

    /// The `q` quantile in seconds (see [`quantile`]).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.buckets, q)
    }
}

/// The `q` quantile in seconds of a histogram's per-bucket counts (over
/// `BOUNDS_US`), as Prometheus's `histogram_quantile` estimates it: linear
/// within the bucket the rank falls in (from 0 for the first), the highest
/// finite bound for the `+Inf` bucket. `None` without observations. (Public
/// for `prefork-server top`, which takes the difference of two `/status`.)
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let highest = BOUNDS_US[BOUNDS_US.len() - 1] as f64 / 1e6;
    let rank = q.clamp(0.0, 1.0) * count as f64;
    let mut below = 0u64;
    for (i, in_bucket) in buckets.iter().enumerate() {
        let through = below + in_bucket;
        if (through as f64) >= rank && *in_bucket > 0 {
            let Some(upper) = BOUNDS_US.get(i) else {
                return Some(highest);
            };
            let lower = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
            let within = (rank - below as f64) / *in_bucket as f64;
            return Some((lower as f64 + (upper - lower) as f64 * within) / 1e6);
        }
        below = through;
    }
    Some(highest)
}

/// What one worker (or the reaped workers of one slot) served.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Traffic {
    /// From the request's head to the end of its response body (the access
    /// log's duration).
    pub duration: Histogram,
    /// New connections: from the handshake's end to the worker's accept.
    pub queue_wait: Histogram,
    /// Response heads by status class.
    responses: [AtomicU64; CLASSES],
    /// Bytes written to clients: response heads and bodies, HTTP/2's
    /// framing, an upgraded connection's (before TLS).
    sent: AtomicU64,
}

impl Traffic {
    #[inline]
    pub fn answered(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, CLASSES) - 1;
        bump(&self.responses[class], 1);
    }

    /// The one counter with two writers: an upgraded connection (a
    /// WebSocket) may be written from a thread of the app's, so a locked add.
    #[inline]
    pub fn sent(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            duration: self.duration.snapshot(),
            queue_wait: self.queue_wait.snapshot(),
            responses: std::array::from_fn(|i| self.responses[i].load(Relaxed)),
            sent: self.sent.load(Relaxed),
        }
    }

    /// Master: adds what a reaped worker served to its slot's sums.
    pub fn add(&self, other: &Snapshot) {
        self.duration.add(&other.duration);
        self.queue_wait.add(&other.queue_wait);
        for (counter, value) in self.responses.iter().zip(other.responses) {
            bump(counter, value);
        }
        self.sent.fetch_add(other.sent, Relaxed);
    }

    /// Master: a reaped worker's record, once added to its slot's sums.
    pub fn clear(&self) {
        self.duration.clear();
        self.queue_wait.clear();
        for counter in &self.responses {
            counter.store(0, Relaxed);
        }
        self.sent.store(0, Relaxed);
    }
}

/// [`Traffic`] as read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub duration: HistogramSnapshot,
    pub queue_wait: HistogramSnapshot,
    /// `1xx` to `5xx`.
    pub responses: [u64; CLASSES],
    pub sent: u64,
}

impl Snapshot {
    pub fn add(&mut self, other: &Snapshot) {
        self.duration.add(&other.duration);
        self.queue_wait.add(&other.queue_wait);
        for (counter, value) in self.responses.iter_mut().zip(other.responses) {
            *counter += value;
        }
        self.sent += other.sent;
    }

    /// The status classes with their names, `2xx`...
    pub fn classes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ["1xx", "2xx", "3xx", "4xx", "5xx"].into_iter().zip(self.responses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_quantiles_interpolate() {
        let traffic = Traffic::default();
        let observe = |micros| traffic.duration.observe(ticks_from_us(micros));
        for _ in 0..90 {
            observe(1_000); // 1 ms: (500 µs, 1 ms]
        }
        for _ in 0..10 {
            observe(300_000); // 300 ms: (250 ms, 500 ms]
        }
        observe(60_000_000); // a minute: +Inf
        observe(6_000); // 6 ms: the 10 ms bucket of /metrics
        let seen = traffic.snapshot().duration;
        assert_eq!(seen.count(), 102);
        assert_eq!(seen.buckets[3], 90, "(500 µs, 1 ms]");
        assert_eq!(seen.buckets[11], 10, "(250 ms, 500 ms]");
        assert_eq!(seen.buckets[BUCKETS - 1], 1);
        let sum = seen.sum_seconds();
        assert!((sum - (90e-3 + 10.0 * 0.3 + 60.0 + 6e-3)).abs() < 1e-4, "{sum}");
        let shown = seen.prometheus_buckets();
        assert_eq!(shown.len(), 12, "Prometheus's 11 bounds and +Inf");
        assert_eq!((shown[0], shown[1]), ((0.005, 90), (0.01, 1)));
        assert_eq!(shown[11], (f64::INFINITY, 1));
        let p50 = seen.quantile(0.5).unwrap();
        assert!((p50 - (0.0005 + 0.0005 * 51.0 / 90.0)).abs() < 1e-9, "{p50}");
        let p95 = seen.quantile(0.95).unwrap();
        assert!((0.25..=0.5).contains(&p95), "{p95}");
        assert_eq!(seen.quantile(1.0), Some(10.0), "+Inf reports the highest bound");
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
    }

    #[test]
    fn classes_sums_and_clearing() {
        let traffic = Traffic::default();
        for status in [200, 204, 301, 404, 405, 500, 101, 999] {
            traffic.answered(status);
        }
        traffic.sent(22);
        let seen = traffic.snapshot();
        assert_eq!(seen.responses, [1, 2, 1, 2, 2]);
        let slot = Traffic::default();
        slot.add(&seen);
        slot.add(&seen);
        assert_eq!(slot.snapshot().responses, [2, 4, 2, 4, 4]);
        assert_eq!(slot.snapshot().sent, 44);
        traffic.duration.observe(7);
        traffic.clear();
        assert_eq!(traffic.snapshot(), Snapshot::default());
    }
}
