//! The buffers one thread keeps for reuse: a few freed blocks of 8 KiB,
//! handed out again for the next allocations of that size.
//!
//! Why: glibc's thread cache takes blocks of up to 1,032 bytes, and hyper's
//! read and write buffers are 8 KiB. Without the shelf, each new connection
//! takes both from malloc's bins and frees them with a consolidation of their
//! neighbours (`_int_malloc`, `_int_free`), about 500 instructions a
//! connection. The shelf is a short stack: a free pushes the block if there
//! is room, an allocation of 8 KiB pops one if there is any; everything else
//! goes to malloc. What it keeps is bounded, `KEEP` blocks, 64 KiB (malloc
//! keeps freed blocks too, in its bins). Only that size: other sizes are rare
//! on a connection's path, and each size tested costs every allocation of a
//! size not known when compiling a compare more.
//!
//! Only malloc's own alignment: a block freed with a layout of 8 KiB came
//! from malloc (or the shelf) for at least 8 KiB, so it can serve another.
//!
//! One thread, the worker's (`claim`), owns the shelf: no lock and no atomics
//! on the way, and nothing a fork could find held. Other threads (an
//! application's, the blocking pool's) do not touch it. The owner is marked in
//! a thread-local flag, which a new thread starts without; if the owner ends,
//! its blocks stay on the shelf unused (at most the bound, once).

use std::alloc::Layout;
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, Ordering};

/// The size kept: hyper's buffers.
const SIZE: usize = 8192;

/// Blocks kept: 8 cover 4 connections being set up or closed at once (under
/// 64 concurrent new connections a load test saw no allocation of 8 KiB miss
/// the shelf); beyond that, malloc.
const KEEP: usize = 8;

/// The alignment malloc gives (see the parent module).
const MALLOC_ALIGN: usize = super::MALLOC_ALIGN;

struct Shelf {
    len: usize,
    blocks: [*mut u8; KEEP],
}

struct Owned(UnsafeCell<Shelf>);

// SAFETY: only the owning thread reads or writes the shelf (`OWNER` is a
// thread-local flag that one thread at most ever sets, see `claim`).
unsafe impl Sync for Owned {}

static SHELF: Owned = Owned(UnsafeCell::new(Shelf {
    len: 0,
    blocks: [std::ptr::null_mut(); KEEP],
}));

/// Whether a thread has claimed the shelf (once per process, ever).
static CLAIMED: AtomicBool = AtomicBool::new(false);

thread_local! {
    // Const, and nothing to drop: read without allocating or registering a
    // destructor, as an allocator must.
    static OWNER: Cell<bool> = const { Cell::new(false) };
}

/// Makes the calling thread the shelf's owner, unless one was made already.
pub(super) fn claim() {
    if CLAIMED
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        OWNER.with(|owner| owner.set(true));
    }
}

/// Whether `layout` is the size kept, with malloc's alignment. Inlined into
/// every allocation (a constant layout folds it away), while the rest stays
/// out of line, so that the allocator adds little code at each of the
/// binary's many call sites.
#[inline]
pub(super) fn kept(layout: Layout) -> bool {
    layout.size() == SIZE && layout.align() <= MALLOC_ALIGN
}

/// The shelf, on the owning thread.
fn shelf() -> Option<&'static mut Shelf> {
    if !OWNER.with(Cell::get) {
        return None;
    }
    // SAFETY: this is the owning thread (checked above), the only one that
    // touches the shelf, and no reference from an earlier call is alive:
    // `take` and `put` use theirs and return.
    Some(unsafe { &mut *SHELF.0.get() })
}

/// A block for `layout` (the size kept) from the shelf, if there is one.
#[inline(never)]
pub(super) fn take(layout: Layout) -> Option<*mut u8> {
    debug_assert!(kept(layout));
    let shelf = shelf()?;
    shelf.len = shelf.len.checked_sub(1)?;
    Some(shelf.blocks[shelf.len])
}

/// Keeps `block` for reuse if the shelf has room (`layout` is the size
/// kept); false if the caller is to free it.
///
/// # Safety
/// `block` is a live block, from malloc or the shelf, of at least `layout`'s
/// size, which the caller gives up.
#[inline(never)]
pub(super) unsafe fn put(block: *mut u8, layout: Layout) -> bool {
    debug_assert!(kept(layout));
    let Some(shelf) = shelf() else { return false };
    if shelf.len == KEEP {
        return false;
    }
    shelf.blocks[shelf.len] = block;
    shelf.len += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::GlobalAlloc;

    /// On a thread of its own (claimed by the first test that gets there; the
    /// others see no shelf and must still be right).
    #[test]
    fn a_block_freed_is_handed_out_again_for_its_size_only_on_the_owning_thread() {
        std::thread::spawn(|| {
            claim();
            if !OWNER.with(Cell::get) {
                return; // Another test thread claimed the shelves first.
            }
            let layout = Layout::from_size_align(8192, 8).unwrap();
            // SAFETY: blocks are written within their size and freed once, with
            // the layout they were allocated with.
            unsafe {
                let a = super::super::Allocator.alloc(layout);
                std::ptr::write_bytes(a, 1, 8192);
                super::super::Allocator.dealloc(a, layout);
                let b = super::super::Allocator.alloc(layout);
                assert_eq!(a, b, "the freed 8 KiB block is reused");
                // Another size, or another alignment: not kept.
                for (size, align) in [(4096, 8), (8000, 8), (16384, 8), (8192, 64)] {
                    let layout = Layout::from_size_align(size, align).unwrap();
                    assert!(!kept(layout), "{size} bytes aligned to {align} are not kept");
                }
                std::ptr::write_bytes(b, 2, 8192);
                super::super::Allocator.dealloc(b, layout);
                // Another thread does not see the shelf.
                let seen = std::thread::spawn(move || take(layout).map(|p| p as usize))
                    .join()
                    .unwrap();
                assert_eq!(seen, None, "another thread takes nothing from the shelves");
                // Beyond KEEP, blocks go back to malloc; all are distinct.
                let blocks: Vec<*mut u8> = (0..KEEP + 4).map(|_| super::super::Allocator.alloc(layout)).collect();
                let mut sorted: Vec<usize> = blocks.iter().map(|&p| p as usize).collect();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), KEEP + 4, "no block handed out twice");
                for &p in &blocks {
                    std::ptr::write_bytes(p, 3, 8192);
                    super::super::Allocator.dealloc(p, layout);
                }
                let shelf = shelf().unwrap();
                assert_eq!(shelf.len, KEEP, "the shelf is full, and no fuller");
            }
        })
        .join()
        .unwrap();
    }
}
