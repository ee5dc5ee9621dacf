//! portal-web's own HTTP rules, without services or a browser: the cookie's flags, the
//! security headers, CSRF refusals, and the sign-in switched off by default. (The pages
//! against real services, in a real browser, are in tests/browser/.)
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use portal_web::backend::Backend;
use portal_web::{App, Settings};
use tower::ServiceExt as _;

fn app(pairs: &[(&str, &str)]) -> App {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let settings = Settings::from_lookup(move |key| {
        pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    })
    .unwrap();
    // Nothing listens there: these tests never reach a service.
    let backend = Backend::connect_lazy(
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        &service_kit::tls::ClientTls::default(),
    )
    .unwrap();
    App::new(settings, backend)
}

async fn send(app: &App, request: Request<Body>) -> Response<Body> {
    app.router().oneshot(request).await.unwrap()
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn header_of(response: &Response<Body>, name: header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The cookie pair (`name=value`) and the CSRF token of a first visit to the sign-in page.
async fn first_visit(app: &App) -> (String, String) {
    let response = send(app, Request::get("/sign-in").body(Body::empty()).unwrap()).await;
    let cookie = header_of(&response, header::SET_COOKIE);
    let pair = cookie.split(';').next().unwrap().to_owned();
    let page = text(response).await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    (pair, csrf)
}

fn get(path: &str, cookie: &str) -> Request<Body> {
    Request::get(path)
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

fn post(path: &str, cookie: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::COOKIE, cookie)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_same_site_strict() {
    let app = app(&[]);
    let response = send(&app, Request::get("/sign-in").body(Body::empty()).unwrap()).await;
    let cookie = header_of(&response, header::SET_COOKIE);
    assert!(cookie.starts_with("linkd_session="), "{cookie}");
    assert!(cookie.contains("; HttpOnly"), "{cookie}");
    assert!(cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
}

#[tokio::test]
async fn over_tls_the_cookie_is_secure_and_host_only() {
    let app = app(&[("LINKD_WEB_PUBLIC_URL", "https://portal.example.lu")]);
    let response = send(&app, Request::get("/sign-in").body(Body::empty()).unwrap()).await;
    let cookie = header_of(&response, header::SET_COOKIE);
    assert!(cookie.starts_with("__Host-linkd_session="), "{cookie}");
    assert!(
        cookie.contains("; Secure") && cookie.contains("; Path=/"),
        "{cookie}"
    );
}

#[tokio::test]
async fn every_answer_carries_a_strict_content_security_policy() {
    let app = app(&[]);
    for path in ["/sign-in", "/static/app.js", "/no-such-page"] {
        let response = send(&app, Request::get(path).body(Body::empty()).unwrap()).await;
        let csp = header_of(&response, header::CONTENT_SECURITY_POLICY);
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(
            header_of(&response, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff"
        );
    }
}

#[tokio::test]
async fn a_post_without_the_session_s_csrf_token_is_refused() {
    let app = app(&[]);
    let (cookie, csrf) = first_visit(&app).await;

    let missing = send(&app, post("/language", &cookie, "language=fr")).await;
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let wrong = send(&app, post("/language", &cookie, "language=fr&csrf=guess")).await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let other_session = first_visit(&app).await.0;
    let stolen = send(
        &app,
        post(
            "/language",
            &other_session,
            &format!("language=fr&csrf={csrf}"),
        ),
    )
    .await;
    assert_eq!(
        stolen.status(),
        StatusCode::FORBIDDEN,
        "a token is its session's"
    );

    let mut cross_site = post("/language", &cookie, &format!("language=fr&csrf={csrf}"));
    cross_site
        .headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(send(&app, cross_site).await.status(), StatusCode::FORBIDDEN);

    let right = send(
        &app,
        post(
            "/language",
            &cookie,
            &format!("language=fr&csrf={csrf}&then=/sign-in"),
        ),
    )
    .await;
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    let page = send(&app, get("/sign-in", &cookie)).await;
    assert!(text(page).await.contains("<html lang=\"fr\">"));
}

#[tokio::test]
async fn the_language_switch_never_redirects_off_site() {
    let app = app(&[]);
    let (cookie, csrf) = first_visit(&app).await;
    let response = send(
        &app,
        post(
            "/language",
            &cookie,
            &format!("language=de&csrf={csrf}&then=//evil.example/"),
        ),
    )
    .await;
    assert_eq!(header_of(&response, header::LOCATION), "/");
}

#[tokio::test]
async fn without_development_keys_there_is_no_sign_in() {
    let app = app(&[]);
    let (cookie, csrf) = first_visit(&app).await;
    let page = send(&app, get("/sign-in", &cookie)).await;
    let page = text(page).await;
    assert!(page.contains("sign in through the portal"), "{page}");
    assert!(!page.contains("id=\"sign-in-form\""));
    let refused = send(
        &app,
        post("/sign-in", &cookie, &format!("csrf={csrf}&account_id=anna")),
    )
    .await;
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_for_the_holder_send_a_stranger_to_the_sign_in() {
    let app = app(&[]);
    for path in ["/devices", "/history", "/link"] {
        let response = send(&app, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert!(
            header_of(&response, header::LOCATION).starts_with("/sign-in?then="),
            "{path}"
        );
    }
    let junk = send(
        &app,
        Request::get("/link/not-a-qr-id")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(junk.status(), StatusCode::NOT_FOUND);
}
