//! DynamoDB backend: the production store shared by every instance.
//!
//! One round trip per RPC: create is a conditional put (a two-item
//! transaction with a `request_id`); update and delete are conditional
//! writes on `version` with no read first; get is a strongly consistent
//! GetItem; list is a strongly consistent Query on the caller's partition.
//!
//! Every write takes effect at most once, whatever the retries or the
//! network do: a create's id is new to its call (or its `request_id` record
//! is written in the same transaction), and updates and deletes carry a key
//! that the note's record of recent writes remembers ([`write`]).
//!
//! - [`table`]: creating and checking the table (`init-table`, start-up).
//! - [`item`]: how notes and idempotency records are encoded as items.
//! - [`error`]: the one mapping of SDK failures into [`StoreError`].
//! - [`recent`]: the record of a note's recent writes.
//! - [`write`]: updates and deletes, applied at most once.

mod error;
mod item;
mod recent;
mod revocations;
mod table;
mod write;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    error::ProvideErrorMetadata,
    types::{Put, TransactWriteItem},
};
use uuid::Uuid;

pub use item::{EXPIRES_AT_ATTR, NOTE_ID_ATTR, OWNER_ATTR};

use self::{
    error::{map_sdk_error, observed},
    item::{
        DELETED_ATTR, Item, corrupt, note_from_item, note_key, note_of_record, note_to_item,
        request_key, request_record, string_attr,
    },
};
use super::{Change, Edit, NewNote, Note, NotePage, NoteStore, Revocation, StoreError};

/// Attempts at a CreateNote whose transaction lost a race before the winner's
/// record became readable.
const CREATE_RACE_ATTEMPTS: usize = 5;

/// Notes in a DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
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
}

#[async_trait]
impl NoteStore for DynamoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.check_table().await
    }

    async fn revoke_tokens(&self, revocation: &Revocation) -> Result<(), StoreError> {
        self.put_revocation(revocation).await
    }

    async fn revocations_since(&self, since_ns: u64) -> Result<Vec<Revocation>, StoreError> {
        self.revocations_after(since_ns).await
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
            Some(item) if !item.contains_key(DELETED_ATTR) => note_from_item(&item),
            _ => Err(StoreError::NotFound(note_id)),
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
                    // Tombstones of deleted notes are skipped.
                    .filter_expression("attribute_not_exists(#d)")
                    .expression_attribute_names("#d", DELETED_ATTR)
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
        change: Change,
    ) -> Result<Note, StoreError> {
        match self
            .write_once(owner, note_id, Edit::Update(content), change)
            .await?
        {
            write::Outcome::Applied(note) => Ok(note),
            write::Outcome::Deleted => Err(corrupt("an update answered as a delete")),
        }
    }

    async fn delete(&self, owner: &str, note_id: Uuid, change: Change) -> Result<(), StoreError> {
        self.write_once(owner, note_id, Edit::Delete, change)
            .await
            .map(|_| ())
    }
}
