//! Bytes no well-behaved client sends: a string field that is not UTF-8 (refused by the decoder)
//! and account ids with NUL (refused by PostgreSQL in text). Each is the client's mistake:
//! `INVALID_ARGUMENT`, nothing written, never reported as an outage.

use e2e::{assert_invalid, bearer, spawn_system};
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::{
    DevicesAtRequest, DevicesAtResponse, ExportHistoryRequest, GetDeviceRequest,
    IssueLinkQrRequest, ListDevicesRequest, ListEventsRequest, ScanQrResponse,
    VerifyHistoryRequest,
};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// `ScanQrRequest` as the wire sees it, with bytes where the contract has a string.
#[derive(Clone, PartialEq, prost::Message)]
struct RawScanQr {
    #[prost(string, tag = "1")]
    link_token: String,
    #[prost(bytes = "vec", tag = "2")]
    qr_payload: Vec<u8>,
}

/// `DevicesAtRequest` likewise.
#[derive(Clone, PartialEq, prost::Message)]
struct RawDevicesAt {
    #[prost(bytes = "vec", tag = "1")]
    account_id: Vec<u8>,
}

/// Sends `message` to `path` as it is, with `token` if any.
async fn raw_call<T, U>(
    channel: &Channel,
    path: &'static str,
    message: T,
    token: Option<&str>,
) -> Result<U, Status>
where
    T: prost::Message + Send + Sync + 'static,
    U: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = match token {
        Some(token) => bearer(message, token),
        None => Request::new(message),
    };
    let codec = tonic_prost::ProstCodec::<T, U>::default();
    grpc.unary(request, PathAndQuery::from_static(path), codec)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_string_field_that_is_not_utf8_is_invalid_on_both_services() {
    // Arrange
    let mut app = spawn_system().await;
    app.register("anna").await;
    let start = app.authenticated_qr_attempt("anna").await;
    let events = app.event_count().await;
    let query_channel = app.read.as_ref().unwrap().channel.clone();
    let auditor = app.keys.auditor_token().unwrap();

    // Act
    let scan: Result<ScanQrResponse, _> = raw_call(
        &app.channel,
        "/linking.v1.DeviceService/ScanQr",
        RawScanQr {
            link_token: start.link_token,
            qr_payload: vec![0xff, 0xfe, b'q', b'r'],
        },
        None,
    )
    .await;
    let devices_at: Result<DevicesAtResponse, _> = raw_call(
        &query_channel,
        "/linking.v1.AuditService/DevicesAt",
        RawDevicesAt {
            account_id: vec![b'a', 0xc3, 0x28],
        },
        Some(&auditor),
    )
    .await;

    // Assert
    assert_invalid("ScanQr", scan);
    assert_invalid("DevicesAt", devices_at);
    assert_eq!(app.event_count().await, events, "nothing written");
}

#[tokio::test]
async fn an_account_id_with_nul_is_invalid_on_every_rpc_that_takes_one() {
    // Arrange
    let mut app = spawn_system().await;
    app.register("anna").await;
    let events = app.event_count().await;
    let channel = app.read.as_ref().unwrap().channel.clone();
    let mut audit = AuditServiceClient::new(channel);
    let auditor = app.keys.auditor_token().unwrap();
    let nul = "an\0na".to_owned();
    let nul_holder = app.keys.citizen_token(&nul, 0).unwrap();
    let at = Some(proto::convert::timestamp(chrono::Utc::now()));

    // Act + Assert: an auditor naming such an account …
    let list = ListEventsRequest {
        account_id: nul.clone(),
        ..Default::default()
    };
    assert_invalid(
        "ListEvents",
        audit.list_events(bearer(list, &auditor)).await,
    );
    let export = ExportHistoryRequest {
        account_id: nul.clone(),
    };
    assert_invalid(
        "ExportHistory",
        audit.export_history(bearer(export, &auditor)).await,
    );
    let devices_at = DevicesAtRequest {
        account_id: nul.clone(),
        at,
    };
    assert_invalid(
        "DevicesAt",
        audit.devices_at(bearer(devices_at, &auditor)).await,
    );
    let verify = VerifyHistoryRequest {
        account_id: nul.clone(),
    };
    assert_invalid(
        "VerifyHistory",
        audit.verify_history(bearer(verify, &auditor)).await,
    );

    // … and a holder whose token's subject has one, on both services.
    assert_invalid(
        "ListDevices",
        app.queries()
            .list_devices(bearer(ListDevicesRequest::default(), &nul_holder))
            .await,
    );
    let get = GetDeviceRequest {
        device_id: uuid::Uuid::new_v4().to_string(),
        consistency_token: String::new(),
    };
    assert_invalid(
        "GetDevice",
        app.queries().get_device(bearer(get, &nul_holder)).await,
    );
    let holder_list = ListEventsRequest::default();
    assert_invalid(
        "ListEvents (holder)",
        audit.list_events(bearer(holder_list, &nul_holder)).await,
    );
    assert_invalid(
        "IssueLinkQr",
        app.portal
            .issue_link_qr(bearer(IssueLinkQrRequest::default(), &nul_holder))
            .await,
    );
    assert_eq!(app.event_count().await, events, "nothing written");
}
