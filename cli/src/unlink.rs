//! Unlinking from the portal: `linkctl unlink-devices` (the holder: named devices, every device,
//! or every device linked since an instant) and `linkctl revoke-all-devices` (the help desk),
//! with the token as `--token` (or `LINKCTL_TOKEN`), written to the writer the caller passes
//! (standard output, from `main`).

use std::io::Write;

use proto::v1;
use proto::v1::portal_service_client::PortalServiceClient;
use tonic::transport::Channel;

use crate::client::bearer;

/// An unlinking subcommand (flattened into the RPC subcommands).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// PortalService.UnlinkDevices (needs a re-authenticated citizen token).
    ///
    /// Unlinks the devices named, every device (--all), or every device whose current link was
    /// made at or after an instant (--linked-since); exactly one of the three. When one call
    /// ends two links or more, the holder gets one summary email instead of one per device.
    #[command(group(
        clap::ArgGroup::new("selection")
            .required(true)
            .args(["device_ids", "all", "linked_since"])
    ))]
    UnlinkDevices {
        /// Device ids to unlink.
        device_ids: Vec<String>,
        /// Every device linked to the account now ("my account was compromised").
        #[arg(long)]
        all: bool,
        /// Every device linked at or after this RFC 3339 time, e.g. 2026-03-03T18:00:00+01:00
        /// ("compromised since 18:00").
        #[arg(long, value_name = "TIME", value_parser = rfc3339)]
        linked_since: Option<prost_types::Timestamp>,
    },
    /// PortalService.RevokeAllDevices (needs a system token: the help desk).
    ///
    /// Unlinks every device of an account whose holder cannot log in (reason: help desk); the
    /// holder gets one summary email.
    RevokeAllDevices {
        /// The account whose devices are revoked.
        #[arg(long)]
        account_id: String,
    },
}

/// An RFC 3339 time (with its offset) as a protobuf timestamp.
fn rfc3339(raw: &str) -> Result<prost_types::Timestamp, String> {
    chrono::DateTime::parse_from_rfc3339(raw)
        .map(|at| proto::convert::timestamp(at.to_utc()))
        .map_err(|_| "expected an RFC 3339 time, e.g. 2026-03-03T18:00:00+01:00".to_owned())
}

/// Runs `command` with `token` and `request_id` (the idempotency key), prints the answer and
/// returns it.
pub async fn run<W: Write>(
    portal: &mut PortalServiceClient<Channel>,
    command: Command,
    token: &str,
    request_id: String,
    out: &mut W,
) -> anyhow::Result<v1::UnlinkDevicesResponse> {
    let reply = match command {
        Command::UnlinkDevices {
            device_ids,
            all,
            linked_since,
        } => {
            let request = v1::UnlinkDevicesRequest {
                device_ids,
                all_devices: all,
                linked_since,
                request_id,
            };
            portal.unlink_devices(bearer(request, token)?).await?
        }
        Command::RevokeAllDevices { account_id } => {
            let request = v1::RevokeAllDevicesRequest {
                account_id,
                request_id,
            };
            portal.revoke_all_devices(bearer(request, token)?).await?
        }
    }
    .into_inner();
    writeln!(out, "{reply:#?}")?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Line {
        #[command(subcommand)]
        command: Command,
    }

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Line::try_parse_from(["linkctl"].iter().chain(args)).map(|line| line.command)
    }

    #[test]
    fn unlink_devices_takes_ids_all_or_linked_since() {
        let Ok(Command::UnlinkDevices { device_ids, .. }) = parse(&["unlink-devices", "a", "b"])
        else {
            panic!("ids refused");
        };
        assert_eq!(device_ids, ["a", "b"]);
        let Ok(Command::UnlinkDevices { all, .. }) = parse(&["unlink-devices", "--all"]) else {
            panic!("--all refused");
        };
        assert!(all);
        let since = parse(&[
            "unlink-devices",
            "--linked-since",
            "2026-03-03T18:00:00+01:00",
        ]);
        let Ok(Command::UnlinkDevices {
            linked_since: Some(at),
            ..
        }) = since
        else {
            panic!("--linked-since refused: {since:?}");
        };
        assert_eq!(at.seconds, 1_772_557_200);
    }

    #[test]
    fn unlink_devices_refuses_none_or_two_selections_and_a_bad_time() {
        for args in [
            &["unlink-devices"][..],
            &["unlink-devices", "a", "--all"],
            &[
                "unlink-devices",
                "--all",
                "--linked-since",
                "2026-03-03T18:00:00Z",
            ],
            &[
                "unlink-devices",
                "a",
                "--linked-since",
                "2026-03-03T18:00:00Z",
            ],
            &["unlink-devices", "--linked-since", "yesterday"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn revoke_all_devices_needs_the_account() {
        assert!(parse(&["revoke-all-devices"]).is_err());
        let Ok(Command::RevokeAllDevices { account_id }) =
            parse(&["revoke-all-devices", "--account-id", "anna"])
        else {
            panic!("refused");
        };
        assert_eq!(account_id, "anna");
    }
}
