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

/// The outcome of an attempt DynamoDB applied (for an update, the note it
/// returned).
fn applied(
    edit: &Edit,
    out: aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
) -> Result<Outcome, StoreError> {
    match edit {
        Edit::Delete => Ok(Outcome::Deleted),
        Edit::Update(_) => out
            .attributes
            .as_ref()
            .ok_or_else(|| StoreError::Internal("UpdateItem returned nothing".into(), None))
            .and_then(note_from_item)
            .map(Outcome::Applied),
    }
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

/// An attempt's update and condition expressions, with their names and
/// values.
struct Expression {
    set: Vec<String>,
    remove: Vec<String>,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expression {
    /// What `edit` writes, and the write's entry in the record.
    fn changes(edit: &Edit, change: &Change, key: &WriteKey) -> Self {
        let mut expr = Self {
            // The entry first: it reads the version before the write bumps it.
            set: vec!["#wm.#k = #v + :one".to_owned(), "#v = #v + :one".to_owned()],
            remove: Vec::new(),
            condition: "attribute_not_exists(#d) AND attribute_not_exists(#wm.#k)".to_owned(),
            names: HashMap::from([
                ("#wm".into(), WRITES_ATTR.into()),
                ("#k".into(), key.key.clone()),
                ("#v".into(), "version".into()),
                ("#d".into(), DELETED_ATTR.into()),
                ("#c".into(), "content".into()),
                ("#f".into(), FENCE_ATTR.into()),
            ]),
            values: HashMap::from([
                (":one".into(), number_attr(1)),
                (":t".into(), number_attr(key.issued_ns)),
            ]),
        };
        if let Some((info_key, info)) = key.info() {
            expr.names.insert("#i".into(), info_key.to_owned());
            expr.values.insert(":info".into(), string_attr(info));
            expr.set.push("#wm.#i = :info".into());
        }
        match edit {
            Edit::Update(content) => {
                expr.names.insert("#t".into(), "updatedNs".into());
                expr.values
                    .insert(":c".into(), string_attr(content.clone()));
                expr.set.extend(["#c = :c".into(), "#t = :t".into()]);
            }
            Edit::Delete => {
                expr.names.insert("#x".into(), EXPIRES_AT_ATTR.into());
                expr.values
                    .insert(":x".into(), expires_after(change.now, TOMBSTONE_TTL));
                expr.set.extend(["#d = :t".into(), "#x = :x".into()]);
                expr.remove.push("#c".to_owned());
            }
        }
        expr
    }

    /// The condition: at the version `prune` was planned from (and the old
    /// entries dropped, the fence raised), or on room in the record, the
    /// fence and the caller's expected version.
    fn guard(&mut self, change: &Change, key: &WriteKey, prune: Option<Prune>) {
        let Some(prune) = prune else {
            self.values
                .insert(":issued".into(), number_attr(key.issued_ns));
            let room = super::recent::CAPACITY - usize::from(key.request.is_some());
            self.values.insert(":room".into(), number_attr(room));
            self.condition.push_str(
                " AND attribute_exists(noteId) AND size(#wm) < :room \
                 AND (attribute_not_exists(#f) OR #f < :issued)",
            );
            if let Some(expected) = change.expected_version {
                self.values
                    .insert(":expected".into(), number_attr(expected));
                self.condition.push_str(" AND #v = :expected");
            }
            return;
        };
        // Exactly the item planned from: no fence or size check needed.
        self.condition.push_str(" AND #v = :seen");
        self.values
            .insert(":seen".into(), number_attr(prune.seen_version));
        for (n, key) in prune.remove.into_iter().enumerate() {
            self.names.insert(format!("#p{n}"), key);
            self.remove.push(format!("#wm.#p{n}"));
        }
        self.values.insert(":f".into(), number_attr(prune.fence));
        self.set.push("#f = :f".into());
    }
}

/// How long a write may go on: attempts after transient failures, steps
/// after failed conditions, and one deadline for all.
struct Budget {
    started: Instant,
    deadline: Duration,
    transient_left: u32,
    steps_left: u32,
    backoff: Duration,
}

impl Budget {
    /// The pause before another attempt after a failure (`transient`: worth
    /// another), or `None` when the write must give up.
    fn backoff(&mut self, transient: bool) -> Option<Duration> {
        self.transient_left = self.transient_left.saturating_sub(1);
        let pause = self.backoff;
        if !transient || self.transient_left == 0 || self.started.elapsed() + pause > self.deadline
        {
            return None;
        }
        self.backoff = (self.backoff * 2).min(Duration::from_millis(400));
        Some(pause)
    }

    /// Counts a step after a failed condition; `false` when none is left.
    fn step(&mut self) -> bool {
        self.steps_left = self.steps_left.saturating_sub(1);
        self.steps_left > 0 && self.started.elapsed() <= self.deadline
    }
}

/// What to do after a failed condition.
enum Step {
    /// Answer this.
    Done(Result<Outcome, StoreError>),
    /// Send the next attempt in this shape.
    Again(Next),
    /// Issue the write again after this fence.
    Reissue(u64),
}

/// One update or delete: what it writes, and under what key.
struct Write<'a> {
    owner: &'a str,
    note_id: Uuid,
    edit: Edit,
    change: Change,
    key: WriteKey,
}

impl Write<'_> {
    /// The note as this write left it, at `version`, issued at `issued_ns`.
    fn outcome(&self, item: &Item, version: i64, issued_ns: u64) -> Result<Outcome, StoreError> {
        Ok(match &self.edit {
            Edit::Delete => Outcome::Deleted,
            Edit::Update(content) => Outcome::Applied(Note {
                note_id: self.note_id,
                owner: self.owner.to_owned(),
                content: content.clone(),
                create_time: time_from_nanos(read_number(item, "createdNs")?),
                update_time: time_from_nanos(issued_ns),
                version,
            }),
        })
    }

    /// What the item a failed condition returned says of this write.
    fn judge(&self, item: &Item, unsure: bool) -> Result<Step, StoreError> {
        let recent = Recent::of(item)?;
        Ok(match recent.find(&self.key, item) {
            Seen::Applied { version, issued_ns } => {
                Step::Done(self.outcome(item, version, issued_ns))
            }
            Seen::Reused => Step::Done(Err(StoreError::RequestIdReused(
                self.change.request_id.clone().unwrap_or_default(),
            ))),
            Seen::Fenced { .. } | Seen::Absent if item.contains_key(DELETED_ATTR) => {
                Step::Done(Err(StoreError::NotFound(self.note_id)))
            }
            Seen::Fenced { .. } if unsure => Step::Done(Err(StoreError::Unavailable(
                "the outcome of this write is unknown (it can no longer be applied); read the \
                 note and retry"
                    .into(),
            ))),
            Seen::Fenced { fence } => Step::Reissue(fence),
            Seen::Absent => {
                let actual: i64 = read_number(item, "version")?;
                match self.change.expected_version {
                    Some(expected) if expected != actual => {
                        Step::Done(Err(StoreError::VersionMismatch {
                            note_id: self.note_id,
                            expected,
                            actual,
                        }))
                    }
                    _ if !recent.present => Step::Again(Next::MakeRecord),
                    _ if recent.is_full(&self.key) => {
                        Step::Again(Next::Prune(recent.prune(actual)))
                    }
                    // Changed between the condition and now: try again.
                    _ => Step::Again(Next::Write),
                }
            }
        })
    }
}

/// The item a failed condition returned (`Some(None)` when it returned
/// none), or `None` for any other error.
fn failed_condition(
    err: &SdkError<UpdateItemError, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> Option<Option<Item>> {
    match err {
        SdkError::ServiceError(e) => match e.err() {
            UpdateItemError::ConditionalCheckFailedException(c) => Some(c.item().cloned()),
            _ => None,
        },
        _ => None,
    }
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
        let key = match &change.request_id {
            Some(id) => WriteKey::requested(id, &change.digest(&edit), issued),
            None => WriteKey::plain(issued),
        };
        let mut write = Write {
            owner,
            note_id,
            edit,
            change,
            key,
        };
        let mut budget = self.write_budget();
        // Whether an attempt of `write` may have been applied unseen.
        let mut unsure = false;
        let mut next = Next::Write;
        loop {
            let prune = match std::mem::replace(&mut next, Next::Write) {
                Next::MakeRecord => {
                    self.make_record(owner, note_id).await?;
                    continue;
                }
                Next::Prune(prune) => Some(prune),
                Next::Write => None,
            };
            let err = match self.send(&write, prune).await {
                Ok(out) => return applied(&write.edit, out),
                Err(err) => err,
            };
            let Some(found) = failed_condition(&err) else {
                unsure |= may_have_applied(&err);
                match budget.backoff(transient(&err)) {
                    Some(pause) => tokio::time::sleep(pause).await,
                    None => return Err(self.gave_up(err, unsure)),
                }
                continue;
            };
            let item = match found {
                Some(item) => item,
                None => self.current(owner, note_id).await?,
            };
            match write.judge(&item, unsure)? {
                Step::Done(outcome) => return outcome,
                Step::Again(shape) => next = shape,
                Step::Reissue(fence) => {
                    write.key = write.key.reissued(fence, nanos(SystemTime::now()));
                }
            }
            if !budget.step() {
                return Err(StoreError::Unavailable(
                    format!("the write of note {note_id} kept meeting other writes; retry").into(),
                ));
            }
        }
    }

    /// The note's item as it is now (a failed condition returned none).
    async fn current(&self, owner: &str, note_id: Uuid) -> Result<Item, StoreError> {
        self.read_item(note_key(owner, note_id))
            .await?
            .ok_or(StoreError::NotFound(note_id))
    }

    /// Sends one attempt of `write` (optionally pruning), without the SDK's
    /// own retries.
    async fn send(
        &self,
        write: &Write<'_>,
        prune: Option<Prune>,
    ) -> Result<
        aws_sdk_dynamodb::operation::update_item::UpdateItemOutput,
        SdkError<UpdateItemError, aws_sdk_dynamodb::config::http::HttpResponse>,
    > {
        let no_sdk_retries = aws_sdk_dynamodb::config::Builder::default()
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled());
        let request = self.attempt(write, prune);
        observed(
            "UpdateItem",
            request.customize().config_override(no_sdk_retries).send(),
        )
        .await
    }

    /// The write's budget, from the client's retry and timeout settings.
    fn write_budget(&self) -> Budget {
        let config = self.client.config();
        let attempts = config.retry_config().map_or(
            3,
            aws_sdk_dynamodb::config::retry::RetryConfig::max_attempts,
        );
        let deadline = config
            .timeout_config()
            .and_then(|t| t.operation_timeout())
            .unwrap_or(Duration::from_secs(3));
        Budget {
            started: Instant::now(),
            deadline,
            transient_left: attempts.max(1),
            steps_left: EXTRA_STEPS,
            backoff: Duration::from_millis(25),
        }
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
        write: &Write<'_>,
        prune: Option<Prune>,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let mut expr = Expression::changes(&write.edit, &write.change, &write.key);
        expr.guard(&write.change, &write.key, prune);
        let mut update = format!("SET {}", expr.set.join(", "));
        if !expr.remove.is_empty() {
            update.push_str(&format!(" REMOVE {}", expr.remove.join(", ")));
        }
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(note_key(write.owner, write.note_id)))
            .update_expression(update)
            .condition_expression(expr.condition)
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values(Some(expr.values))
            .return_values(match write.edit {
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
