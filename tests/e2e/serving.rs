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
    // Arrange
    let database = e2e::TestDatabase::create("linkd_e2e_read").await.unwrap();
    let settings = projection_service::Settings::from_lookup(|key| match key {
        "LINKD_PROJECTION_GRPC_ADDR" => Some("127.0.0.1:0".into()),
        "LINKD_PROJECTION_DATABASE_URL" => Some(database.url.clone()),
        _ => None,
    })
    .unwrap();
    let app = projection_service::Application::build(settings)
        .await
        .unwrap();
    let addr = app.local_addr();
    let pool = app.pool();
    let server = tokio::spawn(app.run_until_stopped(std::future::pending()));

    // Act
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let reply = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    // Assert
    assert_eq!(reply.into_inner().status, 1);
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(migrated >= 1);
    server.abort();
    pool.close().await;
}
