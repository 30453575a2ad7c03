//! DynamoDB backend: the production store shared by every instance.
//!
//! One round trip per RPC: create is a conditional put (a two-item
//! transaction with a `request_id`); update and delete are conditional
//! writes on `version` with no read first; get is a strongly consistent
//! GetItem; list is a strongly consistent Query on the caller's partition.
//!
//! Writes stay correct when a reply is lost and the write is sent again
//! (the SDK retries timeouts and broken connections): an update stamps the
//! item with its own `writeId` and is conditional on the item not carrying
//! it, so a repeat finds its first attempt applied and answers with that
//! note instead of applying twice or reporting a conflict; a create's id is
//! new to this call, so a repeat that finds it taken finds its own note; a
//! delete is retried by the store itself, which knows an attempt whose
//! reply was lost may have deleted the note.
//!
//! - [`table`]: creating and checking the table (`init-table`, start-up).
//! - [`item`]: how notes and idempotency records are encoded as items.
//! - [`error`]: the one mapping of SDK failures into [`StoreError`].

mod error;
mod item;
mod table;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    operation::{delete_item::DeleteItemError, update_item::UpdateItemError},
    types::{
        AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
    },
};
use uuid::Uuid;

pub use item::{EXPIRES_AT_ATTR, NOTE_ID_ATTR, OWNER_ATTR};

use self::{
    error::{map_sdk_error, observed},
    item::{
        Item, corrupt, note_from_item, note_key, note_of_record, note_to_item, number_attr,
        number_of_nanos, read_number, request_key, request_record, string_attr,
    },
};
use super::{NewNote, Note, NotePage, NoteStore, StoreError};

/// Attempts at a CreateNote whose transaction lost a race before the winner's
/// record became readable.
const CREATE_RACE_ATTEMPTS: usize = 5;

/// Notes in a DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// Operation errors that can report a failed `ConditionExpression`.
trait ConditionCheck {
    /// `Some(item it found, if returned)` when the write's condition failed;
    /// `None` for every other error.
    fn failed_condition_item(&self) -> Option<Option<&Item>>;
}

impl ConditionCheck for UpdateItemError {
    fn failed_condition_item(&self) -> Option<Option<&Item>> {
        match self {
            Self::ConditionalCheckFailedException(c) => Some(c.item()),
            _ => None,
        }
    }
}

impl ConditionCheck for DeleteItemError {
    fn failed_condition_item(&self) -> Option<Option<&Item>> {
        match self {
            Self::ConditionalCheckFailedException(c) => Some(c.item()),
            _ => None,
        }
    }
}

/// The condition for a write on an existing note, optionally at a version.
fn version_condition(expected: Option<i64>) -> &'static str {
    match expected {
        Some(_) => "attribute_exists(noteId) AND #v = :expected",
        None => "attribute_exists(noteId)",
    }
}

/// The attribute an update stamps with the id of its call.
const WRITE_ID_ATTR: &str = "writeId";

/// What a conditional write found.
enum Written<O> {
    /// Applied now.
    Now(O),
    /// Applied by an earlier attempt of this same call (whose reply was
    /// lost): the item as that attempt left it.
    Earlier(Item),
}

/// Attempts of a delete, which the store retries itself (see the module doc).
const DELETE_ATTEMPTS: u32 = 3;

impl DynamoStore {
    /// A store on `table` through `client`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The DynamoDB client it sends requests with.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The idempotency record of `request_id`, if it exists.
    async fn read_request_record(
        &self,
        owner: &str,
        request_id: &str,
    ) -> Result<Option<Item>, StoreError> {
        self.read_item(request_key(owner, request_id)).await
    }

    /// A strongly consistent GetItem of `key`.
    async fn read_item(&self, key: Item) -> Result<Option<Item>, StoreError> {
        let out = observed(
            "GetItem",
            self.client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .consistent_read(true)
                .send(),
        )
        .await
        .map_err(|e| map_sdk_error(e, &self.table))?;
        Ok(out.item)
    }

    /// A transaction item putting `item` only if no item has its key.
    fn put_if_absent(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(noteId)")
            .build()
            .map_err(|e| {
                StoreError::Internal("building a transaction".into(), Some(Box::new(e)))
            })?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    async fn create_idempotent(
        &self,
        owner: &str,
        request_id: &str,
        note: Note,
    ) -> Result<Note, StoreError> {
        for attempt in 0..CREATE_RACE_ATTEMPTS {
            let sent = observed(
                "TransactWriteItems",
                self.client
                    .transact_write_items()
                    .transact_items(self.put_if_absent(note_to_item(&note))?)
                    .transact_items(self.put_if_absent(request_record(owner, request_id, &note))?)
                    .send(),
            )
            .await;
            let err = match sent {
                Ok(_) => return Ok(note),
                Err(err) => err,
            };
            let cancelled = matches!(
                err.code(),
                Some("TransactionCanceledException" | "TransactionConflictException")
            );
            if !cancelled {
                return Err(map_sdk_error(err, &self.table));
            }
            // Someone used this request_id first, or is doing so right now.
            if let Some(record) = self.read_request_record(owner, request_id).await? {
                return note_of_record(&record, owner, request_id, note.content);
            }
            tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
        }
        Err(StoreError::Unavailable(
            format!("CreateNote with request_id {request_id:?} kept conflicting").into(),
        ))
    }

    /// The result of a conditional write on `note_id`: its output, or why its
    /// condition failed (not found or another version, judged from the item
    /// the backend returned, read only when it returned none), or the
    /// mapped SDK failure.
    async fn conditional_write<O, E>(
        &self,
        sent: Result<O, SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>>,
        owner: &str,
        note_id: Uuid,
        expected: Option<i64>,
        write_id: Option<&str>,
    ) -> Result<Written<O>, StoreError>
    where
        E: ConditionCheck + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let err = match sent {
            Ok(out) => return Ok(Written::Now(out)),
            Err(err) => err,
        };
        let found = match &err {
            SdkError::ServiceError(e) => e.err().failed_condition_item().map(|i| i.cloned()),
            _ => None,
        };
        let Some(found) = found else {
            return Err(map_sdk_error(err, &self.table));
        };
        let current = match found {
            Some(item) => Some(item),
            None => self.read_item(note_key(owner, note_id)).await?,
        };
        if let (Some(item), Some(write_id)) = (&current, write_id)
            && matches!(item.get(WRITE_ID_ATTR), Some(AttributeValue::S(id)) if id == write_id)
        {
            return Ok(Written::Earlier(item.clone()));
        }
        Err(match (current, expected) {
            (None, _) => StoreError::NotFound(note_id),
            (Some(item), Some(expected)) => StoreError::VersionMismatch {
                note_id,
                expected,
                actual: read_number(&item, "version")?,
            },
            // Unconditional write failed only on existence, yet the note is
            // there now: it was re-created concurrently; ask to retry.
            (Some(_), None) => {
                StoreError::Unavailable("note changed during the write; retry".into())
            }
        })
    }
}

#[async_trait]
impl NoteStore for DynamoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.check_table().await
    }

    async fn create(&self, owner: &str, new: NewNote) -> Result<Note, StoreError> {
        let note = Note {
            note_id: new.note_id,
            owner: owner.to_owned(),
            content: new.content,
            create_time: new.now,
            update_time: new.now,
            version: 1,
        };
        if let Some(request_id) = &new.request_id {
            return self.create_idempotent(owner, request_id, note).await;
        }
        let put = observed(
            "PutItem",
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(note_to_item(&note)))
                .condition_expression("attribute_not_exists(noteId)")
                .send(),
        )
        .await;
        match put {
            Ok(_) => Ok(note),
            // The id is new to this call: if it is taken, an earlier attempt
            // of this same put took it (its reply was lost).
            Err(err) if err.code() == Some("ConditionalCheckFailedException") => Ok(note),
            Err(err) => Err(map_sdk_error(err, &self.table)),
        }
    }

    async fn get(&self, owner: &str, note_id: Uuid) -> Result<Note, StoreError> {
        match self.read_item(note_key(owner, note_id)).await? {
            Some(item) => note_from_item(&item),
            None => Err(StoreError::NotFound(note_id)),
        }
    }

    async fn list(
        &self,
        owner: &str,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<NotePage, StoreError> {
        let mut notes = Vec::with_capacity(limit + 1);
        let mut start = after.map(|after| note_key(owner, after));
        // Ask for one more than the page: if it comes, there is a next page.
        // Loop only when DynamoDB stops early (1 MB per response) or returns
        // an empty page with a continuation key.
        loop {
            let want = limit + 1 - notes.len();
            let out = observed(
                "Query",
                self.client
                    .query()
                    .table_name(&self.table)
                    .key_condition_expression("#u = :u AND #n >= :floor")
                    .expression_attribute_names("#u", OWNER_ATTR)
                    .expression_attribute_names("#n", NOTE_ID_ATTR)
                    .expression_attribute_values(":u", string_attr(owner))
                    // Idempotency records sort under "#req#", before every UUID.
                    .expression_attribute_values(":floor", string_attr("0"))
                    .scan_index_forward(false)
                    .consistent_read(true)
                    .limit(i32::try_from(want).unwrap_or(i32::MAX))
                    .set_exclusive_start_key(start.take())
                    .send(),
            )
            .await
            .map_err(|e| map_sdk_error(e, &self.table))?;
            for item in out.items() {
                notes.push(note_from_item(item)?);
            }
            if notes.len() > limit {
                notes.truncate(limit);
                let next_after = notes.last().map(|n| n.note_id);
                return Ok(NotePage { notes, next_after });
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => {
                    return Ok(NotePage {
                        notes,
                        next_after: None,
                    });
                }
            }
        }
    }

    async fn update(
        &self,
        owner: &str,
        note_id: Uuid,
        content: String,
        expected_version: Option<i64>,
        now: SystemTime,
    ) -> Result<Note, StoreError> {
        let write_id = Uuid::new_v4().to_string();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(note_key(owner, note_id)))
            .update_expression("SET #c = :c, #t = :t, #w = :w ADD #v :one")
            .condition_expression(format!(
                "{} AND (attribute_not_exists(#w) OR #w <> :w)",
                version_condition(expected_version)
            ))
            .expression_attribute_names("#w", WRITE_ID_ATTR)
            .expression_attribute_values(":w", string_attr(write_id.clone()))
            .expression_attribute_names("#c", "content")
            .expression_attribute_names("#t", "updatedNs")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":c", string_attr(content))
            .expression_attribute_values(":t", number_of_nanos(now))
            .expression_attribute_values(":one", number_attr(1))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(expected) = expected_version {
            request = request.expression_attribute_values(":expected", number_attr(expected));
        }
        let sent = observed("UpdateItem", request.send()).await;
        match self
            .conditional_write(sent, owner, note_id, expected_version, Some(&write_id))
            .await?
        {
            Written::Now(out) => note_from_item(
                out.attributes()
                    .ok_or_else(|| corrupt("UpdateItem returned nothing"))?,
            ),
            Written::Earlier(item) => note_from_item(&item),
        }
    }

    async fn delete(
        &self,
        owner: &str,
        note_id: Uuid,
        expected_version: Option<i64>,
    ) -> Result<(), StoreError> {
        // The SDK's own retries are off for deletes: after a lost reply,
        // only this loop knows the note may be gone because of this call.
        let no_sdk_retries = aws_sdk_dynamodb::config::Builder::default()
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled());
        let mut lost_a_reply = false;
        for attempt in 1..=DELETE_ATTEMPTS {
            let mut request = self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(note_key(owner, note_id)))
                .condition_expression(version_condition(expected_version))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                );
            if let Some(expected) = expected_version {
                request = request
                    .expression_attribute_names("#v", "version")
                    .expression_attribute_values(":expected", number_attr(expected));
            }
            let sent = observed(
                "DeleteItem",
                request
                    .customize()
                    .config_override(no_sdk_retries.clone())
                    .send(),
            )
            .await;
            let transient = matches!(
                &sent,
                Err(SdkError::TimeoutError(_)
                    | SdkError::DispatchFailure(_)
                    | SdkError::ResponseError(_))
            ) || sent
                .as_ref()
                .err()
                .and_then(ProvideErrorMetadata::code)
                .is_some_and(error::is_throttling);
            if transient && attempt < DELETE_ATTEMPTS {
                // The request may have reached DynamoDB and been applied.
                lost_a_reply = true;
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                continue;
            }
            return match self
                .conditional_write(sent, owner, note_id, expected_version, None)
                .await
            {
                Ok(_) => Ok(()),
                // Gone now, after an attempt whose reply was lost: that
                // attempt deleted it.
                Err(StoreError::NotFound(_)) if lost_a_reply => Ok(()),
                Err(err) => Err(err),
            };
        }
        Err(StoreError::Unavailable(
            format!("DeleteItem of {note_id} kept failing").into(),
        ))
    }
}
