use proto::v1;

use super::*;
use crate::email::LANGUAGES;

#[test]
fn an_unknown_link_method_is_poison_not_qr() {
    for raw in [0, 99] {
        assert!(
            matches!(method_phrase(raw), Err(ProjectionError::Poison(_))),
            "method {raw}"
        );
    }
}

#[test]
fn an_unknown_unlink_reason_is_poison() {
    for raw in [0, 99] {
        assert!(
            matches!(reason_phrase(raw), Err(ProjectionError::Poison(_))),
            "reason {raw}"
        );
    }
}

#[test]
fn every_known_method_and_reason_has_a_phrase_in_every_language() {
    let templates = Templates::default();
    let methods = [v1::LinkMethod::Qr, v1::LinkMethod::Luxtrust].map(|m| method_phrase(m.into()));
    let reasons = [
        v1::UnlinkReason::FromDevice,
        v1::UnlinkReason::FromPortal,
        v1::UnlinkReason::LockedOut,
    ]
    .map(|r| reason_phrase(r.into()));
    assert_eq!(
        methods
            .iter()
            .map(|m| m.as_deref().ok())
            .collect::<Vec<_>>(),
        [Some("method.qr"), Some("method.luxtrust")]
    );
    for key in methods.into_iter().chain(reasons) {
        let key = key.unwrap();
        for language in LANGUAGES {
            assert_ne!(templates.phrase(language, &key), key, "{language} {key}");
        }
    }
}
