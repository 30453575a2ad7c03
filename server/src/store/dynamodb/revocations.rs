//! The token revocation list in the notes table: a partition of its own,
//! [`PARTITION`], that no owner can name (owners never start with `#`; the
//! auth layer refuses such subjects). One item per revocation, sorted by
//! the time it was recorded, expired by DynamoDB's TTL once every token it
//! covers has expired. Each instance reads what is new with one
//! strongly consistent Query.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{
    DynamoStore,
    error::{map_sdk_error, observed},
    item::{
        EXPIRES_AT_ATTR, Item, NOTE_ID_ATTR, OWNER_ATTR, corrupt, item_key, number_attr,
        read_number, read_string, string_attr,
    },
};
use crate::store::{REVOCATION_KEPT, Revocation, Revoked, StoreError};

/// The partition key of the revocation list.
pub const PARTITION: &str = "#revocations";

const ISSUER_ATTR: &str = "issuer";
const KIND_ATTR: &str = "kind";
const VALUE_ATTR: &str = "value";
const BEFORE_ATTR: &str = "before";
const RECORDED_ATTR: &str = "recordedNs";

/// The sort key of a revocation recorded at `ns`: the time, zero-padded so
/// that keys sort as times, and a random part so two never collide.
fn sort_key(ns: u64) -> String {
    format!("{ns:020}#{}", uuid::Uuid::new_v4())
}

/// The longest an entry covers tokens issued after it was recorded (a
/// `--before` in the future, a `jti` or `origin_jti` entry): a month.
const MAX_AHEAD_SECS: u64 = 30 * 24 * 3600;

/// When an entry may go: [`REVOCATION_KEPT`] after the last token it covers
/// could have been issued (its `before`, at most a month after it was
/// recorded).
fn expires_at(revocation: &Revocation) -> u64 {
    let recorded = revocation.recorded_ns / 1_000_000_000;
    let last_issued = revocation
        .before
        .clamp(recorded, recorded.saturating_add(MAX_AHEAD_SECS));
    last_issued.saturating_add(REVOCATION_KEPT.as_secs())
}

fn to_item(revocation: &Revocation) -> Item {
    let mut item = item_key(PARTITION, sort_key(revocation.recorded_ns));
    item.insert(ISSUER_ATTR.into(), string_attr(&revocation.issuer));
    item.insert(KIND_ATTR.into(), string_attr(revocation.what.kind()));
    item.insert(VALUE_ATTR.into(), string_attr(revocation.what.value()));
    item.insert(BEFORE_ATTR.into(), number_attr(revocation.before));
    item.insert(RECORDED_ATTR.into(), number_attr(revocation.recorded_ns));
    item.insert(EXPIRES_AT_ATTR.into(), number_attr(expires_at(revocation)));
    item
}

fn from_item(item: &Item) -> Result<Revocation, StoreError> {
    let kind = read_string(item, KIND_ATTR)?;
    let value = read_string(item, VALUE_ATTR)?.to_owned();
    Ok(Revocation {
        issuer: read_string(item, ISSUER_ATTR)?.to_owned(),
        what: Revoked::from_parts(kind, value).ok_or_else(|| corrupt(KIND_ATTR))?,
        before: read_number(item, BEFORE_ATTR)?,
        recorded_ns: read_number(item, RECORDED_ATTR)?,
    })
}

impl DynamoStore {
    /// Writes one revocation.
    pub(super) async fn put_revocation(&self, revocation: &Revocation) -> Result<(), StoreError> {
        observed(
            "PutItem",
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(to_item(revocation)))
                .send(),
        )
        .await
        .map_err(|e| map_sdk_error(e, &self.table))?;
        Ok(())
    }

    /// The revocations recorded at or after `since_ns`, oldest first;
    /// those expired but not yet removed by TTL are left out.
    pub(super) async fn revocations_after(
        &self,
        since_ns: u64,
    ) -> Result<Vec<Revocation>, StoreError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = observed(
                "Query",
                self.client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("#u = :u AND #n >= :from")
                    .expression_attribute_names("#u", OWNER_ATTR)
                    .expression_attribute_names("#n", NOTE_ID_ATTR)
                    .expression_attribute_values(":u", string_attr(PARTITION))
                    .expression_attribute_values(":from", string_attr(format!("{since_ns:020}")))
                    .consistent_read(true)
                    .set_exclusive_start_key(start.take())
                    .send(),
            )
            .await
            .map_err(|e| map_sdk_error(e, &self.table))?;
            for item in out.items() {
                let expired = read_number::<u64>(item, EXPIRES_AT_ATTR).is_ok_and(|at| at < now);
                if expired {
                    continue;
                }
                // One unreadable entry (a newer version's kind, a hand
                // edit) must not stop every instance reading the rest.
                match from_item(item) {
                    Ok(revocation) => found.push(revocation),
                    Err(err) => {
                        crate::metrics::metrics().token_revocation_read_errors.inc();
                        tracing::warn!(error = %err, "a token revocation entry is unreadable; skipped");
                    }
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(found),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_round_trip_and_expires_a_day_after_what_it_covers() {
        let revocation = Revocation {
            issuer: "https://issuer".into(),
            what: Revoked::Session("o-1".into()),
            before: u64::MAX,
            recorded_ns: 1_800_000_000_000_000_000,
        };
        let item = to_item(&revocation);
        assert_eq!(from_item(&item).unwrap(), revocation);
        let day = REVOCATION_KEPT.as_secs();
        assert_eq!(
            expires_at(&revocation),
            1_800_000_000 + MAX_AHEAD_SECS + day,
            "every token of a sign-in: a month and a day"
        );
        let at = |before| {
            expires_at(&Revocation {
                what: Revoked::Subject("alice".into()),
                before,
                ..revocation.clone()
            })
        };
        assert_eq!(
            at(1_700_000_000),
            1_800_000_000 + day,
            "tokens issued before it"
        );
        assert_eq!(at(1_800_086_400), 1_800_086_400 + day, "a day ahead");
        assert!(sort_key(5) < sort_key(6) && sort_key(5).starts_with("00000000000000000005#"));
    }
}
