//! Prometheus metrics: one [`Metrics`] registry per service instance (never a process-wide
//! recorder: the tests run many instances in one process), every name under `linkd_`, served
//! as OpenMetrics text on `GET /metrics` by [`serve`] when the service's `*_METRICS_ADDR` is
//! set. Counters and histograms are updated where things happen; figures that live in the
//! database (a pool's connections, an outbox's backlog, the relay's lag) are read when
//! Prometheus scrapes, by the hooks given to [`Metrics::on_scrape`].
//!
//! docs/metrics.md lists every series; a name or label added here belongs in that table.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use sqlx::PgPool;
use tokio::net::TcpListener;

/// What a hook runs on each scrape.
type Hook = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How long the scrape hooks may take together before the answer goes out without them (the
/// figures they set keep their previous values).
const HOOKS_WITHIN: Duration = Duration::from_secs(2);

/// The OpenMetrics text format's content type.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One service instance's metrics (cheap to clone: every clone is the same registry).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    hooks: Arc<Mutex<Vec<Arc<Hook>>>>,
    pools: Arc<OnceLock<Family<PoolLabels, Gauge>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry; every name registered is prefixed `linkd_`.
    pub fn new() -> Self {
        Self {
            registry: Arc::new(Mutex::new(Registry::with_prefix("linkd"))),
            hooks: Arc::default(),
            pools: Arc::default(),
        }
    }

    /// Registers `metric` as `linkd_<name>` (a counter's name gains `_total` when encoded).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// A gauge registered as `linkd_<name>`.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let gauge = Gauge::default();
        self.register(name, help, gauge.clone());
        gauge
    }

    /// A gauge of seconds (or any fraction) registered as `linkd_<name>`.
    pub fn gauge_f64(&self, name: &str, help: &str) -> Gauge<f64, std::sync::atomic::AtomicU64> {
        let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        self.register(name, help, gauge.clone());
        gauge
    }

    /// Runs `hook` before each scrape is answered (all hooks together get [`HOOKS_WITHIN`]).
    pub fn on_scrape<F, Fut>(&self, hook: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: Hook = Box::new(move || Box::pin(hook()));
        self.hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(hook));
    }

    /// `linkd_db_pool_connections{pool, state}`: the connections `pool` holds, in use and
    /// idle, read at each scrape.
    pub fn watch_pool(&self, name: &'static str, pool: PgPool) {
        let connections = self.pool_connections();
        self.on_scrape(move || {
            let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX);
            let size = i64::from(pool.size());
            connections
                .get_or_create(&PoolLabels {
                    pool: name,
                    state: "idle",
                })
                .set(idle);
            connections
                .get_or_create(&PoolLabels {
                    pool: name,
                    state: "in_use",
                })
                .set(size.saturating_sub(idle));
            std::future::ready(())
        });
    }

    fn pool_connections(&self) -> Family<PoolLabels, Gauge> {
        self.pools
            .get_or_init(|| {
                let family = Family::<PoolLabels, Gauge>::default();
                self.register(
                    "db_pool_connections",
                    "Database connections a pool holds, by state (in_use, idle)",
                    family.clone(),
                );
                family
            })
            .clone()
    }

    /// The OpenMetrics text of every series, after the scrape hooks ran.
    pub async fn encode(&self) -> String {
        let hooks: Vec<Arc<Hook>> = self
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let all = async {
            for hook in &hooks {
                hook().await;
            }
        };
        if tokio::time::timeout(HOOKS_WITHIN, all).await.is_err() {
            tracing::warn!(within = ?HOOKS_WITHIN, "metrics: the scrape hooks did not finish in time");
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::error!(%error, "metrics: encoding failed");
        }
        text
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

/// Serves `GET /metrics` (anything else: 404) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::http::header;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, CONTENT_TYPE)],
                    metrics.encode().await,
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving metrics")
}

/// Serves `metrics` on `listener` (if the service was given an address) on a task of its own,
/// until the task is aborted.
pub fn spawn_endpoint(
    listener: Option<TcpListener>,
    metrics: &Metrics,
) -> Option<tokio::task::JoinHandle<anyhow::Result<()>>> {
    listener.map(|listener| {
        tracing::info!(addr = ?listener.local_addr().ok(), "metrics served on /metrics");
        tokio::spawn(serve(listener, metrics.clone(), std::future::pending()))
    })
}

/// Binds `addr` for [`serve`] (at start, so that a taken port stops the service with a clear
/// error instead of a metrics endpoint that silently never comes).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint to {addr}"))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn series_are_prefixed_and_hooks_run_before_each_scrape() {
        let metrics = Metrics::new();
        let counter = Counter::<u64>::default();
        metrics.register("things", "Things done", counter.clone());
        let depth = metrics.gauge("queue_depth", "How deep");
        let scrapes = metrics.gauge("scrapes", "Scrapes so far");
        metrics.on_scrape(move || {
            scrapes.inc();
            std::future::ready(())
        });
        counter.inc();
        depth.set(7);

        let first = metrics.encode().await;
        let second = metrics.encode().await;

        assert!(first.contains("linkd_things_total 1\n"), "{first}");
        assert!(first.contains("linkd_queue_depth 7\n"), "{first}");
        assert!(first.contains("linkd_scrapes 1\n"), "{first}");
        assert!(second.contains("linkd_scrapes 2\n"), "{second}");
        assert!(second.ends_with("# EOF\n"), "{second}");
    }

    #[tokio::test]
    async fn a_hook_that_hangs_delays_the_answer_but_does_not_stop_it() {
        let metrics = Metrics::new();
        metrics.gauge("alive", "Set").set(1);
        metrics.on_scrape(std::future::pending::<()>);
        tokio::time::pause();
        let text = metrics.encode().await;
        assert!(text.contains("linkd_alive 1\n"), "{text}");
    }
}
