//! `linkctl watch-link-qr` against a real command service: `linkctl::watch::print_states`
//! prints one line per state of a QR code as WatchLinkQr pushes it, while the app scans, the
//! holder confirms or declines and the app sets its code, and returns when the stream ends.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{TestApp, bearer, eventually, spawn_app};
use proto::v1::{DeclineLinkRequest, LinkMethod, LinkQrStage, LinkQrState, WatchLinkQrRequest};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How long the test waits for the watch to print a state (the service polls every 500 ms).
const WAIT: Duration = Duration::from_secs(15);

/// The `Vec<u8>` the watch prints into, shared so that the test can read it meanwhile.
#[derive(Debug, Clone, Default)]
struct Printed(Arc<Mutex<Vec<u8>>>);

impl Write for Printed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Printed {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Waits until a line starting with `stage` was printed: the service reports changes only,
    /// so each step of the test waits for the watch to see the one before.
    async fn until(&self, stage: &str) {
        eventually(WAIT, &format!("the watch to print {stage}"), || {
            let printed = self
                .text()
                .lines()
                .any(|line| line.split_whitespace().next() == Some(stage));
            async move { printed.then_some(()) }
        })
        .await;
    }
}

type Watching = JoinHandle<anyhow::Result<Option<LinkQrState>>>;

/// Opens WatchLinkQr on `qr_id` as `anna`'s browser and prints it into a [`Printed`] in a task.
async fn watch(app: &mut TestApp, qr_id: &str) -> (Printed, Watching) {
    let request = WatchLinkQrRequest {
        qr_id: qr_id.into(),
    };
    let states = app
        .portal
        .watch_link_qr(bearer(request, &app.citizen("anna")))
        .await
        .unwrap()
        .into_inner();
    let printed = Printed::default();
    let mut out = printed.clone();
    let watching =
        tokio::spawn(async move { linkctl::watch::print_states(states, &mut out).await });
    (printed, watching)
}

/// The last state, once `print_states` returned (it must, when the service ends the stream).
async fn returned(watching: Watching) -> Option<LinkQrState> {
    tokio::time::timeout(WAIT, watching)
        .await
        .unwrap_or_else(|_| panic!("print_states did not return within {WAIT:?}"))
        .unwrap()
        .unwrap()
}

/// The first word of each printed line: the stages.
fn stages(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

#[tokio::test]
async fn the_watch_prints_issued_scanned_confirmed_linked_and_returns_when_the_stream_ends() {
    // Arrange: a QR code, followed from the start.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let (printed, watching) = watch(&mut app, &qr.qr_id).await;
    printed.until("ISSUED").await;

    // Act: the app scans, the holder confirms with the code it shows, the app sets its code.
    let device_id = Uuid::new_v4().to_string();
    let start = app.start_link(&device_id, LinkMethod::Qr).await;
    let scanned = app.scan(&start.link_token, &qr).await.unwrap();
    printed.until("SCANNED").await;
    app.confirm("anna", &qr.qr_id, &scanned.matching_code)
        .await
        .unwrap();
    printed.until("CONFIRMED").await;
    app.set_code(&start.link_token).await.unwrap();
    let last = returned(watching).await;

    // Assert: one line per state, in order; the scanned line shows the device to the holder.
    let text = printed.text();
    assert_eq!(
        stages(&text),
        ["ISSUED", "SCANNED", "CONFIRMED", "LINKED"],
        "{text}"
    );
    assert_eq!(
        last.map(|state| state.stage),
        Some(LinkQrStage::Linked.into())
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].contains(", expires "), "{text}");
    let scanned_line = lines[1];
    for shown in [
        "by \"Anna's phone\" (android, ",
        "model \"Pixel 8\"",
        "app 2.4.1",
        &format!("device {device_id}"),
        "confirm by ",
        "matching code one of ",
    ] {
        assert!(scanned_line.contains(shown), "{shown:?} in {scanned_line}");
    }
    let choices = scanned_line.rsplit("matching code one of ").next().unwrap();
    assert_eq!(choices.split(' ').count(), 3, "{scanned_line}");
    assert!(
        choices.split(' ').any(|code| code == scanned.matching_code),
        "the phone's code {} among {choices}",
        scanned.matching_code
    );
    assert!(lines[2].contains(&device_id), "{text}");
    assert!(lines[3].contains(&device_id), "{text}");
}

#[tokio::test]
async fn the_watch_prints_a_decline_with_its_reason_and_returns() {
    // Arrange: a QR code scanned by a device the holder does not know.
    let mut app = spawn_app().await;
    app.register("anna").await;
    let qr = app.issue_qr("anna").await;
    let (printed, watching) = watch(&mut app, &qr.qr_id).await;
    let start = app
        .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        .await;
    app.scan(&start.link_token, &qr).await.unwrap();
    printed.until("SCANNED").await;

    // Act
    let request = DeclineLinkRequest {
        qr_id: qr.qr_id.clone(),
        request_id: String::new(),
    };
    app.portal
        .decline_link(bearer(request, &app.citizen("anna")))
        .await
        .unwrap();
    let last = returned(watching).await;

    // Assert
    let text = printed.text();
    assert_eq!(stages(&text), ["ISSUED", "SCANNED", "DECLINED"], "{text}");
    assert!(
        text.lines().nth(2).unwrap().contains("reason by_holder"),
        "{text}"
    );
    assert_eq!(
        last.map(|state| state.stage),
        Some(LinkQrStage::Declined.into())
    );
}
