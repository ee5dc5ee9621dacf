//! The consistency token comes from clients: any text is refused or read, never a panic, and
//! every token linkd writes reads back as written (issue 17, point 6; proptest).
#![allow(
    clippy::unwrap_used,
    reason = "a failed property should fail the test loudly"
)]

use proptest::prelude::*;
use proto::consistency::{ConsistencyToken, Written};

/// `PROPTEST_CASES` if set (a longer run), else `default` (the suite's).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1024), failure_persistence: None,
        ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_read_or_refused(text in ".{0,300}") {
        if let Ok(token) = text.parse::<ConsistencyToken>() {
            prop_assert!(token.0.len() <= 64);
            // What was accepted writes back to a token that reads the same.
            let again: ConsistencyToken = token.to_string().parse().unwrap();
            prop_assert_eq!(again, token);
        }
    }

    #[test]
    fn near_misses_are_read_or_refused(
        entries in prop::collection::vec(
            ("[a-z_]{0,8}", "[a-zA-Z0-9:_-]{0,12}", any::<i64>(), any::<i64>()), 0..70),
        separator in prop::sample::select(vec![";", ",", ";;", ""]),
    ) {
        let body: Vec<String> = entries
            .iter()
            .map(|(kind, id, sequence, position)| format!("{kind},{id},{sequence},{position}"))
            .collect();
        let text = format!("v1:{}", body.join(separator));
        let _ = text.parse::<ConsistencyToken>();
    }

    #[test]
    fn what_linkd_writes_reads_back(
        entries in prop::collection::vec(
            ("(account|device|link_qr|link_attempt)", "[a-zA-Z0-9_-]{1,36}", 1i64.., 1i64..),
            0..64),
    ) {
        let written: Vec<Written> = entries
            .into_iter()
            .map(|(aggregate_type, aggregate_id, sequence, global_position)| Written {
                aggregate_type,
                aggregate_id,
                sequence,
                global_position,
            })
            .collect();
        let token = ConsistencyToken(written);
        let read: ConsistencyToken = token.to_string().parse().unwrap();
        prop_assert_eq!(read, token);
    }
}
