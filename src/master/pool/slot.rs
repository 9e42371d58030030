//! One slot: what it holds, as one value, and its restart bookkeeping.
//!
//! A slot holds nothing and waits (`Empty`), holds its worker (`One`), holds its
//! worker and that worker's replacement booting beside it (`Replacing`), or is
//! scaled away (`Vacant`). As one enum, the combinations that must not happen
//! (a vacant slot with a worker, a replacement in an empty or vacant slot)
//! cannot be written.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

#[derive(Debug)]
pub(super) struct Slot {
    holds: Holds,
    /// An empty slot is spawned no earlier than this.
    pub not_before: Instant,
    /// Consecutive young deaths, for the backoff.
    pub failures: u32,
    /// Workers of this slot that exited before they were ready.
    pub boot_failures: u32,
    /// A ready worker of another slot accepting on this slot's socket while this
    /// slot has no ready worker (reuseport only; see `Pool::adoptions`).
    pub adopter: Option<Pid>,
    /// Workers that could not take this slot's socket, and when: not asked
    /// again until the slot has a ready worker of its own, or a while later
    /// (see `Pool::ask_again`).
    pub refused_by: Vec<(Pid, Instant)>,
    /// Its ready worker has stopped beating while connections wait on its
    /// socket (`--balance lending`, `steered`): the socket is lent to a sibling
    /// as if the slot had no ready worker, until it beats again.
    pub stalled: bool,
}

#[derive(Debug, Clone, Copy)]
enum Holds {
    /// Scaled away: no worker; its socket stays open in the master and is
    /// adopted by a sibling, because closing it would reset what is queued on it.
    Vacant,
    /// No worker: the next one is spawned at `not_before`.
    Empty,
    /// Its worker, booting or ready.
    One(Worker),
    /// A replacement (reload or recycling) booting beside the current worker,
    /// which may have died meanwhile (`None`: the slot waits for the replacement).
    Replacing { current: Option<Worker>, next: Worker },
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Worker {
    pub pid: Pid,
    pub spawned_at: Instant,
    pub ready_at: Option<Instant>,
    pub generation: u32,
    /// Killed for booting too long (see `Pool::late_boots`).
    pub late: bool,
}

impl Worker {
    /// When it fails its boot, if it is still booting and not yet killed for
    /// it (`limit`: `--ready-timeout` and a margin; see `Pool::late_boots`).
    pub fn boot_deadline(&self, limit: Duration) -> Option<Instant> {
        (self.ready_at.is_none() && !self.late).then_some(self.spawned_at + limit)
    }

    /// When a replacement that is not ready aborts its reload (`timeout`:
    /// `--ready-timeout`; see `Pool::late_replacement`).
    pub fn replacement_deadline(&self, timeout: Duration) -> Instant {
        self.spawned_at + timeout
    }

    pub fn new(pid: Pid, spawned_at: Instant, generation: u32) -> Worker {
        Worker {
            pid,
            spawned_at,
            ready_at: None,
            generation,
            late: false,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready_at.is_some()
    }
}

impl Slot {
    pub fn empty(now: Instant) -> Slot {
        Slot {
            holds: Holds::Empty,
            not_before: now,
            failures: 0,
            boot_failures: 0,
            adopter: None,
            refused_by: Vec::new(),
            stalled: false,
        }
    }

    pub fn is_vacant(&self) -> bool {
        matches!(self.holds, Holds::Vacant)
    }

    /// When a worker is due in this slot: active and without any worker, at
    /// `not_before` (see `Pool::due`).
    pub fn respawn_at(&self) -> Option<Instant> {
        self.is_empty().then_some(self.not_before)
    }

    /// Active and without any worker: one is due at `not_before`.
    pub fn is_empty(&self) -> bool {
        matches!(self.holds, Holds::Empty)
    }

    /// No worker at all, current or replacement (vacant or empty).
    pub fn has_no_worker(&self) -> bool {
        matches!(self.holds, Holds::Vacant | Holds::Empty)
    }

    /// The slot's current worker, booting or ready.
    pub fn worker(&self) -> Option<Worker> {
        match self.holds {
            Holds::One(worker) => Some(worker),
            Holds::Replacing { current, .. } => current,
            Holds::Vacant | Holds::Empty => None,
        }
    }

    pub fn worker_mut(&mut self) -> Option<&mut Worker> {
        match &mut self.holds {
            Holds::One(worker) => Some(worker),
            Holds::Replacing { current, .. } => current.as_mut(),
            Holds::Vacant | Holds::Empty => None,
        }
    }

    /// The replacement booting beside the current worker.
    pub fn incoming(&self) -> Option<Worker> {
        match self.holds {
            Holds::Replacing { next, .. } => Some(next),
            _ => None,
        }
    }

    /// The current worker's pid if it is ready.
    pub fn ready_pid(&self) -> Option<Pid> {
        self.worker().filter(Worker::is_ready).map(|worker| worker.pid)
    }

    /// Every live worker of the slot: current and replacement.
    pub fn workers(&self) -> impl Iterator<Item = Worker> {
        [self.worker(), self.incoming()].into_iter().flatten()
    }

    /// A worker spawned for an empty slot.
    pub fn fill(&mut self, worker: Worker) {
        debug_assert!(self.is_empty(), "filled a slot that is not empty: {self:?}");
        self.holds = Holds::One(worker);
    }

    /// A replacement spawned beside the current worker.
    pub fn begin_replacing(&mut self, next: Worker) {
        let current = self.worker();
        debug_assert!(self.incoming().is_none() && current.is_some(), "{self:?}");
        self.holds = Holds::Replacing { current, next };
    }

    /// The current worker leaves the slot (it died, or retires); a replacement,
    /// if any, stays.
    pub fn take_worker(&mut self) -> Option<Worker> {
        self.stalled = false;
        match self.holds {
            Holds::One(worker) => {
                self.holds = Holds::Empty;
                Some(worker)
            }
            Holds::Replacing { current, next } => {
                self.holds = Holds::Replacing { current: None, next };
                current
            }
            Holds::Vacant | Holds::Empty => None,
        }
    }

    /// The replacement leaves the slot (it failed, or is given up); the current
    /// worker, if any, stays.
    pub fn take_incoming(&mut self) -> Option<Worker> {
        let Holds::Replacing { current, next } = self.holds else {
            return None;
        };
        self.holds = current.map_or(Holds::Empty, Holds::One);
        Some(next)
    }

    /// The replacement is ready: it becomes the slot's worker. Returns the one
    /// it replaces, to retire.
    pub fn promote(&mut self, now: Instant) -> Option<Worker> {
        let Holds::Replacing { current, mut next } = self.holds else {
            return None;
        };
        next.ready_at = Some(now);
        self.holds = Holds::One(next);
        self.stalled = false;
        current
    }

    /// Scales the slot away; its workers must have been taken first.
    pub fn vacate(&mut self) {
        debug_assert!(self.has_no_worker(), "vacated a slot with workers: {self:?}");
        self.holds = Holds::Vacant;
    }

    /// Scales a vacant slot back in: empty, due at `now`, backoff forgotten.
    pub fn reinstate(&mut self, now: Instant) {
        self.holds = Holds::Empty;
        self.not_before = now;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_outlives_a_current_worker_that_dies_and_takes_the_slot() {
        let now = Instant::now();
        let (old, new) = (
            Worker::new(Pid::from_raw(1), now, 1),
            Worker::new(Pid::from_raw(2), now, 2),
        );
        let mut slot = Slot::empty(now);
        slot.fill(old);
        slot.begin_replacing(new);
        assert_eq!(slot.workers().count(), 2);
        assert_eq!(slot.take_worker().map(|w| w.pid), Some(old.pid), "the old one died");
        assert!(
            slot.worker().is_none() && !slot.is_empty(),
            "the slot waits for its replacement"
        );
        assert!(slot.promote(now).is_none(), "nothing left to retire");
        assert_eq!(slot.ready_pid(), Some(new.pid));
        assert_eq!(slot.take_worker().map(|w| w.pid), Some(new.pid));
        assert!(slot.is_empty());
        slot.vacate();
        assert!(slot.is_vacant() && slot.has_no_worker() && slot.worker().is_none());
        slot.reinstate(now);
        assert!(slot.is_empty());
    }

    #[test]
    fn a_failed_replacement_leaves_the_current_worker_in_place() {
        let now = Instant::now();
        let mut slot = Slot::empty(now);
        slot.fill(Worker::new(Pid::from_raw(1), now, 1));
        slot.begin_replacing(Worker::new(Pid::from_raw(2), now, 2));
        assert_eq!(slot.take_incoming().map(|w| w.pid), Some(Pid::from_raw(2)));
        assert_eq!(slot.worker().map(|w| w.pid), Some(Pid::from_raw(1)));
        assert!(slot.incoming().is_none());
    }
}
