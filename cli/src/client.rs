//! Connected gRPC clients and small helpers shared by the subcommands and the demo.

use anyhow::Context as _;
use proto::v1::device_query_service_client::DeviceQueryServiceClient;
use proto::v1::device_service_client::DeviceServiceClient;
use proto::v1::portal_service_client::PortalServiceClient;
pub use service_kit::tls::ClientTls;
use tonic::Request;
use tonic::transport::Channel;

/// Clients for the command side's services and the read side's query service.
#[derive(Debug, Clone)]
pub struct Clients {
    /// `PortalService`.
    pub portal: PortalServiceClient<Channel>,
    /// `DeviceService`.
    pub device: DeviceServiceClient<Channel>,
    /// `DeviceQueryService` (on the projection service).
    pub queries: DeviceQueryServiceClient<Channel>,
}

async fn channel(addr: &str, what: &str, tls: &ClientTls) -> anyhow::Result<Channel> {
    tls.endpoint(addr)?
        .connect()
        .await
        .with_context(|| format!("connecting to the {what} at {addr}"))
}

impl Clients {
    /// Connects to the command service at `addr` and the projection service at `query_addr`
    /// (e.g. `http://127.0.0.1:50051`, `http://127.0.0.1:50052`; `https://` addresses with
    /// `tls`). The query channel connects lazily, so commands work while the projection service
    /// is down.
    pub async fn connect(addr: &str, query_addr: &str, tls: &ClientTls) -> anyhow::Result<Self> {
        let commands = channel(addr, "command service", tls).await?;
        let queries = tls.endpoint(query_addr)?.connect_lazy();
        Ok(Self::from_channels(commands, queries))
    }

    /// Clients over existing channels.
    pub fn from_channels(commands: Channel, queries: Channel) -> Self {
        Self {
            portal: PortalServiceClient::new(commands.clone()),
            device: DeviceServiceClient::new(commands),
            queries: DeviceQueryServiceClient::new(queries),
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
    at.and_then(proto::convert::datetime)
        .map_or_else(|| "-".to_owned(), |at| at.to_rfc3339())
}

/// One line about a device, for people.
pub fn describe(device: &proto::v1::DeviceView) -> String {
    use proto::convert::TextForm as _;
    use proto::v1::{DeviceStatus, LinkMethod};
    let method = match LinkMethod::try_from(device.method) {
        Ok(LinkMethod::Qr) => "QR code".to_owned(),
        Ok(LinkMethod::Luxtrust) => format!(
            "LuxTrust {}",
            device
                .product
                .as_ref()
                .map(|p| p.serial.as_str())
                .unwrap_or_default()
        ),
        Ok(LinkMethod::Unspecified) | Err(_) => "?".to_owned(),
    };
    // `linked` / `unlinked`; `?` for a status this build does not know.
    let status = DeviceStatus::text_of(device.status).unwrap_or("?");
    format!(
        "{}  {:<20} {status:<8} via {method}, linked {}, biometrics {}, last used {}",
        device.device_id,
        device.name,
        format_time(device.linked_at.as_ref()),
        if device.biometrics_enabled {
            "on"
        } else {
            "off"
        },
        format_time(device.last_used_at.as_ref()),
    )
}
