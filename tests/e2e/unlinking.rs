use e2e::{CODE, bearer, spawn_app};
use proto::v1::{UnlinkDevicesRequest, VerifySecretCodeRequest};
use tonic::Code;
use uuid::Uuid;

fn unlink(ids: &[&str]) -> UnlinkDevicesRequest {
    UnlinkDevicesRequest {
        device_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        request_id: String::new(),
        ..Default::default()
    }
}

fn verify() -> VerifySecretCodeRequest {
    VerifySecretCodeRequest {
        secret_code: CODE.into(),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn after_unlinking_from_the_portal_the_device_credential_is_refused() {
    // Arrange: two devices linked to Anna's account.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let lost = app.link_by_qr("anna").await;
    let kept = app.link_by_qr("anna").await;

    // Act: Anna unlinks the lost phone from the browser.
    let token = app.citizen("anna");
    let reply = app
        .portal
        .unlink_devices(bearer(unlink(&[&lost.device_id]), &token))
        .await;

    // Assert
    assert_eq!(
        reply.unwrap().into_inner().unlinked_device_ids,
        std::slice::from_ref(&lost.device_id)
    );
    let refused = app
        .device
        .verify_secret_code(bearer(verify(), &lost.credential))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    let still = app
        .device
        .verify_secret_code(bearer(verify(), &kept.credential))
        .await;
    assert!(still.unwrap().into_inner().verified);
    let credentials: i64 = sqlx::query_scalar("SELECT count(*) FROM device_credentials")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        credentials, 1,
        "unlinking cleared the lost device's secrets"
    );
    let reason: String = sqlx::query_scalar(
        "SELECT payload->'DeviceUnlinked'->>'reason' FROM events WHERE event_type = 'DeviceUnlinked'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(reason, "FromPortal");
}

#[tokio::test]
async fn several_devices_can_be_unlinked_at_once() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let first = app.link_by_qr("anna").await;
    let second = app.link_by_qr("anna").await;

    let token = app.citizen("anna");
    let ids = [first.device_id.as_str(), second.device_id.as_str()];
    app.portal
        .unlink_devices(bearer(unlink(&ids), &token))
        .await
        .unwrap();

    assert_eq!(app.events_of_type("DeviceUnlinked").await, 2);
}

#[tokio::test]
async fn after_unlinking_itself_the_device_credential_is_refused() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;

    app.device
        .unlink_this_device(bearer(Default::default(), &linked.credential))
        .await
        .unwrap();

    let refused = app
        .device
        .verify_secret_code(bearer(verify(), &linked.credential))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    let again = app
        .device
        .unlink_this_device(bearer(Default::default(), &linked.credential))
        .await;
    assert_eq!(again.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn nobody_can_unlink_a_device_of_another_account() {
    // Arrange
    let mut app = spawn_app().await;
    app.register("anna").await;
    app.register("mallory").await;
    let annas = app.link_by_qr("anna").await;
    let mallorys = app.link_by_qr("mallory").await;

    // Act: Mallory names her own device and Anna's.
    let token = app.citizen("mallory");
    let ids = [mallorys.device_id.as_str(), annas.device_id.as_str()];
    let refused = app
        .portal
        .unlink_devices(bearer(unlink(&ids), &token))
        .await
        .unwrap_err();

    // Assert: refused as if the device did not exist, and nothing was unlinked.
    assert_eq!(refused.code(), Code::NotFound);
    assert!(
        refused.message().contains(&annas.device_id),
        "{}",
        refused.message()
    );
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 0);
}

#[tokio::test]
async fn unlinking_an_unknown_device_is_not_found() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let token = app.citizen("anna");
    let unknown = Uuid::new_v4().to_string();

    let refused = app
        .portal
        .unlink_devices(bearer(unlink(&[&unknown]), &token))
        .await;

    assert_eq!(refused.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn unlinking_again_what_is_already_unlinked_succeeds() {
    // A retry after a partial failure must finish the job, not fail on the devices done first.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let first = app.link_by_qr("anna").await;
    let second = app.link_by_qr("anna").await;
    let token = app.citizen("anna");
    app.portal
        .unlink_devices(bearer(unlink(&[&first.device_id]), &token))
        .await
        .unwrap();

    let both = [first.device_id.as_str(), second.device_id.as_str()];
    let reply = app
        .portal
        .unlink_devices(bearer(unlink(&both), &token))
        .await
        .unwrap();

    let reply = reply.into_inner();
    assert_eq!(
        reply.unlinked_device_ids,
        std::slice::from_ref(&second.device_id)
    );
    assert_eq!(
        reply.already_unlinked_device_ids,
        std::slice::from_ref(&first.device_id)
    );
    assert!(reply.relinked_device_ids.is_empty(), "{reply:?}");
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 2);
}

#[tokio::test]
async fn a_replayed_unlink_of_this_device_answers_as_the_first_time() {
    let mut app = spawn_app().await;
    app.register("anna").await;
    let linked = app.link_by_qr("anna").await;
    let request = proto::v1::UnlinkThisDeviceRequest {
        request_id: Uuid::new_v4().to_string(),
    };

    app.device
        .unlink_this_device(bearer(request.clone(), &linked.credential))
        .await
        .unwrap();
    let replay = app
        .device
        .unlink_this_device(bearer(request, &linked.credential))
        .await;

    assert!(replay.is_ok(), "{replay:?}");
    assert_eq!(app.events_of_type("DeviceUnlinked").await, 1);
}

#[tokio::test]
async fn the_sweeper_removes_credentials_a_crash_left_behind() {
    // Arrange: a device unlinked, then its credential row put back as if the delete never ran,
    // plus an old row for a link that never happened.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let kept = app.link_by_qr("anna").await;
    let gone = app.link_by_qr("anna").await;
    let (link_id, device_id): (Uuid, Uuid) = sqlx::query_as(
        "SELECT link_id, device_id FROM device_credentials WHERE device_id::text = $1",
    )
    .bind(&gone.device_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    app.device
        .unlink_this_device(bearer(Default::default(), &gone.credential))
        .await
        .unwrap();
    for (link, created) in [
        (link_id, "now()"),
        (Uuid::new_v4(), "now() - interval '2 hours'"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO device_credentials (link_id, device_id, credential_hash, code_verifier, \
             created_at) VALUES ($1, $2, 'x', 'y', {created})"
        ))
        .bind(link)
        .bind(device_id)
        .execute(&app.pool)
        .await
        .unwrap();
    }

    // Act
    let periods = command_service::sweeper::Periods {
        replays: std::time::Duration::from_secs(24 * 3600),
        abandoned_after: std::time::Duration::from_secs(3600),
        unclaimed_attempt_keys: std::time::Duration::from_secs(86_400),
    };
    let swept = command_service::sweeper::sweep(&app.pool, &periods)
        .await
        .unwrap()
        .expect("no other instance sweeps");

    // Assert: both leftovers removed, the linked device's credential kept and working.
    assert_eq!(swept.credentials, 2);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM device_credentials")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
    let still = app
        .device
        .verify_secret_code(bearer(verify(), &kept.credential))
        .await;
    assert!(still.unwrap().into_inner().verified);
}
