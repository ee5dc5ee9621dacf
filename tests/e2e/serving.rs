use e2e::spawn_app;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn the_command_service_reports_its_health() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());

    for service in ["", "linking.v1.PortalService", "linking.v1.DeviceService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, 1, "{service} is SERVING");
    }
}

#[tokio::test]
async fn the_command_service_describes_itself_by_reflection() {
    let app = spawn_app().await;
    let mut reflection = ServerReflectionClient::new(app.channel.clone());

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();

    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"linking.v1.PortalService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"linking.v1.DeviceService".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn the_projection_service_starts_migrates_and_reports_its_health() {
    let app = e2e::spawn_system().await;
    let mut health = HealthClient::new(app.read.as_ref().unwrap().channel.clone());

    for service in ["", "linking.v1.DeviceQueryService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(reply.into_inner().status, 1, "{service} is SERVING");
    }
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&app.read_pool())
        .await
        .unwrap();
    assert!(migrated >= 2);
}

/// A request with `authorization: <scheme> <token>`.
fn with_authorization<T>(message: T, value: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", value.parse().unwrap());
    request
}

#[tokio::test]
async fn both_services_read_the_bearer_scheme_in_any_case() {
    // Arrange
    let mut app = e2e::spawn_system().await;
    app.register("anna").await;
    let token = app.citizen("anna");

    for scheme in ["bearer", "BEARER", "Bearer"] {
        // Act
        let issued = app
            .portal
            .issue_link_qr(with_authorization(
                proto::v1::IssueLinkQrRequest::default(),
                &format!("{scheme} {token}"),
            ))
            .await;
        let listed = app
            .queries()
            .list_devices(with_authorization(
                proto::v1::ListDevicesRequest::default(),
                &format!("{scheme}  {token} "),
            ))
            .await;

        // Assert
        if let Err(status) = issued {
            panic!("IssueLinkQr with {scheme:?}: {status:?}");
        }
        if let Err(status) = listed {
            panic!("ListDevices with {scheme:?}: {status:?}");
        }
    }
    let other_scheme = app
        .queries()
        .list_devices(with_authorization(
            proto::v1::ListDevicesRequest::default(),
            &format!("Basic {token}"),
        ))
        .await;
    match other_scheme {
        Err(status) => assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}"),
        Ok(answer) => panic!("another scheme was accepted: {answer:?}"),
    }
}

#[tokio::test]
async fn the_query_side_refuses_an_oversized_request_as_invalid() {
    // Arrange
    let app = e2e::spawn_system().await;
    let request = proto::v1::ListDevicesRequest {
        page_token: "x".repeat(200 * 1024),
        ..Default::default()
    };

    // Act
    let refused = app
        .queries()
        .list_devices(e2e::bearer(request, &app.citizen("anna")))
        .await;

    // Assert
    match refused {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(status.message().contains("64 KiB"), "{status:?}");
        }
        Ok(answer) => panic!("an oversized request was answered: {answer:?}"),
    }
}
