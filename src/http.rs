//! The daemon's HTTP side door: `/metrics` (Prometheus text), `/healthz` and `/readyz`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Why the HTTP endpoint stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound (in use, no permission, ...).
    #[error("cannot listen for HTTP on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("HTTP server failed")]
    Serve(#[source] std::io::Error),
}

type ReadyFn = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    ready: ReadyFn,
}

/// Serves `/metrics` from `registry`, `/healthz` (always 200) and `/readyz` (200 when
/// `ready()` is true, e.g. once the caches synced, 503 before) on `addr` until `shutdown`
/// resolves. Fails with [`HttpError::Bind`] if `addr` cannot be bound.
pub async fn serve_http<F, S>(
    addr: SocketAddr,
    registry: Arc<Registry>,
    ready: F,
    shutdown: S,
) -> Result<(), HttpError>
where
    F: Fn() -> bool + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    serve_http_on(listener, registry, ready, shutdown).await
}

/// Like [`serve_http`] on an already bound listener (tests bind port 0 and read the port).
pub async fn serve_http_on<F, S>(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: F,
    shutdown: S,
) -> Result<(), HttpError>
where
    F: Fn() -> bool + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let state = HttpState {
        registry,
        ready: Arc::new(ready),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(HttpError::Serve)
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if (state.ready)() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced yet\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn endpoints_report_metrics_health_and_readiness() {
        let mut registry = Registry::default();
        let metrics = converge_reconcilers::engine::EngineMetrics::register(&mut registry);
        let _handles = metrics.controller("sandbox");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http_on(
            listener,
            Arc::new(registry),
            move || flag.load(Ordering::SeqCst),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let url = |p: &str| format!("http://{addr}{p}");
        let health = client.get(url("/healthz")).send().await.expect("healthz");
        assert_eq!(health.status().as_u16(), 200);
        let not_ready = client.get(url("/readyz")).send().await.expect("readyz");
        assert_eq!(not_ready.status().as_u16(), 503);
        ready.store(true, Ordering::SeqCst);
        let now_ready = client.get(url("/readyz")).send().await.expect("readyz");
        assert_eq!(now_ready.status().as_u16(), 200);
        let text = client
            .get(url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("body");
        assert!(
            text.contains("workqueue_depth{controller=\"sandbox\"} 0"),
            "{text}"
        );
        assert!(text.contains("controller_runtime_active_workers"), "{text}");
        let _ = stop.send(());
        server.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn an_unbindable_address_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let out = serve_http(addr, Arc::new(Registry::default()), || true, async {}).await;
        assert!(matches!(out, Err(HttpError::Bind { .. })), "{out:?}");
    }
}
