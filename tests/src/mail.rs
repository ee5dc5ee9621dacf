//! A real SMTP server for the email tests: `scripts/smtp-sink.py` (Python's aiosmtpd) as a child
//! process of one test's own, on a free port, storing messages as files; it refuses recipients
//! whose local part starts with `bounce`. Lettre talks real SMTP to it: nothing is mocked.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use uuid::Uuid;

use testkit::eventually;

/// The SMTP sink.
#[derive(Debug)]
pub struct SmtpSink {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The raw message, with `X-Envelope-From` and `X-Envelope-To` added by the sink.
    pub raw: String,
}

impl Mail {
    /// The value of header `name` (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self
            .raw
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .replace("\r\n ", " ");
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// The decoded subject.
    pub fn subject(&self) -> String {
        decode_words(&self.header("Subject").unwrap_or_default())
    }

    /// Whether the message's text (raw, or decoded from quoted-printable or base64 parts)
    /// contains `text`.
    pub fn body_contains(&self, text: &str) -> bool {
        self.raw.contains(text)
            || decode_quoted_printable(&self.raw).contains(text)
            || decode_base64_parts(&self.raw).contains(text)
    }
}

fn decode_quoted_printable(raw: &str) -> String {
    let joined = raw.replace("=\r\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_base64_parts(raw: &str) -> String {
    raw.split("\r\n\r\n")
        .filter_map(|chunk| {
            let joined: String = chunk.lines().take_while(|l| !l.starts_with("--")).collect();
            base64::engine::general_purpose::STANDARD
                .decode(joined.trim())
                .ok()
        })
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// RFC 2047 encoded words (`=?utf-8?b?…?=`, `=?utf-8?q?…?=`) as lettre writes them.
fn decode_words(raw: &str) -> String {
    let decode = |word: &str| -> Option<String> {
        let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
        let mut parts = inner.splitn(3, '?');
        let (_charset, encoding, text) = (parts.next()?, parts.next()?, parts.next()?);
        match encoding {
            "b" | "B" => base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            "q" | "Q" => Some(decode_quoted_printable(&text.replace('_', " "))),
            _ => None,
        }
    };
    let mut out = String::new();
    for word in raw.split_whitespace() {
        match decode(word) {
            Some(text) => {
                out.push_str(&text);
            }
            None => {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(word);
            }
        }
    }
    out
}

impl SmtpSink {
    /// Starts one.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("linkd-mail-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a mail folder");
        let mut sink = Self {
            port,
            dir,
            child: None,
        };
        sink.resume().await;
        sink
    }

    /// Stops the server (received messages stay).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn resume(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/smtp-sink.py");
        let child = std::process::Command::new("python3")
            .arg(script)
            .args(["--port", &self.port.to_string(), "--dir"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting the SMTP sink (python3 with aiosmtpd)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        eventually(
            Duration::from_secs(15),
            "the SMTP sink listening",
            || async { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) },
        )
        .await;
    }

    /// Every message received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.retain(|path| path.extension().is_some_and(|ext| ext == "eml"));
        paths.sort();
        paths
            .iter()
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .map(|raw| Mail { raw })
            .collect()
    }

    /// Waits until at least `count` messages have arrived, and returns them all.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Mail> {
        eventually(within, &format!("{count} emails"), || async {
            let messages = self.messages();
            (messages.len() >= count).then_some(messages)
        })
        .await
    }

    /// Email settings that send to this sink (4 attempts, 100 ms doubling backoff).
    pub fn settings(&self) -> projection_service::email::EmailSettings {
        projection_service::email::EmailSettings {
            smtp_host: "127.0.0.1".into(),
            smtp_port: self.port,
            smtp_tls: projection_service::email::SmtpTls::None,
            smtp_credentials: None,
            sender: "usermanagement@security.public.lu".into(),
            default_language: "en".into(),
            retry_base: Duration::from_millis(100),
            retry_max_delay: Duration::from_millis(400),
            give_up_after: Duration::from_secs(2),
            max_attempts: None,
            max_event_age: Duration::from_secs(24 * 3600),
            crash_after_send: None,
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
