//! How notes and idempotency records are encoded as DynamoDB items.
//!
//! A note is one item keyed by its owner (`userId`) and id (`noteId`), with
//! `content`, `createdNs`, `updatedNs` (nanoseconds since the epoch) and
//! `version`. An idempotency record for a CreateNote `request_id` lives in the
//! owner's partition under the sort key `#req#<request_id>`, with the note it
//! made (`noteRef`), a digest of its content and `expiresAt` for TTL.
//!
//! A note item also records its recent writes, so that a write sent twice
//! is applied once (see [`super::write`]): `writes`, a map from write keys to
//! the version each write produced (and, for a write with a `request_id`,
//! when it was issued and a digest of its request), and `writeFence`, the
//! issue time (ms) at or before which writes no longer in the map are
//! refused. A deleted note is a tombstone: `deletedNs` set, no `content`,
//! and `expiresAt` so that DynamoDB's TTL removes it a day later.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_sdk_dynamodb::types::AttributeValue;
use uuid::Uuid;

use crate::store::{Note, StoreError};

/// One DynamoDB item.
pub(super) type Item = HashMap<String, AttributeValue>;

/// Partition key attribute: the note's owner.
pub const OWNER_ATTR: &str = "userId";
/// Sort key attribute: the note id, or an idempotency record's key.
pub const NOTE_ID_ATTR: &str = "noteId";
/// The TTL attribute of idempotency records (seconds since the epoch).
pub const EXPIRES_AT_ATTR: &str = "expiresAt";
/// The map of a note's recent writes.
pub(super) const WRITES_ATTR: &str = "writes";
/// Writes issued at or before this time (ms since the epoch) and not in
/// `writes` are refused.
pub(super) const FENCE_ATTR: &str = "writeFence";
/// Set on a deleted note (a tombstone): when it was deleted.
pub(super) const DELETED_ATTR: &str = "deletedNs";
/// Tombstones expire (DynamoDB TTL on `expiresAt`) after this long.
pub(super) const TOMBSTONE_TTL: Duration = Duration::from_secs(24 * 3600);
const REQUEST_PREFIX: &str = "#req#";
/// Idempotency records expire (DynamoDB TTL on `expiresAt`) after this long.
const REQUEST_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);

pub(super) fn string_attr(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(super) fn number_attr(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn nanos_since_epoch(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

pub(super) fn number_of_nanos(t: SystemTime) -> AttributeValue {
    number_attr(nanos_since_epoch(t))
}

/// The primary key of `owner`'s item sorted under `sort_key`.
pub(super) fn item_key(owner: &str, sort_key: String) -> Item {
    HashMap::from([
        (OWNER_ATTR.to_owned(), string_attr(owner)),
        (NOTE_ID_ATTR.to_owned(), string_attr(sort_key)),
    ])
}

/// The primary key of `owner`'s note `note_id`.
pub(super) fn note_key(owner: &str, note_id: Uuid) -> Item {
    item_key(owner, note_id.to_string())
}

/// The primary key of `owner`'s idempotency record for `request_id`.
pub(super) fn request_key(owner: &str, request_id: &str) -> Item {
    item_key(owner, format!("{REQUEST_PREFIX}{request_id}"))
}

pub(super) fn sha256_hex(content: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("stored item is corrupt: {what}"), None)
}

pub(super) fn read_string<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(name)),
    }
}

pub(super) fn read_number<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(name)),
        _ => Err(corrupt(name)),
    }
}

pub(super) fn time_from_nanos(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// Seconds since the epoch of `now + ttl`, as a TTL attribute.
pub(super) fn expires_after(now: SystemTime, ttl: Duration) -> AttributeValue {
    number_attr(
        (now + ttl)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
}

pub(super) fn note_to_item(note: &Note) -> Item {
    let mut item = note_key(&note.owner, note.note_id);
    item.insert(WRITES_ATTR.into(), AttributeValue::M(HashMap::new()));
    item.insert("content".into(), string_attr(note.content.clone()));
    item.insert("createdNs".into(), number_of_nanos(note.create_time));
    item.insert("updatedNs".into(), number_of_nanos(note.update_time));
    item.insert("version".into(), number_attr(note.version));
    item
}

pub(super) fn note_from_item(item: &Item) -> Result<Note, StoreError> {
    Ok(Note {
        note_id: Uuid::try_parse(read_string(item, NOTE_ID_ATTR)?)
            .map_err(|_| corrupt(NOTE_ID_ATTR))?,
        owner: read_string(item, OWNER_ATTR)?.to_owned(),
        content: read_string(item, "content")?.to_owned(),
        create_time: time_from_nanos(read_number(item, "createdNs")?),
        update_time: time_from_nanos(read_number(item, "updatedNs")?),
        version: read_number(item, "version")?,
    })
}

/// The idempotency record saying `request_id` created `note`.
pub(super) fn request_record(owner: &str, request_id: &str, note: &Note) -> Item {
    let mut item = request_key(owner, request_id);
    item.insert("noteRef".into(), string_attr(note.note_id.to_string()));
    item.insert(
        "contentSha256".into(),
        string_attr(sha256_hex(&note.content)),
    );
    item.insert("createdNs".into(), number_of_nanos(note.create_time));
    item.insert(
        EXPIRES_AT_ATTR.into(),
        expires_after(SystemTime::now(), REQUEST_RECORD_TTL),
    );
    item
}

/// The note an idempotency record says was created by a request with
/// `content`, or [`StoreError::RequestIdReused`] when its content differed.
pub(super) fn note_of_record(
    record: &Item,
    owner: &str,
    request_id: &str,
    content: String,
) -> Result<Note, StoreError> {
    if read_string(record, "contentSha256")? != sha256_hex(&content) {
        return Err(StoreError::RequestIdReused(request_id.to_owned()));
    }
    let created = time_from_nanos(read_number(record, "createdNs")?);
    Ok(Note {
        note_id: Uuid::try_parse(read_string(record, "noteRef")?)
            .map_err(|_| corrupt("noteRef"))?,
        owner: owner.to_owned(),
        content,
        create_time: created,
        update_time: created,
        version: 1,
    })
}
