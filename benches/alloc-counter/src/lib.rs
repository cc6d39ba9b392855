//! A counting global allocator for the benches: wraps [`System`] and counts
//! allocation calls, reallocations and bytes with atomics, plus the bytes
//! currently live and the live allocations of each size. A bench binary
//! installs it with
//!
//! ```
//! #[global_allocator]
//! static ALLOC: valkeylock_bench_alloc::Counting = valkeylock_bench_alloc::Counting;
//!
//! fn main() {
//!     let before = valkeylock_bench_alloc::snapshot();
//!     let v = std::hint::black_box(vec![1u8; 100]);
//!     let after = valkeylock_bench_alloc::snapshot();
//!     assert!(after.since(&before).allocs >= 1);
//!     assert!(after.live_delta(&before) >= 100);
//!     drop(v);
//! }
//! ```
//!
//! and reads [`snapshot`] before and after the code it measures. The counts
//! cover every thread of the process (runtime workers, client tasks).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicU64 = AtomicU64::new(0);

/// Allocation sizes counted one by one by [`live_by_size_into`]; larger ones
/// share the last slot.
pub const SIZE_SLOTS: usize = 4096;

/// Live allocations of each size (index = bytes requested).
static BY_SIZE: [AtomicI64; SIZE_SLOTS + 1] = [const { AtomicI64::new(0) }; SIZE_SLOTS + 1];

fn slot(size: usize) -> &'static AtomicI64 {
    &BY_SIZE[size.min(SIZE_SLOTS)]
}

/// The allocator: [`System`] plus counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counters are
// plain relaxed atomics that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        LIVE.fetch_add(layout.size() as u64, Relaxed);
        slot(layout.size()).fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        LIVE.fetch_add(layout.size() as u64, Relaxed);
        slot(layout.size()).fetch_add(1, Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        slot(layout.size()).fetch_sub(1, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Relaxed);
        if new_size > layout.size() {
            BYTES.fetch_add((new_size - layout.size()) as u64, Relaxed);
        }
        LIVE.fetch_add(new_size as u64, Relaxed);
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        slot(layout.size()).fetch_sub(1, Relaxed);
        slot(new_size).fetch_add(1, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Counter values at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `alloc` + `alloc_zeroed` calls.
    pub allocs: u64,
    /// `realloc` calls.
    pub reallocs: u64,
    /// Bytes requested by allocations (and by growing reallocations).
    pub bytes: u64,
    /// Bytes allocated and not yet freed.
    pub live: u64,
}

impl Snapshot {
    /// Counts since `earlier` (`live` as a signed difference is in
    /// [`Snapshot::live_delta`]).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            allocs: self.allocs - earlier.allocs,
            reallocs: self.reallocs - earlier.reallocs,
            bytes: self.bytes - earlier.bytes,
            live: self.live.saturating_sub(earlier.live),
        }
    }

    /// Change of live bytes since `earlier`, signed.
    pub fn live_delta(&self, earlier: &Snapshot) -> i64 {
        self.live as i64 - earlier.live as i64
    }
}

/// The counters now. Zero everywhere unless [`Counting`] is the global
/// allocator of the binary.
pub fn snapshot() -> Snapshot {
    Snapshot {
        allocs: ALLOCS.load(Relaxed),
        reallocs: REALLOCS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
        live: LIVE.load(Relaxed),
    }
}

/// Live allocations by size now, written into `out` (which it never
/// allocates, so that taking a snapshot changes no count): entry `i` counts
/// those of `i` bytes, entry [`SIZE_SLOTS`] those of that many bytes or more.
/// Subtract two of them to see what was allocated and kept in between, size
/// by size. Writes at most `SIZE_SLOTS + 1` entries.
pub fn live_by_size_into(out: &mut [i64]) {
    for (o, c) in out.iter_mut().zip(BY_SIZE.iter()) {
        *o = c.load(Relaxed);
    }
}
