//! The HTTP plumbing: routes, the session cookie, the CSRF-checked form, security headers, and
//! the static files.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION, REFERRER_POLICY,
    SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::App;
use crate::i18n::{Language, Texts};
use crate::pages;
use crate::session::{Session, SessionId, SignedIn};

/// The page's policy: scripts and styles only from this origin (no inline code), images from
/// here or `data:` (the QR code), forms only to here, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Form bodies larger than this are refused.
const MAX_FORM_BYTES: usize = 16 * 1024;

pub(crate) fn router(app: App) -> Router {
    let pages = Router::new()
        .route("/", get(pages::home))
        .route(
            "/sign-in",
            get(pages::sign_in::form).post(pages::sign_in::submit),
        )
        .route("/sign-out", post(pages::sign_in::sign_out))
        .route(
            "/reauth",
            get(pages::sign_in::reauth_form).post(pages::sign_in::reauth),
        )
        .route("/language", post(pages::change_language))
        .route("/link", get(pages::link::landing).post(pages::link::issue))
        .route("/link/{qr_id}", get(pages::link::page))
        .route("/link/{qr_id}/events", get(pages::link::events))
        .route("/link/{qr_id}/confirm", post(pages::link::confirm))
        .route("/link/{qr_id}/decline", post(pages::link::decline))
        .route("/devices", get(pages::devices::list))
        .route("/devices/unlink", post(pages::devices::unlink))
        .route("/history", get(pages::history::list))
        .fallback(pages::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), with_session));
    Router::new()
        .route("/static/app.css", get(stylesheet))
        .route("/static/app.js", get(script))
        .merge(pages)
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("../static/app.css"))
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../static/app.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The session cookie's name: `__Host-` when served over TLS (the browser then insists on
/// `Secure`, `Path=/` and no `Domain`).
fn cookie_name(app: &App) -> &'static str {
    if app.settings.secure() {
        "__Host-linkd_session"
    } else {
        "linkd_session"
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Sets the session cookie on `response`.
pub(crate) fn set_session_cookie(app: &App, response: &mut Response, id: &SessionId) {
    let secure = if app.settings.secure() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict{secure}",
        cookie_name(app),
        id.as_str()
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(SET_COOKIE, value);
    }
}

/// The language a new visitor's browser prefers among ours (English if none).
fn preferred_language(headers: &HeaderMap) -> Language {
    headers
        .get("accept-language")
        .and_then(|value| value.to_str().ok())
        .into_iter()
        .flat_map(|value| value.split(','))
        .filter_map(|item| {
            let tag = item.split(';').next()?.trim();
            Language::from_code(&tag.get(..2)?.to_ascii_lowercase())
        })
        .next()
        .unwrap_or(Language::En)
}

/// Gives every request to a page a session: the cookie's, or a new one (cookie set on the
/// answer unless the handler set one itself).
async fn with_session(State(app): State<App>, mut request: Request, next: Next) -> Response {
    let known = cookie_value(request.headers(), cookie_name(&app))
        .and_then(|cookie| app.sessions.touch(cookie));
    let (id, created) = match known {
        Some(id) => (id, false),
        None => (
            app.sessions.create(preferred_language(request.headers())),
            true,
        ),
    };
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).await;
    if created && !response.headers().contains_key(SET_COOKIE) {
        set_session_cookie(&app, &mut response, &id);
    }
    response
}

/// A request's visitor: the app, the session's id and a snapshot of it, and the browser's
/// address.
#[derive(Debug, Clone)]
pub(crate) struct Visit {
    pub(crate) app: App,
    pub(crate) id: SessionId,
    pub(crate) session: Session,
    pub(crate) client_address: String,
    /// The page's path and query (where the language switch comes back to).
    pub(crate) path: String,
}

impl Visit {
    /// The session's words.
    pub(crate) fn texts(&self) -> &'static Texts {
        self.session.language.texts()
    }

    /// The holder, if signed in with a token that has not expired.
    pub(crate) fn user(&self) -> Option<&SignedIn> {
        self.session
            .user
            .as_ref()
            .filter(|user| user.expires_at > chrono::Utc::now().timestamp() + 5)
    }

    /// Whether the holder's sign-in is recent enough for the calls that need one (with a
    /// 15-second margin, so the services do not see it expire on the way).
    pub(crate) fn fresh(&self, user: &SignedIn) -> bool {
        let max_age = i64::try_from(self.app.settings.reauth_max_age.as_secs()).unwrap_or(300);
        chrono::Utc::now().timestamp() - user.auth_time <= max_age - 15
    }
}

impl FromRequestParts<App> for Visit {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let id = parts
            .extensions
            .get::<SessionId>()
            .cloned()
            .ok_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())?;
        // Dropped by a full store between the layer and here: start afresh.
        let Some(session) = app.sessions.get(&id) else {
            return Err(redirect("/sign-in"));
        };
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        let client_address = client_address(
            &parts.headers,
            peer.unwrap_or_default(),
            app.settings.trusted_proxy_hops,
        );
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string);
        Ok(Self {
            app: app.clone(),
            id,
            session,
            client_address,
            path,
        })
    }
}

/// The browser's address: the TCP peer, or the entry that the `hops` trusted proxies in front
/// appended to `X-Forwarded-For` (the services' rule, [`service_kit::forwarded`]); the peer if
/// the header does not hold one.
fn client_address(headers: &HeaderMap, peer: String, hops: usize) -> String {
    if hops == 0 {
        return peer;
    }
    let lines = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok());
    service_kit::forwarded::client_address(lines, hops).map_or(peer, |address| address.to_string())
}

/// A posted form whose CSRF token matched the session's; its fields, in order.
#[derive(Debug)]
pub(crate) struct Posted {
    pub(crate) visit: Visit,
    fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of `name` (empty if absent).
    pub(crate) fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }

    /// Every value of `name`.
    pub(crate) fn all(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .collect()
    }
}

impl FromRequest<App> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request<Body>, app: &App) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let visit = Visit::from_request_parts(&mut parts, app).await?;
        // A request another site's page started is refused before its body is read.
        if parts
            .headers
            .get("sec-fetch-site")
            .is_some_and(|value| value.as_bytes() == b"cross-site")
        {
            return Err(pages::forbidden(&visit));
        }
        // At most MAX_FORM_BYTES are read (413 beyond).
        let body = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE.into_response())?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let token = fields
            .iter()
            .find(|(key, _)| key == "csrf")
            .map_or("", |(_, value)| value.as_str());
        if !visit.session.csrf_matches(token) {
            return Err(pages::forbidden(&visit));
        }
        Ok(Self { visit, fields })
    }
}

/// A `303 See Other` to `location` (a path on this site).
pub(crate) fn redirect(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// `then` if it is a path on this site (`/…` but not `//…`), else `/`: never an open redirect.
pub(crate) fn local_path(then: &str) -> &str {
    // Browsers drop tabs and newlines from URLs and read `\` as `/`: `/<tab>/evil` would
    // become `//evil`, another site. No control character and no backslash, anywhere.
    let local = then.starts_with('/')
        && !then.starts_with("//")
        && !then.chars().any(|c| c.is_control() || c == '\\')
        && then.len() <= 512;
    if local { then } else { "/" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed() {
        assert_eq!(local_path("/devices"), "/devices");
        assert_eq!(local_path("/history?page_token=x"), "/history?page_token=x");
        for hostile in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "/\t/evil.example",
            "/\n/evil.example",
            "/a\\b",
            "",
            "devices",
        ] {
            assert_eq!(local_path(hostile), "/", "{hostile}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_static("a=1; linkd_session=abc; b=2"),
        );
        assert_eq!(cookie_value(&headers, "linkd_session"), Some("abc"));
        assert_eq!(cookie_value(&headers, "missing"), None);
    }

    #[test]
    fn a_new_visitor_gets_the_first_language_we_speak() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "accept-language",
            HeaderValue::from_static("lb-LU, fr-LU;q=0.9, de;q=0.8"),
        );
        assert_eq!(preferred_language(&headers), Language::Fr);
        assert_eq!(preferred_language(&HeaderMap::new()), Language::En);
    }

    #[test]
    fn forwarded_addresses_count_only_trusted_hops() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.7, 203.0.113.9"),
        );
        let peer = "10.0.0.1".to_owned();
        assert_eq!(client_address(&headers, peer.clone(), 0), "10.0.0.1");
        assert_eq!(client_address(&headers, peer.clone(), 1), "203.0.113.9");
        assert_eq!(client_address(&headers, peer.clone(), 2), "198.51.100.7");
        assert_eq!(client_address(&headers, peer, 3), "10.0.0.1");
    }
}
