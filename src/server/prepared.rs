//! A server configuration checked and its store opened, not yet listening: what
//! `converge server` needs to run cluster-wide work (leader elections, its own client)
//! beside the entity server on the same store.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use converge_watch::ServerAddress;
use converge_watch::client::{BearerToken, ClientOptions, ClientTls, CredentialError};

use super::leader::{EtcdLeadership, LeaderError, Leadership, LocalLeadership};
use super::store::etcd::{EtcdConfig, EtcdStore};
use super::store::{RedbStore, Store};
use super::{ServerConfig, ServerError, StoreUrl, auth, listen, serve_bound_secure};
use crate::tls::ServerTls;

/// Why the server's own client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum LocalClientError {
    /// The CA file (`--tls-ca`) or the server certificate could not be used as a CA.
    #[error("the server's own client cannot trust its TLS certificate")]
    Ca(#[source] CredentialError),
}

/// A [`ServerConfig`] whose authentication rule was checked, whose TLS files were read and
/// whose store is open. [`PreparedServer::serve`] binds and serves it;
/// [`PreparedServer::leadership`] elects among the servers sharing its store, and
/// [`PreparedServer::local_client`] says how this process reaches itself.
pub struct PreparedServer {
    config: ServerConfig,
    token: Option<BearerToken>,
    tls: Option<ServerTls>,
    store: Arc<dyn Store>,
    etcd: Option<(etcd_client::Client, String)>,
}

impl std::fmt::Debug for PreparedServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Checks `config` (the authentication rule first, before anything is opened; then the TLS
/// files) and opens its store. Fails as [`super::run_config`] would, without binding.
pub async fn prepare(config: ServerConfig) -> Result<PreparedServer, ServerError> {
    let token = auth::listener_token(
        &config.listen,
        config.token_file.as_deref(),
        config.insecure_no_auth,
    )?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::from_files(cert, key)?),
        _ => None,
    };
    if tls.is_some() && matches!(config.listen, ServerAddress::Unix(_)) {
        tracing::warn!(listen = %config.listen, "--tls-cert/--tls-key are ignored on a unix socket");
    }
    let open_error = |source| ServerError::OpenStore {
        url: config.store.to_string(),
        source,
    };
    let (store, etcd): (Arc<dyn Store>, _) = match &config.store {
        StoreUrl::Redb(path) => {
            let store = RedbStore::open(path, config.history_limit)
                .await
                .map_err(open_error)?;
            (Arc::new(store), None)
        }
        StoreUrl::Etcd(endpoints) => {
            let store = EtcdStore::connect(EtcdConfig::new(endpoints.clone()))
                .await
                .map_err(open_error)?;
            let etcd = (store.etcd_client(), store.prefix().to_string());
            (Arc::new(store), Some(etcd))
        }
    };
    Ok(PreparedServer {
        config,
        token,
        tls,
        store,
        etcd,
    })
}

impl PreparedServer {
    /// The open store (shared with the server once it serves).
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// The election for `task` among every server on this store: on etcd an
    /// [`EtcdLeadership`] with a lease of `ttl`, named `identity`; on redb (one process owns
    /// the file) a [`LocalLeadership`] that always leads. Fails on a bad task name or TTL.
    pub fn leadership(
        &self,
        task: &str,
        identity: &str,
        ttl: Duration,
    ) -> Result<Arc<dyn Leadership>, LeaderError> {
        Ok(match &self.etcd {
            Some((client, prefix)) => Arc::new(EtcdLeadership::new(
                client.clone(),
                prefix,
                task,
                identity,
                ttl,
            )?),
            None => Arc::new(LocalLeadership::new(task)?),
        })
    }

    /// How this process reaches its own entity server: the address (a wildcard TCP host
    /// becomes `127.0.0.1`) and options with the server's token and, when it speaks TLS,
    /// trust in `tls_ca` (the global `--tls-ca`) or else in the server's own certificate
    /// file (right for a self-signed certificate or a chain file that ends in its CA). The
    /// name checked is the address's host, so the certificate must carry it.
    pub fn local_client(
        &self,
        tls_ca: Option<&Path>,
    ) -> Result<(ServerAddress, ClientOptions), LocalClientError> {
        let address = match &self.config.listen {
            ServerAddress::Tcp(host_port) => ServerAddress::Tcp(loopback_for(host_port)),
            unix => unix.clone(),
        };
        let tls = match (&address, &self.config.tls_cert) {
            (ServerAddress::Tcp(_), Some(cert)) => Some(
                ClientTls::from_ca_file(tls_ca.unwrap_or(cert.as_path()))
                    .map_err(LocalClientError::Ca)?,
            ),
            _ => None,
        };
        let options = ClientOptions {
            token: self.token.clone(),
            tls,
        };
        Ok((address, options))
    }

    /// Binds the listener and serves until `shutdown`, as [`super::run_config`] does; the
    /// store is closed when serving ends (also when binding fails).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let bound = match listen::bind(&self.config.listen).await {
            Ok(bound) => bound,
            Err(e) => {
                if let Err(close) = self.store.close().await {
                    tracing::warn!(error = %close, "cannot close the store");
                }
                return Err(e.into());
            }
        };
        serve_bound_secure(self.store, bound, self.token, self.tls, shutdown).await
    }
}

/// `HOST:PORT` with a wildcard host (`0.0.0.0`, `[::]`, empty) replaced by `127.0.0.1`.
fn loopback_for(host_port: &str) -> String {
    match host_port.rsplit_once(':') {
        Some(("" | "0.0.0.0" | "[::]" | "::", port)) => {
            format!("127.0.0.1:{port}")
        }
        _ => host_port.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_reached_on_loopback() {
        assert_eq!(loopback_for("0.0.0.0:7443"), "127.0.0.1:7443");
        assert_eq!(loopback_for("[::]:7443"), "127.0.0.1:7443");
        assert_eq!(loopback_for("node-a:7443"), "node-a:7443");
        assert_eq!(loopback_for("127.0.0.1:1"), "127.0.0.1:1");
    }
}
