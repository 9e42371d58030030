//! The scoreboard: shared memory made before the first fork, one fixed-size
//! record of atomics per live worker process. Workers write their own record (no
//! locks: each field has one writer); the master reads them all, to find hung
//! workers, and the admin views render them. A worker running a command (exec
//! mode) cannot write its record: the master writes it from what the command
//! says on the notify socket.
//!
//! Records are per process, not per slot: during a reload a slot has two live
//! workers. The master claims a free record for each spawn and clears it when the
//! process is reaped. The mapping is never unmapped (the kernel frees it with the
//! last process), so every process can hold it as `&'static`.

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};

use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
use nix::time::{clock_gettime, ClockId};

use super::traffic::{Snapshot, Traffic};

/// The `--workers` limit.
pub const SLOTS: usize = 4096;
/// Enough for every slot with a replacement booting, and as many retiring.
/// 472 bytes each; untouched pages cost nothing.
const RECORDS: usize = 4 * SLOTS;

/// What the master writes about the whole server.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Header {
    pub master_pid: AtomicU64,
    /// When the master started, in [`monotonic_ms`].
    pub started_ms: AtomicU64,
    /// Active slots (`--workers`, after TTIN/TTOU and reloads).
    pub workers: AtomicU64,
    pub generation: AtomicU64,
    /// Reloads done (HUP).
    pub reloads: AtomicU64,
    /// Bumped by the master after every wake-up in which it may have changed
    /// anything here (a spawn, an exit, a reload...): a view rendered under one
    /// value is stale once it moves.
    pub changes: AtomicU64,
    /// 1 once a stop has begun (with `--shutdown-delay`, before the drain):
    /// `/readyz` fails from then on.
    pub stopping: AtomicU64,
    /// The master's last wake-up, in [`monotonic_ms`]: it wakes at least every
    /// [`MASTER_BEAT`], so an older one means its loop is stuck (`/livez`).
    pub master_beat_ms: AtomicU64,
    /// How new connections reach the workers in fact (see [`SteeringMode`]).
    pub steering: AtomicU64,
    /// One past the highest slot a worker was ever claimed for: the slots
    /// whose sums may hold something.
    pub slots_used: AtomicU64,
    /// One past the highest record ever claimed: the views read no further,
    /// so a worker that renders them maps only the records in use (they are
    /// shared memory, and count in its resident size).
    records_used: AtomicU64,
    /// Odd while the master adds a reaped worker's traffic to its slot's sums
    /// (see [`Scoreboard::traffic_by_slot`]).
    folding: AtomicU64,
}

/// [`Header::steering`]: what `--balance` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum SteeringMode {
    /// The kernel's hash over per-slot sockets (`reuseport`).
    Hash = 0,
    /// The steering program is attached (`steered`).
    ByLoad = 1,
    /// A stalled worker's socket is lent (`lending`, or `steered` refused).
    Lending = 2,
    /// One socket for all (`shared`).
    Shared = 3,
}

impl SteeringMode {
    pub fn name(code: u64) -> &'static str {
        match code {
            1 => "steered by load",
            2 => "lending",
            3 => "shared",
            _ => "hash",
        }
    }
}

/// The master wakes at least this often, to stamp [`Header::master_beat_ms`].
pub const MASTER_BEAT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the master writes about one slot.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SlotStats {
    /// Workers of this slot that exited unexpectedly and were respawned.
    pub died: AtomicU64,
    /// Workers of this slot killed for missing their heartbeat (`--timeout`).
    pub timed_out: AtomicU64,
    /// Workers of this slot replaced gracefully (`--max-requests`, `--max-worker-memory`).
    pub recycled: AtomicU64,
    /// The last worker exit of this slot: 0 none, `1 << 32 | code`, `2 << 32 | signal`.
    pub last_exit: AtomicU64,
    /// Connections waiting in the accept queue of this slot's socket, as the
    /// master last measured it (`--balance steered` or `lending`: ten times a
    /// second; otherwise at its wake-ups).
    pub queue: AtomicU64,
    /// Connections the steering program sent to this slot's socket.
    pub steered: AtomicU64,
    /// 1 while its worker is stalled (its socket lent) or, a command, stopped.
    pub stalled: AtomicU64,
    /// The accept queue's limit (the backlog the kernel applies), measured with `queue`.
    pub backlog: AtomicU64,
    /// What the reaped workers of this slot served (the live ones' is in their records).
    reaped: Traffic,
}

/// The whole mapping.
#[repr(C)]
struct Board {
    header: Header,
    slots: [SlotStats; SLOTS],
    records: [Record; RECORDS],
}

/// One worker process. Zero everywhere means free.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Record {
    pub pid: AtomicU64,
    pub slot: AtomicU64,
    pub generation: AtomicU64,
    /// [`State`] as a number.
    pub state: AtomicU64,
    /// Last beat of the worker's runtime, in [`monotonic_ms`].
    pub heartbeat_ms: AtomicU64,
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    /// Requests in flight now.
    pub in_flight: AtomicU64,
    /// When the worker was spawned, in [`monotonic_ms`].
    pub started_ms: AtomicU64,
    /// What it served (not written for a command: the master cannot see its requests).
    pub traffic: Traffic,
    /// Exec mode: the last `STATUS=` the command sent, up to [`STATUS_BYTES`]
    /// bytes of UTF-8, zero-padded. Written by the master under `status_seq`
    /// (odd while a write is under way), read by the admin views.
    status: [AtomicU64; STATUS_WORDS],
    status_seq: AtomicU64,
}

const STATUS_WORDS: usize = 7;
/// The longest `STATUS=` text kept (longer ones are cut at a character boundary).
pub const STATUS_BYTES: usize = STATUS_WORDS * 8;

/// A heartbeat that is never stale: the record of a command that has not sent
/// `WATCHDOG=1` (`--timeout` does not judge it).
pub const NOT_WATCHED: u64 = u64::MAX;

/// What a worker is doing, as written in its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum State {
    Booting = 1,
    Ready = 2,
    Draining = 3,
}

pub struct Scoreboard {
    board: NonNull<Board>,
}

// SAFETY: the records are atomics only; sharing references between threads (there
// are none in the master, one runtime thread in a worker) is as safe as for any
// `AtomicU64`.
unsafe impl Sync for Scoreboard {}
// SAFETY: as above; the pointer is to memory that is never unmapped.
unsafe impl Send for Scoreboard {}

impl Scoreboard {
    /// Maps the shared memory. Call once, in the master, before any fork.
    pub fn create() -> io::Result<&'static Scoreboard> {
        let length = NonZeroUsize::new(size_of::<Board>()).expect("not zero");
        // SAFETY: a fresh anonymous mapping aliases nothing; it is zero-filled, and
        // all-zero bytes are a valid `Board` (atomics of 0). MAP_SHARED keeps it
        // shared with every process forked later.
        let memory = unsafe {
            mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )?
        };
        let board = Box::leak(Box::new(Scoreboard { board: memory.cast() }));
        board.header().master_pid.store(u64::from(std::process::id()), Relaxed);
        board.header().started_ms.store(monotonic_ms(), Relaxed);
        board.header().master_beat_ms.store(monotonic_ms(), Relaxed);
        Ok(board)
    }

    fn board(&self) -> &Board {
        // SAFETY: `board` points to an initialised (zeroed) `Board` that stays
        // mapped for the life of the process; only atomics are accessed.
        unsafe { self.board.as_ref() }
    }

    fn records(&self) -> &[Record] {
        &self.board().records
    }

    /// The records that were ever claimed.
    fn used(&self) -> &[Record] {
        let used = (self.header().records_used.load(Relaxed) as usize).min(RECORDS);
        &self.records()[..used]
    }

    pub fn header(&self) -> &Header {
        &self.board().header
    }

    pub fn slot(&self, slot: usize) -> &SlotStats {
        &self.board().slots[slot]
    }

    pub fn slots(&self) -> &[SlotStats] {
        &self.board().slots
    }

    /// Every live worker's record (a snapshot: each field is read on its own).
    pub fn live(&self) -> impl Iterator<Item = &Record> {
        self.used()
            .iter()
            .filter(|record| !matches!(record.pid.load(Relaxed), 0 | u64::MAX))
    }

    pub fn record(&self, index: usize) -> &Record {
        &self.records()[index]
    }

    /// Master: claims a free record for a worker about to be forked in `slot`.
    /// Its heartbeat starts now, so a worker that never beats still times out.
    pub fn claim(&self, slot: usize, generation: u32) -> Option<usize> {
        let index = self.records().iter().position(|record| record.pid.load(Relaxed) == 0)?;
        let record = &self.records()[index];
        record.pid.store(u64::MAX, Relaxed); // taken; the real pid follows the fork
        record.slot.store(slot as u64, Relaxed);
        record.generation.store(generation.into(), Relaxed);
        record.state.store(State::Booting as u64, Relaxed);
        record.heartbeat_ms.store(monotonic_ms(), Relaxed);
        record.requests.store(0, Relaxed);
        record.connections.store(0, Relaxed);
        record.in_flight.store(0, Relaxed);
        record.started_ms.store(monotonic_ms(), Relaxed);
        // `traffic` is zero: never used, or cleared by `release`.
        record.set_status("");
        self.header().slots_used.fetch_max(slot as u64 + 1, Relaxed);
        self.header().records_used.fetch_max(index as u64 + 1, Relaxed);
        Some(index)
    }

    /// Master: frees the record of a reaped worker, adding what it served to
    /// its slot's sums, so that the slot's counters never go back.
    pub fn release(&self, index: usize) {
        let record = &self.records()[index];
        let folding = &self.header().folding;
        let stats = self.slots().get(record.slot.load(Relaxed) as usize);
        folding.fetch_add(1, Ordering::Relaxed);
        // The stores below are seen after the odd count (a seqlock's writer).
        std::sync::atomic::fence(Ordering::Release);
        if let Some(stats) = stats {
            stats.reaped.add(&record.traffic.snapshot());
        }
        // Inside the fold: a reader sees the traffic in the record or in the
        // slot's sums, never in both, and the next worker's record starts
        // from nothing.
        record.traffic.clear();
        record.pid.store(0, Relaxed);
        folding.fetch_add(1, Ordering::Release);
    }

    /// What each slot served, its reaped workers and its live ones, up to
    /// the highest slot ever used. Read under `folding`, so that a worker
    /// being reaped is counted once, in its record or in its slot's sums, and
    /// a counter never seems to go back between two reads.
    pub fn traffic_by_slot(&self) -> Vec<Snapshot> {
        let header = self.header();
        let mut attempts = 0u32;
        loop {
            let before = header.folding.load(Ordering::Acquire);
            let slots = (header.slots_used.load(Relaxed) as usize).min(SLOTS);
            let mut sums: Vec<Snapshot> = self.slots()[..slots].iter().map(|s| s.reaped.snapshot()).collect();
            for record in self.live() {
                if let Some(sum) = sums.get_mut(record.slot.load(Relaxed) as usize) {
                    sum.add(&record.traffic.snapshot());
                }
            }
            std::sync::atomic::fence(Ordering::Acquire);
            // The master folds in microseconds; one stopped mid-fold (SIGSTOP)
            // must not hold this worker: past a few thousand tries, what
            // was read is shown.
            attempts += 1;
            if (before % 2 == 0 && header.folding.load(Relaxed) == before) || attempts >= 5_000 {
                return sums;
            }
            std::thread::yield_now();
        }
    }
}

impl Record {
    pub fn set_state(&self, state: State) {
        self.state.store(state as u64, Relaxed);
    }

    /// Keeps `text` as the worker's status (one writer: the master).
    pub fn set_status(&self, text: &str) {
        let mut end = text.len().min(STATUS_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; STATUS_BYTES];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        self.status_seq.fetch_add(1, Ordering::AcqRel);
        for (word, chunk) in self.status.iter().zip(bytes.chunks_exact(8)) {
            let chunk: [u8; 8] = chunk.try_into().expect("chunks of 8");
            word.store(u64::from_ne_bytes(chunk), Relaxed);
        }
        self.status_seq.fetch_add(1, Ordering::AcqRel);
    }

    /// The worker's status text; empty if it has none.
    pub fn status(&self) -> String {
        loop {
            let before = self.status_seq.load(Ordering::Acquire);
            let mut bytes = Vec::with_capacity(STATUS_BYTES);
            for word in &self.status {
                bytes.extend_from_slice(&word.load(Relaxed).to_ne_bytes());
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if before % 2 == 0 && self.status_seq.load(Relaxed) == before {
                let end = bytes.iter().position(|byte| *byte == 0).unwrap_or(bytes.len());
                return String::from_utf8_lossy(&bytes[..end]).into_owned();
            }
            std::hint::spin_loop();
        }
    }

    pub fn beat(&self) {
        self.heartbeat_ms.store(monotonic_ms(), Relaxed);
    }
}

/// `CLOCK_MONOTONIC` in milliseconds: the same clock in every process.
pub fn monotonic_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// `CLOCK_MONOTONIC` in ticks of 1,024 ns (see `traffic::TICK_NS`), for the
/// request path: the vDSO's clock (no system call), without `nix`'s `Result`
/// or `Instant`'s checks, and a shift for a division.
#[inline]
pub fn monotonic_ticks() -> u64 {
    let mut now = std::mem::MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: clock_gettime writes one timespec where `now` points; it cannot
    // fail for CLOCK_MONOTONIC and a valid pointer, so `now` is initialised.
    let now = unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, now.as_mut_ptr());
        now.assume_init()
    };
    (now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64) >> 10
}

/// `CLOCK_MONOTONIC` in ns: the clock of BPF's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always available");
    (now.tv_sec() as u64) * 1_000_000_000 + now.tv_nsec() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_claimed_released_and_shared_by_value() {
        let board = Scoreboard::create().unwrap();
        let first = board.claim(3, 2).unwrap();
        let second = board.claim(4, 2).unwrap();
        assert_ne!(first, second);
        let record = board.record(first);
        assert_eq!(record.slot.load(Relaxed), 3);
        assert_eq!(record.state.load(Relaxed), State::Booting as u64);
        assert!(monotonic_ms() - record.heartbeat_ms.load(Relaxed) < 1000);
        board.release(first);
        assert_eq!(board.claim(5, 2), Some(first), "a released record is reused");
    }

    #[test]
    fn a_reaped_workers_traffic_moves_to_its_slot_and_is_counted_once() {
        let board = Scoreboard::create().unwrap();
        let index = board.claim(1, 1).unwrap();
        let record = board.record(index);
        record.pid.store(4242, Relaxed);
        record.traffic.answered(200);
        record.traffic.duration.observe(10);
        let live = board.traffic_by_slot();
        assert_eq!(live.len(), 2, "slots 0 and 1");
        assert_eq!(live[1].duration.count(), 1);
        board.release(index);
        let reaped = board.traffic_by_slot();
        assert_eq!(reaped, live, "the same counts, now in the slot's sums");
        assert_eq!(
            record.traffic.snapshot(),
            Snapshot::default(),
            "the record starts again from nothing"
        );
        let next = board.claim(1, 2).unwrap();
        board.record(next).pid.store(4243, Relaxed);
        board.record(next).traffic.answered(500);
        let both = board.traffic_by_slot();
        assert_eq!(both[1].responses, [0, 1, 0, 0, 1]);
        assert_eq!(board.live().count(), 1, "only the records in use are read");
    }
}
