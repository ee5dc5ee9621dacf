//! The notifier: turns `DeviceLinked`, `DeviceUnlinked` and `AccountEmailChanged` into rows of
//! `email_outbox`, in the same transaction as its guard (so an email is queued exactly once per
//! event, and never lost). It keeps each account's address and language, and each device's name.

use proto::convert::{TextForm as _, aggregate};
use proto::v1::event_envelope::Event;
use proto::v1::{self, EventEnvelope};
use sqlx::{Postgres, Transaction};

use super::{ProjectionError, Projector, event_time};
use crate::email::{self, Templates, luxembourg_time, message_id};

#[cfg(test)]
mod tests;

/// The projector's name.
pub(crate) const NAME: &str = "notifier";

/// Queues the emails the help page promises.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    /// Email texts.
    pub(crate) templates: Templates,
    /// The From address (the Message-ID's domain comes from it).
    pub(crate) sender: String,
    /// Language for accounts registered without one of ours.
    pub(crate) default_language: String,
    /// Events older than this queue no email.
    pub(crate) max_event_age: std::time::Duration,
}

struct Queued<'a> {
    event: &'a EventEnvelope,
    kind: &'static str,
    recipient: &'a str,
    language: &'a str,
    values: Vec<(&'static str, String)>,
}

fn at(timestamp: Option<&prost_types::Timestamp>) -> Result<String, ProjectionError> {
    event_time(timestamp).map(luxembourg_time)
}

/// The templates' phrase for a link method (`method.<text form>`); poison if this build does not
/// know the method.
fn method_phrase(raw: i32) -> Result<String, ProjectionError> {
    Ok(format!("method.{}", v1::LinkMethod::text_of(raw)?))
}

/// The templates' phrase for an unlink reason (`reason.<text form>`); poison if this build does
/// not know the reason.
fn reason_phrase(raw: i32) -> Result<String, ProjectionError> {
    Ok(format!("reason.{}", v1::UnlinkReason::text_of(raw)?))
}

impl Notifier {
    /// An erased account (docs/adr/0025): its address, its devices' names, and every email
    /// queued, sent or given up for it, gone.
    pub(crate) async fn forget(
        tx: &mut Transaction<'static, Postgres>,
        account_id: &str,
    ) -> Result<(), ProjectionError> {
        // Its emails: by the events they were queued for (the account's own, its devices'), and
        // by recipient, for those queued earlier in this very batch.
        let deleted = sqlx::query(
            "WITH devices_of AS ( \
                 SELECT device_id::text AS id FROM devices WHERE account_id = $1 \
                 UNION SELECT device_id FROM audit_heads WHERE account_id = $1 AND device_id <> '') \
             DELETE FROM email_outbox o \
             WHERE left(o.event_id, length($2)) = $2 \
                OR (split_part(o.event_id, '/', 1) = 'device' \
                    AND split_part(o.event_id, '/', 2) IN (SELECT id FROM devices_of)) \
                OR o.recipient IN (SELECT email FROM email_accounts WHERE account_id = $1)",
        )
        .bind(account_id)
        .bind(format!("account/{account_id}/"))
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "DELETE FROM email_devices WHERE device_id IN ( \
                 SELECT device_id::text FROM devices WHERE account_id = $1 \
                 UNION SELECT device_id FROM audit_heads WHERE account_id = $1)",
        )
        .bind(account_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM email_accounts WHERE account_id = $1")
            .bind(account_id)
            .execute(&mut **tx)
            .await?;
        tracing::info!(
            account_id,
            emails = deleted.rows_affected(),
            "an erased account's address, device names and emails deleted"
        );
        Ok(())
    }

    /// The name a device was linked under, quoted as untrusted text (its id if unknown).
    async fn device_name(
        tx: &mut Transaction<'static, Postgres>,
        device_id: &str,
    ) -> Result<String, ProjectionError> {
        let name: Option<String> =
            sqlx::query_scalar("SELECT name FROM email_devices WHERE device_id = $1")
                .bind(device_id)
                .fetch_optional(&mut **tx)
                .await?;
        Ok(email::untrusted(
            &name.unwrap_or_else(|| device_id.to_owned()),
        ))
    }

    async fn queue(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        email: Queued<'_>,
    ) -> Result<(), ProjectionError> {
        let occurred = event_time(email.event.occurred_at.as_ref()).ok();
        let too_old = occurred.is_some_and(|at| {
            chrono::Utc::now()
                .signed_duration_since(at)
                .to_std()
                .unwrap_or_default()
                > self.max_event_age
        });
        if too_old {
            tracing::info!(event_id = %email.event.event_id, kind = email.kind, "event too old to email about; not queued");
            return Ok(());
        }
        let rendered = self
            .templates
            .render(email.language, email.kind, &email.values);
        sqlx::query(
            "INSERT INTO email_outbox (event_id, kind, recipient, language, message_id, subject, \
             text_body, html_body, traceparent) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             NULLIF($9, '')) ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(&email.event.event_id)
        .bind(email.kind)
        .bind(email.recipient)
        .bind(email.language)
        .bind(message_id(
            &email.event.event_id,
            email.recipient,
            &self.sender,
        ))
        .bind(&rendered.subject)
        .bind(&rendered.text)
        .bind(&rendered.html)
        .bind(&email.event.traceparent)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The address and language of the event's account, or wait: its registration may still be
    /// on its way.
    async fn account(
        tx: &mut Transaction<'static, Postgres>,
        event: &EventEnvelope,
    ) -> Result<(String, String), ProjectionError> {
        let account: Option<(String, String)> =
            sqlx::query_as("SELECT email, language FROM email_accounts WHERE account_id = $1")
                .bind(&event.account_id)
                .fetch_optional(&mut **tx)
                .await?;
        account.ok_or_else(|| {
            ProjectionError::Waiting(format!("account {} is not known yet", event.account_id))
        })
    }

    fn language<'a>(&'a self, language: &'a str) -> &'a str {
        if crate::email::LANGUAGES.contains(&language) {
            language
        } else {
            &self.default_language
        }
    }
}

impl Projector for Notifier {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Accounts' events (addresses, languages, erasure) and devices' (links, unlinks, warnings):
    /// QR codes' and link attempts' events send nothing.
    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[aggregate::ACCOUNT, aggregate::DEVICE])
    }

    async fn apply<'a>(
        &'a self,
        tx: &'a mut Transaction<'static, Postgres>,
        event: &'a EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let Some(payload) = &event.event else {
            return Err(ProjectionError::Poison("no event".into()));
        };
        match payload {
            Event::AccountRegistered(registered) => {
                sqlx::query(
                    "INSERT INTO email_accounts (account_id, email, language) VALUES ($1, $2, $3) \
                     ON CONFLICT (account_id) DO UPDATE SET email = EXCLUDED.email, \
                     language = EXCLUDED.language",
                )
                .bind(&event.aggregate_id)
                .bind(&registered.email)
                .bind(self.language(&registered.language))
                .execute(&mut **tx)
                .await?;
            }
            Event::AccountEmailChanged(changed) => {
                let (_, language) = Self::account(tx, event).await?;
                let date = at(changed.at.as_ref())?;
                let values = vec![
                    ("old_email", changed.old_email.clone()),
                    ("new_email", changed.new_email.clone()),
                    ("date", date),
                ];
                for (kind, recipient) in [
                    ("email_changed_old", &changed.old_email),
                    ("email_changed_new", &changed.new_email),
                ] {
                    let email = Queued {
                        event,
                        kind,
                        recipient,
                        language: &language,
                        values: values.clone(),
                    };
                    self.queue(tx, email).await?;
                }
                sqlx::query("UPDATE email_accounts SET email = $2 WHERE account_id = $1")
                    .bind(&event.aggregate_id)
                    .bind(&changed.new_email)
                    .execute(&mut **tx)
                    .await?;
            }
            Event::DeviceLinked(linked) => {
                let method = method_phrase(linked.method)?;
                let (recipient, language) = Self::account(tx, event).await?;
                sqlx::query(
                    "INSERT INTO email_devices (device_id, name) VALUES ($1, $2) \
                     ON CONFLICT (device_id) DO UPDATE SET name = EXCLUDED.name",
                )
                .bind(&event.aggregate_id)
                .bind(&linked.device_name)
                .execute(&mut **tx)
                .await?;
                let values = vec![
                    ("device_name", email::untrusted(&linked.device_name)),
                    ("method", self.templates.phrase(&language, &method)),
                    ("date", at(linked.at.as_ref())?),
                ];
                let email = Queued {
                    event,
                    kind: "device_linked",
                    recipient: &recipient,
                    language: &language,
                    values,
                };
                self.queue(tx, email).await?;
            }
            // One of several unlinked by one call: the summary covers it.
            Event::DeviceUnlinked(unlinked) if unlinked.in_bulk => {}
            Event::DeviceUnlinked(unlinked) => {
                let reason = reason_phrase(unlinked.reason)?;
                let (recipient, language) = Self::account(tx, event).await?;
                let values = vec![
                    (
                        "device_name",
                        Self::device_name(tx, &event.aggregate_id).await?,
                    ),
                    ("reason", self.templates.phrase(&language, &reason)),
                    ("date", at(unlinked.at.as_ref())?),
                ];
                let email = Queued {
                    event,
                    kind: "device_unlinked",
                    recipient: &recipient,
                    language: &language,
                    values,
                };
                self.queue(tx, email).await?;
            }
            Event::InactivityWarned(warned) => {
                let (recipient, language) = Self::account(tx, event).await?;
                let values = vec![
                    (
                        "device_name",
                        Self::device_name(tx, &event.aggregate_id).await?,
                    ),
                    ("last_used", at(warned.last_used_at.as_ref())?),
                    ("unlink_date", at(warned.unlink_at.as_ref())?),
                ];
                let email = Queued {
                    event,
                    kind: "device_inactive",
                    recipient: &recipient,
                    language: &language,
                    values,
                };
                self.queue(tx, email).await?;
            }
            Event::DevicesUnlinkedTogether(together) => {
                let reason = reason_phrase(together.reason)?;
                let (recipient, language) = Self::account(tx, event).await?;
                let mut names = Vec::with_capacity(together.device_ids.len());
                for device_id in &together.device_ids {
                    names.push(format!("- “{}”", Self::device_name(tx, device_id).await?));
                }
                let values = vec![
                    ("count", together.device_ids.len().to_string()),
                    ("devices", names.join("\n")),
                    ("reason", self.templates.phrase(&language, &reason)),
                    ("date", at(together.at.as_ref())?),
                ];
                let email = Queued {
                    event,
                    kind: "devices_unlinked_together",
                    recipient: &recipient,
                    language: &language,
                    values,
                };
                self.queue(tx, email).await?;
            }
            Event::AccountErased(_) => Self::forget(tx, &event.aggregate_id).await?,
            Event::PortalLoginRecorded(_)
            | Event::QrIssued(_)
            | Event::QrConsumed(_)
            | Event::LinkRequested(_)
            | Event::QrAccepted(_)
            | Event::LinkConfirmed(_)
            | Event::LinkDeclined(_)
            | Event::LuxtrustAuthenticated(_)
            | Event::LinkCompleted(_)
            | Event::BiometricsEnabled(_)
            | Event::BiometricsSkipped(_)
            | Event::BiometricsDisabled(_)
            | Event::SecretCodeVerified(_)
            | Event::SecretCodeFailed(_) => {}
        }
        Ok(())
    }
}
