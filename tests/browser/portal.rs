//! portal-web in a real browser, against the real services, PostgreSQL, NATS and an SMTP sink.
//! The phone is played over gRPC with the payload decoded from the page's pixels.

use std::time::Duration;

use e2e::browser::{AxeViolation, Browser, decode_qr_codes};
use e2e::mail::SmtpSink;
use e2e::portal::{PortalWeb, spawn_portal_web};
use e2e::{TestApp, spawn_system_with_mail_and};
use proto::v1::{LinkMethod, ScanQrRequest, StartLinkRequest};
use serde_json::Value;
use uuid::Uuid;

/// How long the page may take to show a change (the watch polls every 500 ms).
const SHOWN: Duration = Duration::from_secs(15);

/// The services, the SMTP sink, portal-web and a browser.
struct Scene {
    app: TestApp,
    sink: SmtpSink,
    portal: PortalWeb,
    browser: Browser,
    /// axe-core's findings, per page, for the report.
    axe: Vec<(String, Vec<AxeViolation>)>,
}

impl Scene {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut command_service::Settings)) -> Self {
        let sink = SmtpSink::start().await;
        let app = spawn_system_with_mail_and(sink.settings(), adjust).await;
        let portal = spawn_portal_web(&app).await;
        let browser = Browser::start().await;
        Self {
            app,
            sink,
            portal,
            browser,
            axe: Vec::new(),
        }
    }

    async fn goto(&self, path: &str) {
        self.browser.goto(&self.portal.at(path)).await;
    }

    async fn click(&self, css: &str) {
        self.browser
            .wait_for(css, SHOWN)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Runs axe-core on the page now; fails on anything serious or critical.
    async fn check_accessibility(&mut self, page: &str) {
        let violations = self.browser.assert_no_serious_axe_violations(page).await;
        self.axe.push((page.to_owned(), violations));
    }

    /// Prints axe-core's findings per page (the closing note quotes them).
    fn report_accessibility(&self) {
        for (page, violations) in &self.axe {
            let found: Vec<String> = violations.iter().map(ToString::to_string).collect();
            eprintln!(
                "axe {page}: {} violation(s), 0 serious or critical{}",
                violations.len(),
                if found.is_empty() {
                    String::new()
                } else {
                    format!(": {}", found.join("; "))
                }
            );
        }
    }

    /// Signs in through the development form as `account`, who logged in with LuxTrust Mobile.
    async fn sign_in(&mut self, account: &str) {
        self.goto("/sign-in").await;
        self.check_accessibility("sign-in").await;
        let field = self.browser.wait_for("#account-id", SHOWN).await;
        field.send_keys(account).await.unwrap();
        self.browser
            .find("#email")
            .await
            .send_keys(&format!("{account}@example.lu"))
            .await
            .unwrap();
        self.browser
            .find("#serial")
            .await
            .send_keys("LT-MOBILE-1")
            .await
            .unwrap();
        self.click("#sign-in").await;
        self.browser
            .wait_for("#unlink-form, #no-devices", SHOWN)
            .await;
    }

    /// Switches the page's language with the switcher in the header.
    async fn switch_language(&self, code: &str) {
        let option = format!("#language option[value=\"{code}\"]");
        self.click(&option).await;
        self.click("#change-language").await;
        self.browser
            .wait_for(&format!("html[lang=\"{code}\"]"), SHOWN)
            .await;
    }

    /// The payload of the one QR code on the screen, read from a screenshot's pixels.
    async fn read_qr_from_screen(&self) -> String {
        self.browser.wait_for("#qr-image", SHOWN).await;
        let codes = decode_qr_codes(&self.browser.screenshot().await);
        assert_eq!(codes.len(), 1, "one QR code on the screen: {codes:?}");
        codes.into_iter().next().unwrap()
    }

    /// A phone named `name` starts a QR link and scans `payload`; returns its link token and
    /// the matching code it displays.
    async fn phone_scans(&mut self, name: &str, payload: &str) -> (String, String) {
        let request = StartLinkRequest {
            device_name: name.into(),
            platform: proto::v1::Platform::Ios.into(),
            app_version: "3.2".into(),
            device_model: "iPhone 15".into(),
            ..TestApp::start_request(&Uuid::new_v4().to_string(), LinkMethod::Qr)
        };
        let link_token = self
            .app
            .device
            .start_link(request)
            .await
            .expect("starting a link on the phone")
            .into_inner()
            .link_token;
        let scanned = self
            .app
            .device
            .scan_qr(ScanQrRequest {
                link_token: link_token.clone(),
                qr_payload: payload.into(),
                request_id: String::new(),
            })
            .await
            .expect("the phone scans the code on the screen")
            .into_inner();
        (link_token, scanned.matching_code)
    }

    /// The status of a form POST of `body` to `path`, sent by the page itself (same origin, the
    /// session cookie, whatever fields `body` has).
    async fn post_from_page(&self, path: &str, body: &str) -> u64 {
        let status = self
            .browser
            .client
            .execute_async(
                "const [path, body, done] = arguments;
                 fetch(path, {method: 'POST',
                     headers: {'content-type': 'application/x-www-form-urlencoded'},
                     body}).then(r => done(r.status));",
                vec![Value::from(path), Value::from(body)],
            )
            .await
            .expect("a POST from the page");
        status.as_u64().expect("a status code")
    }

    /// No element was made of the markup-like device name (`<img src=x …>`), and no dialog
    /// opened.
    async fn assert_shown_as_text(&self) {
        let injected = self
            .browser
            .client
            .execute(
                "return document.querySelectorAll('img[src=\"x\"]').length;",
                vec![],
            )
            .await
            .expect("counting injected images");
        assert_eq!(injected, Value::from(0), "no element made of the name");
        assert_eq!(self.browser.alert_text().await, None, "no dialog");
    }

    /// The browser's `linkd_session` cookie.
    async fn session_cookie(&self) -> String {
        self.browser
            .client
            .get_named_cookie("linkd_session")
            .await
            .expect("the session cookie")
            .value()
            .to_owned()
    }

    /// The device names the *My devices* page lists.
    async fn listed_devices(&self) -> Vec<String> {
        let names = self
            .browser
            .client
            .execute(
                "return [...document.querySelectorAll('#devices .device-name')]
                    .map(e => e.textContent);",
                vec![],
            )
            .await
            .expect("reading the device list");
        serde_json::from_value(names).unwrap()
    }

    /// The event types on the *History* page once it shows `event_type` (the audit log shows an
    /// event once older transactions have ended: it may be a moment behind the command; the page
    /// is reloaded meanwhile).
    async fn history_showing(&self, event_type: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + SHOWN;
        loop {
            self.goto("/history").await;
            self.browser.wait_for("#history, #no-events", SHOWN).await;
            let types = self.history_event_types().await;
            if types.iter().any(|seen| seen == event_type) {
                return types;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the history never showed {event_type}: {types:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The event types the *History* page shows, in order.
    async fn history_event_types(&self) -> Vec<String> {
        let types = self
            .browser
            .client
            .execute(
                "return [...document.querySelectorAll('#history tr[data-event-type]')]
                    .map(e => e.dataset.eventType);",
                vec![],
            )
            .await
            .expect("reading the history");
        serde_json::from_value(types).unwrap()
    }

    /// Links a phone named `name` through the page: *Link a device*, the QR read from the
    /// screen, the scan, the matching code typed, Confirm, the phone sets its code.
    /// `screenshots` names the screenshots to take (link-qr, link-scanned, link-linked).
    async fn link_through_the_page(&mut self, name: &str, screenshots: bool) {
        self.click("#link-device").await;
        let payload = self.read_qr_from_screen().await;
        if screenshots {
            // The countdown runs (m:ss, counting down).
            let first = self.browser.text_of("#qr-state .countdown").await;
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let later = self.browser.text_of("#qr-state .countdown").await;
            assert!(
                later < first && later.len() == 4 && later.as_bytes()[1] == b':',
                "a running countdown: {first} then {later}"
            );
            self.browser.save_screenshot("link-qr").await;
            self.check_accessibility("link: QR code shown").await;
        }
        let (link_token, code) = self.phone_scans(name, &payload).await;
        self.browser.wait_for_text("#scanned-by", name, SHOWN).await;
        let facts = self.browser.text_of("#device-facts").await;
        assert!(facts.contains("iOS") && facts.contains("3.2"), "{facts}");
        if screenshots {
            self.browser.save_screenshot("link-scanned").await;
            self.check_accessibility("link: scanned, asking for the code")
                .await;
        }
        self.browser
            .find("#matching-code")
            .await
            .send_keys(&code)
            .await
            .unwrap();
        self.click("#confirm-link").await;
        self.browser.wait_for("#confirmed", SHOWN).await;
        self.app
            .set_code(&link_token)
            .await
            .expect("the phone sets its secret code once confirmed");
        self.browser.wait_for_text("#linked", name, SHOWN).await;
        if screenshots {
            self.browser.save_screenshot("link-linked").await;
            self.check_accessibility("link: linked").await;
        }
    }
}

/// Scenarios 1–4 of the issue in one account's life: linked (confirmed), declined, expired,
/// unlinked after re-authenticating, then the history of it all, verified.
#[tokio::test]
async fn a_holder_links_declines_lets_expire_unlinks_and_reads_the_history() {
    let mut scene = Scene::start_with(|settings| {
        settings.qr_ttl = Duration::from_secs(30);
    })
    .await;
    scene.sign_in("anna").await;

    // 1. Linked, confirmed with the code typed; the device list shows it; an email went out.
    scene.link_through_the_page("Anna's phone", true).await;
    scene.click("#see-devices").await;
    scene.browser.wait_for("#devices", SHOWN).await;
    assert_eq!(scene.listed_devices().await, ["Anna's phone"]);
    scene.browser.save_screenshot("devices").await;
    scene.check_accessibility("my devices").await;
    let mails = scene.sink.wait_for(1, Duration::from_secs(30)).await;
    assert!(
        mails.iter().any(|mail| mail
            .header("To")
            .is_some_and(|to| to.contains("anna@example.lu"))),
        "a confirmation email to the holder"
    );

    // 2a. Declined: nothing linked, a new code offered.
    scene.click("#link-device").await;
    let payload = scene.read_qr_from_screen().await;
    let (link_token, _) = scene.phone_scans("Stranger's phone", &payload).await;
    let decline = scene.browser.wait_for("#decline-link", SHOWN).await;
    let focused = scene.browser.focused_element_description().await;
    assert!(
        focused.contains("decline-link"),
        "Decline has the focus: {focused}"
    );
    decline.click().await.unwrap();
    scene.browser.wait_for("#declined", SHOWN).await;
    scene.browser.find("#new-code").await;
    scene.check_accessibility("link: declined").await;
    let refused = scene.app.set_code(&link_token).await;
    assert!(
        refused.is_err(),
        "a declined phone cannot finish: {refused:?}"
    );

    // 2b. Left alone until it expires: "expired", a new code offered.
    scene.click("#new-code").await;
    scene.read_qr_from_screen().await;
    scene
        .browser
        .wait_for("#expired", Duration::from_secs(60))
        .await;
    scene.browser.find("#new-code").await;
    scene.check_accessibility("link: expired").await;

    // 3. Unlink with a stale sign-in: asked to re-authenticate first, then unlinked, and the
    // list no longer shows it at once.
    scene.goto("/devices").await;
    scene.browser.wait_for("#devices", SHOWN).await;
    let cookie = scene.session_cookie().await;
    scene.portal.age_sign_in(&scene.app, &cookie, 400);
    scene.click("#devices input[name=device]").await;
    scene.click("#unlink-selected").await;
    scene.browser.wait_for("#reauthenticate", SHOWN).await;
    let then = scene.browser.text_of("#reauth-then").await;
    assert!(
        then.contains("1 device"),
        "the page says what comes next: {then}"
    );
    scene.check_accessibility("re-authenticate").await;
    scene.click("#reauthenticate").await;
    scene.browser.wait_for("#flash", SHOWN).await;
    scene.browser.wait_for("#no-devices", SHOWN).await;
    assert!(scene.listed_devices().await.is_empty());

    // 4. The history shows all of it, in order; the tamper check says intact.
    let types = scene.history_showing("DeviceUnlinked").await;
    let expected = [
        "AccountRegistered",
        "PortalLoginRecorded",
        "QrIssued",
        "QrAccepted",
        "LinkConfirmed",
        "DeviceLinked",
        "QrIssued",
        "QrAccepted",
        "LinkDeclined",
        "QrIssued",
        "DeviceUnlinked",
    ];
    let mut rest = types.iter();
    for wanted in expected {
        assert!(
            rest.any(|seen| seen == wanted),
            "{wanted} in order in the history: {types:?}"
        );
    }
    scene.click("#verify-history").await;
    scene
        .browser
        .wait_for_text("#verdict", "intact", SHOWN)
        .await;
    scene.browser.save_screenshot("history").await;
    scene.check_accessibility("history").await;
    scene.report_accessibility();
}

/// 5. A device name that is markup shows as text: no element made of it, no dialog.
#[tokio::test]
async fn a_device_named_like_markup_renders_as_text() {
    let mut scene = Scene::start().await;
    scene.sign_in("bob").await;
    let hostile = "<img src=x onerror=alert(1)>";

    scene.link_through_the_page(hostile, false).await;
    assert_eq!(scene.browser.alert_text().await, None, "no dialog");
    scene.click("#see-devices").await;
    scene.browser.wait_for("#devices", SHOWN).await;
    assert_eq!(scene.listed_devices().await, [hostile]);
    scene.assert_shown_as_text().await;

    // The history carries the name in the link's details: text there too.
    scene.history_showing("DeviceLinked").await;
    scene
        .browser
        .wait_for_text("#history", hostile, SHOWN)
        .await;
    scene.assert_shown_as_text().await;

    // Unlink all devices (the button, no selection needed).
    scene.goto("/devices").await;
    scene.click("#unlink-all").await;
    scene
        .browser
        .wait_for_text("#flash", "Devices unlinked: 1.", SHOWN)
        .await;
    scene.browser.wait_for("#no-devices", SHOWN).await;

    // The pages not visited above pass the accessibility check too.
    scene.goto("/link").await;
    scene.browser.wait_for("#show-qr", SHOWN).await;
    scene.check_accessibility("link a device (start)").await;
    scene.goto("/no-such-page").await;
    scene.check_accessibility("page not found").await;
    scene.report_accessibility();
}

/// 6. A form posted without the CSRF token is refused (nothing unlinked); the link flow can be
/// finished with the keyboard alone.
#[tokio::test]
async fn forms_need_the_csrf_token_and_the_keyboard_is_enough() {
    let mut scene = Scene::start().await;
    scene.sign_in("carla").await;
    scene.link_through_the_page("Carla's phone", false).await;
    scene.click("#see-devices").await;
    scene.browser.wait_for("#devices", SHOWN).await;

    // The page's own origin, the session cookie, everything but the token.
    assert_eq!(
        scene.post_from_page("/devices/unlink", "scope=all").await,
        403
    );
    assert_eq!(
        scene
            .post_from_page("/devices/unlink", "scope=all&csrf=guessed")
            .await,
        403
    );
    scene.goto("/devices").await;
    assert_eq!(
        scene.listed_devices().await,
        ["Carla's phone"],
        "nothing unlinked"
    );

    // Keyboard only: Tab to *Link a device*, Enter; the phone scans; Decline has the focus;
    // Tab to the code, type it, Enter.
    scene.goto("/devices").await;
    scene.browser.tab_to("#link-device", 20).await;
    scene.browser.enter().await;
    let payload = scene.read_qr_from_screen().await;
    let (link_token, code) = scene.phone_scans("Carla's tablet", &payload).await;
    scene.browser.wait_for("#decline-link", SHOWN).await;
    scene.browser.tab_to("#matching-code", 5).await;
    scene.browser.type_text(&code).await;
    scene.browser.enter().await;
    scene.browser.wait_for("#confirmed", SHOWN).await;
    scene.app.set_code(&link_token).await.expect("confirmed");
    scene
        .browser
        .wait_for_text("#linked", "Carla's tablet", SHOWN)
        .await;
    scene.browser.tab_to("#see-devices", 10).await;
    scene.browser.enter().await;
    scene.browser.wait_for("#devices", SHOWN).await;
    assert_eq!(
        scene.listed_devices().await,
        ["Carla's phone", "Carla's tablet"]
    );

    // Several at once: "select all" (the script's), then Unlink selected.
    scene.click("#select-all").await;
    scene.click("#unlink-selected").await;
    scene
        .browser
        .wait_for_text("#flash", "Devices unlinked: 2.", SHOWN)
        .await;
    scene.browser.wait_for("#no-devices", SHOWN).await;
}

/// What the link flow says in one language.
struct Spoken {
    code: &'static str,
    my_devices: &'static str,
    never_share: &'static str,
    scanned_by: &'static str,
    confirm: &'static str,
    decline: &'static str,
    confirmed: &'static str,
    linked: &'static str,
}

const FRENCH: Spoken = Spoken {
    code: "fr",
    my_devices: "Mes appareils",
    never_share: "N'envoyez et ne montrez jamais",
    scanned_by: "Scanné par",
    confirm: "Confirmer",
    decline: "Refuser",
    confirmed: "Confirmé",
    linked: "est lié à votre compte",
};

const GERMAN: Spoken = Spoken {
    code: "de",
    my_devices: "Meine Geräte",
    never_share: "Senden oder zeigen Sie diesen Code niemandem",
    scanned_by: "Gescannt von",
    confirm: "Bestätigen",
    decline: "Ablehnen",
    confirmed: "Bestätigt",
    linked: "ist mit Ihrem Konto verknüpft",
};

impl Scene {
    /// Switches to `language` and links a phone named `name`, checking the page's words at
    /// each step (and its accessibility while it asks for the code).
    async fn link_in(&mut self, language: &Spoken, name: &str) {
        self.switch_language(language.code).await;
        self.browser
            .wait_for_text("h1", language.my_devices, SHOWN)
            .await;
        self.click("#link-device").await;
        self.browser
            .wait_for_text("#never-share", language.never_share, SHOWN)
            .await;
        let payload = self.read_qr_from_screen().await;
        let (link_token, code) = self.phone_scans(name, &payload).await;
        self.browser
            .wait_for_text("#scanned-by", language.scanned_by, SHOWN)
            .await;
        for (button, word) in [
            ("#confirm-link", language.confirm),
            ("#decline-link", language.decline),
        ] {
            let text = self.browser.text_of(button).await;
            assert!(text.contains(word), "{button} in {}: {text}", language.code);
        }
        self.check_accessibility(&format!("link in {}: scanned", language.code))
            .await;
        self.browser
            .find("#matching-code")
            .await
            .send_keys(&code)
            .await
            .unwrap();
        self.click("#confirm-link").await;
        self.browser
            .wait_for_text("#confirmed", language.confirmed, SHOWN)
            .await;
        self.app.set_code(&link_token).await.expect("confirmed");
        self.browser
            .wait_for_text("#linked", language.linked, SHOWN)
            .await;
        self.click("#see-devices").await;
        self.browser.wait_for("#devices", SHOWN).await;
    }
}

/// 7. The same flow in French and in German.
#[tokio::test]
async fn the_flow_reads_the_same_in_french_and_german() {
    let mut scene = Scene::start().await;
    scene.sign_in("dora").await;

    scene.link_in(&FRENCH, "Téléphone de Dora").await;
    scene.link_in(&GERMAN, "Doras Tablet").await;
    assert_eq!(
        scene.listed_devices().await,
        ["Téléphone de Dora", "Doras Tablet"]
    );
    scene.check_accessibility("my devices in de").await;
    scene.history_showing("DeviceLinked").await;
    scene
        .browser
        .wait_for_text("#history", "Gerät verknüpft", SHOWN)
        .await;
    scene.check_accessibility("history in de").await;
    scene.report_accessibility();
}
