//! AuditService: the history read from the event store, and the audit witness.

use std::time::Duration;

use e2e::{TestApp, bearer, eventually, spawn_system};
use proto::v1::audit_service_client::AuditServiceClient;
use proto::v1::{
    AuditEvent, DevicesAtRequest, ExportHistoryRequest, ListEventsRequest, VerifyHistoryRequest,
};
use tonic::Code;

fn audits(app: &TestApp) -> AuditServiceClient<tonic::transport::Channel> {
    AuditServiceClient::new(app.read.as_ref().unwrap().channel.clone())
}

fn list(account: &str) -> ListEventsRequest {
    ListEventsRequest {
        account_id: account.into(),
        ..Default::default()
    }
}

fn at(instant: chrono::DateTime<chrono::Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap(),
    })
}

/// Waits until the audit witness has applied every event of the store (the history itself is
/// read from the store).
async fn caught_up(app: &TestApp) {
    let stored: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(last), 0)::bigint FROM \
         (SELECT max(sequence) AS last FROM events GROUP BY aggregate_type, aggregate_id) AS a",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let read = app.read_pool();
    eventually(
        Duration::from_secs(30),
        "the audit witness to catch up",
        || async {
            let applied: i64 = sqlx::query_scalar(
                "SELECT coalesce(sum(last_sequence), 0)::bigint FROM projector_positions \
                 WHERE projector = 'audit'",
            )
            .fetch_one(&read)
            .await
            .ok()?;
            (applied == stored).then_some(())
        },
    )
    .await;
}

/// What `linkctl audit` prints for `command`, as lines.
async fn linkctl_audit(app: &TestApp, command: linkctl::audit::Command) -> Vec<String> {
    let channel = app.read.as_ref().unwrap().channel.clone();
    let auditor = app.keys.auditor_token().unwrap();
    let mut out = Vec::new();
    if let Err(error) = linkctl::audit::run(channel, command, &auditor, &mut out).await {
        panic!("linkctl audit failed: {error:#}");
    }
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Each line parsed as a JSON object.
fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|line| match serde_json::from_str(line) {
            Ok(value @ serde_json::Value::Object(_)) => value,
            Ok(other) => panic!("not a JSON object: {other}"),
            Err(error) => panic!("not JSON ({error}): {line}"),
        })
        .collect()
}

#[tokio::test]
async fn the_audit_log_lists_a_scripted_history_in_order_with_its_actors() {
    // Arrange: register, login, QR link, LuxTrust link, wrong codes to lock-out, remote unlink.
    let mut app = spawn_system().await;
    app.register("anna").await;
    app.record_login("anna", "MOBILE-1").await;
    let phone = app.link_by_qr("anna").await;
    let tablet = app.link_by_luxtrust("anna", "MOBILE-1").await;
    for _ in 0..5 {
        let request = proto::v1::VerifySecretCodeRequest {
            secret_code: "000001".into(),
            request_id: String::new(),
        };
        app.device
            .verify_secret_code(bearer(request, &tablet.credential))
            .await
            .unwrap();
    }
    let request = proto::v1::UnlinkDevicesRequest {
        device_ids: vec![phone.device_id.clone()],
        request_id: String::new(),
        ..Default::default()
    };
    app.portal
        .unlink_devices(bearer(request, &app.citizen("anna")))
        .await
        .unwrap();
    caught_up(&app).await;

    // Act
    let auditor = app.keys.auditor_token().unwrap();
    let events = audits(&app)
        .list_events(bearer(list("anna"), &auditor))
        .await
        .unwrap()
        .into_inner()
        .events;

    // Assert: exactly the store's events, in global order, with their actors.
    let expected: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT global_position, event_type, metadata::jsonb ->> 'actor' FROM events \
         ORDER BY global_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let listed: Vec<(i64, String, String)> = events
        .iter()
        .map(|e| (e.global_position, e.event_type.clone(), e.actor.clone()))
        .collect();
    assert_eq!(listed, expected);
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"AccountRegistered"));
    assert_eq!(
        types.iter().filter(|t| **t == "SecretCodeFailed").count(),
        5
    );
    assert_eq!(types.last(), Some(&"DeviceUnlinked"));
    let link_requested = events
        .iter()
        .find(|e| e.event_type == "LinkRequested")
        .unwrap();
    assert_eq!(
        link_requested.account_id, "anna",
        "attributed once the attempt knew its account"
    );
    assert_eq!(link_requested.device_id, phone.device_id);
    assert!(events.iter().all(|e| !e.details_json.contains("482913")));
}

#[tokio::test]
async fn filters_and_pages_return_each_event_once() {
    let mut app = spawn_system().await;
    app.register("anna").await;
    let phone = app.link_by_qr("anna").await;
    app.link_by_qr("anna").await;
    caught_up(&app).await;
    let token = app.citizen("anna");
    let mut client = audits(&app);

    // Pages of three through the whole history.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListEventsRequest {
            page_size: 3,
            page_token,
            ..list("")
        };
        let page = client
            .list_events(bearer(request, &token))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.events.iter().map(|e| e.global_position));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique.len(), seen.len());
    assert_eq!(i64::try_from(seen.len()).unwrap(), stored);

    // Filters: one device, one event type.
    let request = ListEventsRequest {
        device_id: phone.device_id.clone(),
        event_types: vec!["DeviceLinked".into()],
        ..list("")
    };
    let filtered = client
        .list_events(bearer(request, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.events.len(), 1);
    assert_eq!(filtered.events[0].device_id, phone.device_id);

    // One device's events, a page of one at a time, are those of one page: its link attempt's
    // events name it through the attempt's first event, on an earlier page than theirs.
    let by_device = |page_size: i32, page_token: String| ListEventsRequest {
        device_id: phone.device_id.clone(),
        page_size,
        page_token,
        ..list("")
    };
    let whole: Vec<AuditEvent> = client
        .list_events(bearer(by_device(500, String::new()), &token))
        .await
        .unwrap()
        .into_inner()
        .events;
    let mut paged: Vec<AuditEvent> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_events(bearer(by_device(1, page_token), &token))
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(paged, whole);
    let attempt_events = whole
        .iter()
        .filter(|e| e.aggregate_type == "link_attempt")
        .count();
    assert!(attempt_events >= 2, "{whole:#?}");
    assert!(whole.iter().all(|e| e.device_id == phone.device_id));

    // A page token belongs to its filter.
    let first = client
        .list_events(bearer(
            ListEventsRequest {
                page_size: 1,
                ..list("")
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let mismatched = ListEventsRequest {
        page_size: 1,
        page_token: first.next_page_token,
        event_types: vec!["QrIssued".into()],
        ..list("")
    };
    let refused = client
        .list_events(bearer(mismatched, &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // The export streams the same history.
    let mut exported = client
        .export_history(bearer(ExportHistoryRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(event) = exported.message().await.unwrap() {
        assert!(event.global_position > 0);
        count += 1;
    }
    assert_eq!(count, stored);
}

#[tokio::test]
async fn devices_at_answers_before_between_and_after_link_and_unlink() {
    // Arrange: link, wait, unlink.
    let mut app = spawn_system().await;
    app.register("anna").await;
    let before = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let phone = app.link_by_qr("anna").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.device
        .unlink_this_device(bearer(Default::default(), &phone.credential))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = chrono::Utc::now();
    caught_up(&app).await;
    let auditor = app.keys.auditor_token().unwrap();
    let mut client = audits(&app);

    // Act + Assert
    let mut devices_at = async |instant| {
        let request = DevicesAtRequest {
            account_id: "anna".into(),
            at: at(instant),
        };
        client
            .devices_at(bearer(request, &auditor))
            .await
            .unwrap()
            .into_inner()
            .devices
    };
    assert!(devices_at(before).await.is_empty());
    let linked = devices_at(between).await;
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0].device_id, phone.device_id);
    assert_eq!(linked[0].name, "Anna's phone");
    assert_eq!(linked[0].method, i32::from(proto::v1::LinkMethod::Qr));
    assert!(devices_at(after).await.is_empty());
}

#[tokio::test]
async fn verify_history_reports_the_position_of_an_edited_event() {
    let mut app = spawn_system().await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    caught_up(&app).await;
    let token = app.citizen("anna");
    let mut client = audits(&app);

    let intact = client
        .verify_history(bearer(VerifyHistoryRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(intact.intact, "{intact:?}");
    assert!(intact.events_checked >= 7);

    let edited: i64 = sqlx::query_scalar(
        "UPDATE events SET metadata = '{\"actor\":\"someone else\"}'::json \
         WHERE event_type = 'DeviceLinked' RETURNING global_position",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let broken = client
        .verify_history(bearer(VerifyHistoryRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(!broken.intact);
    assert_eq!(broken.broken_at_position, edited);
}

#[tokio::test]
async fn verify_history_notices_a_history_cut_short() {
    // The chain alone cannot see the last events of an aggregate deleted; the audit witness can.
    let mut app = spawn_system().await;
    app.register("anna").await;
    let phone = app.link_by_qr("anna").await;
    app.device
        .unlink_this_device(bearer(Default::default(), &phone.credential))
        .await
        .unwrap();
    caught_up(&app).await;
    let deleted: i64 = sqlx::query_scalar(
        "DELETE FROM events WHERE event_type = 'DeviceUnlinked' RETURNING global_position",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();

    let verdict = audits(&app)
        .verify_history(bearer(
            VerifyHistoryRequest::default(),
            &app.citizen("anna"),
        ))
        .await
        .unwrap()
        .into_inner();

    assert!(!verdict.intact);
    assert_eq!(verdict.broken_at_position, deleted);
}

#[tokio::test]
async fn a_citizen_cannot_read_another_accounts_history() {
    let mut app = spawn_system().await;
    app.register("anna").await;
    app.register("mallory").await;
    let mallory = app.citizen("mallory");
    let mut client = audits(&app);

    let listing = client
        .list_events(bearer(list("anna"), &mallory))
        .await
        .unwrap_err();
    let verify = client
        .verify_history(bearer(
            VerifyHistoryRequest {
                account_id: "anna".into(),
            },
            &mallory,
        ))
        .await
        .unwrap_err();
    let stale = app.keys.citizen_token("anna", 400).unwrap();
    let not_fresh = client
        .list_events(bearer(list(""), &stale))
        .await
        .unwrap_err();

    assert_eq!(listing.code(), Code::PermissionDenied);
    assert_eq!(verify.code(), Code::PermissionDenied);
    assert_eq!(not_fresh.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn an_auditor_must_have_signed_in_recently_too() {
    // Arrange: an auditor's token signed in 400 s ago (the window is 300 s), and one without
    // auth_time; a fresh one for comparison.
    let mut app = spawn_system().await;
    app.register("anna").await;
    let now = chrono::Utc::now().timestamp();
    let auditor = |auth_time: Option<i64>| {
        let mut claims = serde_json::json!({
            "sub": "auditor-1", "aud": "linkd-portal", "iss": "linkd-dev-idp",
            "iat": now, "exp": now + 600, "roles": ["auditor"],
        });
        if let Some(auth_time) = auth_time {
            claims["auth_time"] = auth_time.into();
        }
        app.keys.portal_token_with(&claims).unwrap()
    };
    let mut client = audits(&app);

    // Act
    let stale = client
        .list_events(bearer(list("anna"), &auditor(Some(now - 400))))
        .await
        .unwrap_err();
    let without = client
        .verify_history(bearer(
            VerifyHistoryRequest {
                account_id: "anna".into(),
            },
            &auditor(None),
        ))
        .await
        .unwrap_err();
    let fresh = client
        .list_events(bearer(list("anna"), &auditor(Some(now))))
        .await;

    // Assert
    assert_eq!(stale.code(), Code::PermissionDenied);
    assert!(
        stale.message().contains("re-authentication required"),
        "{stale:?}"
    );
    assert_eq!(without.code(), Code::PermissionDenied);
    assert!(fresh.is_ok(), "{fresh:?}");
}

#[tokio::test]
async fn every_linkctl_audit_subcommand_runs_against_the_service() {
    use linkctl::audit::Command;
    // Arrange: one account with one device linked by QR code.
    let mut app = spawn_system().await;
    app.register("anna").await;
    let phone = app.link_by_qr("anna").await;
    caught_up(&app).await;
    let stored: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT global_position, event_type, metadata::jsonb ->> 'actor' FROM events \
         ORDER BY global_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let linked = stored
        .iter()
        .find(|(_, event_type, _)| event_type == "DeviceLinked")
        .unwrap()
        .clone();
    let now = chrono::Utc::now().to_rfc3339();
    let list = |json| Command::List {
        account_id: "anna".into(),
        device_id: String::new(),
        event_types: vec!["DeviceLinked".into()],
        from: Some("2020-01-01T00:00:00Z".into()),
        to: Some(now.clone()),
        page_size: 2,
        page_token: String::new(),
        json,
    };
    let export = |json| Command::Export {
        account_id: "anna".into(),
        json,
        access_request: false,
    };
    let devices_at = |json| Command::DevicesAt {
        account_id: "anna".into(),
        at: now.clone(),
        json,
    };
    let verify = |json| Command::Verify {
        account_id: "anna".into(),
        json,
    };

    // Act + Assert: list, as a table and as JSON lines: the one DeviceLinked event.
    let table = linkctl_audit(&app, list(false)).await;
    assert_eq!(table.len(), 1, "{table:#?}");
    let columns: Vec<&str> = table[0].split_whitespace().collect();
    assert_eq!(columns[0], linked.0.to_string(), "{table:#?}");
    assert_eq!(columns[2], "DeviceLinked", "{table:#?}");
    assert_eq!(columns[3], linked.2, "{table:#?}");
    let json = json_lines(&linkctl_audit(&app, list(true)).await);
    assert_eq!(json.len(), 1, "{json:#?}");
    assert_eq!(json[0]["global_position"], linked.0, "{json:#?}");
    assert_eq!(json[0]["event_type"], "DeviceLinked", "{json:#?}");
    assert_eq!(json[0]["device_id"], phone.device_id, "{json:#?}");
    assert_eq!(json[0]["account_id"], "anna", "{json:#?}");
    assert_eq!(json[0]["actor"], linked.2, "{json:#?}");
    assert!(json[0]["details"].is_object(), "{json:#?}");

    // Export: every event of the store, in order, each with its type and actor.
    let table = linkctl_audit(&app, export(false)).await;
    let rows: Vec<(i64, String, String)> = table
        .iter()
        .map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (
                columns[0].parse().unwrap(),
                columns[2].to_owned(),
                columns[3].to_owned(),
            )
        })
        .collect();
    assert_eq!(rows, stored);
    let json = json_lines(&linkctl_audit(&app, export(true)).await);
    let exported: Vec<(i64, String, String)> = json
        .iter()
        .map(|line| {
            (
                line["global_position"].as_i64().unwrap(),
                line["event_type"].as_str().unwrap().to_owned(),
                line["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(exported, stored);

    // Devices at an instant: anna's phone, its name and how it was linked.
    let table = linkctl_audit(&app, devices_at(false)).await;
    assert_eq!(table.len(), 1, "{table:#?}");
    assert!(table[0].starts_with(&phone.device_id), "{table:#?}");
    assert!(table[0].contains("Anna's phone"), "{table:#?}");
    assert!(table[0].contains("via qr"), "{table:#?}");
    let json = json_lines(&linkctl_audit(&app, devices_at(true)).await);
    assert_eq!(json.len(), 1, "{json:#?}");
    assert_eq!(json[0]["device_id"], phone.device_id, "{json:#?}");
    assert_eq!(json[0]["name"], "Anna's phone", "{json:#?}");
    assert_eq!(json[0]["method"], "qr", "{json:#?}");

    // Verify: intact, every event checked.
    let last = stored.last().unwrap().0;
    let table = linkctl_audit(&app, verify(false)).await;
    assert_eq!(
        table,
        [format!(
            "intact up to position {last} ({} events checked)",
            stored.len()
        )]
    );
    let json = json_lines(&linkctl_audit(&app, verify(true)).await);
    assert_eq!(json.len(), 1, "{json:#?}");
    assert_eq!(json[0]["intact"], true, "{json:#?}");
    assert_eq!(json[0]["events_checked"], stored.len(), "{json:#?}");
    assert_eq!(json[0]["intact_up_to_position"], last, "{json:#?}");

    // A time that is not RFC 3339 is refused before anything is printed.
    let mut out = Vec::new();
    let bad_time = Command::DevicesAt {
        account_id: "anna".into(),
        at: "yesterday".into(),
        json: false,
    };
    let channel = app.read.as_ref().unwrap().channel.clone();
    let auditor = app.keys.auditor_token().unwrap();
    let refused = linkctl::audit::run(channel, bad_time, &auditor, &mut out).await;
    match refused {
        Err(error) => assert!(error.to_string().contains("RFC 3339"), "{error:#}"),
        Ok(()) => panic!("a bad time was accepted: {}", String::from_utf8_lossy(&out)),
    }
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
}

#[tokio::test]
async fn an_auditors_reads_are_on_record_for_the_holder_and_the_holders_own_are_not() {
    // Arrange: anna with a device; she reads her own history, an auditor reads it twice.
    let mut app = spawn_system().await;
    app.register("anna").await;
    app.link_by_qr("anna").await;
    caught_up(&app).await;
    let holder = app.citizen("anna");
    let auditor = app.keys.auditor_token().unwrap();
    let mut client = audits(&app);
    client.list_events(bearer(list(""), &holder)).await.unwrap();
    let filtered = ListEventsRequest {
        event_types: vec!["DeviceLinked".into()],
        ..list("anna")
    };
    client
        .list_events(bearer(filtered, &auditor))
        .await
        .unwrap();
    let instant = DevicesAtRequest {
        account_id: "anna".into(),
        at: at(chrono::Utc::now()),
    };
    client.devices_at(bearer(instant, &auditor)).await.unwrap();
    let whole = ExportHistoryRequest {
        account_id: "anna".into(),
    };
    let mut export = client
        .export_history(bearer(whole, &auditor))
        .await
        .unwrap()
        .into_inner();
    while export.message().await.unwrap().is_some() {}
    let check = VerifyHistoryRequest {
        account_id: "anna".into(),
    };
    client
        .verify_history(bearer(check, &auditor))
        .await
        .unwrap();

    // Act: the holder lists who read her history.
    let records = client
        .list_access_records(bearer(
            proto::v1::ListAccessRecordsRequest::default(),
            &holder,
        ))
        .await
        .unwrap()
        .into_inner()
        .records;

    // Assert: the auditor's four reads, with what they asked; not hers.
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r.reader.as_str(), r.rpc.as_str(), r.account_id.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("auditor:auditor-1", "ListEvents", "anna"),
            ("auditor:auditor-1", "DevicesAt", "anna"),
            ("auditor:auditor-1", "ExportHistory", "anna"),
            ("auditor:auditor-1", "VerifyHistory", "anna")
        ]
    );
    let filters: serde_json::Value = serde_json::from_str(&records[0].filters_json).unwrap();
    assert_eq!(filters["event_types"], serde_json::json!(["DeviceLinked"]));
    assert!(records.iter().all(|r| r.at.is_some()));

    // An auditor listing the records is itself on record; another holder cannot list them.
    let by_auditor = client
        .list_access_records(bearer(
            proto::v1::ListAccessRecordsRequest {
                account_id: "anna".into(),
                ..Default::default()
            },
            &auditor,
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(by_auditor.len(), 5);
    assert_eq!(by_auditor[4].rpc, "ListAccessRecords");
    app.register("bob").await;
    let refused = client
        .list_access_records(bearer(
            proto::v1::ListAccessRecordsRequest {
                account_id: "anna".into(),
                ..Default::default()
            },
            &app.citizen("bob"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The holder's answer to an access request: her events, her devices now, and the reads.
    let mut out = Vec::new();
    linkctl::audit::run(
        app.read.as_ref().unwrap().channel.clone(),
        linkctl::audit::Command::Export {
            account_id: String::new(),
            json: true,
            access_request: true,
        },
        &holder,
        &mut out,
    )
    .await
    .unwrap();
    let lines = json_lines(
        &String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    );
    let kinds = |kind: &str| lines.iter().filter(|l| l["record"] == kind).count();
    assert!(kinds("event") >= 7, "{lines:#?}");
    assert_eq!(kinds("device"), 1, "{lines:#?}");
    assert_eq!(kinds("access"), 5, "{lines:#?}");
    assert_eq!(
        kinds("event") + kinds("device") + kinds("access"),
        lines.len()
    );

    // The records cannot be changed or deleted, even with database access.
    let deleted = sqlx::query("DELETE FROM access_records")
        .execute(&app.read_pool())
        .await
        .unwrap_err();
    assert!(deleted.to_string().contains("append-only"), "{deleted}");
    let truncated = sqlx::query("TRUNCATE access_records")
        .execute(&app.read_pool())
        .await
        .unwrap_err();
    assert!(truncated.to_string().contains("append-only"), "{truncated}");
}
