//! A redis-server of a test's own, on a Unix socket in a temporary directory, without
//! persistence; killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long redis-server may take to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(20);

pub(super) struct RedisServer {
    child: Option<Child>,
    dir: PathBuf,
    sock: PathBuf,
}

impl RedisServer {
    /// Starts one for `test`. Without redis-server installed: a panic under `CI=true`,
    /// otherwise `None` after printing that the test is skipped.
    pub(super) fn start(test: &str) -> Option<Self> {
        let dir = crate::conformance::temp_dir("redis");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let sock = dir.join("r.sock");
        match spawn(&dir, &sock) {
            Ok(child) => Some(Self {
                child: Some(child),
                dir,
                sock,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_dir_all(&dir);
                let why = "redis-server is not installed (apt-get install redis-server)";
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("{test}: {why}");
                }
                eprintln!("SKIPPED {test}: {why}");
                None
            }
            Err(e) => panic!("{test}: cannot start redis-server: {e}"),
        }
    }

    pub(super) fn url(&self) -> String {
        format!("redis+unix://{}", self.sock.display())
    }

    /// Kills it: its data is gone.
    pub(super) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (empty) on the same socket.
    pub(super) fn start_again(&mut self) {
        self.stop();
        self.child = Some(spawn(&self.dir, &self.sock).expect("redis-server again"));
    }

    /// Sends it a signal by name (`STOP`, `CONT`).
    pub(super) fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} {pid}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs redis-server and waits until it says it is ready (its log on stdout).
fn spawn(dir: &Path, sock: &Path) -> std::io::Result<Child> {
    let mut child = Command::new("redis-server")
        .arg("--port")
        .arg("0")
        .arg("--unixsocket")
        .arg(sock)
        .arg("--unixsocketperm")
        .arg("700")
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let out = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    // Reads the log to its end, so redis-server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut ready = Some(tx);
        let mut log = Vec::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line
                .to_ascii_lowercase()
                .contains("ready to accept connections")
            {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Ok(()));
                }
            } else if ready.is_some() {
                log.push(line);
            }
        }
        if let Some(tx) = ready {
            let _ = tx.send(Err(log.join("\n")));
        }
    });
    let outcome = rx.recv_timeout(READY_WAIT);
    if !matches!(outcome, Ok(Ok(()))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    match outcome {
        Ok(Ok(())) => Ok(child),
        Ok(Err(log)) => panic!("redis-server exited before it was ready:\n{log}"),
        Err(_) => panic!("redis-server was not ready within {READY_WAIT:?}"),
    }
}
