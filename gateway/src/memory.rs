//! What an operator needs to see that connections cannot exhaust memory:
//! the process's resident memory and the limit it runs under (a container's
//! cgroup), as `gateway_memory_resident_bytes` and
//! `gateway_memory_limit_bytes`; with `gateway_connections_open` and the
//! measured cost of an idle connection (README) they tell how close the
//! gateway is to its limit.

/// Resident memory of this process, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1
/// `memory.limit_in_bytes`); `None` without one.
pub fn limit_bytes() -> Option<i64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max");
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    let text = v2.or_else(|_| v1()).ok()?;
    let limit: i64 = text.trim().parse().ok()?;
    // cgroup v1 writes "no limit" as a huge number.
    (limit < i64::MAX / 2).then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc() {
        let bytes = resident_bytes().expect("/proc/self/statm");
        assert!(bytes > 1_000_000, "{bytes}");
    }
}
