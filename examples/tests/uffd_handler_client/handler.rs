//! [`Handler`]: the `uffd-handler` process under test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::process::{wait_exit, Lines};
use super::LIMIT;

/// The handler, running; killed (`SIGKILL`) and reaped when dropped, its log printed then if
/// the test is failing.
pub struct Handler {
    child: Child,
    stderr: Arc<Lines>,
    pub socket: PathBuf,
    status: Option<ExitStatus>,
}

impl Handler {
    /// Starts `uffd-handler SOCKET MEMFILE ARGS...` and waits for it to listen.
    pub fn start(socket: &Path, memfile: &Path, args: &[&str]) -> Handler {
        let mut child = Command::new(env!("CARGO_BIN_EXE_uffd-handler"))
            .arg(socket)
            .arg(memfile)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run uffd-handler");
        let stderr = Lines::collect(child.stderr.take().unwrap());
        let mut h = Handler {
            child,
            stderr,
            socket: socket.to_owned(),
            status: None,
        };
        if h.stderr
            .wait(LIMIT, |l| l.contains("listening on"))
            .is_none()
        {
            // Either the time ran out or the handler closed its stderr: say which, and how
            // it ended if it did.
            let how = match wait_exit(&mut h.child, Duration::from_secs(5)) {
                Some(st) => {
                    h.status = Some(st);
                    format!("it exited: {st}")
                }
                None => format!("still running after {LIMIT:?}"),
            };
            panic!(
                "the handler did not start listening ({how}); its log:\n{}",
                h.log()
            );
        }
        h
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Waits (bounded) for a log line containing every one of `parts`.
    pub fn wait_line(&self, parts: &[&str]) -> String {
        self.stderr
            .wait(LIMIT, |l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no handler line with {parts:?}:\n{}", self.log()))
    }

    /// Waits (bounded) for `n` log lines containing every one of `parts`.
    pub fn wait_lines(&self, parts: &[&str], n: usize) -> Vec<String> {
        self.stderr
            .wait_count(LIMIT, n, |l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| {
                panic!(
                    "fewer than {n} handler lines with {parts:?}:\n{}",
                    self.log()
                )
            })
    }

    pub fn lines(&self) -> Vec<String> {
        self.stderr.all()
    }

    pub fn log(&self) -> String {
        self.stderr.all().join("\n")
    }

    /// The JSON stats lines (`--stats`).
    pub fn stats(&self) -> Vec<serde_json::Value> {
        self.lines()
            .iter()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) touches no memory; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Waits (bounded) for the handler to exit; its status.
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let st = wait_exit(&mut self.child, LIMIT)
            .unwrap_or_else(|| panic!("the handler did not exit:\n{}", self.log()));
        self.stderr.wait_end(LIMIT);
        self.status = Some(st);
        st
    }

    /// Kills it (`SIGKILL`) and reaps it.
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("wait"));
            self.stderr.wait_end(LIMIT);
        }
    }

    /// Checks that the handler never panicked.
    pub fn assert_no_panic(&self) {
        let log = self.log();
        assert!(!log.contains("panicked"), "{log}");
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("--- handler log ---\n{}\n---", self.log());
        }
    }
}
