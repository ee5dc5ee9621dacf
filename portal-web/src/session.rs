//! Server-side sessions: the browser holds only a random id in an `HttpOnly`, `SameSite=Strict`
//! cookie; the portal token, the CSRF token and the page's small state stay here, in memory.
//!
//! Every visitor gets a session (the sign-in form needs a CSRF token too). The store is bounded
//! (`LINKD_WEB_MAX_SESSIONS`): a full store drops the least recently seen anonymous session (a
//! signed-in one only when every session is signed in), and a session idle for
//! `LINKD_WEB_SESSION_IDLE_SECONDS` ends. So a stranger sending requests without a cookie only
//! pushes out other anonymous sessions, never a signed-in holder's. Signing in and re-authenticating give the
//! session a new id (no fixation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq as _;

use crate::i18n::Language;

/// The session's id, as the cookie carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

/// A signed-in holder.
#[derive(Clone)]
pub struct SignedIn {
    /// The account (`sub`).
    pub account_id: String,
    /// The portal JWT sent to the services.
    pub token: String,
    /// When the holder last authenticated (`auth_time`, seconds since the epoch).
    pub auth_time: i64,
    /// When the token expires (`exp`).
    pub expires_at: i64,
}

impl SignedIn {
    /// The holder a portal JWT stands for, read from its claims (`sub`, `auth_time`, `exp`).
    /// The signature is not checked here: the token comes from the portal's own login, and the
    /// services check it on every call. None if it is not a JWT with those claims.
    pub fn from_token(token: &str) -> Option<Self> {
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: String,
            auth_time: i64,
            exp: i64,
        }
        let payload = token.split('.').nth(1)?;
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
        Some(Self {
            account_id: claims.sub,
            token: token.to_owned(),
            auth_time: claims.auth_time,
            expires_at: claims.exp,
        })
    }
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("account_id", &self.account_id)
            .field("auth_time", &self.auth_time)
            .finish_non_exhaustive()
    }
}

/// A one-time message shown on the next page.
#[derive(Debug, Clone)]
pub struct Flash {
    /// Whether it reports a failure.
    pub error: bool,
    /// The message, in the session's language.
    pub text: String,
    /// What the service said, for the curious (shown folded).
    pub detail: Option<String>,
    /// A command's consistency token: the next device list waits for it.
    pub consistency_token: Option<String>,
}

impl Flash {
    /// A message reporting a failure.
    pub fn error(text: impl Into<String>) -> Self {
        Self {
            error: true,
            text: text.into(),
            detail: None,
            consistency_token: None,
        }
    }

    /// A message reporting what happened.
    pub fn info(text: impl Into<String>) -> Self {
        Self {
            error: false,
            ..Self::error(text)
        }
    }
}

/// Which devices an unlink is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlinkTarget {
    /// These device ids.
    Devices(Vec<String>),
    /// Every linked device.
    All,
}

/// A state-changing action that needs a recent sign-in; kept while the holder re-authenticates,
/// then carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Show a new QR code.
    IssueQr {
        /// The browser's address, for the holder to compare with the scanner's.
        browser_address: String,
    },
    /// Confirm a scanned QR code with the matching code typed.
    Confirm {
        /// The QR code.
        qr_id: String,
        /// The two digits typed.
        matching_code: String,
    },
    /// Decline a scanned QR code.
    Decline {
        /// The QR code.
        qr_id: String,
    },
    /// Unlink devices.
    Unlink(UnlinkTarget),
}

/// An action waiting while the holder re-authenticates: it runs only on the re-authentication
/// that names its nonce (the form that asked for it), within [`PENDING_FOR`]; any other
/// re-authentication, or a later one, drops it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The action.
    pub action: Action,
    /// Names this wait in the re-authentication page's form.
    pub nonce: String,
    created: Instant,
}

/// How long an action waits for its re-authentication.
pub const PENDING_FOR: Duration = Duration::from_secs(120);

impl Pending {
    /// `action`, waiting from now.
    pub fn new(action: Action) -> Self {
        Self {
            action,
            nonce: random_token(),
            created: Instant::now(),
        }
    }

    /// The action, if `nonce` names this wait and it has not waited too long.
    pub fn claim(self, nonce: &str) -> Option<Action> {
        let named = !nonce.is_empty() && bool::from(self.nonce.as_bytes().ct_eq(nonce.as_bytes()));
        (named && self.created.elapsed() <= PENDING_FOR).then_some(self.action)
    }
}

/// One visitor's state.
#[derive(Debug, Clone)]
pub struct Session {
    /// The CSRF token every form carries.
    pub csrf: String,
    /// The page's language.
    pub language: Language,
    /// The holder, once signed in.
    pub user: Option<SignedIn>,
    /// A message for the next page.
    pub flash: Option<Flash>,
    /// An action waiting for re-authentication.
    pub pending: Option<Pending>,
    /// The QR images issued in this session, newest last (at most [`QR_IMAGES_KEPT`]).
    pub qr_images: Vec<(String, String)>,
    last_seen: Instant,
}

/// QR images kept per session.
pub const QR_IMAGES_KEPT: usize = 3;

impl Session {
    fn new(language: Language) -> Self {
        Self {
            csrf: random_token(),
            language,
            user: None,
            flash: None,
            pending: None,
            qr_images: Vec::new(),
            last_seen: Instant::now(),
        }
    }

    /// Whether `candidate` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, candidate: &str) -> bool {
        !candidate.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(candidate.as_bytes()))
    }

    /// The image of QR code `qr_id`, if this session issued it.
    pub fn qr_image(&self, qr_id: &str) -> Option<&str> {
        self.qr_images
            .iter()
            .find(|(id, _)| id == qr_id)
            .map(|(_, image)| image.as_str())
    }

    /// Remembers the image of a QR code just issued.
    pub fn keep_qr_image(&mut self, qr_id: String, image: String) {
        self.qr_images.push((qr_id, image));
        let excess = self.qr_images.len().saturating_sub(QR_IMAGES_KEPT);
        self.qr_images.drain(..excess);
    }
}

/// 32 random bytes, URL-safe base64.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The operating system's generator does not fail on the platforms we run on; if it ever
    // did, a visible panic beats a predictable session id.
    #[allow(clippy::expect_used, reason = "no randomness, no safe session")]
    getrandom::fill(&mut bytes).expect("the operating system's random generator");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// All sessions, bounded.
#[derive(Debug, Clone)]
pub struct SessionStore {
    inner: Arc<Mutex<HashMap<SessionId, Session>>>,
    capacity: usize,
    idle: Duration,
}

impl SessionStore {
    /// A store of at most `capacity` sessions, each ending after `idle` unused.
    pub fn new(capacity: usize, idle: Duration) -> Self {
        Self {
            inner: Arc::default(),
            capacity,
            idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Session>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The id of the live session with this cookie value, marked as seen now.
    pub fn touch(&self, cookie: &str) -> Option<SessionId> {
        let id = SessionId(cookie.to_owned());
        let mut sessions = self.lock();
        let session = sessions.get_mut(&id)?;
        if session.last_seen.elapsed() > self.idle {
            sessions.remove(&id);
            return None;
        }
        session.last_seen = Instant::now();
        Some(id)
    }

    /// A new, anonymous session in `language`; its id.
    pub fn create(&self, language: Language) -> SessionId {
        self.insert(Session::new(language))
    }

    fn insert(&self, session: Session) -> SessionId {
        let id = SessionId(random_token());
        let mut sessions = self.lock();
        if sessions.len() >= self.capacity {
            sessions.retain(|_, s| s.last_seen.elapsed() <= self.idle);
        }
        if sessions.len() >= self.capacity
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| (s.user.is_some(), s.last_seen))
                .map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
        id
    }

    /// A snapshot of session `id` (None once it ended).
    pub fn get(&self, id: &SessionId) -> Option<Session> {
        self.lock().get(id).cloned()
    }

    /// Changes session `id` (nothing if it ended); returns what `change` returned.
    pub fn update<T>(&self, id: &SessionId, change: impl FnOnce(&mut Session) -> T) -> Option<T> {
        self.lock().get_mut(id).map(change)
    }

    /// Replaces session `id` by a new one with a new id and CSRF token, carrying over the
    /// language, the pending action, the flash and the QR images; `change` sets the rest.
    /// Returns the new id, for the cookie.
    pub fn renew(&self, id: &SessionId, change: impl FnOnce(&mut Session)) -> SessionId {
        let old = self.lock().remove(id);
        let mut session = Session::new(old.as_ref().map_or(Language::En, |s| s.language));
        if let Some(old) = old {
            session.pending = old.pending;
            session.flash = old.flash;
            session.qr_images = old.qr_images;
            session.user = old.user;
        }
        change(&mut session);
        self.insert(session)
    }

    /// Ends session `id`.
    pub fn end(&self, id: &SessionId) {
        self.lock().remove(id);
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SessionId {
    /// The cookie value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn a_full_store_drops_the_least_recently_seen_session() {
        let store = SessionStore::new(2, Duration::from_secs(60));
        let first = store.create(Language::En);
        let second = store.create(Language::Fr);
        store.touch(first.as_str()).unwrap();
        let third = store.create(Language::De);

        assert_eq!(store.len(), 2);
        assert!(store.get(&second).is_none(), "the least recently seen goes");
        assert!(store.get(&first).is_some() && store.get(&third).is_some());
    }

    #[test]
    fn a_full_store_drops_anonymous_sessions_before_signed_in_ones() {
        let store = SessionStore::new(2, Duration::from_secs(60));
        let holder = store.create(Language::En);
        store.update(&holder, |s| {
            s.user = SignedIn::from_token(&format!(
                "h.{}.s",
                URL_SAFE_NO_PAD.encode(br#"{"sub":"anna","auth_time":1,"exp":2}"#)
            ));
        });
        for _ in 0..100 {
            store.create(Language::En);
        }
        assert!(store.get(&holder).is_some(), "the holder's session stays");
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn an_idle_session_ends() {
        let store = SessionStore::new(10, Duration::from_millis(1));
        let id = store.create(Language::En);
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.touch(id.as_str()).is_none());
    }

    #[test]
    fn renewing_changes_the_id_and_the_csrf_token_and_keeps_the_language() {
        let store = SessionStore::new(10, Duration::from_secs(60));
        let id = store.create(Language::De);
        let before = store.get(&id).unwrap();
        let renewed = store.renew(&id, |_| {});
        let after = store.get(&renewed).unwrap();

        assert_ne!(id, renewed);
        assert!(store.get(&id).is_none(), "the old id no longer opens it");
        assert_ne!(before.csrf, after.csrf);
        assert_eq!(after.language, Language::De);
    }

    #[test]
    fn the_csrf_token_must_match_exactly() {
        let store = SessionStore::new(10, Duration::from_secs(60));
        let session = store.get(&store.create(Language::En)).unwrap();
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&session.csrf[1..]));
    }

    #[test]
    fn a_token_s_claims_name_the_holder() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"anna","auth_time":100,"exp":700}"#);
        let holder = SignedIn::from_token(&format!("h.{payload}.s")).unwrap();
        assert_eq!(holder.account_id, "anna");
        assert_eq!((holder.auth_time, holder.expires_at), (100, 700));
        assert!(SignedIn::from_token("not a token").is_none());
        assert!(SignedIn::from_token("a.b.c").is_none());
    }

    #[test]
    fn a_pending_action_runs_only_for_its_own_nonce() {
        let pending = Pending::new(Action::Unlink(UnlinkTarget::All));
        let nonce = pending.nonce.clone();
        assert_eq!(pending.clone().claim(""), None);
        assert_eq!(pending.clone().claim("another"), None);
        assert_eq!(
            pending.claim(&nonce),
            Some(Action::Unlink(UnlinkTarget::All))
        );
    }

    #[test]
    fn only_the_newest_qr_images_are_kept() {
        let mut session = Session::new(Language::En);
        for n in 0..5 {
            session.keep_qr_image(format!("qr{n}"), format!("image{n}"));
        }
        assert_eq!(session.qr_images.len(), QR_IMAGES_KEPT);
        assert!(session.qr_image("qr0").is_none());
        assert_eq!(session.qr_image("qr4"), Some("image4"));
    }
}
