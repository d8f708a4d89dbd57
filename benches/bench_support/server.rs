//! An in-process entity server (redb in a temp dir, on a temp unix socket) for the benches, stopped on request.

use std::path::Path;
use std::time::Duration;

use converge::server::{StoreUrl, open_store, serve};
use converge_watch::client::PutSpec;
use converge_watch::{EntityClient, ServerAddress};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{BenchError, connect};

/// Puts per PutBatch in [`BenchServer::put_all`].
const BATCH: usize = 200;

/// An entity server serving `<dir>/entities.redb` on `<dir>/entity.sock` until stopped
/// (or until the process ends); the temp dir goes with it.
pub struct BenchServer {
    /// Where it listens.
    pub address: ServerAddress,
    /// A client connected to it.
    pub client: EntityClient,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl BenchServer {
    /// Opens the store in a fresh temp dir named `<prefix>...`, serves it and connects
    /// (waiting up to 10 s). Fails when the dir, the store or the connection fails.
    pub async fn start(prefix: &str) -> Result<Self, BenchError> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let address: ServerAddress =
            format!("unix:{}", dir.path().join("entity.sock").display()).parse()?;
        let store = open_store(&StoreUrl::Redb(dir.path().join("entities.redb")), 1000).await?;
        let stop = CancellationToken::new();
        let task = {
            let address = address.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                if let Err(e) = serve(store, &address, stop.cancelled_owned()).await {
                    eprintln!("entity server failed: {e}");
                }
            })
        };
        let client = connect(&address).await?;
        Ok(BenchServer {
            address,
            client,
            stop,
            task: Some(task),
            dir,
        })
    }

    /// The server's temp dir (for a bench's other files: data dir, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Puts `puts` in batches of 200.
    pub async fn put_all(&self, puts: Vec<PutSpec>) -> Result<(), BenchError> {
        let mut puts = puts.into_iter().peekable();
        while puts.peek().is_some() {
            let chunk: Vec<PutSpec> = puts.by_ref().take(BATCH).collect();
            self.client.put_batch(chunk).await?;
        }
        Ok(())
    }

    /// Stops the server and waits for it, at most `within`.
    pub async fn stop(mut self, within: Duration) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(within, task).await;
        }
    }
}
