//! The binary's allocator: the system's malloc, with over-aligned blocks served
//! by malloc too instead of by memalign.
//!
//! Why: tokio aligns each task to 128 bytes (on x86_64, against false sharing
//! between cores), and a worker spawns one task per connection and one per
//! HTTP/2 stream. glibc serves such a block through `_int_memalign`, which
//! takes a larger chunk and splits off and frees its ends: about 1,400
//! instructions per task where a `malloc` from the thread cache takes a few
//! dozen. So a block whose alignment is above malloc's own (16) is taken as
//! `malloc(size + align)`, aligned inside, with the address malloc gave written
//! in the 8 bytes just below the aligned block for `dealloc` to find. The cost
//! is up to `align` bytes per such block (128 per task, whose cell is larger),
//! against mimalloc's or jemalloc's arenas, which cost hundreds of KiB per
//! worker and more per idle connection (docs/performance.md has both figures).
//!
//! And one worker thread keeps freed blocks for its next allocations of the
//! same class (see `shelf`): small ones, of up to 1 KiB, more of each size
//! than glibc's thread cache keeps (7), for the bursts of allocations a burst
//! of connections or HTTP/2 requests makes; and a few 8 KiB buffers, hyper's
//! read and write buffers, above glibc's thread cache (1,032 bytes), which
//! every new connection otherwise takes from malloc's bins and gives back with
//! a consolidation.
//!
//! No lock: the shelf belongs to one thread, so nothing of it can be held
//! across a fork.

use std::alloc::{GlobalAlloc, Layout, System};
use std::mem::size_of;

mod shelf;

/// The global allocator of the `prefork-server` binary, for applications
/// built on this crate to use too: `#[global_allocator] static A:
/// prefork_server::Allocator = prefork_server::Allocator;`. The system's
/// malloc, except that blocks aligned above 16 bytes do not go through
/// memalign, and that the worker's thread keeps the blocks of up to 1 KiB and
/// the 8 KiB buffers it frees for reuse, within bounds (see the module's
/// documentation in the source for why).
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

impl Allocator {
    /// Makes the calling thread the one that keeps freed buffers for reuse,
    /// if no thread is yet: a worker calls it on its runtime's thread. Other
    /// threads use malloc alone. Does nothing for a program whose global
    /// allocator is another.
    pub fn keep_buffers_on_this_thread() {
        shelf::claim();
    }

    /// Gives the small blocks the calling thread keeps back to malloc (see
    /// [`Allocator::keep_buffers_on_this_thread`]), as before trimming the
    /// heap: nothing on another thread.
    pub fn release_kept_blocks() {
        shelf::release();
    }
}

/// The alignment malloc guarantees on 64-bit Linux (glibc and musl): 2 × size_t.
const MALLOC_ALIGN: usize = 16;

/// Above this alignment (a page, say) the bytes given up per block outweigh
/// memalign's instructions: such layouts go to the system allocator as asked.
const MAX_OVER_ALIGN: usize = 256;

/// The largest alignment every malloc gives (on every target: 2 × size_t on
/// 32-bit ones, 16 on 64-bit ones). Such layouts go to malloc, calloc, realloc
/// and free directly, as the system allocator would send them, so that a
/// block's layout at `dealloc` need only match its size: the shelf hands a
/// block freed at one of these alignments out again for another.
const PLAIN_ALIGN: usize = 8;

/// Whether `layout` goes to malloc as it is (see `PLAIN_ALIGN`).
fn plain(layout: Layout) -> bool {
    layout.align() <= PLAIN_ALIGN
}

/// Whether `layout` takes the header path: aligned above malloc's alignment,
/// but not so far above that the padding is worth memalign's cost.
fn over_aligned(layout: Layout) -> bool {
    layout.align() > MALLOC_ALIGN && layout.align() <= MAX_OVER_ALIGN
}

/// The layout of the chunk that holds `layout`'s block: `align` bytes more
/// than its size, room enough for the header and the padding (malloc's
/// address is at least 8-aligned, so the block begins at most `align` bytes
/// in). A plain layout, so the chunk is malloc's and, if small, kept on the
/// shelf when freed (a tokio task, aligned to 128, is one). None when that
/// size overflows.
fn chunk(layout: Layout) -> Option<Layout> {
    let size = layout.size().checked_add(layout.align())?;
    Layout::from_size_align(size, PLAIN_ALIGN).ok()
}

/// The block inside `raw`'s chunk: the first `align`-aligned address that
/// leaves 8 bytes below it for the header, which is written there.
///
/// # Safety
/// `raw` is a live chunk of `chunk(layout)`'s size, from the system allocator.
unsafe fn place(raw: *mut u8, layout: Layout) -> *mut u8 {
    let addr = raw as usize;
    let block = (addr + size_of::<usize>()).next_multiple_of(layout.align());
    // SAFETY: `block - addr` is at most `align` (addr is 8-aligned, so addr + 8
    // rounds up to at most addr + align), and the chunk is `size + align` bytes:
    // the block and its header lie inside it. The header slot is 8-aligned,
    // because the block is aligned to at least 32.
    unsafe {
        let block = raw.add(block - addr);
        block.cast::<*mut u8>().sub(1).write(raw);
        block
    }
}

/// The chunk malloc gave for `block`, read from its header.
///
/// # Safety
/// `block` came from `place`, and is still allocated.
unsafe fn chunk_of(block: *mut u8) -> *mut u8 {
    // SAFETY: `place` wrote the chunk's address in the 8 bytes below the block.
    unsafe { block.cast::<*mut u8>().sub(1).read() }
}

/// The header path: a chunk of `chunk(layout)`'s size from `get` (the plain
/// path's `alloc` or `alloc_zeroed`), and the block placed inside it; null if
/// the size overflows or `get` fails.
///
/// # Safety
/// `get` returns null or a live block of the layout it is given.
unsafe fn in_chunk(layout: Layout, get: impl FnOnce(Layout) -> *mut u8) -> *mut u8 {
    let Some(chunk) = chunk(layout) else {
        return std::ptr::null_mut();
    };
    let raw = get(chunk);
    if raw.is_null() {
        return raw;
    }
    // SAFETY: `raw` is a live chunk of `chunk(layout)`'s size, as `get` promises.
    unsafe { place(raw, layout) }
}

// SAFETY: every block is either the system allocator's own (forwarded as is),
// or a plain block (below), or a block inside a plain block, its chunk,
// aligned as the layout asks and `size` bytes long inside it (see `place`),
// and freed by freeing that chunk with the chunk's layout. The three kinds
// never mix: which one a block is depends on its layout's alignment alone,
// which GlobalAlloc's contract makes the same at alloc and dealloc.
// Plain layouts (aligned to at most 8) are malloc's blocks, freed with free,
// which needs no layout, each asked of malloc at `shelf::malloc_size` of its
// size; the shelf holds only such blocks, freed with a size whose class they
// are at least as large as, and hands each out for a size of that class again
// (see `shelf`).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if shelf::kept(layout) {
            if let Some(block) = shelf::take(layout) {
                return block;
            }
        }
        if plain(layout) {
            // SAFETY: malloc of a non-zero size (GlobalAlloc's contract), at
            // least the layout's; its alignment is at least PLAIN_ALIGN, the
            // layout's at most.
            return unsafe { libc::malloc(shelf::malloc_size(layout.size())).cast() };
        }
        if !over_aligned(layout) {
            // SAFETY: the caller's layout, forwarded under the same contract.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: `chunk(layout)` has a non-zero size (at least `align`), and
        // the plain path returns null or a block of it.
        unsafe { in_chunk(layout, |chunk| self.alloc(chunk)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout) {
            // SAFETY: as in `alloc`, zeroed by calloc.
            return unsafe { libc::calloc(1, shelf::malloc_size(layout.size())).cast() };
        }
        if !over_aligned(layout) {
            // SAFETY: as in `alloc`.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // SAFETY: as in `alloc`; calloc's zeroes cover the block, the header is
        // written after.
        unsafe { in_chunk(layout, |chunk| self.alloc_zeroed(chunk)) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the caller gives up `block`, a live block of `layout`'s size;
        // a kept layout is plain, and every plain block was asked of malloc
        // (or calloc, or realloc) at `malloc_size` of the size it is freed
        // with, or handed out by the shelf from that size's class, whose
        // blocks all hold it: at least `malloc_size(layout.size())` bytes.
        if shelf::kept(layout) && unsafe { shelf::put(block, layout) } {
            return;
        }
        if plain(layout) {
            // SAFETY: a plain layout's block came from malloc, calloc or realloc
            // (directly, or through the shelf).
            return unsafe { libc::free(block.cast()) };
        }
        if !over_aligned(layout) {
            // SAFETY: the block came from `System.alloc(layout)` (see `alloc`).
            return unsafe { System.dealloc(block, layout) };
        }
        // SAFETY: an over-aligned layout's block came from `place`, so its
        // header holds the chunk, allocated on the plain path with
        // `chunk(layout)`, which succeeded then for this same layout.
        unsafe {
            let chunk = chunk(layout).unwrap_unchecked();
            self.dealloc(chunk_of(block), chunk)
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout) {
            // SAFETY: as in `dealloc`; `new_size` is non-zero (GlobalAlloc's
            // contract), `malloc_size(new_size)` at least `new_size`, and
            // realloc's block is aligned as malloc's are.
            return unsafe { libc::realloc(block.cast(), shelf::malloc_size(new_size)).cast() };
        }
        if !over_aligned(layout) {
            // SAFETY: the block came from the system allocator with `layout`.
            return unsafe { System.realloc(block, layout, new_size) };
        }
        // Over-aligned blocks are rarely resized: allocate, copy, free.
        // SAFETY: the caller guarantees `new_size` with `layout`'s alignment is
        // a valid layout; the copy covers the smaller of the two blocks, both live.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                self.dealloc(block, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates, fills, checks the alignment and frees, through `Allocator`.
    fn round_trip(size: usize, align: usize, zeroed: bool) {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: the block is checked non-null, written within its size, and
        // freed once with the layout it was allocated with.
        unsafe {
            let p = if zeroed {
                Allocator.alloc_zeroed(layout)
            } else {
                Allocator.alloc(layout)
            };
            assert!(!p.is_null(), "{size} bytes aligned to {align}");
            assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}: got {p:p}");
            if zeroed {
                assert!((0..size).all(|i| *p.add(i) == 0), "{size} bytes zeroed");
            }
            std::ptr::write_bytes(p, 0xa5, size);
            Allocator.dealloc(p, layout);
        }
    }

    #[test]
    fn every_alignment_is_kept_and_the_whole_block_is_writable() {
        for align in [1, 8, 16, 32, 64, 128, 256, 512, 4096] {
            for size in [1, 7, 8, 24, 128, 129, 1000, 5000, 70_000] {
                round_trip(size, align, false);
                round_trip(size, align, true);
            }
        }
    }

    #[test]
    fn many_live_blocks_do_not_overlap() {
        let layout = Layout::from_size_align(200, 128).unwrap();
        // SAFETY: as in `round_trip`, for 1,000 blocks live at once.
        unsafe {
            let blocks: Vec<*mut u8> = (0..1000u32).map(|_| Allocator.alloc(layout)).collect();
            for (i, &p) in blocks.iter().enumerate() {
                std::ptr::write_bytes(p, i as u8, 200);
            }
            for (i, &p) in blocks.iter().enumerate() {
                assert!((0..200).all(|j| *p.add(j) == i as u8), "block {i} was overwritten");
                Allocator.dealloc(p, layout);
            }
        }
    }

    #[test]
    fn realloc_keeps_the_contents_and_the_alignment() {
        for align in [8, 128] {
            let layout = Layout::from_size_align(100, align).unwrap();
            // SAFETY: each block is used within its current size, and freed
            // with the layout of its last size.
            unsafe {
                let p = Allocator.alloc(layout);
                for i in 0..100 {
                    *p.add(i) = i as u8;
                }
                let q = Allocator.realloc(p, layout, 10_000);
                assert_eq!(q as usize % align, 0);
                assert!((0..100).all(|i| *q.add(i) == i as u8), "grown, aligned to {align}");
                let grown = Layout::from_size_align(10_000, align).unwrap();
                let r = Allocator.realloc(q, grown, 50);
                assert!((0..50).all(|i| *r.add(i) == i as u8), "shrunk, aligned to {align}");
                Allocator.dealloc(r, Layout::from_size_align(50, align).unwrap());
            }
        }
    }
}
