//! The binary's global allocator: the system allocator, with big blocks advised onto
//! transparent huge pages.
//!
//! The evaluators allocate a fresh output per op, up to 150 MB (64 channels at 768²), and glibc
//! serves every block above 32 MB with a fresh `mmap`. First-touching those pages cost 4.4M page
//! faults and ~17% of the CPU time of an int8 calibrated TAEF2 build (`exc_page_fault`,
//! `clear_page_erms`, `munmap`). Where THP is in "madvise" mode (Debian's default),
//! `MADV_HUGEPAGE` on the block's 2 MiB-aligned interior brings that to ~70k faults. Small
//! blocks are left alone: they come from glibc's recycled heap and are rarely first-touched.

use std::alloc::{GlobalAlloc, Layout, System};

/// [`System`], plus `madvise(MADV_HUGEPAGE)` on blocks of at least [`HUGE_MIN_BYTES`].
pub struct HugePageAlloc;

/// Below this a block spans too few 2 MiB pages for the advice (one syscall) to pay off.
pub const HUGE_MIN_BYTES: usize = 4 << 20;

const HUGE_PAGE: usize = 2 << 20;

// SAFETY: every call is forwarded to `System` unchanged; `advise` only adds a hint about memory
// the block owns.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        advise(p, new_size);
        p
    }
}

/// Advises the whole huge pages inside `[p, p + size)`. The hint is best effort: a kernel
/// without THP refuses it and the block stays on small pages.
fn advise(p: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    if !p.is_null() && size >= HUGE_MIN_BYTES {
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let end = (p as usize).saturating_add(size) & !(HUGE_PAGE - 1);
        if end > start {
            // SAFETY: [start, end) lies inside the block just allocated, which this process
            // owns; MADV_HUGEPAGE changes no contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, size);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The `THPeligible` field of the mapping holding `addr`, from /proc/self/smaps.
    fn thp_eligible(addr: usize) -> Option<bool> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((lo, hi)) = range {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            if inside {
                if let Some(v) = line.strip_prefix("THPeligible:") {
                    return Some(v.trim() == "1");
                }
            }
        }
        None
    }

    fn thp_mode() -> String {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default()
    }

    #[test]
    fn big_blocks_become_thp_eligible_and_keep_their_contents() {
        if !thp_mode().contains("[madvise]") {
            eprintln!("THP not in madvise mode: nothing to check");
            return;
        }
        let layout = Layout::from_size_align(3 * HUGE_MIN_BYTES, 64).unwrap();
        let p = unsafe { HugePageAlloc.alloc_zeroed(layout) };
        assert!(!p.is_null());
        let block = unsafe { std::slice::from_raw_parts_mut(p, layout.size()) };
        assert!(block.iter().all(|&b| b == 0));
        block.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let mid = (p as usize + layout.size() / 2) & !(HUGE_PAGE - 1);
        assert_eq!(thp_eligible(mid), Some(true));
        assert!(block.iter().enumerate().all(|(i, &b)| b == i as u8));
        unsafe { HugePageAlloc.dealloc(p, layout) };
    }
}
