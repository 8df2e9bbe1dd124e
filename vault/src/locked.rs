//! Memory for key material: a page of its own per key, locked in RAM (`mlock`: never written to
//! swap), left out of core dumps (`MADV_DONTDUMP`), wiped and unmapped when dropped.
//!
//! Locking is limited by `RLIMIT_MEMLOCK`; a vault that may not lock runs on with a warning,
//! once (keys could then reach swap), and its key pages are still left out of core dumps.

#![allow(unsafe_code)]

use std::ptr::NonNull;
use std::sync::Once;

/// `N` bytes in a private page of their own, locked and left out of core dumps. Not `Clone`:
/// a key has one home. Starts zeroed.
pub(crate) struct LockedBytes<const N: usize> {
    /// The start of a private anonymous mapping of [`LockedBytes::MAPPING_BYTES`] bytes,
    /// owned by this value alone.
    page: NonNull<[u8; N]>,
}

// SAFETY: `LockedBytes` owns its mapping exclusively, like a `Box<[u8; N]>`: moving it to
// another thread moves that ownership, and `&LockedBytes` gives only shared reads.
unsafe impl<const N: usize> Send for LockedBytes<N> {}
// SAFETY: as for `Send`: shared references allow only reads of plain bytes.
unsafe impl<const N: usize> Sync for LockedBytes<N> {}

static MLOCK_WARNING: Once = Once::new();
static DONTDUMP_WARNING: Once = Once::new();

impl<const N: usize> LockedBytes<N> {
    /// One page: the unit of `mlock` and `madvise`, and at least any key's size.
    const MAPPING_BYTES: usize = 4096;

    /// A zeroed, locked, non-dumpable page holding `N` bytes.
    pub(crate) fn zeroed() -> LockedBytes<N> {
        const { assert!(N <= Self::MAPPING_BYTES, "a key fits in one page") };
        let len = Self::MAPPING_BYTES;
        // SAFETY: an anonymous private mapping at an address the kernel chooses aliases no
        // existing memory; the arguments are valid for mmap(2).
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(len, len).expect("a page is a valid layout"),
            );
        }
        #[cfg(target_os = "linux")]
        {
            // SAFETY: `address..address + len` is the mapping just made, owned here.
            if unsafe { libc::madvise(address, len, libc::MADV_DONTDUMP) } != 0 {
                let error = std::io::Error::last_os_error();
                DONTDUMP_WARNING.call_once(|| {
                    tracing::warn!(
                        %error,
                        "cannot leave key memory out of core dumps (madvise MADV_DONTDUMP); the \
                         process is still not dumpable"
                    );
                });
            }
        }
        #[cfg(not(target_os = "linux"))]
        DONTDUMP_WARNING.call_once(|| {
            tracing::warn!("this system cannot leave key memory out of core dumps");
        });
        // SAFETY: as for `madvise`: the range is the mapping just made.
        if unsafe { libc::mlock(address, len) } != 0 {
            let error = std::io::Error::last_os_error();
            MLOCK_WARNING.call_once(|| {
                tracing::warn!(
                    %error,
                    "cannot lock key memory in RAM (mlock): keys may be written to swap; raise \
                     RLIMIT_MEMLOCK (see vault/docs/keys.md)"
                );
            });
        }
        LockedBytes {
            page: NonNull::new(address.cast()).expect("mmap never returns null on success"),
        }
    }

    /// The bytes.
    pub(crate) fn expose(&self) -> &[u8; N] {
        // SAFETY: the page is mapped readable, page-aligned, initialised (zero-filled by the
        // kernel), and owned by `self` for the reference's lifetime.
        unsafe { self.page.as_ref() }
    }

    /// The bytes, to write the key into.
    pub(crate) fn expose_mut(&mut self) -> &mut [u8; N] {
        // SAFETY: as for `expose`, and `&mut self` makes this reference the only one.
        unsafe { self.page.as_mut() }
    }
}

impl<const N: usize> Drop for LockedBytes<N> {
    fn drop(&mut self) {
        zeroize::zeroize_bytes(self.expose_mut());
        // SAFETY: the mapping is owned by `self` and no reference to it outlives this call.
        // munmap(2) also removes its lock, so no munlock is needed.
        let result = unsafe { libc::munmap(self.page.as_ptr().cast(), Self::MAPPING_BYTES) };
        debug_assert_eq!(result, 0, "munmap of our own mapping");
    }
}

impl<const N: usize> std::fmt::Debug for LockedBytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockedBytes([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A locked page starts zeroed, keeps what is written to it, and its mapping is marked
    /// left out of core dumps (`dd` in `/proc/self/smaps`).
    #[test]
    fn key_pages_are_left_out_of_core_dumps() {
        let mut bytes = LockedBytes::<32>::zeroed();
        assert_eq!(bytes.expose(), &[0u8; 32]);
        bytes.expose_mut().copy_from_slice(&[7u8; 32]);
        assert_eq!(bytes.expose(), &[7u8; 32]);
        if cfg!(target_os = "linux") {
            // The page may share a mapping with neighbours of the same flags.
            let address = bytes.expose().as_ptr() as u64;
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let mut containing = false;
            let mut flags = None;
            for line in smaps.lines() {
                if let Some(rest) = line.strip_prefix("VmFlags:") {
                    if containing {
                        flags = Some(rest.to_owned());
                        break;
                    }
                } else if let Some((start, end)) = line
                    .split_whitespace()
                    .next()
                    .and_then(|range| range.split_once('-'))
                    && let (Ok(start), Ok(end)) =
                        (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
                {
                    containing = (start..end).contains(&address);
                }
            }
            let flags = flags.expect("the page's mapping in /proc/self/smaps");
            assert!(flags.split_whitespace().any(|flag| flag == "dd"), "{flags}");
        }
    }
}
