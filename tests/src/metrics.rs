//! Reading a service's `/metrics` as Prometheus would.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What `GET /metrics` answered.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The status line.
    pub status: String,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The OpenMetrics text.
    pub text: String,
}

impl Scrape {
    /// The value of the series written exactly `series` (name and labels, as encoded: labels in
    /// their declared order), if present.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.text.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// [`Self::value`], 0 when the series is absent (a counter never incremented).
    pub fn count(&self, series: &str) -> f64 {
        self.value(series).unwrap_or(0.0)
    }

    /// How many series of metric `name` there are (lines starting with `name{` or `name `).
    pub fn series_of(&self, name: &str) -> usize {
        self.text
            .lines()
            .filter(|line| {
                line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
            })
            .count()
    }
}

/// `GET path` on `addr` over HTTP/1.0.
pub async fn get(addr: SocketAddr, path: &str) -> Scrape {
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the metrics endpoint");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("sending the request");
    let mut answer = Vec::new();
    socket
        .read_to_end(&mut answer)
        .await
        .expect("reading the answer");
    let answer = String::from_utf8(answer).expect("a text answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    Scrape {
        status,
        content_type,
        text: body.to_owned(),
    }
}

/// `GET /metrics` on `addr`.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    get(addr, "/metrics").await
}

/// Every series docs/metrics.md documents (the first column of its tables), as written there.
pub fn documented_series() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let text = std::fs::read_to_string(&path).expect("docs/metrics.md");
    text.lines()
        .filter_map(|line| {
            let name = line.strip_prefix("| `")?.split('`').next()?;
            name.starts_with("linkd_").then(|| name.to_owned())
        })
        .collect()
}

/// The `linkd_` metric names `text` mentions (a histogram's `_bucket`, `_count` and `_sum`
/// series named by their histogram).
pub fn mentioned_series(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("linkd_") {
        let after = &rest[start..];
        let end = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..end];
        let name = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &after[end..];
    }
    names
}
