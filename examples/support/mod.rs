//! What the examples share: reading a process's memory from /proc.

/// A `/proc/<process>/status` field in KiB (`VmRSS:`, `VmHWM:`), 0 when it cannot be read;
/// `process` is a PID or `self`.
pub fn status_kib(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// This process's resident memory, in KiB.
#[allow(dead_code)] // not every example uses both
pub fn rss_kib() -> u64 {
    status_kib("self", "VmRSS:")
}
