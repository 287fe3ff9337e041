//! Working sets of `userfaultfd::serve`: recording the pages a workload touches (by prefetch
//! chunk or exactly), saving and loading them, replaying them before the workload runs, and the
//! configurations that are refused. Every wait is bounded.

mod common;

use common::ps;
use common::serving::{anon, byte_of, image_region, user_uffd};
use userfaultfd::serve::{ServeError, ServerBuilder, DEFAULT_PREFETCH};

#[test]
fn a_recorded_working_set_replays_before_the_workload_touches_it() {
    use userfaultfd::serve::WorkingSet;
    let page = ps();
    // Forty touches in 32 prefetch chunks, visited out of order.
    let per_chunk = DEFAULT_PREFETCH / page;
    let pages = 32 * per_chunk;
    let touched: Vec<usize> = (0..40)
        .map(|i| ((i * 17) % 32) * per_chunk + (i * 5) % per_chunk)
        .collect();
    let run = |replay: Option<WorkingSet>| {
        let m = anon(pages);
        let mut b = ServerBuilder::new()
            .region(image_region(&m, pages, page))
            .background_threads(0)
            .record_working_set(true);
        let expect_replayed = replay.is_some();
        if let Some(ws) = replay {
            b = b.replay(ws);
        }
        let server = b.start(user_uffd()).unwrap();
        if expect_replayed {
            // The replay thread copies the recorded chunks before anything is touched.
            common::wait_until("the whole replay", || {
                server.stats().pages_replay >= 32 * per_chunk as u64
            });
        }
        for &p in &touched {
            assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
        }
        let ws = server.working_set();
        (server.shutdown().unwrap(), ws)
    };
    let (first, ws) = run(None);
    assert_eq!(ws.len() as u64, first.pages_demand, "{first:?}");
    assert!(first.demand_faults as usize >= ws.len());
    // Through a file and back.
    let path = std::env::temp_dir().join(format!("uffd-ws-{}.bin", std::process::id()));
    ws.save(&path).unwrap();
    let loaded = WorkingSet::load(&path);
    let _ = std::fs::remove_file(&path);
    let loaded = loaded.unwrap();
    assert_eq!(loaded, ws);
    let (second, ws2) = run(Some(loaded));
    assert_eq!(second.demand_faults, 0, "{second:?}");
    assert!(ws2.is_empty());
    assert_eq!(
        second.pages_replay,
        first.pages_present(),
        "{first:?}\n{second:?}"
    );
}

#[test]
fn an_exact_recording_replays_just_the_touched_pages() {
    use userfaultfd::serve::WorkingSet;
    let page = ps();
    let per_chunk = DEFAULT_PREFETCH / page;
    let pages = 8 * per_chunk;
    // Sparse, out of order, with one run of three adjacent pages (read as one run on replay).
    let mut touched: Vec<usize> = (0..24).map(|i| (i * 37) % pages).collect();
    touched.extend([5 * per_chunk + 1, 5 * per_chunk + 2, 5 * per_chunk + 3]);
    touched.dedup();
    let mut distinct = touched.clone();
    distinct.sort_unstable();
    distinct.dedup();

    // The recording run: only the faulting pages are served until finish_recording.
    let m = anon(pages);
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .exact_recording(true)
        .start(user_uffd())
        .unwrap();
    for &p in &touched {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
    // The counters of the last copy may land just after its wake-up.
    common::wait_until("the last demand counted", || {
        server.stats().pages_present() >= distinct.len() as u64
    });
    let during = server.stats();
    assert_eq!(during.pages_prefetch, 0, "{during:?}");
    assert_eq!(during.pages_background, 0, "{during:?}");
    assert_eq!(during.pages_present(), distinct.len() as u64, "{during:?}");
    let ws = server.finish_recording();
    assert!(ws.is_exact());
    let recorded: Vec<usize> = ws
        .entries()
        .iter()
        .map(|&(ri, off)| {
            assert_eq!(ri, 0);
            off as usize / page
        })
        .collect();
    let mut first_touches = Vec::new();
    for &p in &touched {
        if !first_touches.contains(&p) {
            first_touches.push(p);
        }
    }
    assert_eq!(recorded, first_touches, "demand order, each page once");
    // Recording has ended: background fill now populates the rest, and nothing more is
    // recorded.
    server.wait_populated(common::TIMEOUT).unwrap();
    assert_eq!(server.working_set(), ws);
    server.shutdown().unwrap();

    // Through a file, then replayed by several threads: exactly the recorded pages.
    let mut file = Vec::new();
    ws.write_to(&mut file).unwrap();
    let loaded = WorkingSet::read_from(&file[..]).unwrap();
    assert!(loaded.is_exact());
    let m = anon(pages);
    let server = ServerBuilder::new()
        .region(image_region(&m, pages, page))
        .background_threads(0)
        .replay(loaded)
        .replay_threads(3)
        .start(user_uffd())
        .unwrap();
    server.wait_replayed(common::TIMEOUT).unwrap();
    assert_eq!(server.stats().pages_replay, distinct.len() as u64);
    for &p in &distinct {
        assert_eq!(m.read_obj::<u8>(p * page).unwrap(), byte_of(p), "page {p}");
    }
    let stats = server.shutdown().unwrap();
    assert_eq!(stats.demand_faults, 0, "{stats:?}");
    assert_eq!(stats.pages_replay, distinct.len() as u64, "{stats:?}");
    assert_eq!(stats.pages_present(), distinct.len() as u64, "{stats:?}");
}

#[test]
fn exact_recording_with_replay_or_no_replay_thread_is_refused() {
    use userfaultfd::serve::WorkingSet;
    let page = ps();
    let m = anon(4);
    let ws = WorkingSet::from_entries(vec![(0, 0)]);
    for (what, b) in [
        (
            "exact recording and replay",
            ServerBuilder::new()
                .region(image_region(&m, 4, page))
                .exact_recording(true)
                .replay(ws.clone()),
        ),
        (
            "no replay thread",
            ServerBuilder::new()
                .region(image_region(&m, 4, page))
                .replay(ws.clone())
                .replay_threads(0),
        ),
    ] {
        match b.start(user_uffd()) {
            Err(ServeError::Config(_)) => {}
            other => panic!("{what}: expected Config, got {other:?}"),
        }
    }
}

#[test]
fn a_working_set_naming_other_pages_is_refused() {
    use userfaultfd::serve::WorkingSet;
    let page = ps();
    let m = anon(4);
    for entries in [vec![(1u32, 0u64)], vec![(0, 4 * page as u64)], vec![(0, 1)]] {
        let r = ServerBuilder::new()
            .region(image_region(&m, 4, page))
            .replay(WorkingSet::from_entries(entries.clone()))
            .start(user_uffd());
        assert!(
            matches!(r, Err(ServeError::Config(_))),
            "{entries:?}: {r:?}"
        );
    }
}
