//! The blocks one thread keeps for reuse: freed blocks of up to 1 KiB, in
//! classes of 16 bytes, and a few of 8 KiB, handed out again for the next
//! allocations of their class.
//!
//! Why: glibc's thread cache keeps 7 freed blocks of each size. A worker
//! allocates in bursts: 16 clients opening a connection each (about 14 blocks
//! a connection), or 64 HTTP/2 connections with 10 requests each in flight
//! (7 blocks a request, 2 of them 624 bytes). Past the 7th block of a size,
//! each allocation and free goes through malloc's bins (`_int_malloc`,
//! `_int_free`: 100–180 instructions where the thread cache takes 20). The
//! shelf keeps up to `SMALL_KEEP` blocks of each class, `SMALL_BYTES` in all;
//! a larger thread cache (`GLIBC_TUNABLES=glibc.malloc.tcache_count=250`) cut
//! the same instructions in a measurement, but can only be set before the
//! process starts, for every thread. hyper's read and write buffers are 8 KiB,
//! above glibc's thread cache (1,032 bytes): without the shelf, each new
//! connection takes both from malloc's bins and frees them with a
//! consolidation of their neighbours, about 500 instructions a connection.
//!
//! A freed small block is kept in the class of its layout's size, and handed
//! out for any size of that class; so every small block the allocator gives
//! is asked of malloc at the largest size of its class (`malloc_size`), on
//! every thread: a block is then at least as large as any size of its class,
//! whichever malloc is in the process, wherever the block was allocated and
//! whichever thread frees it. The classes are glibc's own (a block of 16 k
//! bytes, 8 of them glibc's, holds 16 k − 8), so with glibc the rounding costs
//! no memory: 100 bytes are asked as 104, which glibc gives the same block.
//! Freed small blocks are linked through their first 8 bytes, as glibc's
//! thread cache links its own; the 8 KiB ones are a short stack. `release`
//! gives every kept small block back to malloc, before the worker trims its
//! heap (after parking many connections, or when its last one has gone).
//!
//! Only alignments of up to 8, which malloc gives on every target and which
//! the allocator serves with malloc, calloc, realloc and free themselves (the
//! parent module's `PLAIN_ALIGN`).
//!
//! One thread, the worker's (`claim`), owns the shelf: no lock and no atomics
//! on the way, and nothing a fork could find held. Other threads (an
//! application's, the blocking pool's) do not take from it or put on it. The
//! owner is marked in a thread-local flag, which a new thread starts without;
//! if the owner ends, its blocks stay on the shelf unused (at most the bounds,
//! once).
//!
//! The one way back into the shelf while `take` or `put` is under way is a
//! signal handler that allocates on the owning thread: the worker's only such
//! handler is the hung-worker report (`sys::hung`), which aborts the process
//! once it has logged, so what it could mix up of the shelf is never used.

use std::alloc::Layout;
use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, Ordering};

/// The large size kept: hyper's buffers.
const SIZE: usize = 8192;

/// Large blocks kept: 8 cover 4 connections being set up or closed at once
/// (with 16 clients opening a connection per request, a load test saw no
/// allocation of 8 KiB miss the shelf once it had filled); beyond that, malloc.
const KEEP: usize = 8;

/// The width of a class of small blocks: malloc's alignment.
const CLASS: usize = 16;

/// The largest small size kept (in the class of glibc's thread cache's largest
/// blocks, 1,032 bytes).
const SMALL_MAX: usize = 1024;

/// Classes of small blocks: up to 8, 24, 40, ... 1,032 bytes.
const CLASSES: usize = class_of(SMALL_MAX) + 1;

/// Small blocks kept per class: 640 HTTP/2 streams in flight (64 connections
/// of 10) hold 2 blocks of 624 bytes and 2 of 272 each; callgrind counted 380
/// instructions per request fewer with 256 blocks and 1 MiB than with 64 and
/// 256 KiB.
const SMALL_KEEP: u32 = 256;

/// Bytes of small blocks kept in all (what they hold, not malloc's 8 bytes of
/// each): a bound on what the shelf holds back from malloc, whatever the mix
/// of classes. The worker gives them back whenever it trims its heap (see
/// `worker::serve`).
const SMALL_BYTES: usize = 1024 * 1024;

/// The largest alignment kept: the plain layouts' (see the module's documentation).
const KEPT_ALIGN: usize = super::PLAIN_ALIGN;

/// One class of small blocks: a list linked through each block's first word.
#[derive(Clone, Copy)]
struct Class {
    head: *mut u8,
    len: u32,
}

struct Shelf {
    len: usize,
    blocks: [*mut u8; KEEP],
    small: [Class; CLASSES],
    small_bytes: usize,
}

struct Owned(UnsafeCell<Shelf>);

// SAFETY: only the owning thread reads or writes the shelf (`OWNER` is a
// thread-local flag that one thread at most ever sets, see `claim`).
unsafe impl Sync for Owned {}

static SHELF: Owned = Owned(UnsafeCell::new(Shelf {
    len: 0,
    blocks: [std::ptr::null_mut(); KEEP],
    small: [Class {
        head: std::ptr::null_mut(),
        len: 0,
    }; CLASSES],
    small_bytes: 0,
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

/// Whether `layout` is a size kept (small, or the large one), aligned to at
/// most 8. Inlined into every allocation (a constant layout folds it
/// away), while the rest stays out of line, so that the allocator adds little
/// code at each of the binary's many call sites.
#[inline]
pub(super) fn kept(layout: Layout) -> bool {
    layout.align() <= KEPT_ALIGN && (layout.size() <= SMALL_MAX || layout.size() == SIZE)
}

/// The size to ask of malloc (or calloc, or realloc) for a plain block of
/// `size` bytes: a small size rounded up to the largest of its class, so that
/// the block can be kept for any size of the class (see the module's
/// documentation).
#[inline]
pub(super) fn malloc_size(size: usize) -> usize {
    if size <= SMALL_MAX {
        class_bytes(class_of(size))
    } else {
        size
    }
}

/// The index of the class of a small size (up to `SMALL_MAX` bytes): class
/// `i` holds sizes of up to `class_bytes(i)`, 16 bytes more than the one below.
const fn class_of(size: usize) -> usize {
    (size + CLASS + 7) / CLASS - 1
}

/// The largest size of class `index`, which each of its blocks holds.
const fn class_bytes(index: usize) -> usize {
    (index + 1) * CLASS - 8
}

/// Runs `f` on the shelf, on the owning thread; None on any other.
fn with_shelf<T>(f: impl FnOnce(&mut Shelf) -> Option<T>) -> Option<T> {
    if !OWNER.with(Cell::get) {
        return None;
    }
    // SAFETY: this is the owning thread (checked above), the only one that
    // touches the shelf, and the reference lives only for `f`, which does not
    // enter this allocator again (but for the signal handler the module's
    // documentation names): it frees only with libc's `free`.
    f(unsafe { &mut *SHELF.0.get() })
}

/// A block for `layout` (a size kept) from the shelf, if there is one.
/// (`get`, not indexing: nothing in an allocator may panic.)
#[inline(never)]
pub(super) fn take(layout: Layout) -> Option<*mut u8> {
    debug_assert!(kept(layout));
    with_shelf(|shelf| {
        if layout.size() == SIZE {
            let len = shelf.len.checked_sub(1)?;
            let block = *shelf.blocks.get(len)?;
            shelf.len = len;
            return Some(block);
        }
        let index = class_of(layout.size());
        let class = shelf.small.get_mut(index)?;
        if class.head.is_null() {
            return None;
        }
        let block = class.head;
        // SAFETY: a kept small block is a live malloc block of at least 8
        // bytes, not in use, whose first word `put` wrote: the next block of
        // the class, or null.
        class.head = unsafe { block.cast::<*mut u8>().read() };
        class.len -= 1;
        shelf.small_bytes -= class_bytes(index);
        Some(block)
    })
}

/// Keeps `block` for reuse if the shelf has room (`layout` is a size kept);
/// false if the caller is to free it.
///
/// # Safety
/// `block` is a live block, from malloc or the shelf, which the caller gives
/// up, of at least `malloc_size(layout.size())` bytes.
#[inline(never)]
pub(super) unsafe fn put(block: *mut u8, layout: Layout) -> bool {
    debug_assert!(kept(layout));
    with_shelf(|shelf| {
        if layout.size() == SIZE {
            *shelf.blocks.get_mut(shelf.len)? = block;
            shelf.len += 1;
            return Some(());
        }
        let index = class_of(layout.size());
        let bytes = class_bytes(index);
        let class = shelf.small.get_mut(index)?;
        if class.len >= SMALL_KEEP || shelf.small_bytes + bytes > SMALL_BYTES {
            return None;
        }
        // SAFETY: the block is at least 8 bytes (the caller's promise: the
        // smallest class's size), malloc-aligned, and the caller's to give up:
        // its first word is free to hold the link.
        unsafe { block.cast::<*mut u8>().write(class.head) };
        class.head = block;
        class.len += 1;
        shelf.small_bytes += bytes;
        Some(())
    })
    .is_some()
}

/// Gives every small block kept back to malloc (on the owning thread; nothing
/// on another).
pub(super) fn release() {
    with_shelf(|shelf| {
        for class in &mut shelf.small {
            let mut block = std::mem::replace(&mut class.head, std::ptr::null_mut());
            while !block.is_null() {
                // SAFETY: as in `take`: a kept block, linked by `put`; each is
                // freed once, after its link is read.
                unsafe {
                    let next = block.cast::<*mut u8>().read();
                    libc::free(block.cast());
                    block = next;
                }
            }
            class.len = 0;
        }
        shelf.small_bytes = 0;
        Some(())
    });
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

    /// Each small size is asked of malloc at the largest size of its class,
    /// glibc's classes (16 k − 8 bytes); others as they are.
    #[test]
    fn small_sizes_are_asked_at_their_class_s_largest() {
        let asked: Vec<usize> = [1, 8, 9, 24, 25, 89, 100, 104, 105, 1016, 1017, 1024, 1025, 8192]
            .into_iter()
            .map(malloc_size)
            .collect();
        assert_eq!(
            asked,
            [8, 8, 24, 24, 40, 104, 104, 104, 120, 1016, 1032, 1032, 1025, 8192]
        );
        assert_eq!(CLASSES, 65);
    }

    /// Small blocks the shelf holds in the class of `size`, and bytes in all,
    /// seen from this thread (None: not the owner).
    fn small_now(size: usize) -> Option<(u32, usize)> {
        with_shelf(|shelf| Some((shelf.small[class_of(size)].len, shelf.small_bytes)))
    }

    /// On a thread of its own, which claims the shelf: nothing else in the
    /// library's tests claims it (a worker does, in its own process). The
    /// shelf can be claimed once per process, so one test checks both kinds.
    #[test]
    fn freed_blocks_are_handed_out_again_by_class_within_bounds_only_on_the_owning_thread() {
        std::thread::spawn(|| {
            claim();
            assert!(OWNER.with(Cell::get), "the shelf was claimed by another thread");
            large_blocks();
            small_blocks();
        })
        .join()
        .unwrap();
    }

    /// The 8 KiB buffers.
    fn large_blocks() {
        {
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
        }
    }

    /// Fills `n` blocks of `size` bytes with `byte`, allocated through `Allocator`.
    ///
    /// # Safety
    /// The caller frees each block once, with a layout of `size` bytes aligned to 8.
    unsafe fn filled(n: usize, size: usize, byte: u8) -> Vec<*mut u8> {
        let layout = Layout::from_size_align(size, 8).unwrap();
        (0..n)
            .map(|_| {
                // SAFETY: a non-zero size; the block is written within it.
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null());
                    std::ptr::write_bytes(p, byte, size);
                    p
                }
            })
            .collect()
    }

    /// Blocks of up to 1 KiB, in classes of 16 bytes.
    fn small_blocks() {
        let at = |size| Layout::from_size_align(size, 8).unwrap();
        // SAFETY: blocks are written within their size and freed once, with a
        // layout of the size they were allocated with, or of a size of their
        // class where the test says so (the shelf's contract, checked here).
        unsafe {
            assert_eq!(small_now(100), Some((0, 0)));
            let a = Allocator.alloc(at(100));
            #[cfg(target_env = "gnu")]
            {
                let usable = libc::malloc_usable_size(a.cast());
                assert!(usable >= 104, "asked of malloc at its class's size");
                // glibc's own classes: the rounding costs no memory.
                let plain = libc::malloc(100);
                assert_eq!(usable, libc::malloc_usable_size(plain), "glibc gave a larger block");
                libc::free(plain);
            }
            std::ptr::write_bytes(a, 1, 100);
            Allocator.dealloc(a, at(100));
            assert_eq!(small_now(100), Some((1, 104)), "kept in the class of 89 to 104 bytes");
            // Any size of the class takes it, and it holds that size.
            for size in [104, 89, 100] {
                let b = Allocator.alloc(at(size));
                assert_eq!(b, a, "{size} bytes take the kept block");
                std::ptr::write_bytes(b, 2, size);
                Allocator.dealloc(b, at(size));
            }
            // A size of another class does not.
            let c = Allocator.alloc(at(88));
            assert_ne!(c, a, "88 bytes took a block of the next class");
            Allocator.dealloc(c, at(88));
            assert_eq!(small_now(88), Some((1, 192)));
            // A block allocated on another thread is kept when freed here (it
            // was asked of malloc at its class's size too); another thread
            // neither takes from the shelf nor puts on it.
            let (elsewhere, seen, shelved) = std::thread::spawn(move || {
                let seen = take(at(100)).map(|p| p as usize);
                let p = Allocator.alloc(at(100));
                let shelved = put(p, at(100));
                assert!(!shelved);
                std::ptr::write_bytes(p, 3, 100);
                (p as usize, seen, shelved)
            })
            .join()
            .unwrap();
            assert_eq!((seen, shelved), (None, false), "another thread used the shelf");
            Allocator.dealloc(elsewhere as *mut u8, at(100));
            assert_eq!(small_now(100), Some((2, 296)));
            // Beyond SMALL_KEEP blocks of a class, malloc; none handed out twice.
            let many = filled(SMALL_KEEP as usize + 8, 100, 4);
            let mut distinct: Vec<usize> = many.iter().map(|&p| p as usize).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), many.len(), "a block was handed out twice");
            for (i, &p) in many.iter().enumerate() {
                assert!((0..100).all(|j| *p.add(j) == 4), "block {i} was overwritten");
                Allocator.dealloc(p, at(100));
            }
            assert_eq!(
                small_now(100).map(|(n, _)| n),
                Some(SMALL_KEEP),
                "the class is full, and no fuller"
            );
            // Beyond SMALL_BYTES in all, malloc: four classes of 1 KiB or so
            // fill it.
            for (k, size) in [1024, 1008, 992, 976, 960].into_iter().enumerate() {
                let blocks = filled(SMALL_KEEP as usize, size, k as u8);
                for p in blocks {
                    Allocator.dealloc(p, at(size));
                }
                let (_, bytes) = small_now(size).unwrap();
                assert!(bytes <= SMALL_BYTES, "{bytes} bytes kept, above the bound");
            }
            let (in_last, bytes) = small_now(960).unwrap();
            assert!(
                in_last < SMALL_KEEP,
                "the last class was kept whole past the bound of bytes"
            );
            assert!(
                bytes + 1024 > SMALL_BYTES,
                "{bytes} bytes kept: the shelf stopped short of its bound"
            );
            // `release` gives everything back (on this thread; nothing on another).
            std::thread::spawn(release).join().unwrap();
            assert_eq!(small_now(1024).map(|(n, _)| n), Some(SMALL_KEEP));
            release();
            for size in [88, 100, 960, 976, 992, 1008, 1024] {
                assert_eq!(small_now(size), Some((0, 0)), "{size} bytes' class after release");
            }
            let d = Allocator.alloc(at(100));
            std::ptr::write_bytes(d, 5, 100);
            Allocator.dealloc(d, at(100));
            assert_eq!(small_now(100), Some((1, 104)), "kept again after release");
            // A block aligned above malloc's alignment (a tokio task's, 128)
            // lives in a plain chunk of its size and alignment, kept as any.
            let task = Layout::from_size_align(200, 128).unwrap();
            let t = Allocator.alloc(task);
            assert_eq!(t as usize % 128, 0);
            std::ptr::write_bytes(t, 6, 200);
            Allocator.dealloc(t, task);
            assert_eq!(
                small_now(328),
                Some((1, 104 + 328)),
                "the chunk of 200 + 128 bytes was kept"
            );
            let u = Allocator.alloc(task);
            assert_eq!(u as usize % 128, 0, "aligned inside the kept chunk");
            std::ptr::write_bytes(u, 7, 200);
            assert_eq!(small_now(328), Some((0, 104)), "the kept chunk was taken");
            Allocator.dealloc(u, task);
            // A zeroed one's chunk (from calloc) is kept too, and serves the
            // next allocation of the layout.
            let z = Allocator.alloc_zeroed(task);
            assert_eq!(z as usize % 128, 0);
            assert!((0..200).all(|i| *z.add(i) == 0), "zeroed");
            Allocator.dealloc(z, task);
            let y = Allocator.alloc(task);
            assert_eq!(y, z, "the zeroed block's chunk was not handed out again");
            std::ptr::write_bytes(y, 8, 200);
            Allocator.dealloc(y, task);
            // A kept block resized through small and large sizes keeps its
            // contents, and is kept at its last size's class.
            let r = Allocator.alloc(at(100));
            std::ptr::write_bytes(r, 9, 100);
            let r = Allocator.realloc(r, at(100), 600);
            assert!((0..100).all(|i| *r.add(i) == 9), "grown to 600");
            std::ptr::write_bytes(r, 10, 600);
            let r = Allocator.realloc(r, at(600), 8192);
            assert!((0..600).all(|i| *r.add(i) == 10), "grown to 8 KiB");
            let r = Allocator.realloc(r, at(8192), 40);
            assert!((0..40).all(|i| *r.add(i) == 10), "shrunk to 40");
            let (before, _) = small_now(40).unwrap();
            Allocator.dealloc(r, at(40));
            assert_eq!(small_now(40).map(|(n, _)| n), Some(before + 1));
            let q = Allocator.alloc(at(33));
            assert_eq!(q, r, "33 bytes, of 40's class, take the resized block");
            std::ptr::write_bytes(q, 11, 33);
            Allocator.dealloc(q, at(33));
            release();
        }
    }
}
