//! Connected gRPC clients and small helpers shared by the subcommands and the demo.

use anyhow::Context as _;
use proto::v1::device_service_client::DeviceServiceClient;
use proto::v1::portal_service_client::PortalServiceClient;
use tonic::Request;
use tonic::transport::Channel;

/// Clients for both command-side services.
#[derive(Debug, Clone)]
pub struct Clients {
    /// `PortalService`.
    pub portal: PortalServiceClient<Channel>,
    /// `DeviceService`.
    pub device: DeviceServiceClient<Channel>,
}

impl Clients {
    /// Connects to the command service at `addr` (e.g. `http://127.0.0.1:50051`).
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let channel = Channel::from_shared(addr.to_owned())
            .with_context(|| format!("{addr} is not a valid address"))?
            .connect()
            .await
            .with_context(|| format!("connecting to the command service at {addr}"))?;
        Ok(Self::from_channel(channel))
    }

    /// Clients over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            portal: PortalServiceClient::new(channel.clone()),
            device: DeviceServiceClient::new(channel),
        }
    }
}

/// `message` with `authorization: Bearer <token>` (no header if `token` is empty).
pub fn bearer<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    if !token.is_empty() {
        let value = format!("Bearer {token}")
            .parse()
            .context("the token has invalid characters")?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A protobuf timestamp as RFC 3339, or `-`.
pub fn format_time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|at| {
        chrono::DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap_or(0))
    })
    .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339())
}
