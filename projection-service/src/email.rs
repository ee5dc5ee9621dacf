//! Emails: templates (files under `templates/`, one per language, plus an HTML layout) and the
//! outbox worker that sends them through SMTP with `lettre`.
//!
//! The worker claims one due row at a time (a transaction-scoped advisory lock on its id, so
//! several instances share the work without a row lock; see `send_one`), sends it, and marks it
//! sent in the same transaction. A crash after sending and
//! before the commit sends it again with the same `Message-ID`; a failure is retried with
//! exponential backoff, and after the configured number of attempts the row is marked `failed`
//! with the last error, for operators (`linkctl admin emails`). Nothing is dropped silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::{Mailbox, MultiPart, header};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use service_kit::metrics::Metrics;
use sqlx::PgPool;
use tracing::Instrument as _;

/// How to reach the SMTP relay and what to send from.
#[derive(Clone)]
pub struct EmailSettings {
    /// Relay host.
    pub smtp_host: String,
    /// Relay port.
    pub smtp_port: u16,
    /// `none`, `starttls` or `tls`.
    pub smtp_tls: SmtpTls,
    /// Optional credentials (user, password).
    pub smtp_credentials: Option<(String, String)>,
    /// The From address.
    pub sender: String,
    /// Language when an account has none of ours.
    pub default_language: String,
    /// First retry delay; doubles each attempt up to `retry_max_delay`, with jitter
    /// ([`retry_delay`]).
    pub retry_base: Duration,
    /// The longest wait between two attempts.
    pub retry_max_delay: Duration,
    /// An email still not sent this long after it was queued is marked failed at its next
    /// failed attempt (default 48 hours: an SMTP outage over a weekend night loses nothing).
    pub give_up_after: Duration,
    /// Attempts after which an email is marked failed even within `give_up_after` (`None`, the
    /// default: no such limit).
    pub max_attempts: Option<i32>,
    /// Events older than this when the notifier first sees them send no email (a notifier
    /// attached to an old stream, or a rebuild, must not email people about the past).
    pub max_event_age: Duration,
    /// Test-only crash point: the worker stops once after sending, before marking sent.
    pub crash_after_send: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("smtp_tls", &self.smtp_tls)
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

/// Transport security towards the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a local relay only).
    None,
    /// STARTTLS required.
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// The languages emails are written in.
pub(crate) const LANGUAGES: [&str; 3] = ["en", "fr", "de"];

/// Every language's texts, parsed from the template files.
#[derive(Debug, Clone)]
pub(crate) struct Templates {
    texts: HashMap<&'static str, HashMap<String, String>>,
    layout: &'static str,
}

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    /// Subject line.
    pub(crate) subject: String,
    /// Plain-text body.
    pub(crate) text: String,
    /// HTML body.
    pub(crate) html: String,
}

fn sections(file: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    let mut key: Option<String> = None;
    let mut body = Vec::new();
    for line in file.lines() {
        if let Some(next) = line.strip_prefix("### ") {
            if let Some(done) = key.take() {
                map.insert(done, body.join("\n").trim().to_owned());
            }
            key = Some(next.trim().to_owned());
            body.clear();
        } else {
            body.push(line);
        }
    }
    if let Some(done) = key {
        map.insert(done, body.join("\n").trim().to_owned());
    }
    map
}

/// Text a stranger chose (a device name, typed in the app by whoever links the device), made
/// safe to quote in an email as data: it cannot close the quotes around it (quote marks become
/// `'`), and no mail client turns it into a link (`://` becomes `[:]//`, and a dot before a
/// letter, as in `www.` or `example.eu`, becomes `[.]`). It never goes in a subject; in HTML it
/// is escaped as well.
pub(crate) fn untrusted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '“' | '”' | '„' | '«' | '»' => out.push('\''),
            '.' if chars.peek().is_some_and(char::is_ascii_alphabetic) => out.push_str("[.]"),
            _ => out.push(c),
        }
    }
    out.replace("://", "[:]//")
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            texts: HashMap::from([
                ("en", sections(include_str!("../templates/en.txt"))),
                ("fr", sections(include_str!("../templates/fr.txt"))),
                ("de", sections(include_str!("../templates/de.txt"))),
            ]),
            layout: include_str!("../templates/layout.html"),
        }
    }
}

impl Templates {
    /// A phrase (`method.qr`, `reason.locked_out` …) in `language` (English if unknown).
    pub(crate) fn phrase(&self, language: &str, key: &str) -> String {
        self.texts
            .get(language)
            .or_else(|| self.texts.get("en"))
            .and_then(|texts| texts.get(key))
            .cloned()
            .unwrap_or_else(|| key.to_owned())
    }

    /// Renders email `kind` in `language` with `values` for its `{placeholders}`.
    pub(crate) fn render(&self, language: &str, kind: &str, values: &[(&str, String)]) -> Rendered {
        let fill = |template: String, html: bool| {
            values.iter().fold(template, |text, (name, value)| {
                let value = if html {
                    escape_html(value)
                } else {
                    value.clone()
                };
                text.replace(&format!("{{{name}}}"), &value)
            })
        };
        let subject = fill(self.phrase(language, &format!("{kind}.subject")), false);
        let body = self.phrase(language, &format!("{kind}.body"));
        let text = fill(body.clone(), false);
        let paragraphs: String = escape_html(&body)
            .split("\n\n")
            .map(|paragraph| format!("<p>{}</p>\n", paragraph.replace('\n', "<br>\n")))
            .collect();
        let html = self
            .layout
            .replace("{lang}", language)
            .replace("{subject}", &escape_html(&subject))
            .replace("{paragraphs}", &fill(paragraphs, true));
        Rendered {
            subject,
            text,
            html,
        }
    }
}

/// A date and time as people in Luxembourg read it.
pub(crate) fn luxembourg_time(at: DateTime<Utc>) -> String {
    at.with_timezone(&chrono_tz::Europe::Luxembourg)
        .format("%d.%m.%Y %H:%M %Z")
        .to_string()
}

/// The deterministic `Message-ID` of the email for `event_id` to `recipient`.
pub(crate) fn message_id(event_id: &str, recipient: &str, sender: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{event_id}\n{recipient}").as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let domain = sender
        .rsplit_once('@')
        .map_or("linkd.invalid", |(_, domain)| domain);
    format!("<{hex}.linkd@{domain}>")
}

#[derive(sqlx::FromRow)]
struct Due {
    id: i64,
    recipient: String,
    message_id: String,
    subject: String,
    text_body: String,
    html_body: String,
    attempts: i32,
    /// The trace of the call whose event queued it (ADR 0024), if traces were exported.
    traceparent: Option<String>,
}

/// How long to wait after the `attempts`-th failed attempt: `base` doubling per attempt, at
/// most `max`, of which a random part (up to half) is left out, so that emails queued together
/// (an outage's backlog) do not all come back at the same instant.
pub fn retry_delay(base: Duration, max: Duration, attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let full = base.saturating_mul(2u32.saturating_pow(exponent)).min(max);
    full.mul_f64(1.0 - rand::random::<f64>() / 2.0)
}

fn transport(settings: &EmailSettings) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let builder = match settings.smtp_tls {
        SmtpTls::None => {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.smtp_host)
        }
        SmtpTls::StartTls => {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.smtp_host)?
        }
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.smtp_host)?,
    };
    let mut builder = builder
        .port(settings.smtp_port)
        .timeout(Some(Duration::from_secs(15)));
    if let Some((user, password)) = &settings.smtp_credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

fn message(settings: &EmailSettings, due: &Due) -> anyhow::Result<Message> {
    let from: Mailbox = settings.sender.parse()?;
    let to: Mailbox = due.recipient.parse()?;
    Ok(Message::builder()
        .from(from)
        .to(to)
        .subject(&due.subject)
        .message_id(Some(due.message_id.clone()))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    lettre::message::SinglePart::builder()
                        .header(header::ContentType::TEXT_PLAIN)
                        .body(due.text_body.clone()),
                )
                .singlepart(
                    lettre::message::SinglePart::builder()
                        .header(header::ContentType::TEXT_HTML)
                        .body(due.html_body.clone()),
                ),
        )?)
}

/// What the email worker counts; [`EmailMetrics::register`] also reports the outbox's backlog
/// at each scrape.
#[derive(Debug, Clone, Default)]
pub struct EmailMetrics {
    sent: Counter,
    send_errors: Counter,
    given_up: Counter,
}

impl EmailMetrics {
    /// Registers the email series in `metrics`; the outbox is read through `pool`.
    pub fn register(metrics: &Metrics, pool: PgPool) -> Self {
        let counted = Self::default();
        metrics.register(
            "email_sent",
            "Emails the SMTP server accepted",
            counted.sent.clone(),
        );
        metrics.register(
            "email_send_errors",
            "Attempts to send an email that failed (each retried later, until given up)",
            counted.send_errors.clone(),
        );
        metrics.register(
            "email_given_up",
            "Emails marked failed after their last attempt",
            counted.given_up.clone(),
        );
        let outbox = Family::<StatusLabels, Gauge>::default();
        metrics.register(
            "email_outbox_messages",
            "Emails in the outbox waiting to be sent (status=pending) or given up on \
             (status=failed)",
            outbox.clone(),
        );
        let oldest = metrics.gauge_f64(
            "email_outbox_oldest_pending_seconds",
            "Age of the oldest email waiting to be sent (0 when none waits)",
        );
        metrics.on_scrape(move || {
            let (pool, outbox, oldest) = (pool.clone(), outbox.clone(), oldest.clone());
            async move {
                let backlog = sqlx::query_as::<_, (i64, f64, i64)>(
                    "SELECT (SELECT count(*) FROM email_outbox WHERE status = 'pending'), \
                     (SELECT coalesce(extract(epoch FROM now() - min(created_at))::float8, 0) \
                      FROM email_outbox WHERE status = 'pending'), \
                     (SELECT count(*) FROM email_outbox WHERE status = 'failed')",
                )
                .fetch_one(&pool)
                .await;
                match backlog {
                    Ok((pending, age, failed)) => {
                        outbox
                            .get_or_create(&StatusLabels { status: "pending" })
                            .set(pending);
                        outbox
                            .get_or_create(&StatusLabels { status: "failed" })
                            .set(failed);
                        oldest.set(age);
                    }
                    Err(error) => tracing::warn!(%error, "metrics: reading the email outbox"),
                }
            }
        });
        counted
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// Sends due emails until the task is dropped.
pub async fn run(pool: PgPool, settings: EmailSettings, metrics: EmailMetrics) {
    let transport = match transport(&settings) {
        Ok(transport) => transport,
        Err(error) => {
            tracing::error!(%error, "the SMTP settings are unusable; no email will be sent");
            return;
        }
    };
    loop {
        match send_one(&pool, &transport, &settings, &metrics).await {
            Ok(true) => {}
            Ok(false) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "email worker stopped; retrying"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Claims and handles one due email; `false` if none was due.
async fn send_one(
    pool: &PgPool,
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    settings: &EmailSettings,
    metrics: &EmailMetrics,
) -> anyhow::Result<bool> {
    let mut tx = pool.begin().await?;
    // Claimed with a transaction-scoped advisory lock, not `FOR UPDATE`: a row lock gives the
    // transaction an id for the whole SMTP conversation, and every open transaction id in the
    // cluster holds back the relay's horizon, so every event waited for every email being sent.
    // The lock is tried on the first due rows in order until one is free.
    let due: Option<Due> = sqlx::query_as(
        "SELECT * FROM ( \
             SELECT id, recipient, message_id, subject, text_body, html_body, attempts, \
             traceparent FROM email_outbox WHERE status = 'pending' AND next_attempt_at <= now() \
             ORDER BY next_attempt_at, id LIMIT 16) AS due \
         WHERE pg_try_advisory_xact_lock(id) LIMIT 1",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(due) = due else {
        return Ok(false);
    };
    // Another worker may have sent it and released its lock since this statement's snapshot;
    // a new statement sees its commit.
    let still_pending: bool = sqlx::query_scalar(
        "SELECT status = 'pending' AND next_attempt_at <= now() FROM email_outbox WHERE id = $1",
    )
    .bind(due.id)
    .fetch_one(&mut *tx)
    .await?;
    if !still_pending {
        return Ok(true);
    }
    // The attempt continues the trace of the call that caused the email (ADR 0024).
    let span = match &due.traceparent {
        Some(traceparent) if service_kit::traces::exporting() => {
            let span = tracing::info_span!(
                parent: None,
                "email.send",
                otel.name = "send email",
                otel.kind = "client",
                message_id = %due.message_id,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            service_kit::traces::continue_from(&span, Some(traceparent));
            span
        }
        // Untraced: the worker's own span, as the log lines always had.
        Some(_) | None => tracing::Span::current(),
    };
    let outcome = async {
        match message(settings, &due) {
            Ok(email) => transport
                .send(email)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(error) => Err(format!("the email cannot be built: {error}")),
        }
    }
    .instrument(span.clone())
    .await;
    match outcome {
        Ok(()) => {
            if let Some(crash) = &settings.crash_after_send
                && crash.swap(false, Ordering::SeqCst)
            {
                anyhow::bail!("test crash point: sent, not marked sent");
            }
            sqlx::query("UPDATE email_outbox SET status = 'sent', sent_at = now(), attempts = attempts + 1 WHERE id = $1")
                .bind(due.id)
                .execute(&mut *tx)
                .await?;
            metrics.sent.inc();
            tracing::info!(parent: &span, message_id = %due.message_id, "email sent");
        }
        Err(error) => {
            let attempts = due.attempts + 1;
            let delay = retry_delay(settings.retry_base, settings.retry_max_delay, attempts);
            let over_attempts = settings.max_attempts.is_some_and(|most| attempts >= most);
            // Given up when it has been waiting for `give_up_after` (the database's clock, as
            // for `created_at`), or after the most attempts if an operator set them.
            let (status, next_attempt_at): (String, DateTime<Utc>) = sqlx::query_as(
                "UPDATE email_outbox SET attempts = $2, last_error = $3, \
                 status = CASE WHEN $4 OR created_at <= now() - make_interval(secs => $6) \
                     THEN 'failed' ELSE 'pending' END, \
                 next_attempt_at = now() + make_interval(secs => $5) WHERE id = $1 \
                 RETURNING status, next_attempt_at",
            )
            .bind(due.id)
            .bind(attempts)
            .bind(&error)
            .bind(over_attempts)
            .bind(delay.as_secs_f64())
            .bind(settings.give_up_after.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
            metrics.send_errors.inc();
            if status == "failed" {
                metrics.given_up.inc();
                tracing::error!(parent: &span, message_id = %due.message_id, %error, attempts, "email failed for good");
            } else {
                tracing::warn!(parent: &span, message_id = %due.message_id, %error, attempts,
                    next_attempt_at = %next_attempt_at, "email not sent; will retry");
            }
        }
    }
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_ceiling_and_are_spread_over_their_second_half() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(900));
        for _ in 0..100 {
            for (attempts, full) in [(1, 1), (2, 2), (5, 16), (10, 512), (11, 900), (400, 900)] {
                let delay = retry_delay(base, max, attempts);
                let full = Duration::from_secs(full);
                assert!(delay <= full && delay >= full / 2, "{attempts}: {delay:?}");
            }
        }
    }

    #[test]
    fn the_default_schedule_keeps_trying_for_a_day_and_more() {
        // The deployment defaults (config.rs): 1 s doubling to 15 minutes, given up after 48 h.
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(900));
        let mut waited = Duration::ZERO;
        let mut attempts = 0;
        while waited < Duration::from_secs(24 * 3600) {
            attempts += 1;
            waited += retry_delay(base, max, attempts);
        }
        // At most 15 minutes apart even late in an outage: a day takes about a hundred tries.
        assert!(attempts > 96, "{attempts}");
    }

    #[test]
    fn every_language_has_every_text() {
        let templates = Templates::default();
        let keys: Vec<&String> = templates.texts["en"].keys().collect();
        for language in LANGUAGES {
            for key in &keys {
                assert!(
                    templates.texts[language].contains_key(*key),
                    "{language} lacks {key}"
                );
            }
        }
    }

    #[test]
    fn untrusted_text_cannot_close_its_quotes_or_become_a_link() {
        assert_eq!(
            untrusted("x\". Verify at https://myguichet-secure.eu"),
            "x'. Verify at https[:]//myguichet-secure[.]eu"
        );
        assert_eq!(untrusted("www.evil.lu"), "www[.]evil[.]lu");
        assert_eq!(untrusted("« Anna » „phone“"), "' Anna ' 'phone'");
        assert_eq!(untrusted("Anna's phone v2.1"), "Anna's phone v2.1");
    }

    #[test]
    fn values_are_escaped_in_html_only() {
        let rendered = Templates::default().render(
            "en",
            "device_linked",
            &[
                ("device_name", "<b>Anna</b>".into()),
                ("date", "d".into()),
                ("method", "m".into()),
            ],
        );
        assert!(rendered.text.contains("“<b>Anna</b>”"), "{}", rendered.text);
        assert!(!rendered.subject.contains("Anna"), "{}", rendered.subject);
        assert!(rendered.html.contains("&lt;b&gt;Anna&lt;/b&gt;"));
        assert!(!rendered.html.contains("<b>Anna"));
    }

    #[test]
    fn message_ids_are_stable_per_event_and_recipient() {
        let a = message_id(
            "device/x/1",
            "a@example.lu",
            "usermanagement@security.public.lu",
        );
        assert_eq!(
            a,
            message_id(
                "device/x/1",
                "a@example.lu",
                "usermanagement@security.public.lu"
            )
        );
        assert_ne!(
            a,
            message_id(
                "device/x/1",
                "b@example.lu",
                "usermanagement@security.public.lu"
            )
        );
        assert!(a.ends_with("@security.public.lu>"));
    }

    #[test]
    fn times_are_shown_in_luxembourg() {
        let winter = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(luxembourg_time(winter), "14.11.2023 23:13 CET");
    }
}
