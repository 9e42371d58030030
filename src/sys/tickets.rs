//! The session-ticket keys, on a page of shared memory the master writes and
//! every worker reads, so that a ticket one worker sealed opens on every other:
//! a returning client resumes wherever the kernel or the steering places it.
//!
//! The page is a memfd, not an anonymous mapping, so that it can be handed to
//! a new master on USR2 (`PREFORK_TICKETS_FD`): the new master maps the same
//! page, its workers read the keys the old ones seal with, and tickets issued
//! before the upgrade still resume after it. It is never on disk.
//!
//! One master writes at a time (the one serving; a new master writes only
//! once it has taken over), under a sequence lock: the count is odd while a
//! write is under way, and a reader that sees it change reads again. A reader
//! never waits on the writer: after a few tries it gives up (no ticket sealed,
//! or a full handshake instead of a resumption), so a master killed in the
//! middle of a write cannot stall a worker.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{fence, AtomicU32, AtomicU64};

use nix::sys::mman::{mmap, MapFlags, ProtFlags};

use crate::tls::TICKET_KEY_LEN;

/// At most this many keys are accepted at once: the one that seals and three
/// more (the previous in-memory key, or the other `--tls-ticket-key` files).
pub const MAX_KEYS: usize = 4;
const WORDS: usize = TICKET_KEY_LEN / 8;
const MAGIC: u64 = u64::from_le_bytes(*b"pftick01");
/// A read that sees a write under way this many times gives up.
const READ_TRIES: usize = 64;
/// The mapping: one page.
const SIZE: usize = 4096;

/// The keys, as the page holds them.
#[repr(C)]
pub struct TicketKeys {
    magic: AtomicU64,
    /// Odd while the master writes.
    sequence: AtomicU64,
    /// When the master last made a key, in seconds since the epoch (the clock
    /// a new master shares); 0 when the keys came from files.
    made_at: AtomicU64,
    /// What tickets tell the client of their lifetime, in seconds.
    lifetime: AtomicU32,
    count: AtomicU32,
    keys: [[AtomicU64; WORDS]; MAX_KEYS],
}

const _: () = assert!(std::mem::size_of::<TicketKeys>() <= SIZE);

/// The keys as one read saw them.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// The first seals; every one opens.
    pub keys: Vec<[u8; TICKET_KEY_LEN]>,
    pub lifetime: u32,
    /// See [`TicketKeys::made_at`]: 0 for keys from files.
    pub made_at: u64,
}

impl TicketKeys {
    /// The keys now; `None` if a write kept being under way (see the module doc).
    pub fn read(&self) -> Option<Keys> {
        for _ in 0..READ_TRIES {
            let before = self.sequence.load(Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let count = (self.count.load(Relaxed) as usize).min(MAX_KEYS);
            let keys = self.keys[..count].iter().map(unpack).collect();
            let lifetime = self.lifetime.load(Relaxed);
            let made_at = self.made_at.load(Relaxed);
            fence(Acquire);
            if self.sequence.load(Relaxed) == before {
                return Some(Keys {
                    keys,
                    lifetime,
                    made_at,
                });
            }
        }
        None
    }

    /// Replaces the keys (the master's, one writer at a time). At most
    /// [`MAX_KEYS`] are kept, the first ones.
    pub fn write(&self, keys: &Keys) {
        // Odd: a reader that started before sees the change; one that starts
        // now waits. (A count left odd by a master killed mid-write is made
        // even by this write's end all the same.)
        let odd = self.sequence.load(Relaxed) | 1;
        self.sequence.store(odd, Relaxed);
        fence(Release);
        let count = keys.keys.len().min(MAX_KEYS);
        // The slots past `count` are zeroed: a retired key does not stay here.
        let none = [0u8; TICKET_KEY_LEN];
        for (index, slot) in self.keys.iter().enumerate() {
            pack(slot, keys.keys[..count].get(index).unwrap_or(&none));
        }
        self.count.store(count as u32, Relaxed);
        self.lifetime.store(keys.lifetime, Relaxed);
        self.made_at.store(keys.made_at, Relaxed);
        self.sequence.store(odd.wrapping_add(1), Release);
    }
}

fn unpack(words: &[AtomicU64; WORDS]) -> [u8; TICKET_KEY_LEN] {
    let mut key = [0u8; TICKET_KEY_LEN];
    for (chunk, word) in key.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.load(Relaxed).to_ne_bytes());
    }
    key
}

fn pack(words: &[AtomicU64; WORDS], key: &[u8; TICKET_KEY_LEN]) {
    for (chunk, word) in key.chunks_exact(8).zip(words) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        word.store(u64::from_ne_bytes(bytes), Relaxed);
    }
}

/// The page, mapped, and the memfd behind it (handed on at an upgrade).
pub struct TicketMemory {
    keys: &'static TicketKeys,
    /// `None` where memfds are not allowed (a seccomp filter): an anonymous
    /// shared page then, which a new master cannot take over.
    fd: Option<OwnedFd>,
}

impl TicketMemory {
    /// A new page, no key in it yet.
    pub fn create() -> io::Result<TicketMemory> {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        let memory = match memfd_create("prefork-server-tickets", MFdFlags::MFD_CLOEXEC) {
            Ok(fd) => {
                nix::unistd::ftruncate(&fd, SIZE as i64)?;
                TicketMemory::map(fd)?
            }
            Err(err) => {
                crate::log::debug!("no memfd for the ticket keys ({err}): an anonymous page, kept by this master only");
                TicketMemory::anonymous()?
            }
        };
        memory.keys.magic.store(MAGIC, Release);
        Ok(memory)
    }

    fn anonymous() -> io::Result<TicketMemory> {
        let length = NonZeroUsize::new(SIZE).expect("a page is not 0 bytes");
        // SAFETY: a fresh anonymous shared mapping of one page, never unmapped
        // (the reference is 'static); zeros are a valid `TicketKeys` (see `map`).
        let keys = unsafe {
            let start = nix::sys::mman::mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )?;
            &*start.as_ptr().cast::<TicketKeys>()
        };
        Ok(TicketMemory { keys, fd: None })
    }

    /// The page an old master handed over (USR2), checked to be one.
    pub fn inherit(fd: OwnedFd) -> io::Result<TicketMemory> {
        let size = nix::sys::stat::fstat(&fd)?.st_size;
        if size != SIZE as i64 {
            return Err(io::Error::other(format!(
                "the ticket keys' memory is {size} bytes, not {SIZE}"
            )));
        }
        let memory = TicketMemory::map(fd)?;
        if memory.keys.magic.load(Acquire) != MAGIC {
            return Err(io::Error::other("the ticket keys' memory is not a prefork-server one"));
        }
        Ok(memory)
    }

    fn map(fd: OwnedFd) -> io::Result<TicketMemory> {
        let length = NonZeroUsize::new(SIZE).expect("a page is not 0 bytes");
        // SAFETY: a fresh shared mapping of the memfd's one page (its size was
        // set or checked above), which is never unmapped: the reference made
        // from it is 'static. `TicketKeys` is atomics only, valid for any bytes
        // (a new memfd is zeros), fits in the page (asserted above) and needs
        // 8-byte alignment, which a page has.
        let keys = unsafe {
            let start: NonNull<libc::c_void> = mmap(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )?;
            &*start.as_ptr().cast::<TicketKeys>()
        };
        Ok(TicketMemory { keys, fd: Some(fd) })
    }

    pub fn keys(&self) -> &'static TicketKeys {
        self.keys
    }

    /// The memfd, for a new master.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// In a worker: the page becomes read-only, so that nothing in it writes
    /// keys by mistake. (Not a barrier against a worker's own code: it could
    /// make it writable again; but every worker holds the keys anyway, to seal
    /// and open tickets.)
    pub fn protect_for_worker(keys: &'static TicketKeys) {
        let start = (keys as *const TicketKeys).cast_mut().cast::<libc::c_void>();
        // SAFETY: `start` is the page-aligned start of the mapping (an mmap
        // result) and one page of it is mapped; a worker only reads it afterwards.
        let rc = unsafe { libc::mprotect(start, SIZE, libc::PROT_READ) };
        if rc != 0 {
            crate::log::debug!("cannot make the ticket keys read-only: {}", io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_written_are_read_back_and_a_new_master_sees_them() {
        let memory = TicketMemory::create().unwrap();
        assert_eq!(memory.keys().read().unwrap().keys.len(), 0);
        let keys = Keys {
            keys: vec![[1; TICKET_KEY_LEN], [2; TICKET_KEY_LEN]],
            lifetime: 3600,
            made_at: 42,
        };
        memory.keys().write(&keys);
        assert!(memory.keys().read().unwrap() == keys);
        let inherited = TicketMemory::inherit(memory.fd().unwrap().try_clone_to_owned().unwrap()).unwrap();
        assert!(inherited.keys().read().unwrap() == keys);
        // One write, seen through the other mapping.
        let more = Keys {
            keys: vec![[3; TICKET_KEY_LEN]; 6],
            ..keys
        };
        inherited.keys().write(&more);
        assert_eq!(memory.keys().read().unwrap().keys, vec![[3; TICKET_KEY_LEN]; MAX_KEYS]);
    }
}
