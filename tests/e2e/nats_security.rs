//! NATS as deploy/README.md says to run it (issue 16, fourth point): TLS, and a user per
//! service with exactly the permissions the README lists. A link flow goes through; the read
//! side's user cannot publish on the events' subjects.

use std::time::Duration;

use async_nats::jetstream;
use e2e::{OwnNats, TestStream, spawn_system_on_stream_and};

const WITHIN: Duration = Duration::from_secs(30);

/// A nats-server configuration: TLS with the tests' development certificate, and linkd's
/// account with the relay's and the projection service's users, permitted as deploy/README.md
/// says (`<stream>`, `<prefix>` filled in).
fn configuration(stream: &TestStream, consumer_prefix: &str) -> String {
    let files = e2e::tls::files();
    let (name, prefix) = (&stream.name, &stream.prefix);
    format!(
        r#"
tls {{
  cert_file: "{cert}"
  key_file: "{key}"
}}
accounts {{
  LINKD {{
    jetstream: enabled
    users: [
      {{
        user: relay, password: relay-password
        permissions: {{
          publish: ["{prefix}.>", "$JS.API.STREAM.*.{name}", "$JS.API.STREAM.MSG.GET.{name}", "$JS.API.INFO"]
          subscribe: ["_INBOX.>"]
        }}
      }}
      {{
        user: projection, password: projection-password
        permissions: {{
          publish: ["$JS.API.CONSUMER.*.{name}.>", "$JS.API.CONSUMER.MSG.NEXT.{name}.{consumer_prefix}-read-models", "$JS.API.STREAM.INFO.{name}", "$JS.ACK.{name}.>"]
          subscribe: ["_INBOX.>"]
        }}
      }}
    ]
  }}
}}
"#,
        cert = files.server_cert.display(),
        key = files.server_key.display(),
    )
}

/// How many messages the stream `name` holds.
async fn messages(context: &jetstream::Context, name: &str) -> u64 {
    context
        .get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

fn password_file(password: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("linkd-nats-pw-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

#[tokio::test]
async fn both_services_link_over_tls_with_the_documented_permissions_and_the_read_side_cannot_publish()
 {
    // Arrange: the server's configuration names the test's stream and prefix; each service
    // connects as its own user, over TLS, trusting the tests' CA.
    let mut stream = TestStream::new(String::new());
    let consumer_prefix = "linkd-perm";
    let config = std::env::temp_dir().join(format!("linkd-nats-{}.conf", uuid::Uuid::new_v4()));
    std::fs::write(&config, configuration(&stream, consumer_prefix)).unwrap();
    let nats = OwnNats::start_with(&["-c", config.to_str().unwrap()]).await;
    stream.nats_url = nats.url.clone();
    let (relay_password, projection_password) = (
        password_file("relay-password"),
        password_file("projection-password"),
    );
    let ca = e2e::tls::files().ca.clone();
    let mut app = spawn_system_on_stream_and(stream, |settings| {
        settings.nats_auth.user = Some(("relay".into(), relay_password.clone()));
        settings.nats_auth.tls_ca_file = Some(ca.clone());
    })
    .await;
    app.restart_read_side(|settings| {
        settings.nats_auth.user = Some(("projection".into(), projection_password.clone()));
        settings.consumer_prefix = consumer_prefix.into();
    })
    .await;

    // Act: a link flow.
    app.register("anna").await;
    app.link_by_qr("anna").await;

    // Assert: it reached every read model through the permitted subjects only.
    app.wait_until_every_read_model_is_exact(WITHIN).await;

    // Act: the projection service's user publishes a (forged) event on the events' subjects.
    let stream = app.stream.as_ref().unwrap();
    let auth = service_kit::nats::NatsAuth {
        user: Some(("projection".into(), projection_password.clone())),
        tls_ca_file: Some(ca.clone()),
        ..Default::default()
    };
    let client = service_kit::nats::connect(&nats.url, "linkd-test-projection", &auth)
        .await
        .unwrap();
    let context = jetstream::new(client);
    let before = messages(&context, &stream.name).await;
    let published = tokio::time::timeout(Duration::from_secs(10), async {
        context
            .publish(
                format!("{}.account.AccountRegistered", stream.prefix),
                "forged".into(),
            )
            .await?
            .await
    })
    .await;

    // Assert: refused (no acknowledgement), and the stream holds nothing more.
    assert!(!matches!(published, Ok(Ok(_))), "{published:?}");
    let after = messages(&context, &stream.name).await;
    assert_eq!(after, before);

    // A client that does not trust the tests' CA does not get through.
    let plain = service_kit::nats::connect(
        &nats.url,
        "linkd-test-plain",
        &service_kit::nats::NatsAuth {
            user: Some(("projection".into(), projection_password.clone())),
            ..Default::default()
        },
    )
    .await;
    assert!(plain.is_err());
    for file in [&config, &relay_password, &projection_password] {
        let _ = std::fs::remove_file(file);
    }
}
