//! Projection lag: from a command's acknowledgement to its effect being visible through
//! `GetDevice` without a consistency token (a linked device is returned; an unlinked one is
//! returned with status `UNLINKED` — the read side keeps it, it does not answer NOT_FOUND).

use std::time::{Duration, Instant};

use linkctl::client::bearer;
use proto::v1::device_query_service_client::DeviceQueryServiceClient;
use proto::v1::{DeviceStatus, GetDeviceRequest};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::stats::{Lags, Probe};

/// How long a probe waits for an effect before counting it as never seen.
const GIVE_UP: Duration = Duration::from_secs(30);

/// The effect a probe waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The device is listed as linked.
    Linked,
    /// The device is listed as unlinked.
    Unlinked,
}

/// Polls `GetDevice` every `poll` until the device shows `want`; the time since `acked` (`None`
/// if it never did within [`GIVE_UP`]) and the queries it took. The figure is an upper bound by
/// up to `poll` plus one query's round trip.
pub(crate) async fn until_visible(
    mut client: DeviceQueryServiceClient<Channel>,
    citizen_token: String,
    device_id: String,
    want: Want,
    acked: Instant,
    poll: Duration,
) -> Probe {
    let mut queries = 0;
    loop {
        let request = GetDeviceRequest {
            device_id: device_id.clone(),
            consistency_token: String::new(),
        };
        let Ok(request) = bearer(request, &citizen_token) else {
            return Probe::unseen(queries);
        };
        queries += 1;
        if let Ok(reply) = client.get_device(request).await {
            let status = reply.into_inner().status;
            let seen = match want {
                Want::Linked => status == i32::from(DeviceStatus::Linked),
                Want::Unlinked => status == i32::from(DeviceStatus::Unlinked),
            };
            if seen {
                return Probe {
                    seen: Some(acked.elapsed()),
                    queries,
                };
            }
        }
        if acked.elapsed() > GIVE_UP {
            return Probe::unseen(queries);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Probes running beside a closed-loop client, so that waiting for visibility does not slow
/// the client down.
#[derive(Debug)]
pub(crate) struct Probes {
    poll: Duration,
    running: Vec<JoinHandle<Probe>>,
}

impl Probes {
    /// No probes yet; they will poll every `poll`.
    pub(crate) fn new(poll: Duration) -> Self {
        Self {
            poll,
            running: Vec::new(),
        }
    }

    /// Starts waiting for `want` on `device_id`, acknowledged at `acked`.
    pub(crate) fn spawn(
        &mut self,
        queries: DeviceQueryServiceClient<Channel>,
        citizen_token: String,
        device_id: String,
        want: Want,
        acked: Instant,
    ) {
        let poll = self.poll;
        self.running.push(tokio::spawn(until_visible(
            queries,
            citizen_token,
            device_id,
            want,
            acked,
            poll,
        )));
    }

    /// Waits for every probe; their lags.
    pub(crate) async fn collect(self) -> Lags {
        let mut lags = Lags::default();
        for probe in self.running {
            lags.push(probe.await.unwrap_or(Probe::unseen(0)));
        }
        lags
    }
}
