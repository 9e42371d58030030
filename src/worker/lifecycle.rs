//! What the whole worker's connections share, apart from any one of them: has
//! the drain started, how many requests the worker has served against its
//! quota, the housekeeping clock, the access log and the body limit.

use std::cell::Cell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::Notify;

use super::access::AccessLog;
use super::io::Clock;
use crate::sys::scoreboard::Record;
use crate::sys::steering::SlotLoad;
use crate::sys::traffic::Traffic;

/// What every response of this worker looks at: has the drain started (then it
/// carries `Connection: close`), and has the worker served its request quota.
/// Read on every response, so `Cell`s.
pub struct Lifecycle {
    draining: Cell<bool>,
    served: Cell<u64>,
    /// Requests after which the worker asks to be replaced; 0: never.
    quota: u64,
    quota_reached: Notify,
    /// Where the master (and the status views) see the count.
    record: &'static Record,
    /// Housekeeping ticks since the worker started (shared with every socket).
    pub(super) clock: Arc<Clock>,
    /// `--access-log`.
    pub(super) access_log: Option<AccessLog>,
    /// `--max-body-size`, or `u64::MAX`.
    pub(super) max_body: u64,
    /// Requests in flight on every connection of this worker.
    in_flight: Cell<u32>,
    /// `--balance steered`: where the kernel's program reads this slot's load.
    steer: Option<&'static SlotLoad>,
    /// `--slow-request`, in ticks of `traffic::TICK_NS`.
    pub(super) slow_request: Option<u64>,
    /// A request's method and target are kept for its end: for the access
    /// log, or to log it if it is slow.
    pub(super) keeps_requests: bool,
}

impl Lifecycle {
    pub fn new(
        quota: u64,
        record: &'static Record,
        steer: Option<&'static SlotLoad>,
        access_log: Option<AccessLog>,
        max_body: Option<u64>,
        slow_request: Option<std::time::Duration>,
    ) -> Lifecycle {
        let keeps_requests = access_log.is_some() || slow_request.is_some();
        Lifecycle {
            draining: Cell::new(false),
            served: Cell::new(0),
            quota,
            quota_reached: Notify::new(),
            record,
            clock: Arc::new(Clock::default()),
            access_log,
            max_body: max_body.unwrap_or(u64::MAX),
            in_flight: Cell::new(0),
            steer,
            slow_request: slow_request.map(|slow| crate::sys::traffic::ticks_from_us(slow.as_micros() as u64)),
            keeps_requests,
        }
    }

    /// Where this worker counts what it serves.
    #[inline]
    pub(super) fn traffic(&self) -> &'static Traffic {
        &self.record.traffic
    }

    /// This worker's slot.
    pub(super) fn slot(&self) -> u64 {
        self.record.slot.load(Relaxed)
    }

    /// A request has begun: one more in flight (for the steering's load).
    pub(super) fn request_began(&self) {
        self.set_in_flight(self.in_flight.get() + 1);
    }

    /// A request's response is done, or dropped.
    pub(super) fn request_ended(&self) {
        self.set_in_flight(self.in_flight.get().saturating_sub(1));
    }

    fn set_in_flight(&self, requests: u32) {
        self.in_flight.set(requests);
        self.record.in_flight.store(u64::from(requests), Relaxed);
        // Draining, the slot's load is its successor's to write.
        if let (Some(steer), false) = (self.steer, self.draining.get()) {
            steer.set_in_flight(requests);
        }
    }

    pub fn start_drain(&self) {
        self.draining.set(true);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn now(&self) -> u32 {
        self.clock.now()
    }

    /// One housekeeping tick has passed.
    pub fn tick(&self) {
        self.clock.tick();
    }

    pub fn served(&self) -> u64 {
        self.served.get()
    }

    /// Resolves once, when the quota is reached; never without a quota.
    pub async fn quota_reached(&self) {
        if self.quota == 0 {
            return std::future::pending().await;
        }
        self.quota_reached.notified().await;
    }

    pub(super) fn served_one(&self) {
        let served = self.served.get() + 1;
        self.served.set(served);
        // A plain store: only this worker writes its record.
        self.record.requests.store(served, Relaxed);
        if served == self.quota {
            self.quota_reached.notify_one(); // kept as a permit if nobody waits yet
        }
    }
}
