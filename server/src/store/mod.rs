//! Where notes live.
//!
//! The service talks to a [`NoteStore`]; each backend is one file:
//! - [`memory`]: the embedded in-memory store (dev mode, fast tests).
//! - [`dynamodb`]: DynamoDB, the production store shared by every instance
//!   (a folder: table set-up, item encoding, error mapping, the store).
//!
//! Every note method is scoped to one owner (the caller the auth layer
//! verified): there is no way to address another owner's notes through this
//! trait. Beside the notes, a store keeps the deployment's token revocation
//! list ([`Revocation`]), which every instance reads.

pub mod dynamodb;
pub mod memory;

use std::time::SystemTime;

use async_trait::async_trait;
use uuid::Uuid;

pub use dynamodb::DynamoStore;
pub use memory::MemoryStore;

/// A stored note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Server-made UUIDv7: sorts by creation time.
    pub note_id: Uuid,
    /// The owner: the caller that created it (`userId` in the table, `user_id` in the proto).
    pub owner: String,
    /// UTF-8 text.
    pub content: String,
    /// When it was created.
    pub create_time: SystemTime,
    /// When it was last changed.
    pub update_time: SystemTime,
    /// 1 on creation, +1 on every update.
    pub version: i64,
}

/// A note to create, already validated.
#[derive(Debug, Clone)]
pub struct NewNote {
    /// The id the server chose for it.
    pub note_id: Uuid,
    /// Its content.
    pub content: String,
    /// The creation time.
    pub now: SystemTime,
    /// The caller's idempotency key, if any.
    pub request_id: Option<String>,
}

/// A change to an existing note, already validated.
#[derive(Debug, Clone)]
pub struct Change {
    /// Apply only at this version; `None` is unconditional.
    pub expected_version: Option<i64>,
    /// The caller's idempotency key, if any: a repeat of the same request
    /// answers the first outcome; another request with it is refused.
    pub request_id: Option<String>,
    /// When the change is made (the note's new `update_time`).
    pub now: SystemTime,
}

/// What a [`Change`] does to the note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Replace the content and bump the version.
    Update(String),
    /// Delete the note.
    Delete,
}

impl Change {
    /// A digest of the request `edit` makes with this change, which tells a
    /// repeat of it (same digest) from another request reusing its
    /// `request_id`.
    pub fn digest(&self, edit: &Edit) -> String {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        match edit {
            Edit::Update(content) => {
                ctx.update(b"update\0");
                ctx.update(content.as_bytes());
            }
            Edit::Delete => ctx.update(b"delete\0"),
        }
        ctx.update(b"\0");
        ctx.update(&self.expected_version.unwrap_or(0).to_be_bytes());
        ctx.finish().as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// One page of a listing, newest first.
#[derive(Debug, Clone, Default)]
pub struct NotePage {
    /// The notes, newest first.
    pub notes: Vec<Note>,
    /// Set when more notes may follow: the id to continue after.
    pub next_after: Option<Uuid>,
}

/// Failures of a store; expected conditions are variants of their own.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such note for this owner.
    #[error("note {0} not found")]
    NotFound(Uuid),
    /// A conditional write found another version.
    #[error("note {note_id} is at version {actual}, not the expected {expected}")]
    VersionMismatch {
        /// The note.
        note_id: Uuid,
        /// The version the caller expected.
        expected: i64,
        /// The version stored.
        actual: i64,
    },
    /// The idempotency key was already used for another request.
    #[error("request_id {0:?} was already used for a different request")]
    RequestIdReused(String),
    /// The backend is unreachable, throttling or timed out; the call may be retried.
    #[error("note store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else: misconfiguration, denied access, corrupt data.
    #[error("note store failed: {0}")]
    Internal(
        String,
        #[source] Option<Box<dyn std::error::Error + Send + Sync>>,
    ),
}

/// What a token revocation names, within one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// One token, by its `jti`.
    Token(String),
    /// Every token of one sign-in (refresh token), by `origin_jti`.
    Session(String),
    /// Every token of one subject (`sub`).
    Subject(String),
    /// Every token of one app client (`client_id`).
    Client(String),
}

impl Revoked {
    /// Its kind's name in the store and in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Revoked::Token(_) => "jti",
            Revoked::Session(_) => "origin_jti",
            Revoked::Subject(_) => "sub",
            Revoked::Client(_) => "client_id",
        }
    }

    /// The value it names.
    pub fn value(&self) -> &str {
        match self {
            Revoked::Token(v) | Revoked::Session(v) | Revoked::Subject(v) | Revoked::Client(v) => v,
        }
    }

    /// From a kind's name and a value.
    pub fn from_parts(kind: &str, value: String) -> Option<Self> {
        Some(match kind {
            "jti" => Revoked::Token(value),
            "origin_jti" => Revoked::Session(value),
            "sub" => Revoked::Subject(value),
            "client_id" => Revoked::Client(value),
            _ => return None,
        })
    }
}

/// One entry of the token revocation list: the tokens of `issuer` that
/// `what` names and that were issued (`iat`) at or before `before` are
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The issuer (`iss`) whose tokens it covers.
    pub issuer: String,
    /// Which of its tokens.
    pub what: Revoked,
    /// Tokens issued at or before this (Unix seconds) are refused;
    /// `u64::MAX`: every one, whenever issued.
    pub before: u64,
    /// When it was recorded (Unix ns): the list's order.
    pub recorded_ns: u64,
}

/// How long a revocation is kept: the longest a Cognito token lives (24 h)
/// after the last token it covers was issued, and a margin.
pub const REVOCATION_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 3600 + 300);

/// How far back a reader of the list looks before its previous read began
/// (by its own clock): a writer's clock may be behind, or its write slow to
/// land (entries apply idempotently, so reading one twice is harmless).
pub const REVOCATION_READ_OVERLAP: std::time::Duration = std::time::Duration::from_secs(300);

/// What the handlers need from a backend.
///
/// Implementations must make `update` and `delete` atomic with their version
/// check and their idempotency record, and `create` atomic with its
/// idempotency record.
#[async_trait]
pub trait NoteStore: Send + Sync + 'static {
    /// Creates a note. With a `request_id` already used by this owner, returns
    /// the note first created if the content matches, else
    /// [`StoreError::RequestIdReused`].
    async fn create(&self, owner: &str, note: NewNote) -> Result<Note, StoreError>;

    /// Reads one note.
    async fn get(&self, owner: &str, note_id: Uuid) -> Result<Note, StoreError>;

    /// Lists up to `limit` notes older than `after` (all when `None`), newest first.
    async fn list(
        &self,
        owner: &str,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<NotePage, StoreError>;

    /// Replaces the content and bumps the version, at most once per call
    /// however often the backend is asked, and at most once per
    /// `request_id`: a repeat answers the note as that first update left it.
    async fn update(
        &self,
        owner: &str,
        note_id: Uuid,
        content: String,
        change: Change,
    ) -> Result<Note, StoreError>;

    /// Deletes a note, with the same at-most-once rules as `update`: a
    /// repeat of a delete that was applied answers OK.
    async fn delete(&self, owner: &str, note_id: Uuid, change: Change) -> Result<(), StoreError>;

    /// Answers when the backend does (readiness probes); in-process stores
    /// always do.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Records a token revocation for every instance to enforce.
    async fn revoke_tokens(&self, _revocation: &Revocation) -> Result<(), StoreError> {
        Err(StoreError::Internal(
            "this store keeps no token revocation list".into(),
            None,
        ))
    }

    /// The revocations recorded at or after `since_ns` (Unix ns), in
    /// recording order; a store without a list has none.
    async fn revocations_since(&self, _since_ns: u64) -> Result<Vec<Revocation>, StoreError> {
        Ok(Vec::new())
    }
}
