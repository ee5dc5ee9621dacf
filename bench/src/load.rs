//! `linkd-bench load`: N concurrent clients drive the running services over gRPC, one
//! closed-loop phase per operation, for each concurrency level:
//!
//! 1. IssueLinkQr for a fixed time; 2. StartLink (QR) once per QR code issued; 3. ScanQr pairing
//!    them; 4. ConfirmLink of each scanned attempt, as its account's holder, with the matching
//!    code the scan returned (skipped if the service asks for no confirmation); 5. SetSecretCode
//!    (Argon2id) over the confirmed attempts for a fixed time; 6. complete LuxTrust flows for a
//!    fixed time; 7. ListDevices for a fixed time; 8. UnlinkDevices of every device linked in 5
//!    and 6, one per call.
//!
//! Every client works on accounts of its own, so clients never contend for one aggregate.
//! Between phases the bench waits for the relay and the projectors to catch up. Projection lag
//! is sampled on links and unlinks by probes running beside the clients.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkctl::dev::DevKeys;
use proto::v1::LinkMethod;

use crate::closed::Deadline;
use crate::config::{Sizing, Target};
use crate::cost::{Cost, Meter};
use crate::lag::{Probes, Want};
use crate::session::{self, Linked, Qr, Session};
use crate::stats::{Failure, Lags, OpStats, Recorder};
use crate::system::System;

mod client;

use client::{Client, lags_of, phase};

/// Row names of the per-level tables.
pub(crate) mod op {
    /// IssueLinkQr.
    pub(crate) const ISSUE: &str = "IssueLinkQr";
    /// StartLink of a QR attempt.
    pub(crate) const START: &str = "StartLink (QR)";
    /// ScanQr.
    pub(crate) const SCAN: &str = "ScanQr";
    /// ConfirmLink.
    pub(crate) const CONFIRM: &str = "ConfirmLink";
    /// SetSecretCode of a QR attempt.
    pub(crate) const SET_CODE: &str = "SetSecretCode (QR; Argon2id)";
    /// StartLink of a LuxTrust attempt.
    pub(crate) const LT_START: &str = "LuxTrust flow: StartLink";
    /// AuthenticateWithLuxTrust.
    pub(crate) const LT_AUTH: &str = "LuxTrust flow: AuthenticateWithLuxTrust";
    /// SetSecretCode of a LuxTrust attempt.
    pub(crate) const LT_SET_CODE: &str = "LuxTrust flow: SetSecretCode (Argon2id)";
    /// The three calls of a LuxTrust flow together.
    pub(crate) const LT_FLOW: &str = "LuxTrust flow, complete (3 calls)";
    /// ListDevices.
    pub(crate) const LIST: &str = "ListDevices";
    /// UnlinkDevices.
    pub(crate) const UNLINK: &str = "UnlinkDevices (1 device)";
    /// The non-hashing commands together.
    pub(crate) const NON_HASHING: &str = "Commands that do not hash a secret";
}

/// The longest wait for the relay and projectors between two phases.
pub(crate) const QUIET: Duration = Duration::from_secs(120);

/// What one concurrency level measured.
#[derive(Debug, Clone)]
pub(crate) struct Level {
    /// Clients.
    pub(crate) concurrency: usize,
    /// Single-row INSERT transactions at this concurrency.
    pub(crate) ceiling: OpStats,
    /// One row per operation, in phase order.
    pub(crate) ops: Vec<OpStats>,
    /// IssueLinkQr + StartLink + ScanQr + ConfirmLink + UnlinkDevices over their combined time.
    pub(crate) non_hashing: OpStats,
    /// The design card's stack at this concurrency (stock cqrs-es + postgres-es), if measured.
    pub(crate) peer: Option<OpStats>,
    /// CPU and write transactions of the non-hashing phases (each with its catch-up).
    pub(crate) non_hashing_cost: Cost,
    /// What each non-hashing operation's phase cost (with its catch-up), and its calls.
    pub(crate) cost_by_op: Vec<(String, u64, Cost)>,
    /// Lag samples of links (device visible).
    pub(crate) link_lag: Lags,
    /// Lag samples of unlinks (device shown as unlinked).
    pub(crate) unlink_lag: Lags,
    /// Accounts the clients worked on.
    pub(crate) accounts: usize,
    /// Devices linked (and later unlinked) at this level.
    pub(crate) linked: usize,
}

impl Level {
    /// The row of operation `name`.
    pub(crate) fn op(&self, name: &str) -> Option<&OpStats> {
        self.ops.iter().find(|stats| stats.name == name)
    }
}

/// A QR attempt on its way: the account whose QR code it scans, the device and its token, and
/// once scanned the matching code the holder confirms with.
#[derive(Debug, Clone)]
struct Attempt {
    account: String,
    qr: Qr,
    device_id: String,
    link_token: String,
    matching_code: String,
}

/// Runs the eight phases at `concurrency`; `ceiling` is the same level's ceiling.
pub(crate) async fn level(
    target: &Target,
    keys: &Arc<DevKeys>,
    system: &System,
    sizing: &Sizing,
    run_id: &str,
    concurrency: usize,
    ceiling: OpStats,
) -> anyhow::Result<Level> {
    let count = sizing.accounts.max(concurrency);
    let accounts: Vec<String> = (0..count)
        .map(|k| format!("bench-{run_id}-c{concurrency}-{k}"))
        .collect();
    // LuxTrust flows get accounts of their own, twice as many: the QR phases fill theirs to the
    // device cap.
    let luxtrust_accounts: Vec<String> = (0..count * 2)
        .map(|k| format!("bench-{run_id}-c{concurrency}-lt-{k}"))
        .collect();
    let setup = Session::connect_many(target, keys, concurrency.min(8)).await?;
    let everyone: Vec<String> = accounts.iter().chain(&luxtrust_accounts).cloned().collect();
    session::register_all(setup, &everyone).await?;
    let sessions = Session::connect_many(target, keys, concurrency).await?;
    let clients: Vec<Client> = sessions
        .into_iter()
        .enumerate()
        .map(|(index, session)| Client {
            session,
            accounts: accounts
                .iter()
                .skip(index)
                .step_by(concurrency)
                .cloned()
                .collect(),
            next: 0,
            linked: Vec::new(),
            luxtrust_accounts: luxtrust_accounts
                .iter()
                .skip(index)
                .step_by(concurrency)
                .cloned()
                .collect(),
            next_luxtrust: 0,
            links: HashMap::new(),
        })
        .collect();
    system.quiesce(QUIET).await?;
    let none = || vec![(); concurrency];
    let every = sizing.lag_sample_every;
    let poll = sizing.lag_poll;
    let cap = sizing.phase * 4;
    let mut ops = Vec::new();
    let mut non_hashing = (Recorder::default(), Duration::ZERO);
    // CPU and write transactions of the non-hashing phases, each with its catch-up.
    let mut meter = Meter::default();
    meter.start(&system.command_db).await?;

    // 1. IssueLinkQr for a fixed time.
    let deadline = Deadline::after(sizing.phase);
    let (clients, out, elapsed) = phase(clients, none(), |mut client, ()| async move {
        let mut recorder = Recorder::default();
        let mut qrs = Vec::new();
        while !deadline.passed() {
            let account = client.next_account();
            if let Some(qr) = recorder.time(client.session.issue_qr(&account)).await {
                qrs.push((account, qr));
            }
        }
        (client, (recorder, qrs))
    })
    .await?;
    let (recorders, qrs): (Vec<_>, Vec<_>) = out.into_iter().unzip();
    let all = Recorder::merged(recorders);
    ops.push(all.summary(op::ISSUE, elapsed));
    non_hashing.0.merge(all);
    non_hashing.1 += elapsed;
    system.quiesce(QUIET).await?;
    let measured = ops.last().map(|o| (o.name.as_str(), o.count));
    meter.stop(&system.command_db, measured).await?;
    meter.start(&system.command_db).await?;

    // 2. StartLink (QR), one per QR code issued.
    let deadline = Deadline::after(cap);
    let (clients, out, elapsed) = phase(clients, qrs, |mut client, qrs| async move {
        let mut recorder = Recorder::default();
        let mut attempts = Vec::with_capacity(qrs.len());
        for (account, qr) in qrs {
            if deadline.passed() {
                break;
            }
            let started = recorder.time(client.session.start_link(LinkMethod::Qr));
            if let Some((device_id, start)) = started.await {
                attempts.push(Attempt {
                    account,
                    qr,
                    device_id,
                    link_token: start.link_token,
                    matching_code: String::new(),
                });
            }
        }
        (client, (recorder, attempts))
    })
    .await?;
    let (recorders, attempts): (Vec<_>, Vec<_>) = out.into_iter().unzip();
    let all = Recorder::merged(recorders);
    ops.push(all.summary(op::START, elapsed));
    non_hashing.0.merge(all);
    non_hashing.1 += elapsed;
    system.quiesce(QUIET).await?;
    let measured = ops.last().map(|o| (o.name.as_str(), o.count));
    meter.stop(&system.command_db, measured).await?;
    meter.start(&system.command_db).await?;

    // 3. ScanQr: each attempt consumes the QR code issued before it.
    let deadline = Deadline::after(cap);
    let (clients, out, elapsed) = phase(clients, attempts, |mut client, attempts| async move {
        let mut recorder = Recorder::default();
        let mut scanned = Vec::with_capacity(attempts.len());
        for mut attempt in attempts {
            if deadline.passed() {
                break;
            }
            let scan = client
                .session
                .scan_qr(&attempt.link_token, &attempt.qr.payload);
            if let Some(matching_code) = recorder.time(scan).await {
                attempt.matching_code = matching_code;
                scanned.push(attempt);
            }
        }
        (client, (recorder, scanned))
    })
    .await?;
    let (recorders, scanned): (Vec<_>, Vec<_>) = out.into_iter().unzip();
    let all = Recorder::merged(recorders);
    ops.push(all.summary(op::SCAN, elapsed));
    non_hashing.0.merge(all);
    non_hashing.1 += elapsed;
    system.quiesce(QUIET).await?;
    let measured = ops.last().map(|o| (o.name.as_str(), o.count));
    meter.stop(&system.command_db, measured).await?;
    meter.start(&system.command_db).await?;

    // 4. ConfirmLink of each scanned attempt by its account's holder (when asked for).
    let confirming = scanned
        .iter()
        .flatten()
        .any(|attempt| !attempt.matching_code.is_empty());
    let deadline = Deadline::after(cap);
    let (clients, out, elapsed) = phase(clients, scanned, |mut client, scanned| async move {
        let mut recorder = Recorder::default();
        let mut confirmed = Vec::with_capacity(scanned.len());
        for attempt in scanned {
            if attempt.matching_code.is_empty() {
                confirmed.push(attempt);
                continue;
            }
            if deadline.passed() {
                break;
            }
            let confirm = client.session.confirm_link(
                &attempt.account,
                &attempt.qr.id,
                &attempt.matching_code,
            );
            if recorder.time(confirm).await.is_some() {
                confirmed.push(attempt);
            }
        }
        (client, (recorder, confirmed))
    })
    .await?;
    let (recorders, confirmed): (Vec<_>, Vec<_>) = out.into_iter().unzip();
    if confirming {
        let all = Recorder::merged(recorders);
        ops.push(all.summary(op::CONFIRM, elapsed));
        non_hashing.0.merge(all);
        non_hashing.1 += elapsed;
        system.quiesce(QUIET).await?;
    }
    let confirmed_op = confirming.then(|| ops.last()).flatten();
    meter
        .stop(
            &system.command_db,
            confirmed_op.map(|o| (o.name.as_str(), o.count)),
        )
        .await?;

    // 5. SetSecretCode over the confirmed attempts, for a fixed time.
    let deadline = Deadline::after(sizing.hash_phase);
    let (clients, out, elapsed) = phase(clients, confirmed, |mut client, confirmed| async move {
        let mut recorder = Recorder::default();
        let mut probes = Probes::new(poll);
        for (n, attempt) in confirmed.into_iter().enumerate() {
            if deadline.passed() {
                break;
            }
            if !client.has_room(&attempt.account) {
                continue;
            }
            let set = client.session.set_secret_code(&attempt.link_token);
            if let Some(credential) = recorder.time(set).await {
                client.count_link(&attempt.account);
                if n % every == 0 {
                    client.probe(
                        &mut probes,
                        &attempt.account,
                        &attempt.device_id,
                        Want::Linked,
                    );
                }
                client.linked.push(Linked {
                    account: attempt.account,
                    device_id: attempt.device_id,
                    credential,
                });
            }
        }
        (client, (recorder, probes))
    })
    .await?;
    let (recorders, probes): (Vec<_>, Vec<_>) = out.into_iter().unzip();
    ops.push(Recorder::merged(recorders).summary(op::SET_CODE, elapsed));
    let mut link_lag = lags_of(probes).await;
    system.quiesce(QUIET).await?;

    // 6. Complete LuxTrust flows, for a fixed time.
    let deadline = Deadline::after(sizing.hash_phase);
    let (clients, out, elapsed) = phase(clients, none(), |mut client, ()| async move {
        let mut steps = [(); 4].map(|()| Recorder::default());
        let mut probes = Probes::new(poll);
        let mut n = 0;
        while !deadline.passed() {
            let Some(account) = client.next_luxtrust_account() else {
                break;
            };
            let started = Instant::now();
            let outcome = luxtrust_flow(&mut client.session, &account, &mut steps).await;
            if let Some(linked) = steps[3].record(started.elapsed(), outcome) {
                client.count_link(&account);
                if n % every == 0 {
                    client.probe(&mut probes, &account, &linked.device_id, Want::Linked);
                }
                n += 1;
                client.linked.push(linked);
            }
        }
        (client, (steps, probes))
    })
    .await?;
    let (steps, probes): (Vec<_>, Vec<_>) = out.into_iter().unzip();
    let mut by_step = [(); 4].map(|()| Recorder::default());
    for set in steps {
        for (all, one) in by_step.iter_mut().zip(set) {
            all.merge(one);
        }
    }
    for (recorder, name) in
        by_step
            .iter()
            .zip([op::LT_START, op::LT_AUTH, op::LT_SET_CODE, op::LT_FLOW])
    {
        ops.push(recorder.summary(name, elapsed));
    }
    link_lag.merge(lags_of(probes).await);
    system.quiesce(QUIET).await?;

    // 7. ListDevices of the clients' accounts, for a fixed time.
    let deadline = Deadline::after(sizing.phase);
    let (clients, out, elapsed) = phase(clients, none(), |mut client, ()| async move {
        let mut recorder = Recorder::default();
        while !deadline.passed() {
            let account = client.next_account();
            recorder.time(client.session.list_devices(&account)).await;
        }
        (client, recorder)
    })
    .await?;
    ops.push(Recorder::merged(out).summary(op::LIST, elapsed));

    // 8. UnlinkDevices of every device linked above, one per call.
    let linked: usize = clients.iter().map(|client| client.linked.len()).sum();
    meter.start(&system.command_db).await?;
    let deadline = Deadline::after(cap);
    let (_, out, elapsed) = phase(clients, none(), |mut client, ()| async move {
        let mut recorder = Recorder::default();
        let mut probes = Probes::new(poll);
        for (n, device) in std::mem::take(&mut client.linked).into_iter().enumerate() {
            if deadline.passed() {
                break;
            }
            let unlink = client.session.unlink(&device.account, &device.device_id);
            if recorder.time(unlink).await.is_some() && n % every == 0 {
                client.probe(
                    &mut probes,
                    &device.account,
                    &device.device_id,
                    Want::Unlinked,
                );
            }
        }
        (client, (recorder, probes))
    })
    .await?;
    let (recorders, probes): (Vec<_>, Vec<_>) = out.into_iter().unzip();
    let all = Recorder::merged(recorders);
    ops.push(all.summary(op::UNLINK, elapsed));
    non_hashing.0.merge(all);
    non_hashing.1 += elapsed;
    let unlink_lag = lags_of(probes).await;
    system.quiesce(QUIET).await?;
    let measured = ops.last().map(|o| (o.name.as_str(), o.count));
    meter.stop(&system.command_db, measured).await?;

    let non_hashing = non_hashing.0.summary(op::NON_HASHING, non_hashing.1);
    Ok(Level {
        concurrency,
        ceiling,
        ops,
        non_hashing,
        non_hashing_cost: meter.cost,
        cost_by_op: meter.spans,
        peer: None,
        link_lag,
        unlink_lag,
        accounts: count,
        linked,
    })
}

/// StartLink (LuxTrust) -> AuthenticateWithLuxTrust -> SetSecretCode, each call recorded in
/// `steps[0..3]`.
async fn luxtrust_flow(
    session: &mut Session,
    account: &str,
    steps: &mut [Recorder; 4],
) -> Result<Linked, Failure> {
    let (device_id, start) = steps[0]
        .try_time(session.start_link(LinkMethod::Luxtrust))
        .await?;
    steps[1]
        .try_time(session.authenticate_luxtrust(account, &start))
        .await?;
    let credential = steps[2]
        .try_time(session.set_secret_code(&start.link_token))
        .await?;
    Ok(Linked {
        account: account.to_owned(),
        device_id,
        credential,
    })
}
