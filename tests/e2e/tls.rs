//! TLS on the gRPC servers (issue 16, third point; ADR 0023): a link flow over mutual TLS, with
//! linkctl's and portal-web's clients; a caller without a certificate, with another CA's
//! certificate, or in plain text is refused before any call is read; files that do not fit stop
//! the start.

use std::time::Duration;

use e2e::tls::{client, files, server, stranger_files, url};
use e2e::{bearer, spawn_app_with, spawn_system_with};
use proto::v1::{ListDevicesRequest, RegisterAccountRequest};
use service_kit::tls::{ClientTls, ServerTls};
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(30);

fn register(account_id: &str) -> RegisterAccountRequest {
    RegisterAccountRequest {
        account_id: account_id.into(),
        email: format!("{account_id}@example.lu"),
        language: "fr".into(),
        request_id: String::new(),
    }
}

/// What a call through `tls` to the command service at `addr` gets: the connection's or the
/// call's error, if any.
async fn register_through(
    tls: &ClientTls,
    command: &str,
    query: &str,
    token: &str,
) -> Result<(), String> {
    let mut clients = linkctl::client::Clients::connect(command, query, tls)
        .await
        .map_err(|e| format!("{e:#}"))?;
    clients
        .portal
        .register_account(bearer(register("stranger"), token))
        .await
        .map(drop)
        .map_err(|status| format!("{status}"))
}

#[tokio::test]
async fn a_link_flow_runs_over_mutual_tls_and_callers_without_the_cas_certificate_are_refused() {
    // Arrange: both services serving mutual TLS (the harness presents the CA's client
    // certificate).
    let mut app = spawn_system_with(|settings| settings.tls = Some(server(true))).await;
    let command = url(app.command_addr(), Some(&server(true)));
    let query = url(app.read_addr(), Some(&server(true)));

    // Act: a device linked over mutual TLS, then listed through linkctl's clients and
    // portal-web's back-end clients, both presenting the client certificate.
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;
    let portal_backend = client(Some(files()));
    let mut linkctl = linkctl::client::Clients::connect(&command, &query, &portal_backend)
        .await
        .unwrap();
    let list = ListDevicesRequest {
        consistency_token: linked.consistency_token.clone(),
        ..Default::default()
    };
    let through_linkctl = linkctl
        .queries
        .list_devices(bearer(list.clone(), &app.citizen("anna")))
        .await
        .unwrap()
        .into_inner();
    let mut web =
        portal_web::backend::Backend::connect_lazy(&command, &query, &portal_backend).unwrap();
    let through_web = web
        .queries
        .list_devices(bearer(list, &app.citizen("anna")))
        .await
        .unwrap()
        .into_inner();

    // Assert: the device, both ways.
    assert_eq!(through_linkctl.devices.len(), 1);
    assert_eq!(through_linkctl.devices[0].device_id, linked.device_id);
    assert_eq!(through_web.devices, through_linkctl.devices);

    // Act and assert: callers that cannot prove themselves are refused, and nothing they sent
    // was stored.
    let events = app.event_count().await;
    let system = app.system();
    let without_certificate = register_through(&client(None), &command, &query, &system).await;
    let other_ca =
        register_through(&client(Some(stranger_files())), &command, &query, &system).await;
    let plain_text = register_through(
        &ClientTls::default(),
        &format!("http://{}", app.command_addr()),
        &format!("http://{}", app.read_addr()),
        &system,
    )
    .await;
    // The server ends the handshake (with a TLS alert, "CertificateRequired" without a
    // certificate; the client may see only the closed connection, depending on when it sends).
    for (who, outcome) in [
        ("without a certificate", &without_certificate),
        ("with another CA's certificate", &other_ca),
        ("in plain text", &plain_text),
    ] {
        let Err(error) = outcome else {
            panic!("a caller {who} was served");
        };
        assert!(
            !error.contains("InvalidArgument") && !error.contains("PermissionDenied"),
            "a caller {who} reached a handler: {error}"
        );
        assert!(
            error.contains("transport error"),
            "a caller {who} was not refused by the transport: {error}"
        );
    }
    // The same on the query side, where no bearer token would stop a call either.
    let mut stranger = proto::v1::device_query_service_client::DeviceQueryServiceClient::new(
        client(None).endpoint(&query).unwrap().connect_lazy(),
    );
    let refused = stranger
        .list_devices(bearer(ListDevicesRequest::default(), &app.citizen("anna")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{refused:?}"
    );
    assert_eq!(app.event_count().await, events);
    app.wait_until_every_read_model_is_exact(WITHIN).await;
}

#[tokio::test]
async fn tls_without_a_client_ca_serves_any_caller_that_trusts_the_server() {
    // Arrange: TLS, not mutual.
    let app = spawn_app_with(|settings| settings.tls = Some(server(false))).await;
    let command = url(app.command_addr(), Some(&server(false)));
    let system = app.system();

    // Act: a caller without a certificate, and one that trusts another CA only.
    let trusting = register_through(&client(None), &command, &command, &system).await;
    let distrusting = register_through(
        &ClientTls {
            ca_file: Some(stranger_files().ca.clone()),
            identity: None,
        },
        &command,
        &command,
        &system,
    )
    .await;

    // Assert: the first is served; the second does not accept the server's certificate.
    assert_eq!(trusting, Ok(()));
    let error = distrusting.unwrap_err();
    assert!(
        error.contains("certificate") || error.contains("transport"),
        "{error}"
    );
}

#[test]
fn files_that_do_not_fit_stop_the_start_and_are_named() {
    let (ours, theirs) = (files(), stranger_files());
    // A key that is not the certificate's.
    let mismatched = ServerTls {
        cert_file: ours.server_cert.clone(),
        key_file: theirs.server_key.clone(),
        client_ca_file: None,
    };
    let error = format!("{:#}", mismatched.load().unwrap_err());
    assert!(
        error.contains(&ours.server_cert.display().to_string()),
        "{error}"
    );
    assert!(
        error.contains(&theirs.server_key.display().to_string()),
        "{error}"
    );
    // A key where the certificate belongs.
    let swapped = ServerTls {
        cert_file: ours.server_key.clone(),
        key_file: ours.server_cert.clone(),
        client_ca_file: None,
    };
    let error = format!("{:#}", swapped.load().unwrap_err());
    assert!(error.contains("holds no certificate"), "{error}");
    // A missing client CA.
    let missing = ServerTls {
        client_ca_file: Some("/nonexistent/ca.pem".into()),
        ..server(false)
    };
    let error = format!("{:#}", missing.load().unwrap_err());
    assert!(error.contains("reading /nonexistent/ca.pem"), "{error}");
    // And the whole set, as `linkctl dev tls` writes it, loads.
    assert!(server(true).load().is_ok());
    // A client with TLS files but a plain-text address is told to use https://.
    let error = client(None).endpoint("http://127.0.0.1:1").unwrap_err();
    assert!(format!("{error}").contains("use https://"), "{error}");
}

#[tokio::test]
async fn a_connection_that_never_completes_its_handshake_is_closed() {
    // Arrange: a mutual-TLS server, and a stranger's TCP connection that sends nothing.
    let app = spawn_app_with(|settings| settings.tls = Some(server(true))).await;
    let mut idle = tokio::net::TcpStream::connect(app.command_addr())
        .await
        .unwrap();

    // Act: wait for the server to give up on it (the handshake timeout is 10 s).
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        service_kit::tls::HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut idle, &mut byte),
    )
    .await;

    // Assert: closed (end of stream or reset), not held open for ever.
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the connection was still open: {closed:?}"
    );
}
