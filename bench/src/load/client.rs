//! A load client and the closed-loop phase runner.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::closed;
use crate::lag::{Probes, Want};
use crate::session::{DEVICES_PER_ACCOUNT, Linked, Session};
use crate::stats::Lags;

/// A bench client during a level: its session, its accounts and the devices it linked.
#[derive(Debug)]
pub(super) struct Client {
    /// Its connections.
    pub(super) session: Session,
    /// Its accounts.
    pub(super) accounts: Vec<String>,
    /// The next account, round robin.
    pub(super) next: usize,
    /// The devices it linked and has not unlinked.
    pub(super) linked: Vec<Linked>,
    /// Its accounts for LuxTrust flows (kept apart from the QR phases', which fill theirs).
    pub(super) luxtrust_accounts: Vec<String>,
    /// The next LuxTrust account, round robin.
    pub(super) next_luxtrust: usize,
    /// How many devices it linked to each of its accounts (only it links to them).
    pub(super) links: HashMap<String, usize>,
}

impl Client {
    /// The next of its accounts, round robin.
    pub(super) fn next_account(&mut self) -> String {
        let account = self.accounts[self.next % self.accounts.len()].clone();
        self.next += 1;
        account
    }

    /// Whether `account` can take one more device: a call that would be refused for the device
    /// cap measures the refusal, not the operation.
    pub(super) fn has_room(&self, account: &str) -> bool {
        self.links.get(account).copied().unwrap_or(0) < DEVICES_PER_ACCOUNT
    }

    /// Counts a device linked to `account`.
    pub(super) fn count_link(&mut self, account: &str) {
        *self.links.entry(account.to_owned()).or_default() += 1;
    }

    /// The next of its LuxTrust accounts that can take one more device, if any.
    pub(super) fn next_luxtrust_account(&mut self) -> Option<String> {
        for _ in 0..self.luxtrust_accounts.len() {
            let account =
                &self.luxtrust_accounts[self.next_luxtrust % self.luxtrust_accounts.len()];
            self.next_luxtrust += 1;
            if self.has_room(account) {
                return Some(account.clone());
            }
        }
        None
    }

    /// Starts a lag probe for `device_id` of `account`, acknowledged now.
    pub(super) fn probe(
        &mut self,
        probes: &mut Probes,
        account: &str,
        device_id: &str,
        want: Want,
    ) {
        let acked = Instant::now();
        if let Ok(token) = self.session.citizen(account) {
            let queries = self.session.grpc.queries.clone();
            probes.spawn(queries, token, device_id.to_owned(), want, acked);
        }
    }
}

/// Runs `body` for every client with its input; the clients, outputs and the phase's time.
pub(super) async fn phase<I, O, F, Fut>(
    clients: Vec<Client>,
    inputs: Vec<I>,
    body: F,
) -> anyhow::Result<(Vec<Client>, Vec<O>, Duration)>
where
    F: Fn(Client, I) -> Fut,
    Fut: Future<Output = (Client, O)> + Send + 'static,
    O: Send + 'static,
{
    let started = Instant::now();
    let pairs: Vec<(Client, I)> = clients.into_iter().zip(inputs).collect();
    let done = closed::each(pairs, |_, (client, input)| body(client, input)).await?;
    let elapsed = started.elapsed();
    let (clients, outputs) = done.into_iter().unzip();
    Ok((clients, outputs, elapsed))
}

/// Waits for every probe; all their lags.
pub(super) async fn lags_of(probes: Vec<Probes>) -> Lags {
    let mut lags = Lags::default();
    for set in probes {
        lags.merge(set.collect().await);
    }
    lags
}
