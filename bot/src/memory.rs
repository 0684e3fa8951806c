//! Keeping the heap near its idle size after a storm (glibc only; elsewhere these do nothing).
//!
//! Two habits of glibc's allocator kept a 10,000-alert notification's memory long after it was
//! handled (measured in BENCHMARKS.md, "Durable at line rate"): its mmap threshold rises to the
//! largest block freed so far, so once a 3.5 MiB body has been freed, the next ones are carved
//! out of the heap instead of mapped and unmapped; and the small blocks of a notification's
//! decoded alerts, once freed, stay in the arena of the thread that freed them. So the
//! threshold is pinned at start (large buffers are mapped, and unmapped when freed), and after
//! a large batch the free pages are handed back.

/// Blocks at least this large are mapped on their own and returned to the system when freed.
const MMAP_THRESHOLD: usize = 256 * 1024;

/// Work on at least this many payload bytes is followed by [`release`].
pub const LARGE_WORK_BYTES: usize = 1024 * 1024;

/// Pins the allocator's mmap threshold; call once, before the runtime starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // exists, with a parameter and value glibc documents.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}

/// Returns the heap's free pages to the system (after a storm's work is done).
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe (it takes the arenas' locks) and only releases
    // memory that is free.
    unsafe {
        libc::malloc_trim(0);
    }
}
