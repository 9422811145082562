//! What a consumer process reports about itself, read from `/proc/self`
//! (the bench has no `libc`).

/// A `kB` line of `/proc/self/status`, such as `VmHWM` (peak resident set)
/// or `VmRSS` (resident set now); 0 where it is missing.
pub(crate) fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of this process so far, in clock ticks
/// (`utime` and `stime`, fields 14 and 15 of `/proc/self/stat`).
pub(crate) fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces;
    // the fields after it start with field 3 (state).
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
    field(14) + field(15)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub(crate) fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time of each thread of this process so far, in nanoseconds, by
/// thread id (the first field of `/proc/self/task/*/schedstat`: time on the
/// CPU, not rounded to clock ticks).
pub(crate) fn thread_cpu_nanos() -> std::collections::HashMap<u64, u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return std::collections::HashMap::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let tid = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            Some((tid, stat.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// The CPU nanoseconds this process's threads spent since `before` (a
/// `thread_cpu_nanos`): what a thread that ended in between spent is
/// missed, a thread that started in between counts whole.
pub(crate) fn cpu_nanos_since(before: &std::collections::HashMap<u64, u64>) -> u64 {
    thread_cpu_nanos()
        .into_iter()
        .map(|(tid, nanos)| nanos.saturating_sub(before.get(&tid).copied().unwrap_or(0)))
        .sum()
}
