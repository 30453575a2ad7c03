//! DynamoDB backend: the production store shared by every instance.
//!
//! One round trip per RPC: create is a conditional put (a two-item
//! transaction with a `request_id`); update and delete are conditional
//! writes on `version` with no read first; get is a strongly consistent
//! GetItem; list is a strongly consistent Query on the caller's partition.
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
    types::{Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem},
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
    ) -> Result<O, StoreError>
    where
        E: ConditionCheck + ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let err = match sent {
            Ok(out) => return Ok(out),
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
        observed(
            "PutItem",
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(note_to_item(&note)))
                .condition_expression("attribute_not_exists(noteId)")
                .send(),
        )
        .await
        .map_err(|e| map_sdk_error(e, &self.table))?;
        Ok(note)
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
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(note_key(owner, note_id)))
            .update_expression("SET #c = :c, #t = :t ADD #v :one")
            .condition_expression(version_condition(expected_version))
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
        let out = self
            .conditional_write(sent, owner, note_id, expected_version)
            .await?;
        note_from_item(
            out.attributes()
                .ok_or_else(|| corrupt("UpdateItem returned nothing"))?,
        )
    }

    async fn delete(
        &self,
        owner: &str,
        note_id: Uuid,
        expected_version: Option<i64>,
    ) -> Result<(), StoreError> {
        let mut request = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(note_key(owner, note_id)))
            .condition_expression(version_condition(expected_version))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(expected) = expected_version {
            request = request
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":expected", number_attr(expected));
        }
        let sent = observed("DeleteItem", request.send()).await;
        self.conditional_write(sent, owner, note_id, expected_version)
            .await?;
        Ok(())
    }
}
