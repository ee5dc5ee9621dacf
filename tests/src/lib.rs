//! The harness behind the end-to-end tests (`e2e/`): linkd's services in this process on port 0
//! ([`spawn_app`]: the command service; [`spawn_system`]: both services and the relay between
//! them), typed gRPC clients on [`TestApp`], development keys for the identity provider and
//! LuxTrust, the flows most tests start from ([`TestApp::link_by_qr`] …), and a real SMTP server
//! for the email tests ([`mail`]). The browser tests (`browser/`, of portal-web) drive a real
//! headless chromium through [`browser::Browser`].
//!
//! Scratch databases, streams and nats-servers come from `testkit` (re-exported here, so that
//! scenarios need only `e2e::…`); every test gets its own, removed when its [`TestApp`] drops.
//! White-box tests of one service belong in that service's `tests/`, not here.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test harness: a broken environment should fail the test loudly"
)]

mod app;
pub mod browser;
pub mod bus;
mod flows;
mod inspect;
mod keys;
pub mod mail;
pub mod metrics;
pub mod portal;
mod servers;
mod settings;
pub mod tls;

pub use app::{
    TestApp, spawn_app, spawn_app_with, spawn_system, spawn_system_on, spawn_system_on_and,
    spawn_system_on_stream_and, spawn_system_on_with_mail_and, spawn_system_with,
    spawn_system_with_mail, spawn_system_with_mail_and,
};
pub use flows::{CODE, Clients, Linked};
pub use keys::bearer;
pub use servers::{
    CommandServer, ReadSide, run_command_service, spawn_read_side, spawn_read_side_with,
};
pub use settings::{
    bus_signer, bus_verify_keys, generous_rate_limits, projection_settings, rate_limits_with,
    test_settings,
};
pub use testkit::{
    OwnNats, OwnNatsCluster, TestDatabase, TestStream, admin_url, eventually, nats_server_binary,
    nats_url,
};

/// Fails the test unless `outcome` is refused with `INVALID_ARGUMENT` (`case` names it).
pub fn assert_invalid<T: std::fmt::Debug>(case: &str, outcome: Result<T, tonic::Status>) {
    match outcome {
        Err(status) => assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{case}: {status:?}"
        ),
        Ok(reply) => panic!("{case}: accepted: {reply:?}"),
    }
}
