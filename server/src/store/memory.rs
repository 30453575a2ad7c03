//! The embedded in-memory store: dev mode and fast tests.
//!
//! Everything is behind one lock held only for map operations (no `.await`
//! inside), which makes every method trivially atomic. Reads share it (a
//! read-write lock), so concurrent gets and lists do not queue for each other.

use std::{
    collections::{BTreeMap, HashMap},
    sync::RwLock,
    time::SystemTime,
};

use async_trait::async_trait;
use uuid::Uuid;

use super::{NewNote, Note, NotePage, NoteStore, StoreError};

#[derive(Default)]
struct Owner {
    notes: BTreeMap<Uuid, Note>,
    /// request_id -> the note as first created; its content tells a retry from a reuse.
    requests: HashMap<String, Note>,
}

/// Notes in process memory; lost on restart.
#[derive(Default)]
pub struct MemoryStore {
    /// By owner; foldhash, seeded per map: owners are token subjects, which
    /// only the issuers make.
    owners: RwLock<HashMap<String, Owner, foldhash::fast::RandomState>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_owner<T>(&self, owner: &str, f: impl FnOnce(&mut Owner) -> T) -> T {
        // A poisoned lock only means another call panicked mid-way; the maps
        // are still consistent because every mutation is a single insert/remove.
        let mut owners = self.owners.write().unwrap_or_else(|e| e.into_inner());
        f(owners.entry(owner.to_owned()).or_default())
    }

    /// Reads `owner`'s notes, if it has any, adding no entry for it.
    fn read_owner<T>(&self, owner: &str, f: impl FnOnce(Option<&Owner>) -> T) -> T {
        let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
        f(owners.get(owner))
    }
}

fn check_version(note: &Note, expected: Option<i64>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != note.version => Err(StoreError::VersionMismatch {
            note_id: note.note_id,
            expected,
            actual: note.version,
        }),
        _ => Ok(()),
    }
}

#[async_trait]
impl NoteStore for MemoryStore {
    async fn create(&self, owner: &str, new: NewNote) -> Result<Note, StoreError> {
        self.with_owner(owner, |o| {
            if let Some(request_id) = &new.request_id
                && let Some(first) = o.requests.get(request_id)
            {
                return if first.content == new.content {
                    Ok(first.clone())
                } else {
                    Err(StoreError::RequestIdReused(request_id.clone()))
                };
            }
            let note = Note {
                note_id: new.note_id,
                owner: owner.to_owned(),
                content: new.content,
                create_time: new.now,
                update_time: new.now,
                version: 1,
            };
            if let Some(request_id) = new.request_id {
                o.requests.insert(request_id, note.clone());
            }
            o.notes.insert(note.note_id, note.clone());
            Ok(note)
        })
    }

    async fn get(&self, owner: &str, note_id: Uuid) -> Result<Note, StoreError> {
        self.read_owner(owner, |o| {
            o.and_then(|o| o.notes.get(&note_id))
                .cloned()
                .ok_or(StoreError::NotFound(note_id))
        })
    }

    async fn list(
        &self,
        owner: &str,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<NotePage, StoreError> {
        self.read_owner(owner, |o| {
            let Some(o) = o else {
                return Ok(NotePage {
                    notes: Vec::new(),
                    next_after: None,
                });
            };
            let older = match after {
                Some(after) => o.notes.range(..after),
                None => o.notes.range(..),
            };
            let mut notes: Vec<Note> = older
                .rev()
                .take(limit + 1)
                .map(|(_, n)| n.clone())
                .collect();
            let more = notes.len() > limit;
            notes.truncate(limit);
            let next_after = if more {
                notes.last().map(|n| n.note_id)
            } else {
                None
            };
            Ok(NotePage { notes, next_after })
        })
    }

    async fn update(
        &self,
        owner: &str,
        note_id: Uuid,
        content: String,
        expected_version: Option<i64>,
        now: SystemTime,
    ) -> Result<Note, StoreError> {
        self.with_owner(owner, |o| {
            let note = o
                .notes
                .get_mut(&note_id)
                .ok_or(StoreError::NotFound(note_id))?;
            check_version(note, expected_version)?;
            note.content = content;
            note.version += 1;
            note.update_time = now;
            Ok(note.clone())
        })
    }

    async fn delete(
        &self,
        owner: &str,
        note_id: Uuid,
        expected_version: Option<i64>,
    ) -> Result<(), StoreError> {
        self.with_owner(owner, |o| {
            let note = o.notes.get(&note_id).ok_or(StoreError::NotFound(note_id))?;
            check_version(note, expected_version)?;
            o.notes.remove(&note_id);
            Ok(())
        })
    }
}
