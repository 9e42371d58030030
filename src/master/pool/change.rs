//! Changing a running pool without dropping anything: the rolling reload (each
//! slot gets a new worker, ready before the old one drains), recycling (the same
//! for one slot whose worker asked, one at a time) and resizing (TTIN / TTOU vacate
//! and reinstate slots; a vacant slot's socket stays open).

use super::*;

/// A reload in progress.
#[derive(Debug)]
pub(super) struct Reload {
    /// Slots still to replace, in order.
    queue: VecDeque<usize>,
    /// How many replacements may boot at once.
    batch: usize,
}

/// How long replacements (reload or recycle) may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A replacement not ready this long after its spawn is given up.
    pub ready: Duration,
    /// How long a replaced worker may drain before it is killed.
    pub drain: Duration,
}

impl Pool {
    /// Starts a reload of every active slot, `batch` at a time, in a new
    /// generation. A reload already running is restarted from the first slot (its
    /// booting replacements finish and take their slots).
    pub fn begin_reload(&mut self, batch: usize, timeouts: Timeouts) {
        self.generation += 1;
        self.timeouts = timeouts;
        let queue = (0..self.slots.len()).filter(|&i| !self.slots[i].is_vacant()).collect();
        self.reload = Some(Reload {
            queue,
            batch: batch.max(1),
        });
    }

    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The worker `pid` asked to be recycled (it served its quota): its slot is
    /// queued for a replacement. Returns the slot, unless it is already queued.
    pub fn recycle(&mut self, pid: Pid) -> Option<usize> {
        let slot = self.slot_of(pid)?;
        let replacing = self.slots[slot].incoming().is_some();
        (!replacing && !self.recycling.contains(&slot)).then(|| {
            self.recycling.push_back(slot);
            slot
        })
    }

    pub fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    /// The next slots to replace: up to the batch size during a reload; otherwise
    /// one recycled slot at a time, so recycling never takes several slots at once.
    /// A slot with no ready worker is skipped (its next worker is new anyway).
    pub(super) fn replacements_due(&mut self) -> Vec<usize> {
        let mut booting = self.slots.iter().filter(|slot| slot.incoming().is_some()).count();
        let generation = self.generation;
        let replaceable = |slot: &Slot, older_only: bool| {
            let serving = slot
                .worker()
                .is_some_and(|w| w.is_ready() && (!older_only || w.generation < generation));
            serving && slot.incoming().is_none()
        };
        let (queue, batch, older_only) = match &mut self.reload {
            Some(reload) => (&mut reload.queue, reload.batch, true),
            None => (&mut self.recycling, 1, false),
        };
        let mut due = Vec::new();
        while booting < batch {
            let Some(slot) = queue.pop_front() else { break };
            if replaceable(&self.slots[slot], older_only) {
                due.push(slot);
                booting += 1;
            }
        }
        due
    }

    /// When each booting replacement must be ready.
    pub(super) fn replacement_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        let timeout = self.timeouts.ready;
        self.slots
            .iter()
            .filter_map(move |slot| Some(slot.incoming()?.replacement_deadline(timeout)))
    }

    /// A replacement that missed `--ready-timeout`, if any.
    pub fn late_replacement(&self, now: Instant) -> Option<(usize, Pid)> {
        let timeout = self.timeouts.ready;
        let late = |slot: &Slot| slot.incoming().filter(|w| w.replacement_deadline(timeout) <= now);
        self.slots
            .iter()
            .enumerate()
            .find_map(|(index, slot)| late(slot).map(|w| (index, w.pid)))
    }

    /// The replacement of `slot` is ready: it takes the slot; the old worker retires.
    pub(super) fn promote(&mut self, slot: usize, now: Instant) -> Ready {
        let drain_for = self.timeouts.drain;
        let old = self.slots[slot].promote(now);
        if let Some(old) = old {
            self.retire(slot, old, now + drain_for);
        }
        Ready::Replaced {
            slot,
            old: old.map(|w| w.pid),
            reload_done: self.reload_settled(),
        }
    }

    /// Ends the reload once nothing is left to replace and nothing is booting;
    /// true when this call ended it. Called after every promotion, and on every
    /// wake-up: a slot vacated during the reload (a HUP that lowers `workers`) is
    /// skipped, never promoted, and may be the last one queued.
    pub fn reload_settled(&mut self) -> bool {
        // Slots are walked only while a reload's queue is empty.
        let done = self.reload.as_ref().is_some_and(|reload| reload.queue.is_empty())
            && !self.slots.iter().any(|slot| slot.incoming().is_some());
        if done {
            self.reload = None;
        }
        done
    }

    /// Ends the reload where it stands: slots already replaced keep their new
    /// workers, the others keep their old ones. Returns the booting replacements,
    /// which must be stopped (they are retiring now, due by `kill_at`).
    pub fn abort_reload(&mut self, kill_at: Instant) -> Vec<Pid> {
        self.reload = None;
        self.recycling.clear();
        let mut stopped = Vec::new();
        for index in 0..self.slots.len() {
            if let Some(incoming) = self.slots[index].take_incoming() {
                stopped.push(incoming.pid);
                self.retire(index, incoming, kill_at);
            }
        }
        stopped
    }

    /// Makes the pool `workers` slots large: reinstates vacant slots (or adds new
    /// ones, returned so their sockets can be bound) to grow; vacates the highest
    /// active slots to shrink, retiring their workers (due by `kill_at`). Returns
    /// `(new slots, retired pids)`.
    pub fn resize(&mut self, workers: usize, now: Instant, kill_at: Instant) -> (Vec<usize>, Vec<Pid>) {
        let (mut added, mut retired) = (Vec::new(), Vec::new());
        while self.len() < workers {
            match self.slots.iter().position(Slot::is_vacant) {
                Some(index) => self.slots[index].reinstate(now),
                None => {
                    self.slots.push(Slot::empty(now));
                    added.push(self.slots.len() - 1);
                }
            }
        }
        while self.len() > workers.max(1) {
            let index = self
                .slots
                .iter()
                .rposition(|slot| !slot.is_vacant())
                .expect("more than one active slot");
            retired.extend(self.retire_slot(index, kill_at));
            self.slots[index].vacate();
        }
        (added, retired)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{pid, ready_pool};
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const TIMEOUTS: Timeouts = Timeouts {
        ready: Duration::from_secs(10),
        drain: Duration::from_secs(30),
    };

    #[test]
    fn a_reload_replaces_slot_by_slot_new_worker_ready_first() {
        let now = Instant::now();
        let mut pool = ready_pool(2, now);
        pool.begin_reload(1, TIMEOUTS);
        assert_eq!(pool.due(now), [(0, Spawn::Replace)], "one at a time");
        pool.on_spawned(0, Spawn::Replace, pid(200), now);
        assert!(pool.due(now).is_empty(), "the next waits for this one");
        assert_eq!(pool.slot_of(pid(100)), Some(0), "the old worker serves until then");
        let ready = pool.on_ready(pid(200), now);
        assert_eq!(
            ready,
            Some(Ready::Replaced {
                slot: 0,
                old: Some(pid(100)),
                reload_done: false
            })
        );
        assert_eq!(pool.slot_of(pid(200)), Some(0));
        assert!(matches!(
            pool.on_exit(pid(100), now),
            Departure::Retired { slot: 0, .. }
        ));
        assert_eq!(pool.due(now), [(1, Spawn::Replace)]);
        pool.on_spawned(1, Spawn::Replace, pid(201), now);
        let ready = pool.on_ready(pid(201), now);
        assert_eq!(
            ready,
            Some(Ready::Replaced {
                slot: 1,
                old: Some(pid(101)),
                reload_done: true
            })
        );
        assert!(!pool.reloading());
        assert_eq!(pool.generation(), 2);
    }

    #[test]
    fn a_reload_that_vacates_its_last_queued_slot_still_settles() {
        let now = Instant::now();
        let mut pool = ready_pool(3, now);
        pool.begin_reload(1, TIMEOUTS);
        pool.resize(2, now, now + SECOND); // the reload's HUP also lowered `workers`
        for (slot, n) in [(0, 200), (1, 201)] {
            assert_eq!(pool.due(now), [(slot, Spawn::Replace)]);
            pool.on_spawned(slot, Spawn::Replace, pid(n), now);
            pool.on_ready(pid(n), now);
        }
        assert!(pool.due(now).is_empty(), "the vacant slot 2 is skipped");
        assert!(pool.reload_settled(), "and the reload ends there");
        assert!(!pool.reloading());
        assert!(!pool.reload_settled(), "once");
    }

    #[test]
    fn the_batch_size_bounds_the_replacements_booting_at_once() {
        let now = Instant::now();
        let mut pool = ready_pool(3, now);
        pool.begin_reload(2, TIMEOUTS);
        assert_eq!(pool.due(now), [(0, Spawn::Replace), (1, Spawn::Replace)]);
    }

    #[test]
    fn a_replacement_that_dies_or_is_late_aborts_and_the_old_workers_stay() {
        let now = Instant::now();
        let mut pool = ready_pool(2, now);
        pool.begin_reload(1, TIMEOUTS);
        pool.due(now);
        pool.on_spawned(0, Spawn::Replace, pid(200), now);
        assert!(matches!(
            pool.on_exit(pid(200), now),
            Departure::ReplacementFailed { slot: 0, .. }
        ));
        assert!(pool.abort_reload(now).is_empty(), "nothing else was booting");
        assert_eq!(pool.slot_of(pid(100)), Some(0), "the old worker keeps its slot");
        assert!(pool.due(now).is_empty(), "no respawn, no further replacement");

        pool.begin_reload(1, TIMEOUTS);
        pool.due(now);
        pool.on_spawned(0, Spawn::Replace, pid(300), now);
        assert_eq!(pool.next_wakeup(now), Some(10 * SECOND));
        assert_eq!(pool.late_replacement(now + 9 * SECOND), None);
        assert_eq!(pool.late_replacement(now + 10 * SECOND), Some((0, pid(300))));
        assert_eq!(pool.abort_reload(now + 10 * SECOND), [pid(300)]);
        assert!(matches!(pool.on_exit(pid(300), now), Departure::Retired { .. }));
        assert_eq!(pool.slot_of(pid(100)), Some(0));
    }

    #[test]
    fn recycling_replaces_one_slot_at_a_time_ready_first() {
        let now = Instant::now();
        let mut pool = ready_pool(3, now);
        pool.set_timeouts(TIMEOUTS);
        assert_eq!(pool.recycle(pid(100)), Some(0));
        assert_eq!(pool.recycle(pid(100)), None, "asked twice, queued once");
        assert_eq!(pool.recycle(pid(101)), Some(1));
        assert_eq!(pool.due(now), [(0, Spawn::Replace)], "one at a time");
        pool.on_spawned(0, Spawn::Replace, pid(200), now);
        assert!(pool.due(now).is_empty());
        let ready = pool.on_ready(pid(200), now);
        assert_eq!(
            ready,
            Some(Ready::Replaced {
                slot: 0,
                old: Some(pid(100)),
                reload_done: false
            })
        );
        assert_eq!(pool.due(now), [(1, Spawn::Replace)]);
        assert_eq!(pool.generation(), 1, "recycling is not a reload");
    }

    #[test]
    fn shrinking_vacates_slots_whose_sockets_stay_adopted_and_growing_reinstates_them() {
        let now = Instant::now();
        let mut pool = ready_pool(3, now);
        let (added, retired) = pool.resize(2, now, now + SECOND);
        assert_eq!((added, retired), (vec![], vec![pid(102)]));
        assert_eq!(pool.len(), 2);
        assert!(pool.all_ready());
        assert_eq!(
            pool.adoptions(),
            [(2, pid(100))],
            "the vacant slot's socket keeps being served"
        );
        assert_eq!(pool.resize(1, now, now).1, [pid(101)]);
        assert_eq!(pool.resize(0, now, now).1, [], "never below one");

        let (added, _) = pool.resize(4, now, now);
        assert_eq!(added, [3], "vacant slots come back first, then new ones");
        assert_eq!(pool.due(now), [(1, Spawn::Fill), (2, Spawn::Fill), (3, Spawn::Fill)]);
    }

    /// 2 -> 52 -> 2 workers: the 50 vacant slots' sockets are spread over the two
    /// workers (25 each), not all adopted by one, so each takes half of the new
    /// connections the kernel spreads over the 52 sockets.
    #[test]
    fn vacant_slots_sockets_are_spread_evenly_over_the_ready_workers() {
        let now = Instant::now();
        let mut pool = ready_pool(52, now);
        pool.resize(2, now, now + SECOND);
        let adoptions = pool.adoptions();
        assert_eq!(adoptions.len(), 50);
        let by = |worker| adoptions.iter().filter(|(_, pid)| *pid == worker).count();
        assert_eq!((by(pid(100)), by(pid(101))), (25, 25), "{adoptions:?}");
        // A third worker (TTIN) takes a vacant slot back: its adopter releases
        // it, and the later adoptions keep counting what each worker holds.
        pool.resize(3, now, now);
        let slot = pool.due(now)[0].0;
        pool.on_spawned(slot, Spawn::Fill, pid(300), now);
        pool.on_ready(pid(300), now);
        assert_eq!(pool.releases().len(), 1);
        assert!(
            pool.adoptions().is_empty(),
            "every other vacant slot's socket keeps its adopter"
        );
    }
}
