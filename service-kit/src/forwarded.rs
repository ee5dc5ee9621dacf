//! The client's address behind trusted proxies, from `X-Forwarded-For`: one rule for the gRPC
//! services and the portal page.

use std::net::IpAddr;

/// The entry of `X-Forwarded-For` that the outermost of `hops` trusted proxies appended
/// (`hops` from the right, across every header line in order), given the header's lines.
/// An entry may carry a port (`192.0.2.1:443`, `[2001:db8::1]:443`) or brackets. `None` when
/// the header is shorter than promised or the entry is not an address: never the proxy's own
/// address, and never an entry further left, which the client wrote itself. (The service must
/// then be reachable only through the proxies, or anyone could write the header.)
pub fn client_address<'a>(lines: impl IntoIterator<Item = &'a str>, hops: usize) -> Option<IpAddr> {
    let forwarded: Vec<&str> = lines
        .into_iter()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .collect();
    let index = forwarded.len().checked_sub(hops)?;
    address_of(forwarded.get(index)?)
}

/// An address as proxies write it: bare, with brackets, or with a port.
fn address_of(entry: &str) -> Option<IpAddr> {
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })
}
