//! A real S3 server for the object-store tests: moto's `moto_server`, started on a free
//! loopback port, killed on drop.
//!
//! The binary is `$UFFD_MOTO_SERVER`, else `<workspace>/target/moto-venv/bin/moto_server`
//! (what `.ci/moto-setup` installs). When it is missing, [`Moto::start`] returns the reason a
//! test gives to `test_kit::report::skip`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long moto may take to start (it answers about 0.4 s after start on an idle machine).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one plain HTTP exchange with moto.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `moto_server`.
pub struct Moto {
    child: Option<Child>,
    addr: SocketAddr,
}

/// Where `moto_server` is looked for.
pub fn moto_server_path() -> PathBuf {
    match std::env::var_os("UFFD_MOTO_SERVER") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/moto_server")
        }
    }
}

impl Moto {
    /// Starts moto with the default environment.
    pub fn start() -> Result<Moto, String> {
        Self::start_with_env(&[])
    }

    /// Starts moto with extra environment variables (e.g. `INITIAL_NO_AUTH_ACTION_COUNT`), and
    /// waits (bounded) until it answers. `Err` is the reason to skip: moto is not installed.
    /// Panics if an installed moto fails to start.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Moto, String> {
        if std::env::var_os("UFFD_TEST_VM").is_some_and(|v| v == "tcg") {
            // Seen: no answer within 30 s. What these tests check is the source and the server
            // in user space; the kernel paths under them have their own tests in the guest.
            return Err(
                "moto (a Python server) does not start within its bound under the \
                        emulated CPU of `cargo xtask vm-test`'s guest; these tests run on the \
                        host"
                    .into(),
            );
        }
        let bin = moto_server_path();
        if !bin.exists() {
            return Err(format!(
                "no moto S3 server at {} (run .ci/moto-setup, or set UFFD_MOTO_SERVER)",
                bin.display()
            ));
        }
        // A free port: bound, read, released (a race with another process is unlikely and
        // shows as moto failing to start, which fails the test visibly).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        // moto (werkzeug) says "Running on http://..." on stderr once it listens. A thread
        // keeps reading stderr to its end, so moto never blocks on a full pipe.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut moto = Moto {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains("Running on");
                    seen.push(line);
                    if ready {
                        break;
                    }
                }
                Err(e) => {
                    moto.kill();
                    panic!(
                        "moto_server did not start within {START_TIMEOUT:?} ({e}); it said:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
        // Any HTTP answer will do (with authentication on, `GET /` is refused).
        let status = moto.request("GET", "/");
        assert!(
            (200..600).contains(&status),
            "moto answers GET / with {status}"
        );
        Ok(moto)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates a bucket (an unsigned `PUT /NAME`, which moto accepts).
    pub fn create_bucket(&self, name: &str) {
        let status = self.request("PUT", &format!("/{name}"));
        assert_eq!(status, 200, "moto: PUT /{name}");
    }

    /// One HTTP/1.1 request without a body; returns the status code.
    fn request(&self, method: &str, path: &str) -> u16 {
        let mut s = TcpStream::connect_timeout(&self.addr, HTTP_TIMEOUT).expect("connect to moto");
        s.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(HTTP_TIMEOUT)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .expect("write the request");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).expect("read moto's answer");
        let text = String::from_utf8_lossy(&reply);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in moto's answer: {text:?}"))
    }

    /// Kills moto (`SIGKILL`) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}
