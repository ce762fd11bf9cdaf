//! The machine's busy CPU time, read from `/proc/stat`: what a run of sagas cost the
//! whole machine, services, broker and database together.

/// Busy time of all CPUs since boot (`/proc/stat`: user, nice, system, irq, softirq,
/// steal), in seconds.
pub(crate) fn busy_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow::anyhow!("/proc/stat has no cpu line"))?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().map_err(|e| anyhow::anyhow!("/proc/stat: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<f64>();
    // USER_HZ is 100 on every Linux architecture's ABI.
    Ok(busy / 100.0)
}
