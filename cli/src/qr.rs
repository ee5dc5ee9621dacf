//! The holder's side of a QR link (PortalService): `linkctl get-link-qr`, `watch-link-qr`,
//! `confirm-link` and `decline-link`, with the citizen's portal JWT as `--token` (or
//! `LINKCTL_TOKEN`), written to the writer the caller passes (standard output, from `main`).

use std::io::Write;

use proto::v1;
use proto::v1::portal_service_client::PortalServiceClient;
use tonic::transport::Channel;

use crate::client::bearer;
use crate::watch;

/// A subcommand about an issued QR code (flattened into the RPC subcommands).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// PortalService.GetLinkQr (needs a citizen token).
    ///
    /// Prints where a QR code stands now, in one line.
    GetLinkQr {
        /// The QR code's id, from issue-link-qr.
        #[arg(long)]
        qr_id: String,
    },
    /// PortalService.WatchLinkQr (needs a citizen token); one line per state.
    ///
    /// Prints one line per state as it arrives, until a final state (declined, expired,
    /// linked) ends the stream.
    WatchLinkQr {
        /// The QR code's id, from issue-link-qr.
        #[arg(long)]
        qr_id: String,
    },
    /// PortalService.ConfirmLink (needs a re-authenticated citizen token).
    ///
    /// Confirms the device that scanned the QR code with the two-digit code it shows. A wrong
    /// code declines the link (one try).
    ConfirmLink {
        /// The QR code's id, from issue-link-qr.
        #[arg(long)]
        qr_id: String,
        /// The two digits the scanning device displays.
        #[arg(long)]
        matching_code: String,
    },
    /// PortalService.DeclineLink (needs a re-authenticated citizen token).
    ///
    /// "This is not my phone": the link attempt dies and the QR code is used up.
    DeclineLink {
        /// The QR code's id, from issue-link-qr.
        #[arg(long)]
        qr_id: String,
    },
}

/// Runs `command` with `token`; `request_id` is the idempotency key of ConfirmLink and
/// DeclineLink.
pub async fn run<W: Write>(
    portal: &mut PortalServiceClient<Channel>,
    command: Command,
    token: &str,
    request_id: String,
    out: &mut W,
) -> anyhow::Result<()> {
    match command {
        Command::GetLinkQr { qr_id } => {
            let request = bearer(v1::GetLinkQrRequest { qr_id }, token)?;
            let state = portal.get_link_qr(request).await?.into_inner();
            writeln!(out, "{}", watch::describe(&state))?;
        }
        Command::WatchLinkQr { qr_id } => {
            let request = bearer(v1::WatchLinkQrRequest { qr_id }, token)?;
            let states = portal.watch_link_qr(request).await?.into_inner();
            watch::print_states(states, out).await?;
        }
        Command::ConfirmLink {
            qr_id,
            matching_code,
        } => {
            let request = v1::ConfirmLinkRequest {
                qr_id,
                matching_code,
                request_id,
            };
            let reply = portal
                .confirm_link(bearer(request, token)?)
                .await?
                .into_inner();
            answered(out, reply.state.as_ref(), &reply.consistency_token)?;
        }
        Command::DeclineLink { qr_id } => {
            let request = v1::DeclineLinkRequest { qr_id, request_id };
            let reply = portal
                .decline_link(bearer(request, token)?)
                .await?
                .into_inner();
            answered(out, reply.state.as_ref(), &reply.consistency_token)?;
        }
    }
    Ok(())
}

/// The state a confirmation or a decline left, and its consistency token.
fn answered<W: Write>(
    out: &mut W,
    state: Option<&v1::LinkQrState>,
    consistency_token: &str,
) -> anyhow::Result<()> {
    let state = state.map_or_else(|| "-".to_owned(), watch::describe);
    writeln!(out, "state:             {state}")?;
    writeln!(out, "consistency_token: {consistency_token}")?;
    Ok(())
}
