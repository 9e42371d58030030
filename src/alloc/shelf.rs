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
//! Only alignments of up to 8, which malloc gives on every target and which
//! the allocator serves with malloc, calloc, realloc and free themselves (the
//! parent module's `PLAIN_ALIGN`): a block freed with a layout of 8 KiB came
//! from one of them (or the shelf) for at least 8 KiB, so it can serve another.
//!
//! One thread, the worker's (`claim`), owns the shelf: no lock and no atomics
//! on the way, and nothing a fork could find held. Other threads (an
//! application's, the blocking pool's) do not touch it. The owner is marked in
//! a thread-local flag, which a new thread starts without; if the owner ends,
//! its blocks stay on the shelf unused (at most the bound, once).
//!
//! The one way back into the shelf while `take` or `put` is under way is a
//! signal handler that allocates on the owning thread: the worker's only such
//! handler is the hung-worker report (`sys::hung`), which aborts the process
//! once it has logged, so what it could mix up of the shelf is never used.

use std::alloc::Layout;
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, Ordering};

/// The size kept: hyper's buffers.
const SIZE: usize = 8192;

/// Blocks kept: 8 cover 4 connections being set up or closed at once (with
/// 16 clients opening a connection per request, a load test saw no allocation
/// of 8 KiB miss the shelf once it had filled); beyond that, malloc.
const KEEP: usize = 8;

/// The largest alignment kept: the plain layouts' (see the module's documentation).
const KEPT_ALIGN: usize = super::PLAIN_ALIGN;

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
    layout.size() == SIZE && layout.align() <= KEPT_ALIGN
}

/// Runs `f` on the shelf, on the owning thread; None on any other.
fn with_shelf<T>(f: impl FnOnce(&mut Shelf) -> Option<T>) -> Option<T> {
    if !OWNER.with(Cell::get) {
        return None;
    }
    // SAFETY: this is the owning thread (checked above), the only one that
    // touches the shelf, and the reference lives only for `f`, which neither
    // allocates nor frees (but for the signal handler the module's
    // documentation names).
    f(unsafe { &mut *SHELF.0.get() })
}

/// A block for `layout` (the size kept) from the shelf, if there is one.
/// (`get`, not indexing: nothing in an allocator may panic.)
#[inline(never)]
pub(super) fn take(layout: Layout) -> Option<*mut u8> {
    debug_assert!(kept(layout));
    with_shelf(|shelf| {
        let len = shelf.len.checked_sub(1)?;
        let block = *shelf.blocks.get(len)?;
        shelf.len = len;
        Some(block)
    })
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
    with_shelf(|shelf| {
        *shelf.blocks.get_mut(shelf.len)? = block;
        shelf.len += 1;
        Some(())
    })
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::super::Allocator;
    use super::*;
    use std::alloc::GlobalAlloc;

    /// How many blocks the shelf holds, seen from this thread (None: not the owner).
    fn kept_now() -> Option<usize> {
        with_shelf(|shelf| Some(shelf.len))
    }

    /// On a thread of its own, which claims the shelf: nothing else in the
    /// library's tests claims it (a worker does, in its own process).
    #[test]
    fn a_block_freed_is_handed_out_again_for_its_size_only_on_the_owning_thread() {
        std::thread::spawn(|| {
            claim();
            assert!(OWNER.with(Cell::get), "the shelf was claimed by another thread");
            let layout = Layout::from_size_align(8192, 1).unwrap();
            // SAFETY: blocks are written within their size and freed once, with
            // a layout of the size and alignment they were allocated with.
            unsafe {
                let a = Allocator.alloc(layout);
                std::ptr::write_bytes(a, 1, 8192);
                Allocator.dealloc(a, layout);
                assert_eq!(kept_now(), Some(1), "the freed 8 KiB block is on the shelf");
                // Other sizes and alignments neither take it nor are kept.
                for (size, align) in [(4096, 8), (8000, 8), (16384, 8), (8192, 16), (8192, 64)] {
                    let other = Layout::from_size_align(size, align).unwrap();
                    assert!(!kept(other), "{size} bytes aligned to {align} are not kept");
                    let p = Allocator.alloc(other);
                    assert_ne!(p, a, "{size} bytes aligned to {align} got the shelved block");
                    assert_eq!(p as usize % align, 0);
                    Allocator.dealloc(p, other);
                    assert_eq!(kept_now(), Some(1), "{size} bytes aligned to {align} were shelved");
                }
                // Another thread neither takes it nor puts on the shelf.
                let other_thread = std::thread::spawn(move || {
                    let seen = take(layout).map(|p| p as usize);
                    let p = Allocator.alloc(layout);
                    let shelved = put(p, layout);
                    if !shelved {
                        Allocator.dealloc(p, layout);
                    }
                    (seen, shelved)
                })
                .join()
                .unwrap();
                assert_eq!(other_thread, (None, false), "another thread used the shelf");
                assert_eq!(kept_now(), Some(1));
                // An 8-aligned request of the size takes it.
                let aligned = Layout::from_size_align(8192, 8).unwrap();
                let b = Allocator.alloc(aligned);
                assert_eq!(b, a, "the shelved block is handed out again");
                assert_eq!(kept_now(), Some(0));
                std::ptr::write_bytes(b, 2, 8192);
                Allocator.dealloc(b, aligned);
                // Beyond KEEP, blocks go back to malloc; none is handed out twice.
                let blocks: Vec<*mut u8> = (0..KEEP + 4).map(|_| Allocator.alloc(layout)).collect();
                let mut distinct: Vec<usize> = blocks.iter().map(|&p| p as usize).collect();
                distinct.sort_unstable();
                distinct.dedup();
                assert_eq!(distinct.len(), KEEP + 4, "a block was handed out twice");
                for &p in &blocks {
                    std::ptr::write_bytes(p, 3, 8192);
                    Allocator.dealloc(p, layout);
                }
                assert_eq!(kept_now(), Some(KEEP), "the shelf is full, and no fuller");
            }
        })
        .join()
        .unwrap();
    }
}
