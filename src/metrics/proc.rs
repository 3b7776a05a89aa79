//! The process metrics: CPU time, resident memory and open file descriptors, read from
//! `/proc/self` by a collector each time the registry is encoded (Linux only; nothing where
//! `/proc` is missing). No `libc`: the two `sysconf` values are assumed, see [`read_proc`].

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// CPU, memory and file descriptors of this process, read from `/proc/self` at scrape time.
/// Nothing is exported where `/proc` is missing.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = read_proc() else { return Ok(()) };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(enc.encode_descriptor("process_cpu", "User and system CPU time", Some(&Unit::Seconds), cpu.metric_type())?)?;
        let rss = ConstGauge::new(p.rss_bytes as i64);
        rss.encode(enc.encode_descriptor(
            "process_resident_memory",
            "Resident memory size",
            Some(&Unit::Bytes),
            rss.metric_type(),
        )?)?;
        let fds = ConstGauge::new(p.open_fds as i64);
        fds.encode(enc.encode_descriptor("process_open_fds", "Open file descriptors", None, fds.metric_type())?)?;
        Ok(())
    }
}

struct ProcStats {
    cpu_seconds: f64,
    rss_bytes: u64,
    open_fds: usize,
}

/// Linux `/proc/self/stat` fields 14/15 (utime/stime, clock ticks) and 24 (rss, pages).
/// Ticks are 100 Hz and pages 4 KiB on every Linux this runs on; avoiding `libc` for two
/// `sysconf` calls is worth that assumption.
fn read_proc() -> Option<ProcStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field n is f[n - 3].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let rss_pages: u64 = f.get(21)?.parse().ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    Some(ProcStats { cpu_seconds: (utime + stime) as f64 / 100.0, rss_bytes: rss_pages * 4096, open_fds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_are_read_on_linux() {
        if std::path::Path::new("/proc/self/stat").exists() {
            let p = read_proc().expect("parse /proc/self/stat");
            assert!(p.rss_bytes > 0 && p.open_fds > 0);
            let text = crate::metrics::Metrics::new().encode();
            assert!(text.contains("xmpp_cm_process_cpu_seconds_total "), "{text}");
            assert!(text.contains("xmpp_cm_process_resident_memory_bytes "), "{text}");
        }
    }
}
