//! What a robustness run records: every call with its invoke and complete
//! times and outcome, the faults injected, and the final state.

use std::{collections::BTreeMap, fmt};

/// A note as a call saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub id: String,
    pub owner: String,
    pub version: i64,
    pub content: String,
}

impl From<notes_api::pb::Note> for Seen {
    fn from(note: notes_api::pb::Note) -> Self {
        Self {
            id: note.note_id,
            owner: note.user_id,
            version: note.version,
            content: note.content,
        }
    }
}

/// One call as its caller made it.
#[derive(Debug, Clone)]
pub enum Call {
    Create {
        content: String,
    },
    Get {
        note: String,
    },
    List,
    /// `expected` 0 is unconditional; `keyed`: sent with a request id.
    Update {
        note: String,
        content: String,
        expected: i64,
        keyed: bool,
    },
    Delete {
        note: String,
        expected: i64,
        keyed: bool,
    },
}

impl Call {
    /// The note the call names, if any.
    pub fn note(&self) -> Option<&str> {
        match self {
            Call::Get { note } | Call::Update { note, .. } | Call::Delete { note, .. } => {
                Some(note)
            }
            Call::Create { .. } | Call::List => None,
        }
    }

    /// The content the call writes, if any.
    pub fn content(&self) -> Option<&str> {
        match self {
            Call::Create { content } | Call::Update { content, .. } => Some(content),
            _ => None,
        }
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Call::Create { .. } | Call::Update { .. } | Call::Delete { .. }
        )
    }
}

/// How a call ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Create, get or update: the note.
    Note(Seen),
    /// List: the notes, and whether that was all of them (one page).
    Notes(Vec<Seen>, bool),
    /// Delete: done.
    Deleted,
    /// Refused: nothing was applied (NOT_FOUND, ABORTED, ALREADY_EXISTS, ...).
    Failed(tonic::Code, String),
    /// Unknown: a write may or may not have been applied, now or later
    /// (UNAVAILABLE, a deadline, a broken connection).
    Unknown(String),
}

/// One recorded call; times in seconds since the run started.
#[derive(Debug, Clone)]
pub struct Op {
    pub process: usize,
    pub instance: char,
    pub owner: String,
    pub call: Call,
    pub invoke: f64,
    pub complete: f64,
    pub outcome: Outcome,
}

/// Something the nemesis or a fault proxy did.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: f64,
    pub what: String,
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub ops: Vec<Op>,
    pub events: Vec<Event>,
    /// Owner -> the notes stored at the end, read straight from the table.
    pub final_state: BTreeMap<String, Vec<Seen>>,
    /// When the final state was read.
    pub end: f64,
}

fn short(id: &str) -> &str {
    &id[id.len().saturating_sub(6)..]
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:.3} .. {:.3}] w{}@{} {} ",
            self.invoke,
            self.complete,
            self.process,
            self.instance,
            short(&self.owner)
        )?;
        match &self.call {
            Call::Create { content } => write!(f, "CreateNote content={content}")?,
            Call::Get { note } => write!(f, "GetNote ..{}", short(note))?,
            Call::List => write!(f, "ListNotes")?,
            Call::Update {
                note,
                content,
                expected,
                keyed,
            } => write!(
                f,
                "UpdateNote ..{} expected_version={expected} content={content}{}",
                short(note),
                if *keyed { " (request_id)" } else { "" }
            )?,
            Call::Delete {
                note,
                expected,
                keyed,
            } => write!(
                f,
                "DeleteNote ..{} expected_version={expected}{}",
                short(note),
                if *keyed { " (request_id)" } else { "" }
            )?,
        }
        match &self.outcome {
            Outcome::Note(n) => write!(f, " -> OK ..{} v{} {}", short(&n.id), n.version, n.content),
            Outcome::Notes(notes, _) => write!(f, " -> OK {} notes", notes.len()),
            Outcome::Deleted => write!(f, " -> OK"),
            Outcome::Failed(code, message) => write!(f, " -> {code:?} {message:?}"),
            Outcome::Unknown(message) => write!(f, " -> UNKNOWN {message:?}"),
        }
    }
}
