//! Browser tests of portal-web: its pages in a real headless chromium, driven through chromedriver
//! by [`e2e::browser::Browser`] (at most two browsers at once), as a user would: by mouse and by
//! keyboard alone, reading QR codes off screenshots, with axe-core's accessibility check on every
//! page. The scenarios live in further modules, one per area of portal-web; `harness_smoke`
//! below checks the harness itself on `data:` pages.
//!
//! Needs chromium, chromedriver and axe-core: `scripts/test.sh` installs whichever is missing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a failed step should fail the test loudly"
)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use qrcode::QrCode;
use qrcode::render::svg;

use e2e::browser::{Browser, decode_qr_codes};

mod portal;

/// A `data:` URL of the HTML page `html`.
fn data_url(html: &str) -> String {
    format!("data:text/html;base64,{}", STANDARD.encode(html))
}

/// The harness on pages of its own: a QR code read back off a screenshot, axe-core, dialogs and
/// the keyboard.
#[tokio::test]
async fn harness_smoke() {
    const TEXT: &str = "linkd harness smoke test: 4F2A-9C31";
    let browser = Browser::start().await;

    // A QR code, about 300 pixels wide, comes back from a screenshot.
    let svg = QrCode::new(TEXT)
        .unwrap()
        .render::<svg::Color<'_>>()
        .min_dimensions(300, 300)
        .build();
    browser
        .goto(&data_url(&format!(
            r#"<!doctype html><html lang="en"><head><title>t</title></head><body><main>
               <h1>QR</h1><img alt="a QR code" src="data:image/svg+xml;base64,{}">
               </main></body></html>"#,
            STANDARD.encode(svg)
        )))
        .await;
    browser.wait_for("main img", Duration::from_secs(5)).await;
    assert_eq!(browser.text_of("h1").await, "QR");
    let png = browser.screenshot().await;
    assert_eq!(decode_qr_codes(&png), [TEXT]);
    let saved = browser.save_screenshot("harness_smoke").await;
    assert_eq!(decode_qr_codes(&std::fs::read(saved).unwrap()), [TEXT]);

    // axe-core runs, and finds nothing serious on this page.
    let violations = browser
        .assert_no_serious_axe_violations("the QR page")
        .await;
    assert!(violations.iter().all(|v| !v.is_serious()), "{violations:?}");
    assert_eq!(browser.alert_text().await, None);

    // A dialog is seen, and closes.
    browser
        .goto(&data_url(
            r#"<!doctype html><html lang="en"><title>a</title><script>alert(1)</script></html>"#,
        ))
        .await;
    assert_eq!(browser.alert_text().await.as_deref(), Some("1"));
    browser.client.dismiss_alert().await.unwrap();
    assert_eq!(browser.alert_text().await, None);

    // The keyboard alone: Tab and Shift+Tab move the focus, Enter presses a button, typing fills
    // a field.
    browser
        .goto(&data_url(
            r#"<!doctype html><html lang="en"><title>k</title><main>
               <button id="one" onclick="document.getElementById('out').textContent = 'one pressed'">One</button>
               <label>Name <input id="name"></label>
               <button id="two" onclick="document.getElementById('out').textContent =
                 'two: ' + document.getElementById('name').value">Two</button>
               <p id="out"></p></main></html>"#,
        ))
        .await;
    browser.tab_to("#two", 5).await;
    assert_eq!(
        browser.focused_element_description().await,
        r#"<button id="two"> "Two""#
    );
    browser.shift_tab().await;
    assert_eq!(
        browser.focused_element_description().await,
        r#"<input id="name">"#
    );
    browser.type_text("Zoë").await;
    browser.tab().await;
    browser.enter().await;
    browser
        .wait_for_text("#out", "two: Zoë", Duration::from_secs(5))
        .await;
    browser.shift_tab().await;
    browser.shift_tab().await;
    browser.space().await;
    browser
        .wait_for_text("#out", "one pressed", Duration::from_secs(5))
        .await;

    browser.close().await;
}
