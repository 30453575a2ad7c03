//! Updates and deletes that take effect at most once, whatever the retries
//! or the network do.
//!
//! Each is one conditional UpdateItem (a delete leaves a tombstone) that
//! applies only if its key is not in the item's record of recent writes
//! ([`super::recent`]) and it was issued after the item's fence. The SDK's
//! own retries are off for these requests: this loop sends every attempt,
//! so it knows when an earlier attempt may have been applied, and reads the
//! answer from the item the failed condition returns:
//!
//! - its key on record: it was applied, by this call or by an earlier call
//!   with the same `request_id`; the answer is the note as that write left
//!   it, whatever other writes came after;
//! - the record full: the next attempt also drops the oldest entries and
//!   raises the fence, at the version it saw;
//! - fenced: none of its attempts can apply any more; if none may have
//!   applied, it is issued again, otherwise the outcome is unknown
//!   (UNAVAILABLE);
//! - otherwise the note's state answers (not found, another version).
//!
//! A request the network delivers late finds its key on record or is
//! fenced, so it never applies a second time or over later writes.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_sdk_dynamodb::{
    error::{ProvideErrorMetadata, SdkError},
    operation::update_item::UpdateItemError,
    types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure},
};
use uuid::Uuid;

use super::{
    DynamoStore,
    error::{is_throttling, map_sdk_error, observed},
    item::{
        DELETED_ATTR, EXPIRES_AT_ATTR, FENCE_ATTR, Item, TOMBSTONE_TTL, WRITES_ATTR, expires_after,
        note_from_item, note_key, number_attr, read_number, string_attr, time_from_nanos,
    },
    recent::{Prune, Recent, Seen, WriteKey},
};
use crate::store::{Change, Edit, Note, StoreError};

/// Steps a write may take beyond its transient retries: a prune, one
/// re-issue after the fence, making the record on an old item.
const EXTRA_STEPS: u32 = 3;

/// What a write came to.
pub(super) enum Outcome {
    /// The note as the write left it (a delete: the tombstone).
    Applied(Note),
    /// A delete that was applied.
    Deleted,
}

/// The next attempt's shape.
enum Next {
    /// The plain conditional write.
    Write,
    /// The write plus dropping old entries, at the version seen.
    Prune(Prune),
    /// Give an old item its (empty) record first.
    MakeRecord,
}

fn nanos(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()).unwrap_or(u64::MAX)
}

/// Whether `err` leaves open that the request was applied.
fn may_have_applied<E: ProvideErrorMetadata>(err: &SdkError<E, impl std::fmt::Debug>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        // A 500 from DynamoDB: "the request may or may not have succeeded".
        SdkError::ServiceError(_) => matches!(
            err.code(),
            Some("InternalServerError" | "ServiceUnavailable")
        ),
        _ => false,
    }
}

/// Whether `err` is worth another attempt.
fn transient<E: ProvideErrorMetadata>(err: &SdkError<E, impl std::fmt::Debug>) -> bool {
    may_have_applied(err) || err.code().is_some_and(is_throttling)
}

impl DynamoStore {
    /// Applies `edit` to `owner`'s note `note_id` under `change`, at most once.
    pub(super) async fn write_once(
        &self,
        owner: &str,
        note_id: Uuid,
        edit: Edit,
        change: Change,
    ) -> Result<Outcome, StoreError> {
        let issued = nanos(change.now);
        let mut write = match &change.request_id {
            Some(id) => WriteKey::requested(id, &change.digest(&edit), issued),
            None => WriteKey::plain(issued),
        };
        let started = Instant::now();
        let (attempts, deadline) = self.write_budget();
        let no_sdk_retries = aws_sdk_dynamodb::config::Builder::default()
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled());
        // Whether an attempt of `write` may have been applied unseen.
        let mut unsure = false;
        let mut next = Next::Write;
        let mut transient_left = attempts;
        let mut steps_left = EXTRA_STEPS;
        let mut backoff = Duration::from_millis(25);
        loop {
            let request = match std::mem::replace(&mut next, Next::Write) {
                Next::MakeRecord => {
                    self.make_record(owner, note_id).await?;
                    continue;
                }
                Next::Prune(prune) => {
                    self.attempt(owner, note_id, &edit, &change, &write, Some(prune))
                }
                Next::Write => self.attempt(owner, note_id, &edit, &change, &write, None),
            };
            let sent = observed(
                "UpdateItem",
                request
                    .customize()
                    .config_override(no_sdk_retries.clone())
                    .send(),
            )
            .await;
            let err = match sent {
                Ok(out) => {
                    return match edit {
                        Edit::Delete => Ok(Outcome::Deleted),
                        Edit::Update(_) => out
                            .attributes
                            .as_ref()
                            .ok_or_else(|| {
                                StoreError::Internal("UpdateItem returned nothing".into(), None)
                            })
                            .and_then(note_from_item)
                            .map(Outcome::Applied),
                    };
                }
                Err(err) => err,
            };
            let failed_item = match &err {
                SdkError::ServiceError(e) => match e.err() {
                    UpdateItemError::ConditionalCheckFailedException(c) => Some(c.item().cloned()),
                    _ => None,
                },
                _ => None,
            };
            let Some(found) = failed_item else {
                unsure |= may_have_applied(&err);
                transient_left = transient_left.saturating_sub(1);
                if !transient(&err) || transient_left == 0 || started.elapsed() + backoff > deadline
                {
                    return Err(self.gave_up(err, unsure));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(400));
                continue;
            };
            let item = match found {
                Some(item) => Some(item),
                None => self.read_item(note_key(owner, note_id)).await?,
            };
            let Some(item) = item else {
                return Err(StoreError::NotFound(note_id));
            };
            let recent = Recent::of(&item)?;
            match recent.find(&write, &item) {
                Seen::Applied { version, issued_ns } => {
                    return match &edit {
                        Edit::Delete => Ok(Outcome::Deleted),
                        Edit::Update(content) => Ok(Outcome::Applied(Note {
                            note_id,
                            owner: owner.to_owned(),
                            content: content.clone(),
                            create_time: time_from_nanos(read_number(&item, "createdNs")?),
                            update_time: time_from_nanos(issued_ns),
                            version,
                        })),
                    };
                }
                Seen::Reused => {
                    let id = change.request_id.clone().unwrap_or_default();
                    return Err(StoreError::RequestIdReused(id));
                }
                Seen::Fenced { .. } | Seen::Absent if item.contains_key(DELETED_ATTR) => {
                    return Err(StoreError::NotFound(note_id));
                }
                Seen::Fenced { fence } => {
                    if unsure {
                        return Err(StoreError::Unavailable(
                            "the outcome of this write is unknown (it can no longer be \
                             applied); read the note and retry"
                                .into(),
                        ));
                    }
                    write = write.reissued(fence, nanos(SystemTime::now()));
                }
                Seen::Absent => {
                    let actual: i64 = read_number(&item, "version")?;
                    if let Some(expected) = change.expected_version
                        && expected != actual
                    {
                        return Err(StoreError::VersionMismatch {
                            note_id,
                            expected,
                            actual,
                        });
                    }
                    next = if !recent.present {
                        Next::MakeRecord
                    } else if recent.is_full(&write) {
                        Next::Prune(recent.prune(actual))
                    } else {
                        // Changed between the condition and now: try again.
                        Next::Write
                    };
                }
            }
            steps_left = steps_left.saturating_sub(1);
            if steps_left == 0 || started.elapsed() > deadline {
                return Err(StoreError::Unavailable(
                    format!("the write of note {note_id} kept meeting other writes; retry").into(),
                ));
            }
        }
    }

    /// Attempts per write and the deadline of all of them, from the
    /// client's retry and timeout settings.
    fn write_budget(&self) -> (u32, Duration) {
        let config = self.client.config();
        let attempts = config.retry_config().map_or(
            3,
            aws_sdk_dynamodb::config::retry::RetryConfig::max_attempts,
        );
        let deadline = config
            .timeout_config()
            .and_then(|t| t.operation_timeout())
            .unwrap_or(Duration::from_secs(3));
        (attempts.max(1), deadline)
    }

    /// The error a write ends with after `err`.
    fn gave_up(
        &self,
        err: SdkError<UpdateItemError, aws_sdk_dynamodb::config::http::HttpResponse>,
        unsure: bool,
    ) -> StoreError {
        let mapped = map_sdk_error(err, &self.table);
        match mapped {
            StoreError::Unavailable(source) if unsure => StoreError::Unavailable(
                format!(
                    "the outcome of this write is unknown ({source}); read the note before \
                     retrying, or retry with the same request_id"
                )
                .into(),
            ),
            other => other,
        }
    }

    /// One attempt of `write`, optionally dropping old entries (`prune`).
    fn attempt(
        &self,
        owner: &str,
        note_id: Uuid,
        edit: &Edit,
        change: &Change,
        write: &WriteKey,
        prune: Option<Prune>,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let mut names: HashMap<String, String> = HashMap::from([
            ("#wm".into(), WRITES_ATTR.into()),
            ("#k".into(), write.key.clone()),
            ("#v".into(), "version".into()),
            ("#d".into(), DELETED_ATTR.into()),
        ]);
        let mut values: HashMap<String, AttributeValue> =
            HashMap::from([(":one".into(), number_attr(1))]);
        // The entry first: it reads the version before the write bumps it.
        let mut set = vec!["#wm.#k = #v + :one".to_owned(), "#v = #v + :one".to_owned()];
        let mut remove = Vec::new();
        if let Some((key, info)) = write.info() {
            names.insert("#i".into(), key.to_owned());
            values.insert(":info".into(), string_attr(info));
            set.push("#wm.#i = :info".into());
        }
        values.insert(":t".into(), number_attr(write.issued_ns));
        names.insert("#c".into(), "content".into());
        match edit {
            Edit::Update(content) => {
                names.insert("#t".into(), "updatedNs".into());
                values.insert(":c".into(), string_attr(content.clone()));
                set.push("#c = :c".into());
                set.push("#t = :t".into());
            }
            Edit::Delete => {
                names.insert("#x".into(), EXPIRES_AT_ATTR.into());
                values.insert(":x".into(), expires_after(change.now, TOMBSTONE_TTL));
                set.push("#d = :t".into());
                set.push("#x = :x".into());
                remove.push("#c".to_owned());
            }
        }
        let mut condition = "attribute_not_exists(#d) AND attribute_not_exists(#wm.#k)".to_owned();
        match prune {
            Some(prune) => {
                // Exactly the item planned from: no fence or size check needed.
                condition.push_str(" AND #v = :seen");
                values.insert(":seen".into(), number_attr(prune.seen_version));
                for (n, key) in prune.remove.into_iter().enumerate() {
                    names.insert(format!("#p{n}"), key);
                    remove.push(format!("#wm.#p{n}"));
                }
                names.insert("#f".into(), FENCE_ATTR.into());
                values.insert(":f".into(), number_attr(prune.fence));
                set.push("#f = :f".into());
            }
            None => {
                names.insert("#f".into(), FENCE_ATTR.into());
                values.insert(":issued".into(), number_attr(write.issued_ns));
                values.insert(
                    ":room".into(),
                    number_attr(super::recent::CAPACITY - usize::from(write.request.is_some())),
                );
                condition.push_str(
                    " AND attribute_exists(noteId) AND size(#wm) < :room \
                     AND (attribute_not_exists(#f) OR #f < :issued)",
                );
                if let Some(expected) = change.expected_version {
                    values.insert(":expected".into(), number_attr(expected));
                    condition.push_str(" AND #v = :expected");
                }
            }
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(note_key(owner, note_id)))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(match edit {
                Edit::Update(_) => ReturnValue::AllNew,
                Edit::Delete => ReturnValue::None,
            })
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
    }

    /// Gives a note made before the record existed an empty one.
    async fn make_record(&self, owner: &str, note_id: Uuid) -> Result<(), StoreError> {
        let sent = observed(
            "UpdateItem",
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(note_key(owner, note_id)))
                .update_expression("SET #wm = if_not_exists(#wm, :empty)")
                .condition_expression("attribute_exists(noteId)")
                .expression_attribute_names("#wm", WRITES_ATTR)
                .expression_attribute_values(":empty", AttributeValue::M(Item::new()))
                .send(),
        )
        .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Some("ConditionalCheckFailedException") => {
                Err(StoreError::NotFound(note_id))
            }
            Err(err) => Err(map_sdk_error(err, &self.table)),
        }
    }
}
