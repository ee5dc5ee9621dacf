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
