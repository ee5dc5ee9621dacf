//! Publishing on a test's stream by hand, as the relay would (signed with the test's bus key)
//! or as a stranger would.

use async_nats::jetstream;
use service_kit::bus_signing::{BusSigner, KEY_ID_HEADER, SIGNATURE_HEADER, Signed};

/// One message as the relay publishes it: its headers and body.
#[derive(Debug, Clone)]
pub struct BusMessage {
    /// The subject.
    pub subject: String,
    /// `Nats-Msg-Id`.
    pub message_id: String,
    /// `Linkd-Global-Position`.
    pub global_position: String,
    /// `Linkd-Tx-Id`.
    pub tx_id: String,
    /// The body.
    pub payload: Vec<u8>,
}

impl BusMessage {
    /// Publishes it, signed by `signer` if any, and waits for JetStream's acknowledgement.
    pub async fn publish(&self, context: &jetstream::Context, signer: Option<&BusSigner>) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", self.message_id.as_str());
        headers.insert("Linkd-Global-Position", self.global_position.as_str());
        headers.insert("Linkd-Tx-Id", self.tx_id.as_str());
        if let Some(signer) = signer {
            let (key_id, signature) = signer.sign(&Signed {
                subject: &self.subject,
                message_id: &self.message_id,
                global_position: &self.global_position,
                tx_id: &self.tx_id,
                payload: &self.payload,
            });
            headers.insert(KEY_ID_HEADER, key_id);
            headers.insert(SIGNATURE_HEADER, signature.as_str());
        }
        context
            .publish_with_headers(self.subject.clone(), headers, self.payload.clone().into())
            .await
            .expect("publishing")
            .await
            .expect("JetStream's acknowledgement");
    }

    /// Publishes it signed with the relay's test key.
    pub async fn publish_as_relay(&self, context: &jetstream::Context) {
        self.publish(context, Some(&crate::bus_signer())).await;
    }
}
