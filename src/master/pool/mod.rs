//! Slot bookkeeping as plain data: which slot needs a worker and when, what an
//! exit means, when to stop waiting. No syscalls; time is passed in, so the unit
//! tests need no sleeps. Reloads and resizing are in `change.rs`.

mod change;
mod slot;

pub use change::Timeouts;
use slot::{Slot, Worker};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// A worker that lived at least this long is respawned at once.
const RESPAWN_AT_ONCE_AFTER: Duration = Duration::from_secs(1);
/// First delay for a slot whose workers die young; doubles per failure...
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// ... up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker up this long clears its slot's failure count.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// A worker filling a slot that is not ready this long after `--ready-timeout`
/// is killed (its exit is a boot failure). The margin lets a worker that can
/// time its own setup (an async one) fail first, with its cause.
const LATE_BOOT_MARGIN: Duration = Duration::from_secs(1);

/// A worker that refused a slot's socket is asked again after this.
pub const ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);

/// The worker pool. A worker's identity is its slot number `0..N`, not its pid: a
/// respawned worker takes its slot (and the slot's socket).
#[derive(Debug)]
pub struct Pool {
    slots: Vec<Slot>,
    /// Workers that were told to stop and have not been reaped yet.
    retiring: Vec<Retiring>,
    stopping: bool,
    /// Has any worker ever reported ready? Until then, boot failures can halt.
    ever_ready: bool,
    /// Bumped by each reload; every worker records the one it was spawned in.
    generation: u32,
    reload: Option<change::Reload>,
    /// Slots whose workers asked to be replaced (`--max-requests`), in order.
    recycling: VecDeque<usize>,
    timeouts: Timeouts,
}

#[derive(Debug)]
struct Retiring {
    pid: Pid,
    slot: usize,
    spawned_at: Instant,
    kill_at: Instant,
    killed: bool,
}

impl Retiring {
    /// When it is to be killed, if it is not yet (see `Pool::overdue`).
    fn kill_deadline(&self) -> Option<Instant> {
        (!self.killed).then_some(self.kill_at)
    }
}

/// What a reaped pid was, and what the pool decided about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// A serving (or booting) worker died; its slot is respawned after `respawn_in`
    /// (`None` while stopping).
    Died {
        slot: usize,
        uptime: Duration,
        was_ready: bool,
        respawn_in: Option<Duration>,
    },
    /// A worker that was told to stop has exited.
    Retired { slot: usize, uptime: Duration },
    /// A reload's replacement exited before it was ready: the reload is aborted
    /// (the caller calls `abort_reload`), the old worker keeps serving.
    ReplacementFailed { slot: usize, uptime: Duration },
    /// Not one of ours (a worker's orphaned child, or a pid reaped twice).
    Unknown,
}

/// Why a worker is spawned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spawn {
    /// The slot has no worker.
    Fill,
    /// A reload replaces the slot's worker: the new one boots beside it.
    Replace,
}

/// What a worker's "ready" meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// It serves its slot.
    Serving { slot: usize },
    /// It replaced `old`, which must now drain (it was moved to retiring, with a
    /// deadline). `reload_done` once it was the last one.
    Replaced {
        slot: usize,
        old: Option<Pid>,
        reload_done: bool,
    },
}

impl Pool {
    pub fn new(workers: usize, now: Instant) -> Pool {
        Pool {
            slots: (0..workers).map(|_| Slot::empty(now)).collect(),
            retiring: Vec::new(),
            stopping: false,
            ever_ready: false,
            generation: 1,
            reload: None,
            recycling: VecDeque::new(),
            timeouts: Timeouts {
                ready: Duration::from_secs(30),
                drain: Duration::from_secs(30),
            },
        }
    }

    /// Active (not vacant) slots.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|slot| !slot.is_vacant()).count()
    }

    /// Every slot, vacant ones too: the number of sockets a reuseport pool uses.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// What to spawn now: empty active slots whose backoff has expired, and the
    /// next slots of a reload. Nothing while stopping.
    pub fn due(&mut self, now: Instant) -> Vec<(usize, Spawn)> {
        if self.stopping {
            return Vec::new();
        }
        let fill = |slot: &Slot| slot.respawn_at().is_some_and(|at| at <= now);
        let mut due: Vec<(usize, Spawn)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| fill(slot))
            .map(|(i, _)| (i, Spawn::Fill))
            .collect();
        due.extend(self.replacements_due().into_iter().map(|slot| (slot, Spawn::Replace)));
        due
    }

    pub fn on_spawned(&mut self, slot: usize, spawn: Spawn, pid: Pid, now: Instant) {
        let worker = Worker::new(pid, now, self.generation);
        match spawn {
            Spawn::Fill => self.slots[slot].fill(worker),
            Spawn::Replace => self.slots[slot].begin_replacing(worker),
        }
    }

    /// A fork for `slot` failed: retry it after the slot's next backoff step.
    pub fn on_spawn_failed(&mut self, slot: usize, now: Instant) -> Duration {
        let slot = &mut self.slots[slot];
        slot.failures += 1;
        let delay = backoff(slot.failures);
        slot.not_before = now + delay;
        delay
    }

    /// The worker reported ready (`None` if it had already, or is no worker).
    /// A reload's replacement takes over its slot here.
    pub fn on_ready(&mut self, pid: Pid, now: Instant) -> Option<Ready> {
        self.ever_ready = true;
        if let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.incoming().is_some_and(|w| w.pid == pid))
        {
            return Some(self.promote(slot, now));
        }
        let slot = self.slot_of(pid)?;
        let worker = self.slots[slot].worker_mut().expect("slot_of found a worker");
        // Said twice (a command's READY=1 after it was seen accepting): once is news.
        if worker.ready_at.is_some() {
            return None;
        }
        worker.ready_at = Some(now);
        Some(Ready::Serving { slot })
    }

    /// Records the exit of `pid` and decides when its slot is respawned.
    pub fn on_exit(&mut self, pid: Pid, now: Instant) -> Departure {
        for slot in &mut self.slots {
            if slot.adopter == Some(pid) {
                slot.adopter = None; // another sibling adopts it next
            }
        }
        if let Some(at) = self.retiring.iter().position(|r| r.pid == pid) {
            let retired = self.retiring.swap_remove(at);
            return Departure::Retired {
                slot: retired.slot,
                uptime: now.saturating_duration_since(retired.spawned_at),
            };
        }
        if let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.incoming().is_some_and(|w| w.pid == pid))
        {
            let incoming = self.slots[slot].take_incoming().expect("found above");
            return Departure::ReplacementFailed {
                slot,
                uptime: now.saturating_duration_since(incoming.spawned_at),
            };
        }
        let Some(index) = self.slot_of(pid) else {
            return Departure::Unknown;
        };
        let stopping = self.stopping;
        // Backoff protects the machine from a crash loop; it must not take the
        // whole service down when deaths come from outside (a kill storm, the
        // OOM killer): the last ready worker's slot is respawned at once, as
        // nginx respawns every worker. (Workers that die before they are ready
        // still back off in full: that is the crash loop, and the first
        // generation halts.)
        let others_ready = (0..self.slots.len()).any(|other| other != index && self.ready_pid(other).is_some());
        let slot = &mut self.slots[index];
        let worker = slot.take_worker().expect("slot_of found a worker");
        let uptime = now.saturating_duration_since(worker.spawned_at);
        let was_ready = worker.ready_at.is_some();
        if !was_ready {
            slot.boot_failures += 1;
        }
        if uptime >= BACKOFF_RESET_AFTER {
            slot.failures = 0;
        }
        let delay = if was_ready && uptime >= RESPAWN_AT_ONCE_AFTER {
            Duration::ZERO
        } else {
            slot.failures += 1;
            match was_ready && !others_ready {
                true => Duration::ZERO,
                false => backoff(slot.failures),
            }
        };
        slot.not_before = now + delay;
        Departure::Died {
            slot: index,
            uptime,
            was_ready,
            respawn_in: (!stopping).then_some(delay),
        }
    }

    /// Workers filling their slot that are not ready `--ready-timeout` (plus a
    /// margin) after their spawn; each is returned once. The caller kills them:
    /// their exits are boot failures (backoff, and a halt if the whole first
    /// generation fails). A setup that blocks never beats the heartbeat, so
    /// `--timeout` does not judge a worker before it is ready; this does.
    pub fn late_boots(&mut self, now: Instant) -> Vec<(usize, Pid)> {
        let limit = self.timeouts.ready + LATE_BOOT_MARGIN;
        let mut late = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if let Some(worker) = slot.worker_mut() {
                if worker.boot_deadline(limit).is_some_and(|at| at <= now) {
                    worker.late = true;
                    late.push((index, worker.pid));
                }
            }
        }
        late
    }

    /// Whether `pid` fills a slot and has reported ready.
    pub fn is_ready(&self, pid: Pid) -> bool {
        self.slots.iter().any(|slot| slot.ready_pid() == Some(pid))
    }

    /// True while `pid` is a slot's worker, or its replacement, not yet ready
    /// (not one that retires).
    pub fn is_booting(&self, pid: Pid) -> bool {
        self.slots.iter().any(|slot| {
            let booting = |worker: Option<Worker>| worker.is_some_and(|w| w.pid == pid && w.ready_at.is_none());
            booting(slot.worker()) || booting(slot.incoming())
        })
    }

    /// True when no worker has ever been ready and every slot has seen one exit
    /// before it was ready: respawning is pointless, the master should halt.
    pub fn first_generation_failed(&self) -> bool {
        !self.ever_ready && self.active().all(|slot| slot.boot_failures > 0)
    }

    /// True when every slot has a ready worker.
    pub fn all_ready(&self) -> bool {
        self.active().all(|slot| slot.ready_pid().is_some())
    }

    /// Stops spawning and retires every live worker: returns their pids, to be
    /// told to stop; each must be gone by `kill_at` (an earlier deadline already
    /// set is kept, so a fast stop can only shorten a graceful one).
    pub fn retire_all(&mut self, kill_at: Instant) -> Vec<Pid> {
        self.stopping = true;
        self.reload = None;
        for index in 0..self.slots.len() {
            self.slots[index].adopter = None; // every worker stops accepting anyway
            self.retire_slot(index, kill_at);
        }
        for retiring in &mut self.retiring {
            retiring.kill_at = retiring.kill_at.min(kill_at);
        }
        self.retiring.iter().map(|r| r.pid).collect()
    }

    /// A hung worker is being killed: it leaves its slot at once (retiring, due by
    /// `kill_at`) and the slot is respawned now. Returns the slot.
    pub fn retire_hung(&mut self, pid: Pid, now: Instant, kill_at: Instant) -> Option<usize> {
        let slot = self.slot_of(pid)?;
        let worker = self.slots[slot].take_worker()?;
        self.retire(slot, worker, kill_at);
        self.slots[slot].not_before = now;
        Some(slot)
    }

    /// Retires the worker of `slot` and its replacement, if any; returns their pids.
    fn retire_slot(&mut self, slot: usize, kill_at: Instant) -> Vec<Pid> {
        let current = &mut self.slots[slot];
        let workers: Vec<Worker> = [current.take_worker(), current.take_incoming()]
            .into_iter()
            .flatten()
            .collect();
        for worker in &workers {
            self.retire(slot, *worker, kill_at);
        }
        workers.iter().map(|worker| worker.pid).collect()
    }

    /// Moves `worker` of `slot` to the retiring list: it must exit by `kill_at`.
    fn retire(&mut self, slot: usize, worker: Worker, kill_at: Instant) {
        // A draining worker stops accepting: what it adopted needs another adopter.
        for other in &mut self.slots {
            if other.adopter == Some(worker.pid) {
                other.adopter = None;
            }
        }
        let spawned_at = worker.spawned_at;
        self.retiring.push(Retiring {
            pid: worker.pid,
            slot,
            spawned_at,
            kill_at,
            killed: false,
        });
    }

    /// Retiring workers past their deadline that have not been killed yet; each is
    /// returned once, with its slot.
    pub fn overdue(&mut self, now: Instant) -> Vec<(usize, Pid)> {
        let overdue = self
            .retiring
            .iter_mut()
            .filter(|r| r.kill_deadline().is_some_and(|at| at <= now));
        overdue
            .map(|r| {
                r.killed = true;
                (r.slot, r.pid)
            })
            .collect()
    }

    /// Gives every slot that has no ready worker (backing off, booting, or vacant)
    /// or a stalled one an adopter: a ready worker of another slot. Connections the kernel hashes
    /// to its socket would otherwise wait in its queue. The adopter is the ready
    /// worker with the fewest sockets so far (its own and those it adopted), the
    /// nearest following slot's among equals: the kernel spreads new connections
    /// evenly over the sockets, so the workers' shares stay even however many
    /// slots are vacant. Returns `(slot, adopter)` for each new adoption; none
    /// while stopping.
    pub fn adoptions(&mut self) -> Vec<(usize, Pid)> {
        if self.stopping {
            return Vec::new();
        }
        let n = self.slots.len();
        // Sockets per ready worker: its own, and those it adopted already.
        let mut sockets: Vec<(Pid, usize)> = (0..n)
            .filter_map(|slot| self.serving_pid(slot))
            .map(|pid| (pid, 1))
            .collect();
        for slot in &self.slots {
            if let Some(entry) = sockets.iter_mut().find(|(pid, _)| Some(*pid) == slot.adopter) {
                entry.1 += 1;
            }
        }
        let mut adopted = Vec::new();
        for index in 0..n {
            if self.slots[index].adopter.is_some() || self.serving_pid(index).is_some() {
                continue;
            }
            let refused = &self.slots[index].refused_by;
            let candidates = (1..n)
                .map(|step| (index + step) % n)
                .filter_map(|other| self.serving_pid(other));
            let least = candidates
                .filter(|pid| !refused.iter().any(|(by, _)| by == pid))
                .min_by_key(|pid| {
                    sockets
                        .iter()
                        .find(|(ready, _)| ready == pid)
                        .map_or(usize::MAX, |(_, count)| *count)
                });
            if let Some(pid) = least {
                if let Some(entry) = sockets.iter_mut().find(|(ready, _)| *ready == pid) {
                    entry.1 += 1;
                }
                self.slots[index].adopter = Some(pid);
                adopted.push((index, pid));
            }
        }
        adopted
    }

    /// `pid` could not take `slot`'s socket (at its file limit, say) at
    /// `now`: the slot has no adopter again, and the next one is another
    /// worker. False if `pid` was not its adopter.
    pub fn adoption_refused(&mut self, slot: usize, pid: Pid, now: Instant) -> bool {
        let Some(slot) = self.slots.get_mut(slot) else {
            return false;
        };
        if slot.adopter != Some(pid) {
            return false;
        }
        slot.adopter = None;
        slot.refused_by.push((pid, now));
        true
    }

    /// Forgets refusals older than [`ASK_AGAIN_AFTER`] as of `now`: a worker
    /// that was at its file limit may have room now, and a socket must not be
    /// left without a taker because everyone once refused it.
    pub fn ask_again(&mut self, now: Instant) {
        for slot in &mut self.slots {
            slot.refused_by
                .retain(|(_, at)| now.saturating_duration_since(*at) < ASK_AGAIN_AFTER);
        }
    }

    /// Slots that have a ready worker again, and slots whose adopter has
    /// stalled itself (the next `adoptions` finds them another):
    /// `(slot, adopter)` to release.
    pub fn releases(&mut self) -> Vec<(usize, Pid)> {
        let stalled: Vec<Pid> = (self.slots.iter())
            .filter(|slot| slot.stalled)
            .filter_map(Slot::ready_pid)
            .collect();
        let mut released = Vec::new();
        for index in 0..self.slots.len() {
            let serving = self.serving_pid(index).is_some();
            if serving {
                self.slots[index].refused_by.clear();
            }
            let adopter_stalled = self.slots[index].adopter.is_some_and(|pid| stalled.contains(&pid));
            if serving || adopter_stalled {
                if let Some(pid) = self.slots[index].adopter.take() {
                    released.push((index, pid));
                }
            }
        }
        released
    }

    fn ready_pid(&self, slot: usize) -> Option<Pid> {
        self.slots[slot].ready_pid()
    }

    /// Its ready worker, unless that worker is stalled.
    fn serving_pid(&self, slot: usize) -> Option<Pid> {
        let slot = &self.slots[slot];
        slot.ready_pid().filter(|_| !slot.stalled)
    }

    /// Each slot with a ready worker: the slot, the worker, whether it is
    /// marked stalled.
    pub fn ready_workers(&self) -> Vec<(usize, Pid, bool)> {
        let slots = self.slots.iter().enumerate();
        slots
            .filter_map(|(index, slot)| Some((index, slot.ready_pid()?, slot.stalled)))
            .collect()
    }

    /// Marks `slot`'s ready worker as stalled or not (see `Slot::stalled`);
    /// the next `adoptions` or `releases` acts on it. A worker that leaves
    /// its slot, or is replaced, takes the mark with it.
    pub fn set_stalled(&mut self, slot: usize, stalled: bool) {
        if let Some(slot) = self.slots.get_mut(slot) {
            slot.stalled = stalled && slot.ready_pid().is_some();
        }
    }

    /// The slots whose ready worker is marked stalled.
    pub fn stalled(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|&slot| self.slots[slot].stalled).collect()
    }

    /// Every live worker: serving, booting as a replacement, or retiring.
    pub fn pids(&self) -> Vec<Pid> {
        let slots = self.slots.iter().flat_map(Slot::workers).map(|w| w.pid);
        slots.chain(self.retiring.iter().map(|r| r.pid)).collect()
    }

    /// Forgets the vacant slots (always the highest ones): their sockets are going
    /// away with the old listeners after a change of address.
    pub fn drop_vacant(&mut self) {
        while self.slots.last().is_some_and(Slot::is_vacant) {
            self.slots.pop();
        }
    }

    /// No worker is alive (all reaped).
    pub fn is_empty(&self) -> bool {
        self.retiring.is_empty() && self.slots.iter().all(Slot::has_no_worker)
    }

    /// How long the master may sleep before something is due: a respawn or a kill.
    pub fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        // Each deadline as the code that acts on it states it (`due`,
        // `overdue`, `late_replacement`, `late_boots`, `ask_again`).
        let respawns = self
            .slots
            .iter()
            .filter(|_| !self.stopping)
            .filter_map(Slot::respawn_at);
        let kills = self.retiring.iter().filter_map(Retiring::kill_deadline);
        let ready_deadlines = self.replacement_deadlines();
        let limit = self.timeouts.ready + LATE_BOOT_MARGIN;
        let boot_deadlines = self
            .slots
            .iter()
            .filter_map(Slot::worker)
            .filter_map(|w| w.boot_deadline(limit));
        let asks = self
            .slots
            .iter()
            .flat_map(|slot| &slot.refused_by)
            .map(|(_, at)| *at + ASK_AGAIN_AFTER);
        respawns
            .chain(kills)
            .chain(ready_deadlines)
            .chain(boot_deadlines)
            .chain(asks)
            .min()
            .map(|at| at.saturating_duration_since(now))
    }

    fn active(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(|slot| !slot.is_vacant())
    }

    pub fn slot_of(&self, pid: Pid) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.worker().is_some_and(|w| w.pid == pid))
    }
}

/// 100 ms, 200 ms, 400 ms ... capped at 10 s, for the `failures`-th young death.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_FIRST * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests;
