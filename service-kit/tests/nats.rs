//! A seed list reaches NATS through any of its servers, whichever is down.
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

use service_kit::nats::NatsAuth;

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("nats://127.0.0.1:{port}")
}

#[tokio::test]
async fn a_service_whose_first_seed_is_down_connects_to_another() {
    let live = testkit::nats_url();
    // async-nats tries the seeds in random order: both orders, a few times each.
    for _ in 0..3 {
        for seeds in [
            format!("{},{live}", closed_port()),
            format!("{live} , {}", closed_port()),
        ] {
            let client = service_kit::nats::connect(&seeds, "linkd-test", &NatsAuth::default())
                .await
                .unwrap_or_else(|e| panic!("{seeds}: {e:#}"));
            client.flush().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_seed_list_with_no_server_up_is_an_error_that_names_it() {
    let seeds = format!("{},{}", closed_port(), closed_port());
    let error = service_kit::nats::connect(&seeds, "linkd-test", &NatsAuth::default())
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains(&seeds), "{error:#}");
}

/// A file of the test's own holding `secret`.
fn secret_file(secret: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("linkd-nats-secret-{}", std::process::id()));
    let path = path.with_extension(format!("{}", rand::random::<u32>()));
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

#[tokio::test]
async fn a_server_that_requires_a_password_admits_only_the_right_one() {
    let nats = testkit::OwnNats::start_with(&["--user", "linkd", "--pass", "s3cret-pw"]).await;
    let right = NatsAuth {
        user: Some(("linkd".into(), secret_file("s3cret-pw"))),
        ..NatsAuth::default()
    };
    let client = service_kit::nats::connect(&nats.url, "linkd-test", &right)
        .await
        .unwrap();
    client.flush().await.unwrap();

    for wrong in [
        NatsAuth::default(),
        NatsAuth {
            user: Some(("linkd".into(), secret_file("guess"))),
            ..NatsAuth::default()
        },
    ] {
        let refused = service_kit::nats::connect(&nats.url, "linkd-test", &wrong).await;
        let error = format!("{:#}", refused.unwrap_err());
        assert!(error.contains(&nats.url), "{error}");
        assert!(
            !error.contains("guess"),
            "the password is never repeated: {error}"
        );
    }
}

#[tokio::test]
async fn a_server_that_requires_a_token_admits_it_from_a_file() {
    let nats = testkit::OwnNats::start_with(&["--auth", "t0ken-value"]).await;
    let auth = NatsAuth {
        token_file: Some(secret_file("t0ken-value")),
        ..NatsAuth::default()
    };
    let client = service_kit::nats::connect(&nats.url, "linkd-test", &auth)
        .await
        .unwrap();
    client.flush().await.unwrap();
    let missing = NatsAuth {
        token_file: Some(std::env::temp_dir().join("linkd-no-such-token-file")),
        ..NatsAuth::default()
    };
    let error = format!(
        "{:#}",
        service_kit::nats::connect(&nats.url, "linkd-test", &missing)
            .await
            .unwrap_err()
    );
    assert!(error.contains("linkd-no-such-token-file"), "{error}");
}
