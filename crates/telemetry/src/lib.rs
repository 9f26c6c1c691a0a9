//! raftkv's metrics port (`--metrics-addr`): an HTTP/1.1 server beside the gRPC ports.
//!
//! # Brief overview
//! - `GET /metrics`: Prometheus text format. Events are recorded where they happen, through
//!   the `metrics` facade, into the recorder [`install_recorder`] installs
//!   (`metrics-exporter-prometheus`, without its own listener); the node's state (term,
//!   indexes, replication, write stages, watchers, gossip) is read at scrape time
//!   (the `render` module). [`catalog`] lists every metric with its help text, as
//!   docs/metrics.md does.
//! - `GET /livez`: 200 while the process serves.
//! - `GET /readyz`: 200 when the node is ready ([`service::readiness`]: it knows a leader and
//!   has applied up to the commit index it learned from it when it started or rejoined), 503
//!   with the reason otherwise; rqlite's line-per-check text.
//! - `GET /status.json`: this node's picture of the cluster ([`status::Status`]).
//! - `GET /`: the live status page, which polls `/status.json` every second; its files are
//!   compiled into the binary (`include_str!`), nothing is fetched from elsewhere.
//!
//! [`history`] keeps what the page charts (a sample a second for five minutes) and the last
//! leader changes.
//!
//! This crate reads the node (openraft's metrics, the state machine, gossip, the write
//! stages, readiness) and changes nothing. It must never depend on `engine`, `raft-storage`
//! or `compat`; only `engine` depends on it.

pub mod catalog;
pub mod history;
mod render;
pub mod status;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fsm::{Raft, StateMachine};
use gossip::Gossip;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use service::readiness::Readiness;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use types::NodeId;

pub use history::History;

/// The bucket bounds of the facade's `_seconds` histograms.
pub const SECONDS_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// The bucket bounds of the `_bytes` histograms: 1 KiB to 1 GiB, by powers of four.
pub const BYTES_BUCKETS: [f64; 11] = [
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
];
/// How often the recorder's histograms are compacted.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// What can go wrong on the metrics port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The recorder could not be built (bad bucket settings).
    #[error("metrics recorder: {0}")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
}

/// The process's recorder: one per process, installed by the first node that asks.
static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls
/// return the same handle) and registers every metric of the [`catalog`].
pub fn install_recorder() -> Result<PrometheusHandle, TelemetryError> {
    if let Some(h) = RECORDER.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(&SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &BYTES_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("another metrics recorder is installed; /metrics shows only what is read at scrape time");
    }
    let handle = RECORDER.get_or_init(|| handle).clone();
    catalog::describe_all();
    Ok(handle)
}

/// What the metrics port reads.
#[derive(Clone)]
pub struct Sources {
    /// This node's id.
    pub id: NodeId,
    /// Its Raft handle.
    pub raft: Raft,
    /// Its state machine.
    pub sm: StateMachine,
    /// Gossip, when on.
    pub gossip: Option<Gossip>,
    /// The per-stage clock of its writes.
    pub stages: Arc<latency::WriteStages>,
    /// Its readiness.
    pub ready: watch::Receiver<Readiness>,
    /// The samples and leader changes the page shows.
    pub history: Arc<History>,
    /// The recorder's handle.
    pub recorder: PrometheusHandle,
}

/// Serves the metrics port on `listener` until `stop` turns true, and keeps the
/// [`History`] and the recorder's upkeep in tasks of their own; returns the tasks.
pub fn serve(listener: TcpListener, sources: Sources, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let keeper = tokio::spawn(history::keep(
        sources.raft.clone(),
        sources.stages.clone(),
        sources.history.clone(),
        stop.clone(),
    ));
    let upkeep = tokio::spawn(upkeep(sources.recorder.clone(), stop.clone()));
    let app = router(sources);
    let mut shutdown = stop;
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics server stopped with an error");
        }
    });
    vec![keeper, upkeep, server]
}

async fn upkeep(handle: PrometheusHandle, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The routes of the metrics port.
pub fn router(sources: Sources) -> Router {
    let src = Arc::new(sources);
    let s1 = src.clone();
    let s2 = src.clone();
    let s3 = src;
    Router::new()
        .route("/metrics", get(move || metrics_text(s1.clone())))
        .route("/livez", get(|| async { text(StatusCode::OK, "ok\n".into()) }))
        .route("/readyz", get(move || readyz(s2.clone())))
        .route("/status.json", get(move || status_json(s3.clone())))
        .route("/", get(|| async { page(PAGE_HTML, "text/html; charset=utf-8") }))
        .route("/status.js", get(|| async { page(PAGE_JS, "text/javascript; charset=utf-8") }))
}

/// The status page.
const PAGE_HTML: &str = include_str!("page/index.html");
/// Its script.
const PAGE_JS: &str = include_str!("page/status.js");

fn page(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

fn text(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn metrics_text(src: Arc<Sources>) -> Response {
    let mut body = src.recorder.render();
    body.push_str(&render::scraped(&src).await);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// rqlite's form: a line per check, `[+]` passed, `[-]` failed.
async fn readyz(src: Arc<Sources>) -> Response {
    let r = src.ready.borrow().clone();
    let leader = match &r.leader {
        Some(l) => format!("[+]leader ok ({l})"),
        None => "[-]leader does not exist".to_string(),
    };
    if r.ready {
        let index = r.caught_up_to.unwrap_or(0);
        text(StatusCode::OK, format!("[+]node ok\n{leader}\n[+]caught up ok (applied {index})\n"))
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, format!("[+]node ok\n{leader}\n[-]not ready: {}\n", r.reason))
    }
}

async fn status_json(src: Arc<Sources>) -> Response {
    let status = status::status(&src).await;
    match serde_json::to_string(&status) {
        Ok(json) => {
            ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], json).into_response()
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the status: {e}\n")),
    }
}
