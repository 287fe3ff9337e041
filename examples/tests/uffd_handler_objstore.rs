//! `uffd-handler --source URL` (feature `object-store`): a VM served from an object instead of
//! a memory file (a `file://` URL, so no server is needed; the S3 path of the same source is
//! tested against moto in the `userfaultfd` crate), and a bad URL refused with a message.

mod uffd_handler_client;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use uffd_handler_client::{memfile, TempDir, Vm, VmSpec};
use userfaultfd::UffdBuilder;

const MIB: usize = 1 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// The VM process's entry point: does nothing unless run by [`Vm::spawn`] with a spec.
#[test]
fn vm_process() {
    if let Ok(spec) = std::env::var(uffd_handler_client::VM_ENV) {
        uffd_handler_client::vm_main(serde_json::from_str(&spec).expect("VM spec"));
    }
}

#[test]
fn a_vm_served_from_an_object() {
    if UffdBuilder::new()
        .require_features(userfaultfd::FeatureFlags::EVENT_REMOVE)
        .create()
        .is_err()
    {
        return test_kit::report::skip(
            "no userfaultfd with EVENT_REMOVE for all faults here (run as root, or sysctl \
             vm.unprivileged_userfaultfd=1)",
        );
    }
    let dir = TempDir::new("objstore");
    let (sock, mem) = (dir.path("sock"), dir.path("mem"));
    memfile(&mem, 8 * MIB, 21);
    let url = format!("file://{}", mem.display());
    let cache = dir.path("cache");
    let mut child = Command::new(env!("CARGO_BIN_EXE_uffd-handler"))
        .arg(&sock)
        .args(["--source", &url, "--once", "--stats", "--cache-file"])
        .arg(&cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run uffd-handler");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let mut next = |what: &str, log: &mut Vec<String>| loop {
        match rx.recv_timeout(LIMIT) {
            Ok(l) => {
                let hit = l.contains(what);
                log.push(l);
                if hit {
                    return;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "uffd-handler printed no {what:?} ({e}):\n{}",
                    log.join("\n")
                );
            }
        }
    };
    next("listening on", &mut log);
    assert!(
        log.last().unwrap().contains(&format!("object {url}")),
        "{log:?}"
    );
    let mut vm = Vm::spawn(&VmSpec::new(&sock, &mem, vec![(8 * MIB, 0)]));
    vm.expect_ok();
    next("populated in", &mut log);
    let status =
        test_kit::child::wait_child(child.id() as libc::pid_t, LIMIT).expect("uffd-handler exits");
    assert_eq!(status, 0, "{}", log.join("\n"));
    let _ = child.wait();
    // Every chunk was fetched, so the cache file holds the object and its index says so.
    assert_eq!(std::fs::read(&cache).unwrap(), std::fs::read(&mem).unwrap());
    let mut index = cache.into_os_string();
    index.push(".index");
    assert!(std::path::Path::new(&index).is_file(), "no cache index");
}

#[test]
fn a_bad_source_is_refused_with_a_message() {
    let dir = TempDir::new("objstore-bad");
    let img = dir.path("img");
    memfile(&img, MIB, 1);
    let img_url = format!("file://{}", img.display());
    for (args, want) in [
        (
            vec!["--source", "file:///no/such/file", "--once"],
            "not found",
        ),
        (
            vec![
                "--source",
                "s3://b/k",
                "--source-option",
                "nonsense",
                "--once",
            ],
            "KEY=VALUE",
        ),
        (
            vec![
                "--source",
                &img_url,
                "--cache-file",
                "/no/such/dir/cache",
                "--once",
            ],
            "cache file",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_uffd-handler"))
            .arg(dir.path("sock"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run uffd-handler");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
