//! Test harness for the CLI tests: a private `converge server` subprocess and a CLI runner.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_converge");

/// How long a server gets to start listening or to stop.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// A `converge server` on a temp unix socket and a temp redb file; stopped (by pid) on drop.
pub struct ServerProcess {
    child: Option<Child>,
    /// The socket it listens on.
    pub socket: PathBuf,
    /// Its redb file.
    pub db: PathBuf,
}

impl ServerProcess {
    /// Starts a server keeping its socket and store in `dir`, and waits until it answers.
    pub fn start(dir: &Path) -> Self {
        let mut server = ServerProcess {
            child: None,
            socket: dir.join("entity.sock"),
            db: dir.join("entities.redb"),
        };
        server.restart();
        server
    }

    /// `unix:SOCKET`, for `--server`.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Starts the process again (stopping it first if it runs) on the same socket and file.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(BIN)
            .args(["server", "--registry", "127.0.0.1:0", "--store"])
            .arg(format!("redb:{}", self.db.display()))
            .arg("--listen")
            .arg(self.address())
            .env_remove("CONVERGE_SERVER")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn converge server");
        self.child = Some(child);
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("converge server exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "converge server did not listen in time"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process with SIGTERM (SIGKILL if it lingers) and reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one CLI run produced.
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Asserts failure with exit 1, an `error:` line on stderr and nothing on stdout;
    /// returns stderr.
    pub fn failed(self) -> String {
        assert_eq!(
            self.code, 1,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert_eq!(self.stdout, "", "stdout must stay empty on failure");
        assert!(
            self.stderr.starts_with("error: "),
            "stderr: {}",
            self.stderr
        );
        self.stderr
    }
}

/// A CLI command aimed at `address`, without inherited settings.
pub fn command(address: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("CONVERGE_SERVER", address)
        .env_remove("RUST_LOG")
        .env_remove("CONVERGE_LOG_FORMAT");
    cmd
}

/// Runs the CLI with `stdin` as input and waits for it.
pub fn run(address: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = command(address, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn converge");
    if let Some(mut input) = child.stdin.take() {
        // A CLI that fails before reading may close stdin early: that is not a test failure.
        let _ = input.write_all(stdin.as_bytes());
    }
    Run::from(child.wait_with_output().expect("wait for converge"))
}

/// A long-running CLI (such as `watch`) whose stdout lines arrive on a channel.
pub struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    /// Starts `converge ARGS` against `address`.
    pub fn start(address: &str, args: &[&str]) -> Self {
        let mut child = command(address, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn converge");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// Waits up to `timeout` for a line containing `needle`; returns it, or panics with the
    /// lines seen meanwhile.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line containing {needle:?} within {timeout:?}; saw {seen:?}"),
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and returns the exit code.
    pub fn interrupt(mut self) -> i32 {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return -1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A valid sandbox document in YAML.
pub fn sandbox_yaml(name: &str, image: &str) -> String {
    format!(
        "id: sandbox/{name}\nspec:\n  labels:\n    app: {name}\n  containers:\n  - name: app\n    image: {image}\n    command: [/bin/httpd, -f, -p, \"8080\"]\n    ports:\n    - port: 8080\n"
    )
}
