//! CPU time actually spent, and the machine's load, read from Linux's `/proc`. Wall-clock rates on a
//! shared machine depend on what else runs; CPU time per request much less,
//! so it gives a second, steadier view of how close logins come to the cost
//! of the hash each contains. Elsewhere than Linux this is `None` and the
//! report leaves the CPU figures out.

/// Which process's CPU a figure is: this one (the server runs in process,
/// so its figures include the load generator's share) or an external authd
/// on this machine (`--server-pid`: the server's own cost alone).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Process {
    This,
    Pid(u32),
}

impl Process {
    fn proc_dir(self) -> String {
        match self {
            Process::This => "/proc/self".to_owned(),
            Process::Pid(pid) => format!("/proc/{pid}"),
        }
    }

    /// Resident memory in MiB.
    pub fn rss_mib(self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("{}/status", self.proc_dir())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

/// Nanoseconds of user and system time of this whole process, threads that
/// have exited included. Whole clock ticks only (USER_HZ, 100 on Linux), so
/// meant for intervals of a second or more.
pub fn process_ns() -> Option<u64> {
    cpu_ns(Process::This)
}

/// Like [`process_ns`], of the given process.
pub fn cpu_ns(process: Process) -> Option<u64> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string(format!("{}/stat", process.proc_dir())).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields are
    // counted from after its closing parenthesis, where field 3 begins.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * (1_000_000_000 / USER_HZ))
}

/// The 1-minute load average: runnable threads, all processes together.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work() {
        let Some(before) = process_ns() else { return };
        let started = std::time::Instant::now();
        let mut x = 0u64;
        // Spin until 50 ms of CPU show, however busy the machine is.
        while process_ns().unwrap() < before + 50_000_000 {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "no CPU time was counted");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    }
}
