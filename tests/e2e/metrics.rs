//! Prometheus metrics (issue 16): both services serve `/metrics` when given an address, and
//! the series move as a link flow goes through them.

use std::time::Duration;

use e2e::mail::SmtpSink;
use e2e::metrics::{Scrape, documented_series, get, scrape};
use e2e::{bearer, eventually, spawn_system_with_mail_and};
use proto::v1::ListDevicesRequest;
use tonic::codegen::http::uri::PathAndQuery;

const WITHIN: Duration = Duration::from_secs(30);

fn any_port() -> Option<std::net::SocketAddr> {
    Some("127.0.0.1:0".parse().unwrap())
}

fn set_secret_code(code: &str) -> String {
    format!(
        "linkd_grpc_server_handled_total{{grpc_service=\"linking.v1.DeviceService\",\
         grpc_method=\"SetSecretCode\",grpc_code=\"{code}\"}}"
    )
}

#[tokio::test]
async fn both_services_report_a_link_flow() {
    // Arrange: both services with a metrics endpoint, emails on.
    let sink = SmtpSink::start().await;
    let mut app = spawn_system_with_mail_and(sink.settings(), |settings| {
        settings.metrics_addr = any_port();
    })
    .await;
    app.restart_read_side(|settings| settings.metrics_addr = any_port())
        .await;
    let (command, read) = (app.command_metrics_addr(), app.read_metrics_addr());
    app.register("anna").await;
    let before = scrape(command).await;

    // Act: a device linked, and the holder lists it.
    let linked = app.link_by_qr("anna").await;
    sink.wait_for(1, WITHIN).await;
    app.wait_until_every_read_model_is_exact(WITHIN).await;
    app.queries()
        .list_devices(bearer(
            ListDevicesRequest {
                consistency_token: linked.consistency_token.clone(),
                ..Default::default()
            },
            &app.citizen("anna"),
        ))
        .await
        .unwrap();

    // Assert, command side: the call counted once, by its code; the event store's commits;
    // a hash that waited for a thread; the pool's connections.
    let after = scrape(command).await;
    assert!(after.status.contains("200"), "{}", after.status);
    assert!(
        after
            .content_type
            .starts_with("application/openmetrics-text"),
        "{}",
        after.content_type
    );
    assert!(after.text.ends_with("# EOF\n"));
    let ok = set_secret_code("OK");
    assert_eq!(after.count(&ok) - before.count(&ok), 1.0, "{}", after.text);
    assert_eq!(after.count(&set_secret_code("INVALID_ARGUMENT")), 0.0);
    assert!(
        after.count("linkd_event_store_commits_total")
            > before.count("linkd_event_store_commits_total")
    );
    assert!(after.count("linkd_hashing_wait_seconds_count") >= 1.0);
    assert_eq!(
        after.value("linkd_hashing_capacity").map(|c| c > 0.0),
        Some(true)
    );
    assert!(
        after
            .value("linkd_db_pool_connections{pool=\"command\",state=\"idle\"}")
            .is_some(),
        "{}",
        after.text
    );
    // ... and the relay: it leads, and its published position reaches the store's last.
    let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let relay = eventually(
        WITHIN,
        "the relay's position at the store's last",
        || async {
            let now = scrape(command).await;
            (now.value("linkd_relay_published_position") == Some(last as f64)).then_some(now)
        },
    )
    .await;
    assert_eq!(relay.value("linkd_relay_store_position"), Some(last as f64));
    assert_eq!(relay.value("linkd_relay_lag_events"), Some(0.0));
    assert_eq!(relay.value("linkd_relay_lag_seconds"), Some(0.0));
    assert_eq!(relay.value("linkd_relay_leader"), Some(1.0));
    assert!(relay.count("linkd_relay_published_events_total") >= app.event_count().await as f64);

    // Assert, projection side: the consumer applied every message and nothing waits; the
    // email left; the query counted.
    let events = app.event_count().await as f64;
    let projection = eventually(WITHIN, "the consumer caught up", || async {
        let now = scrape(read).await;
        (now.value("linkd_consumer_pending_messages") == Some(0.0)
            && now.count("linkd_consumer_applied_messages_total") >= events)
            .then_some(now)
    })
    .await;
    assert_eq!(
        projection.value("linkd_consumer_stream_sequence"),
        Some(events)
    );
    assert_eq!(projection.value("linkd_consumer_lag_seconds"), Some(0.0));
    assert!(projection.count("linkd_consumer_batch_messages_count") >= 1.0);
    assert_eq!(
        projection.count("linkd_consumer_parked_messages_total"),
        0.0
    );
    let sent = eventually(WITHIN, "the email counted as sent", || async {
        let now = scrape(read).await;
        (now.count("linkd_email_sent_total") == 1.0).then_some(now)
    })
    .await;
    assert_eq!(
        sent.value("linkd_email_outbox_messages{status=\"pending\"}"),
        Some(0.0)
    );
    assert_eq!(
        sent.value("linkd_email_outbox_oldest_pending_seconds"),
        Some(0.0)
    );
    assert_eq!(
        sent.count(
            "linkd_grpc_server_handled_total{grpc_service=\"linking.v1.DeviceQueryService\",\
             grpc_method=\"ListDevices\",grpc_code=\"OK\"}"
        ),
        1.0,
        "{}",
        sent.text
    );
    // Every series docs/metrics.md documents is served by one service or the other.
    for documented in documented_series() {
        let family = documented.strip_suffix("_total").unwrap_or(&documented);
        let declared = format!("# TYPE {family} ");
        assert!(
            relay.text.contains(&declared) || sent.text.contains(&declared),
            "docs/metrics.md documents {documented}, which neither service serves"
        );
    }
    for pool in ["queries", "consumer", "email", "event_store"] {
        assert!(
            sent.value(&format!(
                "linkd_db_pool_connections{{pool=\"{pool}\",state=\"in_use\"}}"
            ))
            .is_some(),
            "{pool}"
        );
    }
}

#[tokio::test]
async fn made_up_methods_share_one_series_and_other_paths_are_not_found() {
    // Arrange
    let mut app = e2e::spawn_system_with(|settings| settings.metrics_addr = any_port()).await;
    app.restart_read_side(|settings| settings.metrics_addr = any_port())
        .await;
    let command = app.command_metrics_addr();

    // Act: a stranger calls forty methods that do not exist.
    for n in 0..40 {
        let mut grpc = tonic::client::Grpc::new(app.channel.clone());
        grpc.ready().await.unwrap();
        let path =
            PathAndQuery::from_maybe_shared(format!("/linking.v1.DeviceService/Nope{n}")).unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let refused = grpc
            .unary(tonic::Request::new(()), path, codec)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented);
    }

    // Assert: one series for all of them; the endpoint serves nothing but /metrics.
    let after: Scrape = scrape(command).await;
    assert_eq!(
        after.count(
            "linkd_grpc_server_handled_total{grpc_service=\"unknown\",grpc_method=\"unknown\",\
             grpc_code=\"UNIMPLEMENTED\"}"
        ),
        40.0,
        "{}",
        after.text
    );
    assert!(!after.text.contains("Nope"));
    assert!(get(command, "/").await.status.contains("404"));
    assert!(
        get(app.read_metrics_addr(), "/metrics/x")
            .await
            .status
            .contains("404")
    );
}
