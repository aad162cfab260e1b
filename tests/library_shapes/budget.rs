//! The global allocator: the system's, with a budget in a child process, where an allocation
//! past it is reported with the crate's frame that asked for it, then fails.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

/// How a child marks an allocation past its budget on its standard error.
pub(crate) const ALLOC_MARK: &str = "library_shapes allocation: ";
/// What a child may allocate: far more than its calls need, far less than any huge size.
pub(crate) const CHILD_BUDGET: isize = 64 << 20;
/// What a child may allocate after its first refusal.
const CHILD_SLACK: isize = 16 << 20;

thread_local! {
    /// Set while an allocation past the budget is being reported (the report allocates).
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// `f`'s result, computed past a child's allocation budget.
pub(crate) fn reporting<T>(f: impl FnOnce() -> T) -> T {
    REPORTING.set(true);
    let out = f();
    REPORTING.set(false);
    out
}

/// The innermost frame of the current backtrace in the crate's `src/`: where the crate called
/// into std or a dependency that panicked or allocated.
pub(crate) fn crate_frame() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    trace
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("at "))
        .map(|path| path.trim_start_matches(root).trim_start_matches("./"))
        .find(|path| path.starts_with("src/"))
        .map_or("no frame in src/".into(), str::to_string)
}

/// The system allocator, with a budget in a child running `isolated_call` (0, none, elsewhere):
/// an allocation past it is reported with the crate's frame that asked for it, then fails.
struct Budgeted;

#[global_allocator]
static ALLOCATOR: Budgeted = Budgeted;

pub(crate) static BUDGET: AtomicIsize = AtomicIsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static REFUSED: AtomicBool = AtomicBool::new(false);

impl Budgeted {
    /// Whether `size` more bytes fit the budget (counted when they do). A report, of a panic
    /// or of a refusal, is neither limited nor counted: it reads the backtrace.
    fn admit(size: usize) -> bool {
        let budget = BUDGET.load(Relaxed);
        if budget == 0 || REPORTING.get() {
            return true;
        }
        // Layout sizes never exceed isize::MAX.
        let size = size as isize;
        if LIVE.fetch_add(size, Relaxed).saturating_add(size) <= budget {
            return true;
        }
        LIVE.fetch_sub(size, Relaxed);
        // The first refusal is reported, and leaves room for what follows it (an Err, or the
        // allocation-failure message: written under the backtrace lock, so never reported).
        if !REFUSED.swap(true, Relaxed) {
            BUDGET.fetch_add(CHILD_SLACK, Relaxed);
            let frame = reporting(crate_frame);
            eprintln!("{ALLOC_MARK}{size} bytes, asked for at {frame}");
        }
        false
    }

    fn release(size: usize) {
        if BUDGET.load(Relaxed) != 0 {
            LIVE.fetch_sub(size as isize, Relaxed);
        }
    }
}

// SAFETY: every call goes to the system allocator with the caller's layout; the budget only
// refuses (returns null), which callers handle as an allocation failure.
unsafe impl GlobalAlloc for Budgeted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::admit(layout.size()) {
            // SAFETY: `layout` comes from our caller under GlobalAlloc::alloc's contract.
            true => unsafe { System.alloc(layout) },
            false => std::ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::admit(layout.size()) {
            // SAFETY: as in `alloc`.
            true => unsafe { System.alloc_zeroed(layout) },
            false => std::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::release(layout.size());
        // SAFETY: `ptr` came from System with `layout` (every block here does), the caller's
        // contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from System with `layout`, and `new_size` is valid for it (the
        // caller's contract).
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        // On failure the old block stays; either way one of the two sizes is not held.
        Self::release(if moved.is_null() {
            new_size
        } else {
            layout.size()
        });
        moved
    }
}
