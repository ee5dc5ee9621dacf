//! Admission: how much a server takes on. At most [`Limits::concurrent_calls`] calls are in
//! progress at once in one server; a call beyond is answered `RESOURCE_EXHAUSTED` at once, with
//! a `google.rpc.RetryInfo`, instead of queueing without bound. A call whose answer is not ready
//! within [`Limits::call_timeout`] is answered `DEADLINE_EXCEEDED`; its outcome is then unknown to
//! the client. (The command service runs each call in a task of its own, so the work itself goes
//! on to its end and its answer is recorded for a retry with the same `request_id`; the
//! queries are reads, dropped harmlessly.)
//!
//! A streaming answer counts until its headers are sent (`WatchLinkQr` streams are bounded by
//! their own limit).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// How much one server takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls in progress at once; beyond, `RESOURCE_EXHAUSTED`.
    pub concurrent_calls: usize,
    /// The longest a call may take before its answer starts; beyond, `DEADLINE_EXCEEDED`.
    pub call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrent_calls: 256,
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// How long a refused client should wait before retrying.
const RETRY_IN: Duration = Duration::from_secs(1);

/// The layer of [`Admission`].
#[derive(Debug, Clone)]
pub(super) struct AdmissionLayer {
    permits: Arc<Semaphore>,
    call_timeout: Duration,
}

impl AdmissionLayer {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.concurrent_calls.max(1))),
            call_timeout: limits.call_timeout,
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            permits: Arc::clone(&self.permits),
            call_timeout: self.call_timeout,
        }
    }
}

/// Admits a call if the server has room for it, and bounds how long it may take.
#[derive(Debug, Clone)]
pub(super) struct Admission<S> {
    inner: S,
    permits: Arc<Semaphore>,
    call_timeout: Duration,
}

type Answer = Result<http::Response<Body>, Infallible>;

impl<S> tower::Service<http::Request<Body>> for Admission<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            tracing::warn!("call refused: the server is at its concurrency limit");
            return Box::pin(std::future::ready(Ok(over_capacity())));
        };
        let answer = self.inner.call(request);
        let call_timeout = self.call_timeout;
        Box::pin(async move {
            let answer = tokio::time::timeout(call_timeout, answer).await;
            drop(permit);
            answer.unwrap_or_else(|_| {
                tracing::warn!(?call_timeout, "call timed out");
                Ok(Status::deadline_exceeded(format!(
                    "the call took longer than the server's limit of {} s; its outcome is \
                     unknown: retry it with the same request_id (ABORTED while it still runs, \
                     then its first answer)",
                    call_timeout.as_secs()
                ))
                .into_http())
            })
        })
    }
}

fn over_capacity() -> http::Response<Body> {
    Status::with_error_details(
        Code::ResourceExhausted,
        "the server is handling as many calls as it can; retry in a second",
        ErrorDetails::with_retry_info(Some(RETRY_IN)),
    )
    .into_http()
}
