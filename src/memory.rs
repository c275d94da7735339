//! The daemon's memory footprint: how the C allocator returns large buffers.
//!
//! glibc raises its mmap threshold each time a large mmapped block is freed ("dynamic mmap
//! threshold"), so after one 16 MiB ExecSync output every later buffer of that size comes from
//! the heap, and freed heap memory below the top is never returned: the daemon stayed ~35 MB
//! larger after a single 100 MB ExecSync. A fixed threshold keeps every buffer of 128 KiB or
//! more in its own mapping, unmapped when freed; a fixed trim threshold returns freed heap tops;
//! a small arena count keeps bursts of blocking-pool threads from each keeping their own heap,
//! and a periodic `malloc_trim` gives back what such a burst freed inside the arenas.
//! Must be called before the runtime's threads start. No-op on other C libraries.

/// Blocks at least this large get their own mapping (glibc's initial default, now fixed).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;
/// Free memory at the top of a heap beyond this is returned to the kernel.
pub const TRIM_THRESHOLD: i32 = 1024 * 1024;
/// At most this many malloc arenas: glibc's default (8 per core) gives each blocking-pool
/// thread that ever ran into contention an arena of its own, whose freed memory stays resident
/// after a burst of parallel RPCs.
pub const ARENA_MAX: i32 = 2;

/// Fixes glibc's mmap and trim thresholds (see the module doc).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune_allocator() {
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_allocator() {}

/// How often [`trim_periodically`] hands freed heap memory back.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Returns the free memory of every malloc arena to the kernel (`malloc_trim`), not only the
/// top of the main heap as the trim threshold does: after a burst of parallel RPCs the freed
/// chunks sit in the middle of the arenas the blocking-pool threads used. Blocking (walks the
/// arenas; about a millisecond).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() {
    // SAFETY: malloc_trim only releases free memory; it is thread-safe (takes each arena lock).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}

/// Trims every [`TRIM_EVERY`], on the blocking pool, for as long as the runtime runs.
pub async fn trim_periodically() {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Resident set size of this process in bytes (`VmRSS`), for tests and diagnostics.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
