//! The flows most tests start from, as the portal and the app run them over gRPC: register an
//! account, record a portal login, issue a QR code, and link a device by QR code or LuxTrust.

use proto::v1::device_service_client::DeviceServiceClient;
use proto::v1::portal_service_client::PortalServiceClient;
use proto::v1::{
    AuthenticateWithLuxTrustRequest, ConfirmLinkRequest, ConfirmLinkResponse, IssueLinkQrRequest,
    IssueLinkQrResponse, LinkMethod, LuxTrustProduct, Platform, ProductKind,
    RecordPortalLoginRequest, RegisterAccountRequest, ScanQrRequest, ScanQrResponse,
    SetSecretCodeRequest, StartLinkRequest, StartLinkResponse,
};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::TestApp;
use crate::keys::bearer;

/// A device that completed linking.
#[derive(Debug, Clone)]
pub struct Linked {
    /// Its id.
    pub device_id: String,
    /// Its credential.
    pub credential: String,
    /// The consistency token of `SetSecretCode`.
    pub consistency_token: String,
}

/// The secret code the flows set.
pub const CODE: &str = "482913";

impl TestApp {
    /// Registers `account_id` (email `<account_id>@example.lu`, French) as the portal would.
    pub async fn register(&mut self, account_id: &str) {
        let request = RegisterAccountRequest {
            account_id: account_id.into(),
            email: format!("{account_id}@example.lu"),
            language: "fr".into(),
            request_id: String::new(),
        };
        self.portal
            .register_account(bearer(request, &self.system()))
            .await
            .expect("registering");
    }

    /// Records a portal login of `account_id` with LuxTrust Mobile `serial`.
    pub async fn record_login(&mut self, account_id: &str, serial: &str) {
        let request = RecordPortalLoginRequest {
            account_id: account_id.into(),
            product: Some(LuxTrustProduct {
                kind: ProductKind::LuxtrustMobile.into(),
                serial: serial.into(),
            }),
            request_id: String::new(),
        };
        let token = self.system();
        self.portal
            .record_portal_login(bearer(request, &token))
            .await
            .expect("recording a login");
    }

    /// Issues a QR code to `account_id`'s browser session.
    pub async fn issue_qr(&mut self, account_id: &str) -> IssueLinkQrResponse {
        let token = self.citizen(account_id);
        self.portal
            .issue_link_qr(bearer(IssueLinkQrRequest::default(), &token))
            .await
            .expect("issuing a QR code")
            .into_inner()
    }

    /// A `StartLink` request for a new device.
    pub fn start_request(device_id: &str, method: LinkMethod) -> StartLinkRequest {
        StartLinkRequest {
            device_id: device_id.into(),
            device_name: "Anna's phone".into(),
            method: method.into(),
            platform: Platform::Android.into(),
            app_version: "2.4.1".into(),
            device_model: "Pixel 8".into(),
            request_id: String::new(),
        }
    }

    /// Starts linking `device_id` with `method`.
    pub async fn start_link(&mut self, device_id: &str, method: LinkMethod) -> StartLinkResponse {
        self.device
            .start_link(Self::start_request(device_id, method))
            .await
            .expect("starting a link")
            .into_inner()
    }

    /// A new device's link attempt, authenticated by scanning a fresh QR code of `account_id`
    /// and confirmed by the holder (ready for `SetSecretCode`).
    pub async fn authenticated_qr_attempt(&mut self, account_id: &str) -> StartLinkResponse {
        let qr = self.issue_qr(account_id).await;
        let start = self
            .start_link(&Uuid::new_v4().to_string(), LinkMethod::Qr)
            .await;
        self.scan_and_confirm(account_id, &start.link_token, &qr)
            .await
            .expect("scanning and confirming the QR code");
        start
    }

    /// The app scans `qr` with `link_token`.
    pub async fn scan(
        &mut self,
        link_token: &str,
        qr: &IssueLinkQrResponse,
    ) -> Result<ScanQrResponse, tonic::Status> {
        self.device
            .scan_qr(ScanQrRequest {
                link_token: link_token.into(),
                qr_payload: qr.qr_payload.clone(),
                request_id: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// `account_id`'s holder confirms `qr_id` in the browser with `matching_code`.
    pub async fn confirm(
        &mut self,
        account_id: &str,
        qr_id: &str,
        matching_code: &str,
    ) -> Result<ConfirmLinkResponse, tonic::Status> {
        let token = self.citizen(account_id);
        let request = ConfirmLinkRequest {
            qr_id: qr_id.into(),
            matching_code: matching_code.into(),
            request_id: String::new(),
        };
        self.portal
            .confirm_link(bearer(request, &token))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The app scans `qr`, and the holder of `account_id` confirms with the code the app shows.
    pub async fn scan_and_confirm(
        &mut self,
        account_id: &str,
        link_token: &str,
        qr: &IssueLinkQrResponse,
    ) -> Result<ScanQrResponse, tonic::Status> {
        let scanned = self.scan(link_token, qr).await?;
        self.confirm(account_id, &qr.qr_id, &scanned.matching_code)
            .await?;
        Ok(scanned)
    }

    /// Sets the secret code of a started, authenticated attempt.
    pub async fn set_code(&mut self, link_token: &str) -> Result<Linked, tonic::Status> {
        let linked = self.clone_clients().set_code(link_token).await?;
        self.last_consistency_token = linked.consistency_token.clone();
        Ok(linked)
    }

    /// Links a new device to `account_id` with a fresh QR code.
    pub async fn link_by_qr(&mut self, account_id: &str) -> Linked {
        let device_id = Uuid::new_v4().to_string();
        self.link_device_by_qr(account_id, &device_id)
            .await
            .expect("linking by QR code")
    }

    /// Links `device_id` to `account_id` with a fresh QR code.
    pub async fn link_device_by_qr(
        &mut self,
        account_id: &str,
        device_id: &str,
    ) -> Result<Linked, tonic::Status> {
        let qr = self.issue_qr(account_id).await;
        let start = self
            .device
            .start_link(Self::start_request(device_id, LinkMethod::Qr))
            .await?;
        let link_token = start.into_inner().link_token;
        self.scan_and_confirm(account_id, &link_token, &qr).await?;
        self.set_code(&link_token).await
    }

    /// Links a new device to `account_id` with LuxTrust Mobile `serial`.
    pub async fn link_by_luxtrust(&mut self, account_id: &str, serial: &str) -> Linked {
        let device_id = Uuid::new_v4().to_string();
        let start = self.start_link(&device_id, LinkMethod::Luxtrust).await;
        self.authenticate_luxtrust(&start, account_id, serial)
            .await
            .expect("LuxTrust accepted");
        self.set_code(&start.link_token)
            .await
            .expect("setting the secret code")
    }

    /// Submits a LuxTrust assertion for `account_id` and Mobile `serial` to a started attempt.
    pub async fn authenticate_luxtrust(
        &mut self,
        start: &StartLinkResponse,
        account_id: &str,
        serial: &str,
    ) -> Result<(), tonic::Status> {
        let assertion = self
            .keys
            .luxtrust_assertion(account_id, "mobile", serial, &start.luxtrust_nonce)
            .expect("a LuxTrust assertion");
        self.device
            .authenticate_with_lux_trust(AuthenticateWithLuxTrustRequest {
                link_token: start.link_token.clone(),
                assertion,
                request_id: String::new(),
            })
            .await
            .map(|_| ())
    }
}

/// Clients without the server, for concurrent calls in tests.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The portal client.
    pub portal: PortalServiceClient<Channel>,
    /// The app client.
    pub device: DeviceServiceClient<Channel>,
}

impl Clients {
    /// Sets the secret code of a started, authenticated attempt.
    pub async fn set_code(mut self, link_token: &str) -> Result<Linked, tonic::Status> {
        let response = self
            .device
            .set_secret_code(SetSecretCodeRequest {
                link_token: link_token.into(),
                secret_code: CODE.into(),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        Ok(Linked {
            device_id: response.device_id,
            credential: response.device_credential,
            consistency_token: response.consistency_token,
        })
    }
}
