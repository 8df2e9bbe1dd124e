//! What keeps card data and keys out of the vault process's memory images: the process may
//! not be dumped or traced by its peers and writes no core file, and every heap block is wiped
//! when it is freed. Key material has its own locked pages (`locked`).
//!
//! Freed memory is the bulk of what a dump finds: tonic's decode buffer, rustls' decrypted
//! chunks and the decoded message's strings each held a copy of every card number the vault
//! received. [`ZeroizingAllocator`] wipes each of them as it is freed, right after the request
//! is decoded (tonic drops a unary request's decode buffer before the handler runs). A codec
//! could not do this: tonic lends a decoder its buffer read-only (`DecodeBuf` is only a
//! `bytes::Buf`), so a "zeroizing codec" could only add a copy, never wipe tonic's. What stays
//! out of reach is memory a dependency keeps and reuses without freeing it: an open
//! connection's receive buffers in rustls and h2 (see `vault/docs/keys.md`, "Keep card data and
//! keys out of memory dumps").

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Why the process could not be hardened at start.
#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    /// `prctl(PR_SET_DUMPABLE, 0)` failed.
    #[error("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {0}")]
    Dumpable(std::io::Error),
    /// `setrlimit(RLIMIT_CORE, 0)` failed.
    #[error("cannot forbid core files (setrlimit RLIMIT_CORE 0): {0}")]
    CoreLimit(std::io::Error),
}

/// Makes the process non-dumpable (no core dump; `ptrace` and `/proc/<pid>/mem` only with
/// `CAP_SYS_PTRACE`) and sets its core file size limit, soft and hard, to zero. Call it first
/// in `main`, before any secret is read.
pub fn harden_process() -> Result<(), HardeningError> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory of ours.
        let result = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
        if result != 0 {
            return Err(HardeningError::Dumpable(std::io::Error::last_os_error()));
        }
    }
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `no_core` is a valid `rlimit` that outlives the call, which only reads it.
    let result = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
    if result != 0 {
        return Err(HardeningError::CoreLimit(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The system allocator, wiping every block before it is freed (and the old block of every
/// reallocation), so that freed request buffers, decoded messages and intermediate copies of
/// card data do not linger in free memory for a dump to find. The binary installs it as the
/// global allocator.
///
/// Its cost is a `memset` over every freed byte, and reallocations that always move (the
/// default `realloc` allocates, copies and frees, so the old block is wiped too).
#[derive(Debug, Clone, Copy, Default)]
pub struct ZeroizingAllocator;

// SAFETY: every method delegates the allocation itself to `System`, which upholds the
// `GlobalAlloc` contract; `dealloc` only writes to the block it is about to free, which the
// caller owns and no longer uses. `realloc` is the trait's default (alloc, copy, dealloc),
// which is correct for any allocator.
unsafe impl GlobalAlloc for ZeroizingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract (a non-zero-sized layout) is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator with `layout`, so it points to
        // `layout.size()` bytes that the caller owns and gives up here; wiping them before
        // `System` frees them is a write within the block. `zeroize_bytes` is a `memset` the
        // compiler may not remove as a dead store before the free.
        unsafe {
            zeroize::zeroize_bytes(std::slice::from_raw_parts_mut(ptr, layout.size()));
            System.dealloc(ptr, layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardening leaves the process non-dumpable with a core file limit of zero. It runs in a
    /// child process (this test binary again), so the test runner itself stays as it was.
    #[test]
    fn hardening_makes_the_process_non_dumpable() {
        if std::env::var_os("TANDEM_HARDENING_CHILD").is_some() {
            harden_process().unwrap();
            #[cfg(target_os = "linux")]
            {
                // SAFETY: PR_GET_DUMPABLE takes no argument and returns the flag.
                assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
            }
            let mut limit = libc::rlimit {
                rlim_cur: 1,
                rlim_max: 1,
            };
            // SAFETY: `limit` is a valid `rlimit` the call writes into.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) }, 0);
            assert_eq!((limit.rlim_cur, limit.rlim_max), (0, 0));
            return;
        }
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hardening::tests::hardening_makes_the_process_non_dumpable",
            ])
            .env("TANDEM_HARDENING_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
    }
}
