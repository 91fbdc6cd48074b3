//! Running the `hourglass` binary from integration tests: its output (also while it runs, to signal it),
//! scratch folders, a tiny corpus.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub fn hourglass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hourglass"))
        .args(args)
        .output()
        .expect("run the hourglass binary")
}

pub fn temp_dir(name: &str) -> PathBuf {
    super::scratch_dir("cli", name)
}

/// A small text file to train on.
pub fn data(dir: &Path) -> PathBuf {
    let path = dir.join("text.txt");
    let text = "<page><title>Hourglass</title><text>An hourglass measures time with sand. </text></page>\n"
        .repeat(60);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
pub fn expect_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[track_caller]
pub fn expect_cli_err(out: &Output, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit status; stderr: {stderr}");
    assert!(stderr.contains("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    for n in needles {
        assert!(
            stderr.contains(n),
            "stderr does not mention {n:?}: {stderr}"
        );
    }
}

/// A command running in the background, its stdout and stderr collected as they come.
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts `command` with its output piped.
    pub fn start(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the command");
        let collect = |mut pipe: Box<dyn Read + Send>| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let sink = Arc::clone(&buffer);
            let reader = std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    sink.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            (buffer, reader)
        };
        let (stdout, out_reader) = collect(Box::new(child.stdout.take().unwrap()));
        let (stderr, err_reader) = collect(Box::new(child.stderr.take().unwrap()));
        Self {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        }
    }

    /// `hourglass` with `args`.
    pub fn hourglass(args: &[&str]) -> Self {
        Self::start(Command::new(env!("CARGO_BIN_EXE_hourglass")).args(args))
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until `done(stdout so far)` holds; fails after `limit`, or when the command ends first.
    #[track_caller]
    pub fn wait_for_stdout(&mut self, limit: Duration, done: impl Fn(&[u8]) -> bool) {
        let start = Instant::now();
        while !done(&self.stdout()) {
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < limit,
                "waited for stdout {:?}; exited: {exited:?}; stderr: {}",
                text(&self.stdout()),
                text(&self.stderr.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the command is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends the signal `name` (`TERM`, `INT`, `KILL`) with `kill`.
    #[cfg(unix)]
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the command to end, at most `limit` (then kills it and fails); its output.
    #[track_caller]
    pub fn finish_within(mut self, limit: Duration) -> Output {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                self.child.kill().ok();
                self.child.wait().ok();
                panic!(
                    "still running after {limit:?}; stdout: {}; stderr: {}",
                    text(&self.stdout()),
                    text(&self.stderr.lock().unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in std::mem::take(&mut self.readers) {
            reader.join().unwrap();
        }
        let take = |buffer: &Mutex<Vec<u8>>| std::mem::take(&mut *buffer.lock().unwrap());
        Output {
            status,
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
        }
    }
}

/// A test that fails leaves no command running behind it.
impl Drop for Running {
    fn drop(&mut self) {
        if self.is_running() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}
