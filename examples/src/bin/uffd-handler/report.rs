//! What is said about a VM: the JSON stats line (`--stats`) and the summary log line.

use std::time::Duration;

use serde::Serialize;
use userfaultfd::serve::Stats;

/// What a VM is, for the reports.
pub struct VmInfo {
    pub id: u64,
    pub pid: libc::pid_t,
    pub regions: usize,
    pub bytes: usize,
    pub page_size: usize,
}

#[derive(Serialize)]
struct Pages {
    demand: u64,
    prefetch: u64,
    background: u64,
    replay: u64,
    zero: u64,
    removed_zero: u64,
    failed: u64,
}

#[derive(Serialize)]
struct LatencyUs {
    count: u64,
    p50: f64,
    p99: f64,
    max: f64,
}

#[derive(Serialize)]
struct StatsLine {
    vm: u64,
    pid: libc::pid_t,
    #[serde(rename = "final")]
    last: bool,
    regions: usize,
    bytes: usize,
    page_size: usize,
    elapsed_ms: f64,
    populated_ms: Option<f64>,
    demand_faults: u64,
    pages: Pages,
    bytes_copied: u64,
    copy_ioctls: u64,
    eexist: u64,
    eagain: u64,
    events: u64,
    wp_faults: u64,
    source_errors: u64,
    latency_us: LatencyUs,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn us(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e9).round() / 1e3
}

/// One JSON object, on one line.
pub fn stats_json(vm: &VmInfo, s: &Stats, elapsed: Duration, last: bool) -> String {
    let line = StatsLine {
        vm: vm.id,
        pid: vm.pid,
        last,
        regions: vm.regions,
        bytes: vm.bytes,
        page_size: vm.page_size,
        elapsed_ms: ms(elapsed),
        populated_ms: s.time_to_populated.map(ms),
        demand_faults: s.demand_faults,
        pages: Pages {
            demand: s.pages_demand,
            prefetch: s.pages_prefetch,
            background: s.pages_background,
            replay: s.pages_replay,
            zero: s.pages_zero,
            removed_zero: s.pages_removed_zero,
            failed: s.pages_failed,
        },
        bytes_copied: s.bytes_copied,
        copy_ioctls: s.copy_ioctls,
        eexist: s.already_mapped,
        eagain: s.mapping_changing,
        events: s.events,
        wp_faults: s.wp_faults,
        source_errors: s.source_errors,
        latency_us: LatencyUs {
            count: s.latency.count,
            p50: us(s.latency.p50),
            p99: us(s.latency.p99),
            max: us(s.latency.max),
        },
    };
    serde_json::to_string(&line).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// `1.5 MiB`-style sizes.
pub fn size(bytes: usize) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// The summary log line's body: pages by path, population, latency.
pub fn summary(vm: &VmInfo, s: &Stats, elapsed: Duration) -> String {
    let populated = match s.time_to_populated {
        Some(d) => format!("populated in {:.1} ms", ms(d)),
        None => "not fully populated".to_string(),
    };
    format!(
        "{} regions, {}, {}-byte pages; {} pages served (demand {}, prefetch {}, background {}, \
         replay {}; {} zero, {} zero after balloon removal, {} failed), {} events, {} write \
         faults; {populated}; fault latency p50 {:.1} us, p99 {:.1} us, max {:.1} us; served \
         {:.3} s",
        vm.regions,
        size(vm.bytes),
        vm.page_size,
        s.pages_present() + s.pages_removed_zero,
        s.pages_demand,
        s.pages_prefetch,
        s.pages_background,
        s.pages_replay,
        s.pages_zero,
        s.pages_removed_zero,
        s.pages_failed,
        s.events,
        s.wp_faults,
        us(s.latency.p50),
        us(s.latency.p99),
        us(s.latency.max),
        elapsed.as_secs_f64(),
    )
}
