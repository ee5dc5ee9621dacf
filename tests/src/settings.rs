//! The services' settings in tests: loopback port 0, development keys, short timeouts, and the
//! test's own database and stream.

use std::time::Duration;

use command_service::Settings;
use command_service::config::Redacted;
use service_kit::bus_signing::BusKeys;
use testkit::{TestStream, nats_url};

use crate::keys::keys;

/// The settings a test app starts with; tests may change them before `spawn_app_with`.
pub fn test_settings(database_url: String) -> Settings {
    let keys = keys();
    Settings {
        grpc_addr: "127.0.0.1:0".parse().expect("a socket address"),
        metrics_addr: None,
        tls: None,
        database_url: Redacted(database_url),
        db_max_connections: 10,
        idp_public_keys_file: keys.idp_public.clone(),
        idp_audience: linkctl::dev::PORTAL_AUDIENCE.into(),
        idp_issuer: linkctl::dev::PORTAL_ISSUER.into(),
        idp_max_token_lifetime: Duration::from_secs(3600),
        luxtrust_public_keys_file: keys.luxtrust_public.clone(),
        luxtrust_audience: linkctl::dev::LUXTRUST_AUDIENCE.into(),
        luxtrust_issuer: linkctl::dev::LUXTRUST_ISSUER.into(),
        luxtrust_max_assertion_age: Duration::from_secs(600),
        kek_file: keys.kek_file.clone(),
        secret_code_pepper: Redacted(b"e2e-pepper-e2e-pepper-e2e-pepper".to_vec()),
        qr_ttl: Duration::from_secs(120),
        link_attempt_ttl: Duration::from_secs(600),
        reauth_max_age: Duration::from_secs(300),
        grpc_limits: service_kit::grpc::Limits::default(),
        qr_confirmation: Some(Duration::from_secs(120)),
        trusted_proxy_hops: 0,
        max_qr_watches: 200,
        hash_capacity: 32,
        lifecycle: command_service::lifecycle::LifecycleSettings {
            after: Duration::from_secs(180 * 24 * 3600),
            warning: Duration::from_secs(14 * 24 * 3600),
            every: Duration::from_secs(3600),
        },
        unclaimed_attempt_retention: Duration::from_secs(30 * 24 * 3600),
        replay_retention: Duration::from_secs(24 * 3600),
        stream_limits: command_service::relay::StreamLimits {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 1 << 30,
        },
        stream_replicas: 1,
        max_devices_per_account: 100,
        rate_limits: generous_rate_limits(),
        nats_url: nats_url(),
        stream: "UNUSED".into(),
        subject_prefix: "unused".into(),
        relay_enabled: false,
        // The relay signs with the test key (spawn_system turns the relay on).
        bus_signing_key: BusKeys::File(keys.bus_private.clone()),
        nats_auth: service_kit::nats::NatsAuth::default(),
    }
}

/// The projection service's settings for a test.
pub fn projection_settings(
    database_url: String,
    stream: &TestStream,
) -> projection_service::Settings {
    let keys = keys();
    projection_service::Settings {
        grpc_addr: "127.0.0.1:0".parse().expect("a socket address"),
        metrics_addr: None,
        tls: None,
        database_url: Redacted(database_url),
        nats_url: stream.nats_url.clone(),
        stream: stream.name.clone(),
        subject_prefix: stream.prefix.clone(),
        consumer_prefix: "linkd-test".into(),
        idp_public_keys_file: keys.idp_public.clone(),
        idp_audience: linkctl::dev::PORTAL_AUDIENCE.into(),
        idp_issuer: linkctl::dev::PORTAL_ISSUER.into(),
        idp_max_token_lifetime: Duration::from_secs(3600),
        reauth_max_age: Duration::from_secs(300),
        grpc_limits: service_kit::grpc::Limits::default(),
        query_rate_limits: projection_service::limits::QueryLimits::parse(
            "list_devices.account=1000000/1,get_device.account=1000000/1,audit.caller=1000000/1",
        )
        .expect("valid query limits"),
        email: projection_service::email::EmailSettings {
            smtp_host: "127.0.0.1".into(),
            smtp_port: 1,
            smtp_tls: projection_service::email::SmtpTls::None,
            smtp_credentials: None,
            sender: "usermanagement@security.public.lu".into(),
            default_language: "en".into(),
            retry_base: Duration::from_millis(50),
            retry_max_delay: Duration::from_millis(200),
            give_up_after: Duration::from_secs(2),
            max_attempts: Some(3),
            max_event_age: Duration::from_secs(24 * 3600),
            crash_after_send: None,
        },
        email_enabled: false,
        retention: projection_service::retention::Retention::default(),
        // Tests that publish by hand publish unsigned; a system whose relay signs checks the
        // signatures (spawn_system).
        bus_verify_keys: BusKeys::Unsigned,
        nats_auth: service_kit::nats::NatsAuth::default(),
        event_store_url: None,
        kek_file: None,
    }
}

/// The public half of the relay's test signing key, for a read side that checks signatures.
pub fn bus_verify_keys() -> BusKeys {
    BusKeys::File(keys().bus_public.clone())
}

/// The relay's test signing key, for tests that publish a message as the relay would.
pub fn bus_signer() -> service_kit::bus_signing::BusSigner {
    service_kit::bus_signing::BusSigner::from_pem_file(&keys().bus_private)
        .expect("the test bus key")
}

/// Rate limits no ordinary test reaches (tests of the limits set their own).
pub fn generous_rate_limits() -> command_service::limits::Policy {
    rate_limits_with("")
}

/// The rate-limit policy of [`generous_rate_limits`] with `overrides` (`rule=burst/seconds,…`).
pub fn rate_limits_with(overrides: &str) -> command_service::limits::Policy {
    let mut rules: Vec<String> = command_service::limits::Rule::ALL
        .iter()
        .map(|rule| format!("{}=1000000/1", rule.name()))
        .collect();
    rules.push(overrides.to_owned());
    command_service::limits::Policy::parse(&rules.join(",")).expect("a valid policy")
}
