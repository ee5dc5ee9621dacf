//! docs/privacy.md classifies every field of the bus's events as personal or not: this test
//! fails when an event field is added without being classified there, or when the inventory
//! names a field that no longer exists (issue 19, first point).
#![allow(
    clippy::unwrap_used,
    reason = "a failed step should fail the test loudly"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorSet};

const PACKAGE: &str = ".linking.v1.";

/// `Message.field` for every field reachable from `EventEnvelope`: its own fields (the members
/// of its `event` oneof are containers: their messages' fields are listed instead) and, through
/// message-typed fields, those of linkd's messages inside.
fn event_fields() -> BTreeSet<String> {
    let set = FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let messages: HashMap<String, DescriptorProto> = set
        .file
        .into_iter()
        .filter(|file| file.package() == "linking.v1")
        .flat_map(|file| file.message_type)
        .map(|message| (format!("{PACKAGE}{}", message.name()), message))
        .collect();
    let mut fields = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut pending = vec![format!("{PACKAGE}EventEnvelope")];
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let message = &messages[&name];
        let event_oneof = message
            .oneof_decl
            .iter()
            .position(|oneof| oneof.name() == "event")
            .and_then(|index| i32::try_from(index).ok());
        for field in &message.field {
            let nested = field.type_name.as_deref().filter(|type_name| {
                type_name.starts_with(PACKAGE) && messages.contains_key(*type_name)
            });
            if let Some(nested) = nested {
                pending.push(nested.to_owned());
            }
            let container = event_oneof.is_some() && field.oneof_index == event_oneof;
            if !container {
                fields.insert(format!("{}.{}", message.name(), field.name()));
            }
        }
    }
    fields
}

/// The inventory's table: field → class.
fn inventory() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/privacy.md");
    let text = std::fs::read_to_string(path).unwrap();
    let begin = text.find("<!-- fields:begin -->").unwrap();
    let end = text.find("<!-- fields:end -->").unwrap();
    text[begin..end]
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let field = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let class = cells.next()?;
            Some((field.to_owned(), class.to_owned()))
        })
        .collect()
}

#[test]
fn every_event_field_is_classified_in_the_privacy_inventory() {
    let fields = event_fields();
    let inventory = inventory();
    let unclassified: Vec<_> = fields
        .iter()
        .filter(|field| !inventory.contains_key(*field))
        .collect();
    assert!(
        unclassified.is_empty(),
        "classify these event fields in docs/privacy.md (personal or not personal): {unclassified:?}"
    );
    let gone: Vec<_> = inventory
        .keys()
        .filter(|field| !fields.contains(*field))
        .collect();
    assert!(
        gone.is_empty(),
        "docs/privacy.md lists fields the events no longer have: {gone:?}"
    );
    let unknown_classes: Vec<_> = inventory
        .iter()
        .filter(|(_, class)| !matches!(class.as_str(), "personal" | "not personal"))
        .collect();
    assert!(
        unknown_classes.is_empty(),
        "the class must be `personal` or `not personal`: {unknown_classes:?}"
    );
    // The walk reached inside the events, not just the envelope.
    assert!(fields.contains("AccountRegistered.email"));
    assert!(fields.contains("LuxTrustProduct.serial"));
}
