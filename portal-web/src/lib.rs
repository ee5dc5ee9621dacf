//! portal-web: a reference portal front end for linkd. It plays the portal's browser side
//! against the two services over gRPC: sign-in (development only), *Link a device* with the QR
//! code followed live (Server-Sent Events fed by `WatchLinkQr`) and the holder's confirmation,
//! *My devices* with remote unlinking, and the account's *History* with its tamper check.
//!
//! Server-rendered HTML (maud escapes every value), one small script for what must update
//! live, a strict Content-Security-Policy, server-side sessions with CSRF tokens
//! (docs/adr/0017-portal-web.md).

pub mod backend;
pub mod config;
pub mod i18n;
mod pages;
pub mod session;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::Settings;
use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::session::SessionStore;

/// What every request handler shares.
#[derive(Debug, Clone)]
pub struct App {
    settings: Arc<Settings>,
    sessions: SessionStore,
    backend: Backend,
}

impl App {
    /// The page over `backend`, with `settings`.
    pub fn new(settings: Settings, backend: Backend) -> Self {
        Self {
            sessions: SessionStore::new(settings.max_sessions, settings.session_idle),
            settings: Arc::new(settings),
            backend,
        }
    }

    /// The sessions (tests look at them).
    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }

    /// The HTTP routes.
    pub fn router(&self) -> axum::Router {
        web::router(self.clone())
    }
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    axum::serve(
        listener,
        app.router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    Ok(())
}
