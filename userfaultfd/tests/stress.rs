//! Stress in the style of the kernel's `uffd-stress`: concurrent locking, fault-handling and
//! background-copy threads over anonymous, shmem (memfd `MAP_SHARED`) and hugetlb memory, with
//! and without write-protect; every page counter must equal its shadow copy at the end. The
//! engine is `test_kit::stress`, shared with the long-running `uffd-stress` command
//! (`cargo run --release -p examples --bin uffd-stress -- --bounces N --mib M`).

use std::sync::Mutex;
use std::time::Duration;

use test_kit::stress::{run_bounded, Config, MemKind, Outcome};

/// Sizes small enough for a debug build on 2 CPUs; the command does the long runs.
fn config(kind: MemKind, wp: bool) -> Config {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    Config {
        kind,
        pages: if kind == MemKind::Hugetlb { 12 } else { 1024 },
        bounces: if emulated() { 8 } else { 32 },
        wp,
        threads,
        ops_per_bounce: if kind == MemKind::Hugetlb { 300 } else { 1000 },
        bounce_limit: Duration::from_secs(if emulated() { 120 } else { 20 }),
    }
}

/// Whether this runs in `cargo xtask vm-test`'s guest (`UFFD_TEST_VM` set), where an emulated
/// CPU makes every fault 10-14 times slower: fewer bounces, longer bounds.
fn emulated() -> bool {
    std::env::var_os("UFFD_TEST_VM").is_some_and(|v| v == "tcg")
}

/// The hugetlb runs take turns: each checks that twice its huge pages are free, which both
/// could pass at once and then run short of the shared pool.
static HUGETLB: Mutex<()> = Mutex::new(());

fn stress(kind: MemKind, wp: bool) {
    if !test_kit::privilege::require(test_kit::privilege::Need::KernelFaults) {
        return;
    }
    let cfg = config(kind, wp);
    let _turn =
        (kind == MemKind::Hugetlb).then(|| HUGETLB.lock().unwrap_or_else(|p| p.into_inner()));
    let limit = Duration::from_secs(if emulated() { 600 } else { 60 });
    match run_bounded(cfg, limit) {
        Ok(Outcome::Done(r)) => {
            println!("{kind:?} wp={wp}: {r:?}");
            assert!(r.missing_faults > 0, "no fault was raced: {r:?}");
            assert_eq!(r.verified_pages % cfg.pages as u64, 0);
            assert!(r.verified_pages > 0);
            if wp {
                assert!(r.wp_faults > 0, "no write-protect fault: {r:?}");
            }
        }
        Ok(Outcome::Skipped(why)) => test_kit::report::skip(format!("{kind:?} wp={wp}: {why}")),
        Err(e) => panic!("{kind:?} wp={wp}: {e}"),
    }
}

#[test]
fn anon() {
    stress(MemKind::Anon, false);
}

#[test]
fn anon_wp() {
    stress(MemKind::Anon, true);
}

#[test]
fn shmem() {
    stress(MemKind::Shmem, false);
}

#[test]
fn shmem_wp() {
    stress(MemKind::Shmem, true);
}

#[test]
fn hugetlb() {
    stress(MemKind::Hugetlb, false);
}

#[test]
fn hugetlb_wp() {
    stress(MemKind::Hugetlb, true);
}
