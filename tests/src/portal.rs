//! portal-web in this process, on port 0, in front of a test's services: the browser tests'
//! system under test ([`spawn_portal_web`]).

use portal_web::backend::Backend;
use portal_web::session::SignedIn;

use crate::TestApp;

/// A running portal-web.
#[derive(Debug)]
pub struct PortalWeb {
    /// Its address, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The app (its sessions, for tests that age a sign-in).
    pub app: portal_web::App,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for PortalWeb {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Starts portal-web with development sign-in in front of `app` (started with
/// `spawn_system…`: the page reads the projection service too).
pub async fn spawn_portal_web(app: &TestApp) -> PortalWeb {
    let read = app.read.as_ref().expect("a test started with spawn_system");
    let mut settings = portal_web::Settings::from_lookup(|_| None).expect("default settings");
    settings.dev_signers = Some(app.keys.clone());
    settings.reauth_max_age = app.settings.reauth_max_age;
    let backend = Backend::from_channels(app.channel.clone(), read.channel.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding portal-web");
    let addr = listener.local_addr().expect("portal-web's address");
    let web = portal_web::App::new(settings, backend);
    let server = tokio::spawn(portal_web::serve(
        web.clone(),
        listener,
        std::future::pending(),
    ));
    PortalWeb {
        url: format!("http://{addr}"),
        app: web,
        server,
    }
}

impl PortalWeb {
    /// `path` on this portal.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Makes the sign-in of the session behind `cookie` (the value of the browser's
    /// `linkd_session` cookie) `age_seconds` old, as if the holder had signed in that long ago:
    /// its token is replaced by one with that `auth_time`.
    pub fn age_sign_in(&self, app: &TestApp, cookie: &str, age_seconds: i64) {
        let id = self
            .app
            .sessions()
            .touch(cookie)
            .expect("a live portal-web session");
        let session = self.app.sessions().get(&id).expect("the session");
        let account = session.user.expect("a signed-in session").account_id;
        let token = app
            .keys
            .citizen_token(&account, age_seconds)
            .expect("a citizen token");
        let user = SignedIn::from_token(&token).expect("a token portal-web reads");
        self.app
            .sessions()
            .update(&id, |s| s.user = Some(user))
            .expect("the session is still there");
    }
}
