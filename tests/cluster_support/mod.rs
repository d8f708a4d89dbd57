//! Set-up of the two-node cluster test: `converge` child processes killed by pid on drop
//! (with their log tails printed when the test failed), free loopback ports, a private
//! token file, and polling helpers bounded by a deadline.
#![allow(dead_code)]

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use converge_watch::client::{BearerToken, ClientOptions};
use converge_watch::{EntityClient, EntityId, Kind, ServerAddress};

/// How long any one step of the test may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// One `converge` child process with its output in a log file. Dropping it SIGKILLs it by
/// its own pid (never by name) and, when the test is failing, prints the end of its log.
pub struct ConvergeProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl ConvergeProcess {
    /// Starts `converge <args>` with stdout and stderr going to `<dir>/<name>.log`.
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_converge"))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("CONVERGE_SERVER")
            .env_remove("CONVERGE_TOKEN_FILE")
            .env_remove("CONVERGE_TLS_CA")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn converge");
        Self {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Panics, with the end of the log, if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!(
                "{} exited ({status}); its log ends with:\n{}",
                self.name,
                self.tail()
            );
        }
    }

    /// SIGKILLs the process (by its pid) and reaps it; a second call does nothing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True when the process's log has a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        fs::read_to_string(&self.log).is_ok_and(|text| text.contains(needle))
    }

    /// The last 30 lines of the process's log.
    pub fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for ConvergeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log (end) ---\n{}", self.name, self.tail());
        }
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> String {
    converge_testkit::free_loopback_addr()
        .expect("bind a free port")
        .to_string()
}

/// Writes a fresh token to `<dir>/token` (mode 0600) and returns its path and value.
pub fn token_file(dir: &Path) -> (PathBuf, BearerToken) {
    let token = format!("two-node-{}", converge_testkit::unique_name("token"));
    let path = dir.join("token");
    converge_testkit::write_private_file(&path, &token).expect("write token");
    (path, BearerToken::new(&token).expect("valid token"))
}

/// Client options sending `token`.
pub fn with_token(token: &BearerToken) -> ClientOptions {
    ClientOptions::default().with_token(token.clone())
}

/// Connects to `address` and waits until a call with `options` succeeds.
pub async fn wait_for_server(
    process: &mut ConvergeProcess,
    address: &ServerAddress,
    options: &ClientOptions,
) -> EntityClient {
    let probe = EntityId::new(Kind::Sandbox, "probe").expect("id");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        process.assert_running();
        if let Ok(client) = EntityClient::connect_with(std::slice::from_ref(address), options).await
            && client.get(&probe).await.is_ok()
        {
            return client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{address} did not answer in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `check` every 200 ms until it returns `Some`, panicking with `what` after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
