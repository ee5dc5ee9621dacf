//! The consistency token that command responses carry and queries accept (read-your-writes).
//! Opaque to clients; both services share this format: `v1:` then `type,id,sequence,position`
//! entries separated by `;` — the last event each written aggregate had after the command.

use std::fmt;

/// The state of one aggregate after a command: its last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `account`, `link_qr`, `link_attempt` or `device`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Its last event's sequence.
    pub sequence: i64,
    /// Its last event's global position.
    pub global_position: i64,
}

/// What a command wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken(pub Vec<Written>);

impl ConsistencyToken {
    /// The token naming these positions; aggregates without events (sequence 0) are left out.
    pub fn of<'a>(positions: impl IntoIterator<Item = &'a Written>) -> Self {
        Self(
            positions
                .into_iter()
                .filter(|position| position.sequence > 0)
                .cloned()
                .collect(),
        )
    }
}

/// A token that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedToken;

impl fmt::Display for MalformedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("consistency_token is malformed; pass the value a command response returned")
    }
}

impl std::error::Error for MalformedToken {}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.@:".contains(c)
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("v1:")?;
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(
                f,
                "{},{},{},{}",
                w.aggregate_type, w.aggregate_id, w.sequence, w.global_position
            )?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ConsistencyToken {
    type Err = MalformedToken;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let body = text.strip_prefix("v1:").ok_or(MalformedToken)?;
        if body.is_empty() {
            return Ok(Self::default());
        }
        let entries = body.split(';').map(|entry| {
            let mut parts = entry.split(',');
            let (Some(kind), Some(id), Some(seq), Some(pos), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(MalformedToken);
            };
            let valid = |s: &str| !s.is_empty() && s.len() <= 64 && s.chars().all(is_id_char);
            if !valid(kind) || !valid(id) {
                return Err(MalformedToken);
            }
            Ok(Written {
                aggregate_type: kind.to_owned(),
                aggregate_id: id.to_owned(),
                sequence: seq.parse().map_err(|_| MalformedToken)?,
                global_position: pos.parse().map_err(|_| MalformedToken)?,
            })
        });
        let written: Vec<Written> = entries.collect::<Result<_, _>>()?;
        if written.len() > 64 {
            return Err(MalformedToken);
        }
        Ok(Self(written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_survives_a_round_trip() {
        let token = ConsistencyToken(vec![
            Written {
                aggregate_type: "device".into(),
                aggregate_id: "0b5c9a53-8f43-4f6a-8f0e-6c3d2d1f2a11".into(),
                sequence: 3,
                global_position: 42,
            },
            Written {
                aggregate_type: "account".into(),
                aggregate_id: "anna@x".into(),
                sequence: 1,
                global_position: 7,
            },
        ]);
        assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
    }

    #[test]
    fn a_token_of_positions_leaves_out_aggregates_without_events() {
        let written = |id: &str, sequence| Written {
            aggregate_type: "device".into(),
            aggregate_id: id.into(),
            sequence,
            global_position: sequence * 10,
        };
        let positions = [written("a", 2), written("b", 0), written("c", 1)];

        let token = ConsistencyToken::of(&positions);

        assert_eq!(token.0, vec![written("a", 2), written("c", 1)]);
    }

    #[test]
    fn garbage_is_not_a_token() {
        for text in [
            "",
            "v2:x",
            "v1:device,1,2",
            "v1:device,1,x,2",
            "v1:dev ice,1,2,3",
            "v1:a,b,1,2,3",
        ] {
            assert!(text.parse::<ConsistencyToken>().is_err(), "{text}");
        }
    }
}
