//! The whole machine's CPU over a leg, beside the MTA's own.
//!
//! Every leg runs its injector, its sink and its MTA on the same cores. When
//! the raw pipeline (injector straight into the sink) keeps every core busy,
//! its rate is set by the CPU time one message costs the machine, and an MTA
//! leg on the same cores can reach at most
//!
//! ```text
//! spate / raw ≤ (machine CPU per message, raw) / (machine CPU per message, spate)
//! ```
//!
//! That is the "CPU ceiling" the relay prints: what spate / raw would be if
//! both legs kept every core busy with their measured cost per message. The
//! figures come from `/proc/stat` (every process, kernel work included) and
//! from the harness's own process clock (injector, sink, DNS server).

/// A reading of the machine's CPU counters and the harness's CPU clock.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    /// Busy and total jiffies summed over all CPUs (see [`parse_proc_stat`]).
    machine: Option<Jiffies>,
    harness_s: f64,
}

/// From the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jiffies {
    /// user, nice, system, irq and softirq: work done on this machine.
    pub busy: u64,
    /// busy plus idle, iowait and steal: the time the CPUs existed.
    pub total: u64,
}

/// What a leg cost between two readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSpent {
    /// Average number of busy CPUs (None without `/proc/stat`).
    pub busy_cores: Option<f64>,
    /// CPU seconds the whole machine spent, every process and the kernel.
    pub machine_s: Option<f64>,
    /// CPU seconds of this process: the injector, the sink, the DNS server.
    pub harness_s: f64,
}

impl CpuReading {
    pub fn now() -> CpuReading {
        CpuReading {
            machine: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|t| parse_proc_stat(&t)),
            harness_s: cpu_seconds(libc::CLOCK_PROCESS_CPUTIME_ID),
        }
    }

    /// The CPU spent since this reading.
    pub fn spent(&self) -> CpuSpent {
        let later = CpuReading::now();
        let machine = match (self.machine, later.machine) {
            (Some(a), Some(b)) if b.total > a.total => Some((b.busy - a.busy, b.total - a.total)),
            _ => None,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ticks = clock_ticks_per_s();
        CpuSpent {
            busy_cores: machine.map(|(busy, total)| cpus * busy as f64 / total as f64),
            machine_s: machine.map(|(busy, _)| busy as f64 / ticks),
            harness_s: (later.harness_s - self.harness_s).max(0.0),
        }
    }
}

/// The first (`cpu`, all CPUs) line of `/proc/stat`: user nice system idle
/// iowait irq softirq steal (guest time is already inside user and nice).
pub fn parse_proc_stat(text: &str) -> Option<Jiffies> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    if f.len() < 4 {
        return None;
    }
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    Some(Jiffies {
        busy,
        total: busy + at(3) + at(4) + at(7),
    })
}

/// CPU time consumed so far by `clock` (a thread or the whole process);
/// NaN if the clock cannot be read.
pub fn cpu_seconds(clock: libc::clockid_t) -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the
    // call, and the clock ids used here exist on every Linux kernel.
    let status = unsafe { libc::clock_gettime(clock, &mut now) };
    if status != 0 {
        return f64::NAN;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// The kernel's clock ticks per second, the unit of `/proc`'s CPU times.
pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_line_splits_into_busy_and_total() {
        let text = "cpu  100 5 40 1000 7 3 2 11 0 0\ncpu0 50 2 20 500 3 1 1 5 0 0\nintr 1 2\n";
        // busy: user 100 + nice 5 + system 40 + irq 3 + softirq 2;
        // total adds idle 1000, iowait 7 and steal 11.
        assert_eq!(
            parse_proc_stat(text),
            Some(Jiffies {
                busy: 150,
                total: 1168
            })
        );
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2\n"), None);
    }

    #[test]
    fn a_busy_thread_shows_in_both_clocks() {
        let start = CpuReading::now();
        // 300 ms of the thread's own CPU time, however long a loaded
        // machine takes to give it that.
        let spin = std::thread::spawn(|| {
            let mut x = 0u64;
            while cpu_seconds(libc::CLOCK_THREAD_CPUTIME_ID) < 0.3 {
                for _ in 0..10_000 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            x
        });
        spin.join().unwrap();
        let spent = start.spent();
        assert!(
            spent.harness_s >= 0.25,
            "the harness clock saw {} s",
            spent.harness_s
        );
        // /proc/stat counts in ticks (10 ms): the machine saw at least most
        // of that thread's work.
        let machine = spent.machine_s.expect("/proc/stat is readable on Linux");
        assert!(machine >= 0.2, "the machine counters saw {machine} s");
        let cores = spent.busy_cores.unwrap();
        assert!(cores > 0.5, "busy cores {cores}");
    }
}
