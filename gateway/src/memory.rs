//! What an operator needs to see that connections cannot exhaust memory:
//! the process's resident memory and the limit it runs under (a container's
//! cgroup), as `gateway_memory_resident_bytes` and
//! `gateway_memory_limit_bytes`; with `gateway_connections_open` and the
//! measured cost of an idle connection (README) they tell how close the
//! gateway is to its limit.

/// Resident memory of this process (`VmRSS` in `/proc/self/status`, which
/// the kernel writes in kB whatever the page size).
pub fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb: i64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kb * 1024)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1
/// `memory.limit_in_bytes`); `None` without one.
pub fn limit_bytes() -> Option<i64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max");
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    parse_limit(&v2.or_else(|_| v1()).ok()?)
}

/// A cgroup memory limit file's value: `None` for v2's `max` and for v1's
/// "no limit" (a number near `i64::MAX`).
fn parse_limit(text: &str) -> Option<i64> {
    let limit: i64 = text.trim().parse().ok()?;
    (limit < i64::MAX / 2).then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc() {
        let bytes = resident_bytes().expect("/proc/self/status");
        assert!(bytes > 1_000_000, "{bytes}");
    }

    #[test]
    fn a_cgroup_limit_is_a_number_and_no_limit_is_none() {
        assert_eq!(parse_limit("1073741824\n"), Some(1 << 30));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit(""), None);
    }
}
