//! A seed list reaches NATS through any of its servers, whichever is down.
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

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
            let client = service_kit::nats::connect(&seeds, "linkd-test")
                .await
                .unwrap_or_else(|e| panic!("{seeds}: {e:#}"));
            client.flush().await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_seed_list_with_no_server_up_is_an_error_that_names_it() {
    let seeds = format!("{},{}", closed_port(), closed_port());
    let error = service_kit::nats::connect(&seeds, "linkd-test")
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains(&seeds), "{error:#}");
}
