//! What the holder checks before a QR link may proceed: the matching code the app shows and the
//! holder types in the browser, and the masked account the app shows before a secret code.
//!
//! The matching code is two digits, derived with HMAC-SHA-256 from the attempt and QR ids under
//! a key derived from the server's pepper: the same on every retried scan, never stored, never
//! in an event, and unpredictable to anyone without the pepper. With one try allowed, a guess
//! succeeds once in 90. The browser gets three choices (the code and two others) for a portal
//! that lets the holder pick; the code itself goes only to the app.

use domain::{LinkAttemptId, QrId};

use crate::secrets::hmac_parts;

/// The codes run from 10 to 99: two digits, no leading zero to lose.
const FIRST: u16 = 10;
/// How many codes there are.
const COUNT: u16 = 90;

/// The key matching codes are derived under, from the server's pepper.
pub(crate) fn key(pepper: &[u8]) -> Vec<u8> {
    hmac_parts(pepper, &[b"linkd/matching-code-key/v1"])
}

/// The matching code of one scan, and the choices the browser may offer.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct MatchingCode {
    code: u16,
    choices: [u16; 3],
}

impl std::fmt::Debug for MatchingCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MatchingCode(**)")
    }
}

impl MatchingCode {
    /// The code of the scan of `qr` by `attempt`.
    pub(crate) fn of(key: &[u8], attempt: LinkAttemptId, qr: QrId) -> Self {
        let digest = hmac_parts(
            key,
            &[
                b"linkd/matching-code/v1",
                attempt.0.as_bytes(),
                qr.0.as_bytes(),
            ],
        );
        let mut draws = digest
            .chunks_exact(2)
            .map(|pair| FIRST + u16::from_be_bytes([pair[0], pair[1]]) % COUNT);
        let code = draws.next().unwrap_or(FIRST);
        let mut choices = [code; 3];
        let mut filled = 1;
        for draw in draws {
            if filled == choices.len() {
                break;
            }
            if !choices[..filled].contains(&draw) {
                choices[filled] = draw;
                filled += 1;
            }
        }
        // 15 draws left for two distinct others: running short is practically impossible,
        // but the choices must still be distinct.
        let mut next = code;
        while filled < choices.len() {
            next = FIRST + (next - FIRST + 1) % COUNT;
            if !choices[..filled].contains(&next) {
                choices[filled] = next;
                filled += 1;
            }
        }
        choices.sort_unstable();
        Self { code, choices }
    }

    /// The code, as the app shows it.
    pub(crate) fn code(&self) -> String {
        self.code.to_string()
    }

    /// Whether the holder typed this code (surrounding spaces ignored).
    pub(crate) fn is(&self, typed: &str) -> bool {
        let typed = typed.trim();
        typed.len() == 2
            && typed.bytes().all(|b| b.is_ascii_digit())
            && typed.parse::<u16>().is_ok_and(|n| n == self.code)
    }

    /// Three choices, the code among them, in ascending order.
    pub(crate) fn choices(&self) -> Vec<String> {
        self.choices.iter().map(ToString::to_string).collect()
    }
}

/// The account, as the app may show it: the email's first character, `***`, and the domain
/// (`a***@example.lu`). Nothing else of the address leaves linkd this way.
pub(crate) fn account_hint(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn scan(n: u128) -> MatchingCode {
        MatchingCode::of(
            &key(b"pepper-pepper-pepper-pepper-pepper"),
            LinkAttemptId(Uuid::from_u128(n)),
            QrId(Uuid::from_u128(1000 + n)),
        )
    }

    #[test]
    fn the_code_is_two_digits_and_the_same_for_the_same_scan() {
        for n in 0..500 {
            let code = scan(n);
            assert_eq!(code, scan(n));
            assert_eq!(code.code().len(), 2, "{}", code.code());
            assert!(code.is(&code.code()));
            assert!(code.is(&format!(" {} ", code.code())));
        }
    }

    #[test]
    fn three_distinct_choices_hold_the_code() {
        for n in 0..500 {
            let code = scan(n);
            let choices = code.choices();
            assert!(choices.contains(&code.code()), "{choices:?}");
            let mut distinct = choices.clone();
            distinct.dedup();
            assert_eq!(distinct.len(), 3, "{choices:?}");
            assert!(
                choices.windows(2).all(|pair| pair[0] < pair[1]),
                "{choices:?}"
            );
        }
    }

    #[test]
    fn codes_spread_over_the_range_and_depend_on_the_key() {
        let seen: std::collections::HashSet<String> = (0..2000).map(|n| scan(n).code()).collect();
        assert_eq!(seen.len(), 90);
        let other = MatchingCode::of(
            &key(b"another-pepper-another-pepper-12"),
            LinkAttemptId(Uuid::from_u128(1)),
            QrId(Uuid::from_u128(1001)),
        );
        let differ = (0..50).any(|n| {
            let mine = scan(n);
            let theirs = MatchingCode::of(
                &key(b"another-pepper-another-pepper-12"),
                LinkAttemptId(Uuid::from_u128(n)),
                QrId(Uuid::from_u128(1000 + n)),
            );
            mine != theirs
        });
        assert!(differ, "{other:?}");
    }

    #[test]
    fn a_wrong_or_odd_code_does_not_match() {
        let code = scan(7);
        let wrong = if code.code() == "42" { "43" } else { "42" };
        assert!(!code.is(wrong));
        assert!(!code.is(""));
        assert!(!code.is(&format!("0{}", code.code())));
        assert!(!code.is("+4"));
    }

    #[test]
    fn the_account_hint_shows_one_character_and_the_domain() {
        assert_eq!(account_hint("anna.muller@example.lu"), "a***@example.lu");
        assert_eq!(account_hint("é@x.lu"), "é***@x.lu");
        assert_eq!(account_hint("no-at-sign"), "***");
    }
}
