//! Where NATS is: `LINKD_NATS_URL` holds one server URL or, as NATS clients conventionally
//! accept, a comma-separated seed list (`nats://a:4222,nats://b:4222`). A service connects to
//! the first seed it reaches (async-nats tries each once, in random order) and, once connected,
//! also learns the cluster's other nodes from the server it reached.

use anyhow::Context as _;
use async_nats::ServerAddr;

/// The servers of a seed list (entries separated by commas, spaces around them ignored; a
/// server without a scheme is `nats://`, without a port 4222). `Err` says which entry is wrong.
pub fn seed_list(seeds: &str) -> Result<Vec<ServerAddr>, String> {
    let servers = seeds
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<ServerAddr>()
                .map_err(|e| format!("{entry:?} is not a NATS server address: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err("no NATS server given".into());
    }
    Ok(servers)
}

/// A client connected to one server of the seed list `seeds`, under the connection name `name`
/// (what the servers' monitoring shows: `nats server report connections`, `/connz`).
///
/// Once connected, a lost connection is not an error here: async-nats reconnects by itself,
/// without limit, to any server it knows (the seeds and the nodes the cluster announced), the
/// first attempt at once and the next ones after 2 ms doubling up to 4 s.
pub async fn connect(seeds: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let servers = seed_list(seeds).map_err(anyhow::Error::msg)?;
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(servers)
        .await
        .with_context(|| format!("connecting to NATS at {seeds}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_a_comma_separated_seed_list() {
        assert_eq!(seed_list("nats://127.0.0.1:4222").unwrap().len(), 1);
        let seeds =
            seed_list(" nats://127.0.0.1:4223, nats://127.0.0.1:4224 ,127.0.0.1:4225,").unwrap();
        let ports: Vec<u16> = seeds.iter().map(ServerAddr::port).collect();
        assert_eq!(ports, [4223, 4224, 4225]);
    }

    #[test]
    fn a_wrong_entry_is_named() {
        let error = seed_list("nats://127.0.0.1:4223,nats://127.0.0.1:99999").unwrap_err();
        assert!(error.contains("nats://127.0.0.1:99999"), "{error}");
        assert_eq!(seed_list(" , ").unwrap_err(), "no NATS server given");
    }
}
