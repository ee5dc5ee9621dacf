//! Tamper evidence: the event store's hash chain (docs/audit.md).

use e2e::{TestApp, bearer, spawn_app};
use history::{Verdict, verify_account};

async fn scripted_history(app: &mut TestApp) {
    app.register("anna").await;
    app.record_login("anna", "MOBILE-1").await;
    let linked = app.link_by_qr("anna").await;
    app.link_by_luxtrust("anna", "MOBILE-1").await;
    let request = proto::v1::UnlinkDevicesRequest {
        device_ids: vec![linked.device_id],
        request_id: String::new(),
        ..Default::default()
    };
    app.portal
        .unlink_devices(bearer(request, &app.citizen("anna")))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_untouched_history_is_intact() {
    let mut app = spawn_app().await;
    scripted_history(&mut app).await;

    let verdict = verify_account(&app.pool, "anna").await.unwrap();

    let (count, last): (i64, i64) =
        sqlx::query_as("SELECT count(*), max(global_position) FROM events")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    match verdict {
        Verdict::Intact {
            events,
            up_to_position,
        } => {
            assert_eq!(
                i64::try_from(events).unwrap(),
                count,
                "every event is anna's"
            );
            assert_eq!(up_to_position, last);
        }
        broken @ Verdict::Broken { .. } => panic!("{broken:?}"),
    }
}

#[tokio::test]
async fn an_edited_event_is_reported_at_its_position() {
    // Arrange: someone with database access rewrites a device's name in its DeviceLinked (it is
    // stored sealed: they put a name of their own in its place).
    let mut app = spawn_app().await;
    scripted_history(&mut app).await;
    let position: i64 = sqlx::query_scalar(
        "UPDATE events SET payload = jsonb_set(payload::jsonb, '{DeviceLinked,device_name}', \
                                               '\"Mallory''s phone\"')::json \
         WHERE global_position = (SELECT min(global_position) FROM events \
                                  WHERE event_type = 'DeviceLinked') RETURNING global_position",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // Act
    let verdict = verify_account(&app.pool, "anna").await.unwrap();

    // Assert
    let Verdict::Broken {
        global_position,
        reason,
        ..
    } = verdict
    else {
        panic!("the edit went unnoticed");
    };
    assert_eq!(global_position, position);
    assert!(reason.contains("changed"), "{reason}");
}

#[tokio::test]
async fn a_deleted_event_is_reported_at_the_event_after_it() {
    // Arrange: someone deletes an event from the middle of a link attempt's history.
    let mut app = spawn_app().await;
    scripted_history(&mut app).await;
    let (aggregate_id, deleted): (String, i64) = sqlx::query_as(
        "DELETE FROM events WHERE (aggregate_type, aggregate_id, sequence) = \
         (SELECT aggregate_type, aggregate_id, sequence FROM events \
          WHERE event_type = 'QrAccepted' LIMIT 1) RETURNING aggregate_id, global_position",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let next: i64 = sqlx::query_scalar(
        "SELECT min(global_position) FROM events WHERE aggregate_id = $1 AND global_position > $2",
    )
    .bind(&aggregate_id)
    .bind(deleted)
    .fetch_one(&app.pool)
    .await
    .unwrap();

    // Act
    let verdict = verify_account(&app.pool, "anna").await.unwrap();

    // Assert
    let Verdict::Broken {
        global_position,
        reason,
        ..
    } = verdict
    else {
        panic!("the deletion went unnoticed");
    };
    assert_eq!(global_position, next);
    assert!(reason.contains("missing"), "{reason}");
}

#[tokio::test]
async fn the_chain_is_written_by_the_database_for_every_event() {
    let mut app = spawn_app().await;
    scripted_history(&mut app).await;

    let unchained: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE chain_hash IS NULL OR length(chain_hash) <> 32",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    assert_eq!(unchained, 0);
}
