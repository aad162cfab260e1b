//! Checked sizes: element counts that cannot overflow, buffers whose failed allocation is an
//! error rather than an abort, and byte counts as people read them.

use crate::error::{Error, Result};

/// The number of elements of `shape`, or an error naming `what` when it overflows.
pub fn elements(what: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::TooLarge {
            what: format!("{what} {shape:?}"),
            needed: "more elements than usize holds".into(),
            limit: usize::MAX.to_string(),
        })
}

/// The bytes of `count` values of `width` bytes each, or an error naming `what`.
pub fn bytes(what: &str, count: usize, width: usize) -> Result<usize> {
    count.checked_mul(width).ok_or_else(|| Error::TooLarge {
        what: what.into(),
        needed: format!("{count} × {width} bytes"),
        limit: human(u64::MAX),
    })
}

/// `n` zeros, or an error naming `what` when the memory cannot be had.
pub(crate) fn zeros<T: Copy + Default>(what: &str, n: usize) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::TooLarge {
        what: what.into(),
        needed: human(n.saturating_mul(std::mem::size_of::<T>()) as u64),
        limit: "what this process can allocate".into(),
    })?;
    v.resize(n, T::default());
    Ok(v)
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
