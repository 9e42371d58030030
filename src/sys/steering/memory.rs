//! The memory the steering program reads for each new connection: which
//! slots may take connections (written by the master), and each slot's load
//! (written by its worker, without a system call; for a command, by the
//! master from its socket's queue). It is the one element of a `BPF_F_MMAPABLE`
//! array map, mapped shared before the first fork, so every worker writes
//! its slot's part directly.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::Release};

/// The most slots steered (the `--workers` limit).
pub const MAX_SLOTS: usize = crate::sys::scoreboard::SLOTS;

/// The layout's version, in [`Header::magic`]: a new master that inherits
/// memory of another layout (an upgrade across versions) does not use it.
pub const MAGIC: u32 = 0x5354_4531;

/// What the master writes for the whole group.
#[repr(C)]
pub struct Header {
    /// How many slots are listed (0: nothing is steered; the kernel's hash).
    pub count: AtomicU32,
    pub magic: AtomicU32,
    /// A heartbeat older than this is stale, in ns.
    pub stall_ns: AtomicU64,
    /// Connections the program could not steer (the chosen socket not in the
    /// map): the kernel's hash placed them.
    pub unselected: AtomicU64,
    reserved: [AtomicU64; 5],
}

/// One slot's load, as the program scores it. A cache line of its own: its
/// worker writes it on every request, the program on every new connection.
#[repr(C, align(64))]
pub struct SlotLoad {
    /// Requests its worker has in flight.
    pub in_flight: AtomicU32,
    /// Connections its worker has open (ties between equal loads go to fewer).
    pub connections: AtomicU32,
    /// Its worker's last heartbeat, `CLOCK_MONOTONIC` in ns (the program's
    /// clock); [`NEVER_STALE`] for a command, which does not beat.
    pub beat_ns: AtomicU64,
    /// Connections the program has sent to its socket (it adds them).
    pub steered: AtomicU64,
    /// Connections its worker has taken from the socket's queue; set to
    /// `steered` whenever the queue is found empty, so that connections that
    /// never arrived (a SYN without its handshake) are not counted forever.
    pub taken: AtomicU64,
    reserved: [AtomicU64; 4],
}

/// A heartbeat that is never stale (a command's: the master measures it).
pub const NEVER_STALE: u64 = i64::MAX as u64;

/// The whole element: the master's part (header and list), then, from a page
/// boundary, the workers' (each slot's load), so that a worker can make the
/// master's part read-only in its own mapping (see [`Shared::protect_for_worker`]).
#[repr(C)]
pub struct Shared {
    pub header: Header,
    /// The slots that may take connections, `count` of them.
    pub list: [AtomicU32; MAX_SLOTS],
    to_page: [u8; PAGE - (size_of::<Header>() + 4 * MAX_SLOTS) % PAGE],
    pub slots: [SlotLoad; MAX_SLOTS],
}

const PAGE: usize = 4096;

// The program computes a slot's address as `index << 6`, and reads the list at 64.
const _: () = assert!(size_of::<SlotLoad>() == 64);
const _: () = assert!(offset_of!(Shared, slots) % PAGE == 0);
// The program's offsets into the element are 16-bit.
const _: () = assert!(offset_of!(Shared, slots) + size_of::<SlotLoad>() < i16::MAX as usize);
const _: () = assert!(offset_of!(Shared, list) == 64);

/// The size of the element, the map's value size.
pub const SIZE: usize = size_of::<Shared>();

impl Shared {
    /// Lists `slots` as the ones that may take connections (at most
    /// [`MAX_SLOTS`]). The places are written before the count, so the program
    /// never reads a place not yet written.
    pub fn publish(&self, slots: &[usize]) {
        let slots = &slots[..slots.len().min(MAX_SLOTS)];
        let shorter = (slots.len() as u32) < self.header.count.load(Relaxed);
        if shorter {
            self.header.count.store(slots.len() as u32, Release);
        }
        for (place, slot) in self.list.iter().zip(slots) {
            place.store(*slot as u32, Relaxed);
        }
        self.header.count.store(slots.len() as u32, Release);
    }

    /// The slots listed now.
    pub fn listed(&self) -> Vec<usize> {
        let count = (self.header.count.load(Relaxed) as usize).min(MAX_SLOTS);
        self.list[..count]
            .iter()
            .map(|slot| slot.load(Relaxed) as usize)
            .collect()
    }

    /// In a worker, right after the fork: the master's part of this
    /// process's mapping becomes read-only, so that a worker (its app's code
    /// included) cannot change which slots are listed, only write loads.
    pub fn protect_for_worker(&self) {
        let start = (self as *const Shared).cast_mut().cast::<libc::c_void>();
        // SAFETY: `start` is the page-aligned start of this mapping (an mmap
        // result), and `offset_of!(Shared, slots)` bytes of it are mapped; the
        // master's part is only read through atomics in a worker afterwards.
        let rc = unsafe { libc::mprotect(start, offset_of!(Shared, slots), libc::PROT_READ) };
        if rc != 0 {
            crate::log::debug!(
                "cannot make the steering list read-only: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// `slot`'s part; `None` past the steered slots.
    pub fn slot(&'static self, slot: usize) -> Option<&'static SlotLoad> {
        self.slots.get(slot)
    }
}

impl SlotLoad {
    /// A new worker of the slot starts: nothing in flight, nothing queued that
    /// it knows of, a fresh heartbeat.
    pub fn start(&self) {
        self.in_flight.store(0, Relaxed);
        self.connections.store(0, Relaxed);
        self.taken.store(self.steered.load(Relaxed), Relaxed);
        self.beat();
    }

    pub fn beat(&self) {
        self.beat_ns.store(crate::sys::scoreboard::monotonic_ns(), Relaxed);
    }

    pub fn set_in_flight(&self, requests: u32) {
        self.in_flight.store(requests, Relaxed);
    }

    pub fn set_connections(&self, open: usize) {
        self.connections.store(u32::try_from(open).unwrap_or(u32::MAX), Relaxed);
    }

    /// One connection taken from the socket's queue. (A load and a store: the
    /// slot's serving worker is the only writer; another one draining beside
    /// it may lose a count, which the next empty queue corrects.)
    pub fn took_one(&self) {
        self.taken.store(self.taken.load(Relaxed) + 1, Relaxed);
    }

    /// The socket's queue was found empty: everything steered there was taken.
    pub fn queue_empty(&self) {
        self.taken.store(self.steered.load(Relaxed), Relaxed);
    }

    /// A command's load, measured by the master: `queue` connections wait in
    /// its socket's queue; what it has in flight is not known.
    pub fn measured(&self, queue: u64) {
        self.taken
            .store(self.steered.load(Relaxed).saturating_sub(queue), Relaxed);
        self.in_flight.store(0, Relaxed);
        self.beat_ns.store(NEVER_STALE, Relaxed);
    }

    /// Connections steered here and not taken yet, as the program counts them.
    #[cfg(test)]
    pub fn queued(&self) -> u64 {
        self.steered.load(Relaxed).saturating_sub(self.taken.load(Relaxed))
    }
}
