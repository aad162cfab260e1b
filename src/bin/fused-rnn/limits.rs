//! How much a run may produce: `--max-output`, whose default comes from the memory this
//! process can still use.

use fused_rnn::error::{Error, Result};
use fused_rnn::size;

/// A byte count as a flag takes it: `1500000`, `512M`, `4G`, `4GiB`, `2T` (binary units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "size `{s}` is not a byte count (e.g. 1500000, 512M, 4GiB)"
            ))
        };
        let t = s.trim();
        let t = t.strip_suffix('B').unwrap_or(t);
        let t = t.strip_suffix('i').unwrap_or(t);
        let (digits, shift) = match t.char_indices().last() {
            Some((i, 'K' | 'k')) => (&t[..i], 10),
            Some((i, 'M' | 'm')) => (&t[..i], 20),
            Some((i, 'G' | 'g')) => (&t[..i], 30),
            Some((i, 'T' | 't')) => (&t[..i], 40),
            _ => (t, 0),
        };
        let n: u64 = digits.trim().parse().map_err(|_| bad())?;
        n.checked_mul(1 << shift).map(ByteSize).ok_or_else(bad)
    }
}

/// A number field of a `/proc`-style line `key value [unit]`, in bytes (`kB` lines scaled).
fn field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    Some(if words.next() == Some("kB") {
        value.saturating_mul(1024)
    } else {
        value
    })
}

/// The soft limit of `name` in /proc/self/limits ("Max address space"), None if unlimited.
fn rlimit(limits: &str, name: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// What the memory cgroup of this process can still take: its limit less its use, page cache
/// that it can drop not counted (cgroup v2's `memory.max`, or v1's `memory.limit_in_bytes`).
fn cgroup_headroom() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    for line in read("/proc/self/cgroup")?.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (dir, files) = if controllers.is_empty() {
            let files = ("memory.max", "memory.current", "inactive_file ");
            (format!("/sys/fs/cgroup{path}"), files)
        } else if controllers.split(',').any(|c| c == "memory") {
            let files = (
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file ",
            );
            (format!("/sys/fs/cgroup/memory{path}"), files)
        } else {
            continue;
        };
        let number = |file: &str| read(&format!("{dir}/{file}"))?.trim().parse::<u64>().ok();
        // "max" (v2) does not parse: no limit here.
        let (Some(limit), Some(usage)) = (number(files.0), number(files.1)) else {
            continue;
        };
        let stat = read(&format!("{dir}/memory.stat")).unwrap_or_default();
        let droppable = field(&stat, files.2).unwrap_or(0);
        return Some(limit.saturating_sub(usage.saturating_sub(droppable)));
    }
    None
}

/// The memory this process can still allocate and where that figure comes from: the least of
/// the system's available memory, its cgroup's headroom and its address-space and data
/// limits. None where none of them can be read.
pub fn available_memory() -> Option<(u64, &'static str)> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let mut bounds: Vec<(u64, &'static str)> = Vec::new();
    if let Some(avail) = read("/proc/meminfo").and_then(|m| field(&m, "MemAvailable:")) {
        bounds.push((avail, "available memory"));
    }
    if let Some(headroom) = cgroup_headroom() {
        bounds.push((headroom, "the cgroup's memory limit"));
    }
    if let (Some(limits), Some(status)) = (read("/proc/self/limits"), read("/proc/self/status")) {
        let used = |key| field(&status, key).unwrap_or(0);
        if let Some(limit) = rlimit(&limits, "Max address space") {
            bounds.push((
                limit.saturating_sub(used("VmSize:")),
                "the address-space limit",
            ));
        }
        if let Some(limit) = rlimit(&limits, "Max data size") {
            bounds.push((limit.saturating_sub(used("VmData:")), "the data-size limit"));
        }
    }
    bounds.into_iter().min_by_key(|&(bytes, _)| bytes)
}

/// Used when no memory figure can be read.
const FALLBACK_LIMIT: u64 = 4 << 30;

/// The output limit: `flag` when given, else a quarter of the memory available (the run holds
/// its inputs, its working buffers and its result at once); with a sentence saying which.
pub fn output_limit(flag: Option<ByteSize>) -> (u64, String) {
    if let Some(ByteSize(bytes)) = flag {
        return (bytes, format!("--max-output {}", size::human(bytes)));
    }
    match available_memory() {
        Some((bytes, source)) => (
            bytes / 4,
            format!(
                "the default limit {}, a quarter of {} ({}); --max-output sets another",
                size::human(bytes / 4),
                source,
                size::human(bytes)
            ),
        ),
        None => (
            FALLBACK_LIMIT,
            format!(
                "the default limit {} (the available memory is unknown); --max-output sets another",
                size::human(FALLBACK_LIMIT)
            ),
        ),
    }
}

/// Refuses a result of `tensors` (name and shape, stored as f32), plus `extra` working bytes
/// (`extra_what`), when it comes to more than `limit` bytes.
pub fn check_result(
    tensors: &[(&str, Vec<usize>)],
    extra: (u64, &str),
    limit: &(u64, String),
) -> Result<()> {
    let mut total: u128 = extra.0 as u128;
    for (_, shape) in tensors {
        let elements = shape
            .iter()
            .try_fold(1u128, |n, &d| n.checked_mul(d as u128));
        total = total.saturating_add(elements.map_or(u128::MAX, |n| n.saturating_mul(4)));
    }
    if total <= limit.0 as u128 {
        return Ok(());
    }
    let mut what: Vec<String> = tensors
        .iter()
        .map(|(name, shape)| format!("{name} {shape:?}"))
        .collect();
    if extra.0 > 0 {
        what.push(format!("{} of {}", extra.1, size::human(extra.0)));
    }
    Err(Error::TooLarge {
        what: format!("the result ({})", what.join(", ")),
        needed: u64::try_from(total).map_or("more than 2^64 bytes".into(), size::human),
        limit: limit.1.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        let parse = |s: &str| s.parse::<ByteSize>().map(|b| b.0);
        assert_eq!(parse("1500000").unwrap(), 1_500_000);
        assert_eq!(parse("512M").unwrap(), 512 << 20);
        assert_eq!(parse("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse("2T").unwrap(), 2 << 40);
        assert_eq!(parse("3k").unwrap(), 3072);
        for bad in ["", "G", "-1", "1.5G", "99999999999T", "4X"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proc_fields_and_limits_parse() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:   2000 kB\n";
        assert_eq!(field(meminfo, "MemAvailable:"), Some(2000 * 1024));
        let limits = "Max data size             unlimited            unlimited            bytes\n\
                      Max address space         1073741824           unlimited            bytes\n";
        assert_eq!(rlimit(limits, "Max data size"), None);
        assert_eq!(rlimit(limits, "Max address space"), Some(1 << 30));
        assert!(available_memory().is_some_and(|(bytes, _)| bytes > 0));
    }

    #[test]
    fn results_over_the_limit_are_refused_with_their_size() {
        let limit = (1000, "the limit".to_string());
        assert!(check_result(&[("h_n", vec![2, 5, 7])], (0, ""), &limit).is_ok());
        let e = check_result(&[("weights", vec![1, 4096, 1 << 20])], (0, ""), &limit)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the result (weights [1, 4096, 1048576]) needs 16.0 GiB, more than the limit"
        );
        let huge = check_result(&[("x", vec![usize::MAX, usize::MAX, 4])], (0, ""), &limit);
        assert!(huge
            .unwrap_err()
            .to_string()
            .contains("more than 2^64 bytes"));
        let training = check_result(&[("h_n", vec![2])], (2000, "the reserve"), &limit);
        assert!(training
            .unwrap_err()
            .to_string()
            .contains("the reserve of 2.0 KiB"));
    }
}
