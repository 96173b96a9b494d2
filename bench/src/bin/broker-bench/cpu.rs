//! CPU time of the broker and of the clients, from /proc.

use std::fs;

/// A `/proc/.../stat` line's command name and CPU time (utime + stime) in
/// seconds.
fn ticks(stat: &str) -> Option<(String, f64)> {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (l, r) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat[l + 1..r].to_string();
    let f: Vec<&str> = stat[r + 2..].split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); f[0] is field 3.
    let t = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((comm, t / tck))
}

/// CPU time used so far by the processes `pids` together (the
/// nats-server nodes of `--vs-jetstream`), in seconds; a process that is
/// gone counts 0.
pub fn processes_cpu(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| ticks(&s))
        .map(|t| t.1)
        .sum()
}

/// CPU time used so far, in seconds: (whole process, client runtime
/// threads). Read from /proc; the process total includes threads that have
/// exited, the client part only live threads (the client runtime's threads
/// live for the whole run).
pub fn cpu_now() -> (f64, f64) {
    let total = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0.0, |t| t.1);
    let mut client = 0.0;
    if let Ok(dir) = fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Some((comm, t)) = fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|s| ticks(&s))
                && comm.starts_with("client")
            {
                client += t;
            }
        }
    }
    (total, client)
}

/// CPU used between two `cpu_now` readings over `secs` of wall time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// Cores used by everything but the client threads.
    pub broker: f64,
    /// Cores used by the client runtime's threads.
    pub client: f64,
}

impl Cpu {
    pub fn between(a: (f64, f64), b: (f64, f64), secs: f64) -> Cpu {
        let total = b.0 - a.0;
        let client = b.1 - a.1;
        Cpu {
            broker: (total - client).max(0.0) / secs,
            client: client / secs,
        }
    }
    pub fn show(&self) -> String {
        format!("{:.2} / {:.2}", self.broker, self.client)
    }
}
