//! Checked sizes: element counts that cannot overflow, buffers whose failed allocation is an
//! error rather than an abort, and byte counts as people read them.

use crate::error::{Error, Result};
use std::mem::MaybeUninit;

/// The number of elements of `shape`, or an error naming `what` when it overflows.
pub fn elements(what: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::TooLarge {
            what: format!("{what} {shape:?}"),
            needed: "more elements".into(),
            limit: "a count can hold (2^64)".into(),
        })
}

/// The bytes of `count` values of `width` bytes each, or an error naming `what`.
pub fn bytes(what: &str, count: usize, width: usize) -> Result<usize> {
    count.checked_mul(width).ok_or_else(|| Error::TooLarge {
        what: what.into(),
        needed: format!("{count} × {width} bytes"),
        limit: "a count can hold (2^64)".into(),
    })
}

/// `n` zeros, or an error naming `what` when the memory cannot be had. Like `vec![0; n]`, large
/// buffers come zeroed from the system rather than written.
pub(crate) fn zeros<T: bytemuck::Zeroable>(what: &str, n: usize) -> Result<Vec<T>> {
    let too_large = || unallocatable::<T>(what, n);
    let layout = std::alloc::Layout::array::<T>(n).map_err(|_| too_large())?;
    if layout.size() == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: the layout has a non-zero size; alloc_zeroed returns null or a block of it.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        return Err(too_large());
    }
    // SAFETY: `ptr` is a global-allocator block with the layout of [T; n], all bytes zero,
    // which is a valid T (Zeroable); length and capacity are both n.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// `n` values written by `fill`, or an error naming `what` when the memory cannot be had: a
/// buffer about to be overwritten, which `zeros` would write twice.
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn filled<T>(
    what: &str,
    n: usize,
    fill: impl FnOnce(&mut [MaybeUninit<T>]),
) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| unallocatable::<T>(what, n))?;
    fill(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: the capacity is at least n, and the caller's `fill` wrote all n values.
    unsafe { v.set_len(n) };
    Ok(v)
}

fn unallocatable<T>(what: &str, n: usize) -> Error {
    Error::TooLarge {
        what: what.into(),
        needed: human(n.saturating_mul(std::mem::size_of::<T>()) as u64),
        limit: "what this process can allocate".into(),
    }
}

/// `bytes` in binary units: "16.0 GiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let (mut value, mut unit) = (bytes as f64 / 1024.0, 0);
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_counts_and_allocations_are_errors() {
        assert_eq!(elements("x", &[3, 0, 5]).unwrap(), 0);
        assert_eq!(elements("x", &[]).unwrap(), 1);
        let big = elements("query", &[1 << 44, 1 << 20, 1 << 4]).unwrap_err();
        assert!(
            big.to_string().starts_with("query [17592186044416"),
            "{big}"
        );
        assert!(bytes("out", usize::MAX / 2, 4).is_err());
        assert!(zeros::<f32>("weights", usize::MAX / 8).is_err());
        assert_eq!(zeros::<f32>("weights", 3).unwrap(), [0.0; 3]);
        assert_eq!(human(1000), "1000 bytes");
        assert_eq!(human(16 << 30), "16.0 GiB");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
