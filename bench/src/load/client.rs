//! A load client and the closed-loop phase runner.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::closed;
use crate::lag::{Probes, Want};
use crate::session::{Linked, Session};
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
}

impl Client {
    /// The next of its accounts, round robin.
    pub(super) fn next_account(&mut self) -> String {
        let account = self.accounts[self.next % self.accounts.len()].clone();
        self.next += 1;
        account
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
