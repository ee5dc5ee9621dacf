//! A real browser for the browser tests (`browser/`): Debian's headless chromium, driven through
//! its chromedriver (WebDriver) with fantoccini. Each [`Browser`] has its own chromedriver on a
//! free port and its own fresh profile; at most [`MAX_BROWSERS`] run at once in the process.
//!
//! On top of fantoccini's [`Client`] (public on [`Browser`], for anything not wrapped here):
//! navigation and waiting that fail naming the selector and the page, screenshots and the QR codes
//! on them ([`decode_qr_codes`]), axe-core's accessibility check ([`Browser::axe`]), JavaScript
//! dialogs ([`Browser::alert_text`]), and keyboard-only use (Tab, Shift+Tab, Enter, typing).
//!
//! chromium, chromedriver and axe-core come from `scripts/browser-deps.sh`, which
//! `scripts/test.sh` runs. `LINKD_CHROMIUM` and `LINKD_CHROMEDRIVER` point at other binaries;
//! `LINKD_SCREENSHOTS_DIR` puts screenshots elsewhere than `target/screenshots`.
//!
//! Unexpected dialogs are not accepted silently: chromedriver's default prompt handling ("dismiss
//! and notify") fails the next command while a dialog is open, so an injected `alert()` fails
//! the test even where it does not check [`Browser::alert_text`].

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource as _, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::key::Key;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How many browsers may run at once in one test process (the machine has two cores; a third
/// chromium only makes all of them slower and the timeouts flaky).
pub const MAX_BROWSERS: usize = 2;

/// Permits for [`MAX_BROWSERS`] browsers, held by each [`Browser`] until it closes.
static BROWSERS: Semaphore = Semaphore::const_new(MAX_BROWSERS);

/// How long chromedriver may take to listen on its port.
const DRIVER_START: Duration = Duration::from_secs(15);

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(100);

/// chromium's flags: headless, as root (no sandbox), without a GPU, quiet (no background
/// networking, component updates, first-run UI or sync), a fixed window, and shared memory in
/// /tmp (/dev/shm is small in containers; chromium crashes when it fills). Headless chromium
/// still takes its toolbar's height off the window: the viewport is 1280 × 857 CSS pixels, at
/// device pixel ratio 1.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--window-size=1280,1000",
    "--disable-dev-shm-usage",
];

/// One headless chromium, with its own chromedriver. Dropping it ends the session (chromium
/// quits, chromedriver removes its profile) and kills chromedriver; [`Browser::close`] does the
/// same without blocking.
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver session, for whatever the helpers here do not cover.
    pub client: Client,
    driver: Option<Driver>,
}

/// The chromedriver behind a [`Browser`], and its permit.
#[derive(Debug)]
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
    _permit: SemaphorePermit<'static>,
}

/// One rule axe-core found broken on a page.
#[derive(Debug, Clone, Deserialize)]
pub struct AxeViolation {
    /// The rule, e.g. `color-contrast`.
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical` (`unknown` if axe-core gave none).
    pub impact: String,
    /// What the rule asks for, in one sentence.
    pub help: String,
    /// How many elements break it.
    pub nodes: usize,
    /// A CSS selector for each of those elements.
    pub targets: Vec<String>,
}

impl AxeViolation {
    /// Whether its impact is `serious` or `critical`.
    pub fn is_serious(&self) -> bool {
        matches!(self.impact.as_str(), "serious" | "critical")
    }
}

impl std::fmt::Display for AxeViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}; {} element(s): {}",
            self.id,
            self.impact,
            self.help,
            self.nodes,
            self.targets.join(", ")
        )
    }
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session in a fresh headless chromium;
    /// waits first while [`MAX_BROWSERS`] browsers are open.
    pub async fn start() -> Self {
        let permit = BROWSERS.acquire().await.expect("never closed");
        let chromedriver = env_or("LINKD_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = env_or("LINKD_CHROMIUM", "/usr/bin/chromium");
        let (child, port) = spawn_driver(&chromedriver).await;

        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": chromium, "args": CHROMIUM_ARGS }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|error| {
                panic!("chromedriver could not start {chromium} (LINKD_CHROMIUM): {error}")
            });
        let session = client.session_id().await.ok().flatten();
        Self {
            client,
            driver: Some(Driver {
                child,
                port,
                session,
                _permit: permit,
            }),
        }
    }

    /// Ends the session (chromium quits) and stops chromedriver.
    pub async fn close(mut self) {
        if let Some(mut driver) = self.driver.take() {
            let _ = self.client.clone().close().await;
            let _ = driver.child.kill().await;
        }
    }

    // Navigation and finding.

    /// Opens `url` and waits for it to load.
    pub async fn goto(&self, url: &str) {
        if let Err(error) = self.client.goto(url).await {
            panic!("cannot open {}: {error}", shorten(url));
        }
    }

    /// The current page's URL (shortened to 120 characters, for messages: `data:` URLs are long).
    pub async fn url(&self) -> String {
        match self.client.current_url().await {
            Ok(url) => shorten(url.as_str()),
            Err(error) => format!("(unknown page: {error})"),
        }
    }

    /// The element matching `css`, now.
    pub async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(element) => element,
            Err(error) => panic!(
                "no element matches `{css}` on {}: {error}",
                self.url().await
            ),
        }
    }

    /// The rendered text of the element matching `css`, now.
    pub async fn text_of(&self, css: &str) -> String {
        let element = self.find(css).await;
        match element.text().await {
            Ok(text) => text,
            Err(error) => panic!(
                "cannot read the text of `{css}` on {}: {error}",
                self.url().await
            ),
        }
    }

    /// The element matching `css`, once there is one (within `within`).
    pub async fn wait_for(&self, css: &str, within: Duration) -> Element {
        let found = self
            .client
            .wait()
            .at_most(within)
            .every(POLL)
            .for_element(Locator::Css(css))
            .await;
        match found {
            Ok(element) => element,
            Err(CmdError::WaitTimeout) => panic!(
                "no element matched `{css}` within {within:?} on {}",
                self.url().await
            ),
            Err(error) => panic!("waiting for `{css}` on {}: {error}", self.url().await),
        }
    }

    /// The element matching `css`, once its text contains `needle` (within `within`).
    pub async fn wait_for_text(&self, css: &str, needle: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => match element.text().await {
                    Ok(text) if text.contains(needle) => return element,
                    Ok(text) => last = Some(text),
                    // Replaced between finding and reading (the page re-rendered): look again.
                    Err(error) if error.is_stale_element_reference() => {}
                    Err(error) => panic!(
                        "cannot read the text of `{css}` on {}: {error}",
                        self.url().await
                    ),
                },
                Err(error) if error.is_no_such_element() => {}
                Err(error) => panic!("waiting for `{css}` on {}: {error}", self.url().await),
            }
            if Instant::now() >= deadline {
                let seen = last.map_or_else(
                    || "no element matched".to_owned(),
                    |text| format!("its text: {text:?}"),
                );
                panic!(
                    "`{css}` did not contain {needle:?} within {within:?} on {}; {seen}",
                    self.url().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    // Screenshots.

    /// A PNG of the viewport: 1280 × 857 pixels (the 1000-pixel window less chromium's toolbar).
    pub async fn screenshot(&self) -> Vec<u8> {
        match self.client.screenshot().await {
            Ok(png) => png,
            Err(error) => panic!("cannot take a screenshot of {}: {error}", self.url().await),
        }
    }

    /// Saves a screenshot of the viewport as `<name>.png` in `LINKD_SCREENSHOTS_DIR`, else in
    /// the workspace's `target/screenshots`; returns the file's path.
    pub async fn save_screenshot(&self, name: &str) -> PathBuf {
        let dir = std::env::var_os("LINKD_SCREENSHOTS_DIR").map_or_else(
            || workspace().join("target").join("screenshots"),
            PathBuf::from,
        );
        let path = dir.join(format!("{name}.png"));
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.unwrap();
        }
        tokio::fs::write(&path, self.screenshot().await)
            .await
            .unwrap();
        path
    }

    // Accessibility.

    /// axe-core's violations on the current page (its default rules: WCAG 2.x A and AA, and
    /// best practices).
    pub async fn axe(&self) -> Vec<AxeViolation> {
        let loaded = self
            .client
            .execute("return typeof window.axe === 'object';", vec![])
            .await;
        if loaded.ok() != Some(Value::Bool(true)) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("browser/node_modules/axe-core/axe.min.js");
            let source = tokio::fs::read_to_string(&path)
                .await
                .unwrap_or_else(|error| {
                    panic!(
                        "cannot read {}: {error}; run scripts/test.sh, which installs axe-core",
                        path.display()
                    )
                });
            if let Err(error) = self.client.execute(&source, vec![]).await {
                panic!("cannot load axe-core into {}: {error}", self.url().await);
            }
        }
        let outcome = self
            .client
            .execute_async(
                r"
                const done = arguments[arguments.length - 1];
                const selector = (target) => target
                    .map((part) => Array.isArray(part) ? part.join(' >>> ') : String(part))
                    .join(' ');
                axe.run(document, { resultTypes: ['violations'] }).then(
                    (results) => done({ violations: results.violations.map((rule) => ({
                        id: rule.id,
                        impact: rule.impact || 'unknown',
                        help: rule.help,
                        nodes: rule.nodes.length,
                        targets: rule.nodes.map((node) => selector(node.target)),
                    })) }),
                    (error) => done({ error: String(error) }),
                );
                ",
                vec![],
            )
            .await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(error) => panic!("axe-core did not run on {}: {error}", self.url().await),
        };
        if let Some(error) = outcome.get("error") {
            panic!("axe-core failed on {}: {error}", self.url().await);
        }
        serde_json::from_value(outcome["violations"].clone()).unwrap()
    }

    /// Fails unless axe-core finds nothing `serious` or `critical` on the current page (`page`
    /// names it in the message); returns all its violations, for the caller to report the
    /// `minor` and `moderate` ones.
    pub async fn assert_no_serious_axe_violations(&self, page: &str) -> Vec<AxeViolation> {
        let violations = self.axe().await;
        let serious: Vec<_> = violations.iter().filter(|v| v.is_serious()).collect();
        if !serious.is_empty() {
            let mut message = format!(
                "{page} ({}): {} serious or critical accessibility violation(s):",
                self.url().await,
                serious.len()
            );
            for violation in serious {
                write!(message, "\n  - {violation}").unwrap();
            }
            panic!("{message}");
        }
        violations
    }

    // JavaScript dialogs.

    /// The text of the open JavaScript dialog (`alert`, `confirm`, `prompt`), if one is open.
    /// Leaves it open: `client.accept_alert()` or `client.dismiss_alert()` closes it.
    pub async fn alert_text(&self) -> Option<String> {
        match self.client.get_alert_text().await {
            Ok(text) => Some(text),
            Err(error) if error.is_no_such_alert() => None,
            Err(error) => panic!("cannot ask for an open dialog: {error}"),
        }
    }

    // The keyboard.

    /// Presses each of `keys` in turn (down, then up), in the focused element.
    pub async fn press(&self, keys: &[Key]) {
        self.keyboard(keys.iter().map(|&key| char::from(key)).flat_map(tap))
            .await;
    }

    /// Presses `key` while holding Shift (Shift+Tab moves the focus backwards).
    pub async fn press_with_shift(&self, key: Key) {
        let shift = char::from(Key::Shift);
        let actions = std::iter::once(KeyAction::Down { value: shift })
            .chain(tap(char::from(key)))
            .chain(std::iter::once(KeyAction::Up { value: shift }));
        self.keyboard(actions).await;
    }

    /// Presses Tab: the focus moves to the next control.
    pub async fn tab(&self) {
        self.press(&[Key::Tab]).await;
    }

    /// Presses Shift+Tab: the focus moves to the previous control.
    pub async fn shift_tab(&self) {
        self.press_with_shift(Key::Tab).await;
    }

    /// Presses Enter (follows a focused link, submits a form, activates a button).
    pub async fn enter(&self) {
        self.press(&[Key::Enter]).await;
    }

    /// Presses Space (activates a focused button, toggles a checkbox).
    pub async fn space(&self) {
        self.press(&[Key::Space]).await;
    }

    /// Types `text` into the focused element, key by key.
    pub async fn type_text(&self, text: &str) {
        self.keyboard(text.chars().flat_map(tap)).await;
    }

    /// The focused element, described for humans: its tag, `id`, `name` and `type`, and its
    /// label (`aria-label`, text or value), e.g. `<button id="next"> "Continue"`.
    pub async fn focused_element_description(&self) -> String {
        let description = self
            .client
            .execute(
                r#"
                const element = document.activeElement;
                if (!element || element === document.body) return 'nothing (the page itself)';
                let description = '<' + element.tagName.toLowerCase();
                for (const name of ['id', 'name', 'type', 'href']) {
                    const value = element.getAttribute(name);
                    if (value) description += ' ' + name + '="' + value.slice(0, 60) + '"';
                }
                description += '>';
                const label = (element.getAttribute('aria-label') || element.innerText
                    || element.value || '').trim().replace(/\s+/g, ' ').slice(0, 80);
                return label ? description + ' "' + label + '"' : description;
                "#,
                vec![],
            )
            .await;
        match description {
            Ok(Value::String(description)) => description,
            Ok(other) => format!("(unexpected answer {other})"),
            Err(error) => format!("(unknown: {error})"),
        }
    }

    /// Presses Tab (at most `max_tabs` times) until the focused element matches `css`, as a
    /// keyboard-only user would reach it; returns it. Fails, listing where the focus went, if it
    /// does not get there.
    pub async fn tab_to(&self, css: &str, max_tabs: usize) -> Element {
        let mut path = Vec::new();
        for presses in 0..=max_tabs {
            let focused = self
                .client
                .execute(
                    "const element = document.activeElement;
                     return !!element && element.matches(arguments[0]);",
                    vec![json!(css)],
                )
                .await;
            match focused {
                Ok(Value::Bool(true)) => return self.client.active_element().await.unwrap(),
                Ok(_) => {}
                Err(error) => panic!("cannot match `{css}` on {}: {error}", self.url().await),
            }
            if presses < max_tabs {
                self.tab().await;
                path.push(self.focused_element_description().await);
            }
        }
        panic!(
            "`{css}` was not focused after {max_tabs} Tab presses on {}; the focus went to:\n  {}",
            self.url().await,
            path.join("\n  ")
        );
    }

    /// Performs `actions` on the keyboard.
    async fn keyboard(&self, actions: impl IntoIterator<Item = KeyAction>) {
        let sequence = actions
            .into_iter()
            .fold(KeyActions::new("keyboard".to_owned()), KeyActions::then);
        if let Err(error) = self.client.perform_actions(sequence).await {
            panic!("cannot use the keyboard on {}: {error}", self.url().await);
        }
    }
}

impl Drop for Browser {
    /// Ends the session with a blocking request straight to chromedriver: fantoccini's own
    /// clean-up is a task that may never run once the test's runtime stops, and without it
    /// chromium would outlive chromedriver and leave its profile in /tmp. Then `kill_on_drop`
    /// stops chromedriver.
    fn drop(&mut self) {
        if let Some(Driver {
            port,
            session: Some(session),
            ..
        }) = &self.driver
        {
            let _ = delete_session(*port, session);
        }
    }
}

/// Pressing `key`: down, then up.
fn tap(key: char) -> [KeyAction; 2] {
    [KeyAction::Down { value: key }, KeyAction::Up { value: key }]
}

/// Starts chromedriver on a free port and waits until it listens; tries another port if it
/// exits at once (another process took the port first).
async fn spawn_driver(chromedriver: &str) -> (Child, u16) {
    for _ in 0..3 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let mut child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {chromedriver} (LINKD_CHROMEDRIVER): {error}; \
                     run scripts/test.sh, which installs it"
                )
            });
        let deadline = Instant::now() + DRIVER_START;
        loop {
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                return (child, port);
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{chromedriver} did not listen on port {port} within {DRIVER_START:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("{chromedriver} exited at once three times; run it by hand to see why");
}

/// `DELETE /session/{session}` to the chromedriver on `port`, waiting for it to answer (chromium
/// has quit by then).
fn delete_session(port: u16, session: &str) -> std::io::Result<()> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    // The answer's first bytes are enough (chromedriver may keep the connection open).
    match stream.read(&mut [0; 256])? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// Environment variable `name`, else `default`.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The workspace's root directory.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `url`, cut to 120 characters.
fn shorten(url: &str) -> String {
    if url.chars().count() <= 120 {
        url.to_owned()
    } else {
        format!("{}…", url.chars().take(120).collect::<String>())
    }
}

/// Every QR code readable on the PNG image `png` (a screenshot), with its contents.
pub fn decode_qr_codes(png: &[u8]) -> Vec<String> {
    let image = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .expect("a PNG image")
        .to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    prepared
        .detect_grids()
        .into_iter()
        .filter_map(|grid| grid.decode().ok())
        .map(|(_, contents)| contents)
        .collect()
}
