//! DynamoDB backend.
//!
//! Table: `userId` (S, HASH) + `noteId` (S, RANGE), on-demand billing. A note
//! is one item keyed by its owner and id. An idempotency record for a
//! CreateNote `request_id` lives in the owner's partition under the sort key
//! `#req#<request_id>`; `#` sorts before every UUID, so listings (which ask
//! for `noteId >= "0"`) never see those records.
//!
//! One round trip per RPC: create is a conditional put (a two-item
//! transaction with a `request_id`); update and delete are conditional
//! writes on `version` with no read first; get is a strongly consistent
//! GetItem; list is a strongly consistent Query on the caller's partition.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use aws_sdk_dynamodb::{
    Client,
    error::{ProvideErrorMetadata, SdkError},
    types::{
        AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
        ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
        TimeToLiveSpecification, TransactWriteItem,
    },
};
use uuid::Uuid;

use super::{NewNote, Note, NotePage, NoteStore, StoreError};

type Item = HashMap<String, AttributeValue>;

const USER_ID: &str = "userId";
const NOTE_ID: &str = "noteId";
const REQUEST_PREFIX: &str = "#req#";
/// Idempotency records expire (DynamoDB TTL on `expiresAt`) after this long.
const REQUEST_RECORD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Attempts at a CreateNote whose transaction lost a race before the winner's
/// record became readable.
const CREATE_RACE_ATTEMPTS: usize = 5;

/// Notes in a DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn key(owner: &str, sort: String) -> Item {
    HashMap::from([
        (USER_ID.to_owned(), s(owner)),
        (NOTE_ID.to_owned(), s(sort)),
    ])
}

fn sha256_hex(content: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("stored item is corrupt: {what}"), None)
}

fn get_s<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(name)),
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| corrupt(name)),
        _ => Err(corrupt(name)),
    }
}

fn time_from_nanos(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

fn note_item(note: &Note) -> Item {
    let mut item = key(&note.user_id, note.note_id.to_string());
    item.insert("content".into(), s(note.content.clone()));
    item.insert("createdNs".into(), n(nanos(note.create_time)));
    item.insert("updatedNs".into(), n(nanos(note.update_time)));
    item.insert("version".into(), n(note.version));
    item
}

fn note_from_item(item: &Item) -> Result<Note, StoreError> {
    Ok(Note {
        note_id: Uuid::try_parse(get_s(item, NOTE_ID)?).map_err(|_| corrupt(NOTE_ID))?,
        user_id: get_s(item, USER_ID)?.to_owned(),
        content: get_s(item, "content")?.to_owned(),
        create_time: time_from_nanos(get_n(item, "createdNs")?),
        update_time: time_from_nanos(get_n(item, "updatedNs")?),
        version: get_n(item, "version")?,
    })
}

fn request_item(owner: &str, request_id: &str, note: &Note) -> Item {
    let expires = SystemTime::now() + REQUEST_RECORD_TTL;
    let mut item = key(owner, format!("{REQUEST_PREFIX}{request_id}"));
    item.insert("noteRef".into(), s(note.note_id.to_string()));
    item.insert("contentSha256".into(), s(sha256_hex(&note.content)));
    item.insert("createdNs".into(), n(nanos(note.create_time)));
    item.insert(
        "expiresAt".into(),
        n(expires
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()),
    );
    item
}

/// Maps an SDK failure that is not an expected condition.
fn classify<E>(
    err: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    table: &str,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StoreError::Unavailable(Box::new(err))
        }
        SdkError::ServiceError(_) => match code.as_deref() {
            Some(
                "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "ThrottlingException"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "TransactionConflictException"
                | "TransactionInProgressException",
            ) => StoreError::Unavailable(Box::new(err)),
            Some("ResourceNotFoundException") => StoreError::Internal(
                format!("DynamoDB table {table:?} does not exist"),
                Some(Box::new(err)),
            ),
            Some(
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "MissingAuthenticationTokenException",
            ) => StoreError::Internal(
                format!("access to DynamoDB table {table:?} was denied"),
                Some(Box::new(err)),
            ),
            _ => StoreError::Internal(
                format!("DynamoDB request on {table:?} failed"),
                Some(Box::new(err)),
            ),
        },
        _ => StoreError::Internal(
            format!("DynamoDB request on {table:?} failed"),
            Some(Box::new(err)),
        ),
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

    /// Creates the table if it is missing (on-demand billing, TTL on
    /// `expiresAt`) and waits until it is ACTIVE. Safe to run twice.
    pub async fn init_table(&self, wait: Duration) -> Result<(), StoreError> {
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr(USER_ID))
            .attribute_definitions(attr(NOTE_ID))
            .key_schema(key_element(USER_ID, KeyType::Hash))
            .key_schema(key_element(NOTE_ID, KeyType::Range))
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table = %self.table, "table created"),
            Err(err) if err.code() == Some("ResourceInUseException") => {
                tracing::info!(table = %self.table, "table exists")
            }
            Err(err) => return Err(classify(err, &self.table)),
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let out = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| classify(e, &self.table))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(StoreError::Internal(
                    format!(
                        "table {:?} did not become ACTIVE within {wait:?}",
                        self.table
                    ),
                    None,
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ttl = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name("expiresAt")
                    .enabled(true)
                    .build()
                    .map_err(|e| {
                        StoreError::Internal("TTL specification".into(), Some(Box::new(e)))
                    })?,
            )
            .send()
            .await;
        if let Err(err) = ttl {
            // Already enabled answers ValidationException; either way notes work without it.
            tracing::info!(table = %self.table, code = ?err.code(), "TTL on expiresAt not changed");
        }
        self.check_table().await
    }

    /// Checks that the table exists with the expected key schema.
    pub async fn check_table(&self) -> Result<(), StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| classify(e, &self.table))?;
        let table = out
            .table()
            .ok_or_else(|| StoreError::Internal("DescribeTable returned no table".into(), None))?;
        let schema: Vec<(&str, &KeyType)> = table
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name(), k.key_type()))
            .collect();
        let types: HashMap<&str, &ScalarAttributeType> = table
            .attribute_definitions()
            .iter()
            .map(|a| (a.attribute_name(), a.attribute_type()))
            .collect();
        let expected = [(USER_ID, &KeyType::Hash), (NOTE_ID, &KeyType::Range)];
        let string_keys = [USER_ID, NOTE_ID]
            .iter()
            .all(|k| types.get(k) == Some(&&ScalarAttributeType::S));
        if schema != expected || !string_keys {
            return Err(StoreError::Internal(
                format!(
                    "table {:?} has key schema {schema:?}; expected userId (S, HASH) and noteId (S, RANGE)",
                    self.table
                ),
                None,
            ));
        }
        Ok(())
    }

    /// The first note created with `request_id`, if its record exists.
    async fn request_record(
        &self,
        owner: &str,
        request_id: &str,
    ) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, format!("{REQUEST_PREFIX}{request_id}"))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(e, &self.table))?;
        Ok(out.item)
    }

    fn put(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
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
            let sent = self
                .client
                .transact_write_items()
                .transact_items(self.put(note_item(&note))?)
                .transact_items(self.put(request_item(owner, request_id, &note))?)
                .send()
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
                return Err(classify(err, &self.table));
            }
            // Someone used this request_id first, or is doing so right now.
            if let Some(record) = self.request_record(owner, request_id).await? {
                if get_s(&record, "contentSha256")? != sha256_hex(&note.content) {
                    return Err(StoreError::RequestIdReused(request_id.to_owned()));
                }
                let created = time_from_nanos(get_n(&record, "createdNs")?);
                return Ok(Note {
                    note_id: Uuid::try_parse(get_s(&record, "noteRef")?)
                        .map_err(|_| corrupt("noteRef"))?,
                    user_id: owner.to_owned(),
                    content: note.content,
                    create_time: created,
                    update_time: created,
                    version: 1,
                });
            }
            tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
        }
        Err(StoreError::Unavailable(
            format!("CreateNote with request_id {request_id:?} kept conflicting").into(),
        ))
    }

    /// Classifies a failed conditional write from the item it found (if the
    /// backend returned it), reading the item only when it did not.
    async fn condition_failed(
        &self,
        owner: &str,
        note_id: Uuid,
        expected: Option<i64>,
        old: Option<&Item>,
    ) -> StoreError {
        let current = match old {
            Some(item) => Some(item.clone()),
            None => match self.fetch(owner, note_id).await {
                Ok(item) => item,
                Err(err) => return err,
            },
        };
        match (current, expected) {
            (None, _) => StoreError::NotFound(note_id),
            (Some(item), Some(expected)) => match get_n::<i64>(&item, "version") {
                Ok(actual) => StoreError::VersionMismatch {
                    note_id,
                    expected,
                    actual,
                },
                Err(err) => err,
            },
            // Unconditional write failed only on existence, yet the note is
            // there now: it was re-created concurrently; ask to retry.
            (Some(_), None) => {
                StoreError::Unavailable("note changed during the write; retry".into())
            }
        }
    }

    async fn fetch(&self, owner: &str, note_id: Uuid) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, note_id.to_string())))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(e, &self.table))?;
        Ok(out.item)
    }
}

fn attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("name and type are set")
}

fn key_element(name: &str, key_type: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(key_type)
        .build()
        .expect("name and type are set")
}

/// The condition for a write on an existing note, optionally at a version.
fn version_condition(expected: Option<i64>) -> &'static str {
    match expected {
        Some(_) => "attribute_exists(noteId) AND #v = :expected",
        None => "attribute_exists(noteId)",
    }
}

#[async_trait]
impl NoteStore for DynamoStore {
    async fn create(&self, owner: &str, new: NewNote) -> Result<Note, StoreError> {
        let note = Note {
            note_id: new.note_id,
            user_id: owner.to_owned(),
            content: new.content,
            create_time: new.now,
            update_time: new.now,
            version: 1,
        };
        if let Some(request_id) = &new.request_id {
            return self.create_idempotent(owner, request_id, note).await;
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(note_item(&note)))
            .condition_expression("attribute_not_exists(noteId)")
            .send()
            .await
            .map_err(|e| classify(e, &self.table))?;
        Ok(note)
    }

    async fn get(&self, owner: &str, note_id: Uuid) -> Result<Note, StoreError> {
        match self.fetch(owner, note_id).await? {
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
        let mut start = after.map(|after| key(owner, after.to_string()));
        // Ask for one more than the page: if it comes, there is a next page.
        // Loop only when DynamoDB stops early (1 MB per response) or returns
        // an empty page with a continuation key.
        loop {
            let want = limit + 1 - notes.len();
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#u = :u AND #n >= :floor")
                .expression_attribute_names("#u", USER_ID)
                .expression_attribute_names("#n", NOTE_ID)
                .expression_attribute_values(":u", s(owner))
                .expression_attribute_values(":floor", s("0"))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(i32::try_from(want).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(e, &self.table))?;
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
            .set_key(Some(key(owner, note_id.to_string())))
            .update_expression("SET #c = :c, #t = :t ADD #v :one")
            .condition_expression(version_condition(expected_version))
            .expression_attribute_names("#c", "content")
            .expression_attribute_names("#t", "updatedNs")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":c", s(content))
            .expression_attribute_values(":t", n(nanos(now)))
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(expected) = expected_version {
            request = request.expression_attribute_values(":expected", n(expected));
        }
        match request.send().await {
            Ok(out) => note_from_item(
                out.attributes()
                    .ok_or_else(|| corrupt("UpdateItem returned nothing"))?,
            ),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let old = match e.err() {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
                        c.item().cloned()
                    }
                    _ => None,
                };
                Err(self
                    .condition_failed(owner, note_id, expected_version, old.as_ref())
                    .await)
            }
            Err(err) => Err(classify(err, &self.table)),
        }
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
            .set_key(Some(key(owner, note_id.to_string())))
            .condition_expression(version_condition(expected_version))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(expected) = expected_version {
            request = request
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(":expected", n(expected));
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                let old = match e.err() {
                    aws_sdk_dynamodb::operation::delete_item::DeleteItemError::ConditionalCheckFailedException(c) => {
                        c.item().cloned()
                    }
                    _ => None,
                };
                Err(self
                    .condition_failed(owner, note_id, expected_version, old.as_ref())
                    .await)
            }
            Err(err) => Err(classify(err, &self.table)),
        }
    }
}
