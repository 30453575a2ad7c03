//! The `notes.v1.NotesService` handlers: validate the request, call the
//! store as the authenticated caller, map the result.
//!
//! - [`page_token`]: opaque, tamper-evident ListNotes page tokens.

pub mod page_token;

use std::{sync::Arc, time::SystemTime};

use notes_api::pb::{
    self, CreateNoteRequest, DeleteNoteRequest, DeleteNoteResponse, GetNoteRequest,
    ListNotesRequest, ListNotesResponse, UpdateNoteRequest, notes_service_server::NotesService,
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use page_token::PageTokens;

use crate::{
    auth::Caller,
    error::error_chain,
    store::{Change, NewNote, Note, NoteStore, StoreError},
    telemetry::call::in_call,
};

/// Largest note content, in bytes of UTF-8.
pub const MAX_CONTENT_BYTES: usize = 65_536;
/// Largest `request_id`, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;
/// ListNotes page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest ListNotes page; larger requests are clamped to it.
pub const MAX_PAGE_SIZE: usize = 100;
/// Largest encoded ListNotes page: under the 4 MiB every gRPC client
/// receives by default, with room for headers. A page that would pass it ends
/// early with a `next_page_token` (100 notes of 64 KiB would be 6.5 MB).
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// The service implementation.
pub struct NotesApi {
    store: Arc<dyn NoteStore>,
    pages: PageTokens,
}

impl NotesApi {
    /// Handlers over `store`, sealing page tokens with `pages`.
    pub fn new(store: Arc<dyn NoteStore>, pages: PageTokens) -> Self {
        Self { store, pages }
    }
}

/// The one mapping of store failures into gRPC statuses. Expected
/// conditions keep their message; failures are logged with their cause chain
/// and answered without it.
impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::NotFound(_) => Status::not_found(err.to_string()),
            StoreError::VersionMismatch { .. } => Status::aborted(err.to_string()),
            StoreError::RequestIdReused(_) => Status::already_exists(err.to_string()),
            StoreError::Unavailable(_) => {
                in_call(|| tracing::warn!(error = %error_chain(&err), "note store unavailable"));
                Status::unavailable("note store is unavailable; retry with backoff")
            }
            StoreError::Internal(..) => {
                in_call(|| tracing::error!(error = %error_chain(&err), "note store failed"));
                Status::internal("internal error")
            }
        }
    }
}

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

fn validate_content(field: &str, content: &str) -> Result<(), Status> {
    if content.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if content.len() > MAX_CONTENT_BYTES {
        return Err(invalid(
            field,
            format_args!(
                "must be at most {MAX_CONTENT_BYTES} bytes of UTF-8, got {}",
                content.len()
            ),
        ));
    }
    Ok(())
}

fn parse_note_id(note_id: &str) -> Result<Uuid, Status> {
    if note_id.is_empty() {
        return Err(invalid("note_id", "is required"));
    }
    Uuid::try_parse(note_id).map_err(|_| invalid("note_id", "is not a UUID"))
}

fn parse_expected_version(expected: i64) -> Result<Option<i64>, Status> {
    match expected {
        0 => Ok(None),
        v if v < 0 => Err(invalid("expected_version", "must not be negative")),
        v => Ok(Some(v)),
    }
}

fn parse_request_id(request_id: String) -> Result<Option<String>, Status> {
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(invalid(
            "request_id",
            format_args!("must be at most {MAX_REQUEST_ID_BYTES} bytes"),
        ));
    }
    if !request_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "request_id",
            "must be printable ASCII without spaces",
        ));
    }
    Ok(Some(request_id))
}

fn page_size(requested: i32) -> Result<usize, Status> {
    match usize::try_from(requested) {
        Err(_) => Err(invalid("page_size", "must not be negative")),
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
    }
}

fn to_pb(note: Note) -> pb::Note {
    pb::Note {
        note_id: note.note_id.to_string(),
        user_id: note.owner,
        content: note.content,
        create_time: Some(note.create_time.into()),
        update_time: Some(note.update_time.into()),
        version: note.version,
    }
}

/// The notes of a page that fit in [`MAX_PAGE_BYTES`] (at least one), and
/// the id to continue after when some did not.
fn within_page_bytes(notes: Vec<Note>) -> (Vec<pb::Note>, Option<Uuid>) {
    use prost::Message;
    let mut page = Vec::with_capacity(notes.len());
    let mut bytes = 0;
    let mut last_id = None;
    for note in notes {
        let note_id = note.note_id;
        let note = to_pb(note);
        // The field's tag and length prefix take at most 1 + 5 bytes.
        let len = note.encoded_len() + 6;
        if !page.is_empty() && bytes + len > MAX_PAGE_BYTES {
            return (page, last_id);
        }
        bytes += len;
        last_id = Some(note_id);
        page.push(note);
    }
    (page, None)
}

/// The owner of the notes this request may touch, as the auth layer
/// established it.
fn owner<T>(request: &Request<T>, method: &'static str) -> Result<String, Status> {
    let caller = Caller::of(request)?;
    if tracing::enabled!(tracing::Level::DEBUG) {
        in_call(|| {
            tracing::debug!(
                method,
                owner = %crate::telemetry::escape(&caller.owner),
                subject = %crate::telemetry::escape(&caller.token.subject),
                kind = ?caller.token.kind,
                peer = %caller.peer,
                "handling"
            )
        });
    }
    Ok(caller.owner.clone())
}

#[tonic::async_trait]
impl NotesService for NotesApi {
    async fn create_note(
        &self,
        request: Request<CreateNoteRequest>,
    ) -> Result<Response<pb::Note>, Status> {
        let owner = owner(&request, "CreateNote")?;
        let req = request.into_inner();
        validate_content("content", &req.content)?;
        let request_id = parse_request_id(req.request_id)?;
        let note = NewNote {
            note_id: Uuid::now_v7(),
            content: req.content,
            now: SystemTime::now(),
            request_id,
        };
        let note = self.store.create(&owner, note).await?;
        Ok(Response::new(to_pb(note)))
    }

    async fn get_note(
        &self,
        request: Request<GetNoteRequest>,
    ) -> Result<Response<pb::Note>, Status> {
        let owner = owner(&request, "GetNote")?;
        let note_id = parse_note_id(&request.get_ref().note_id)?;
        let note = self.store.get(&owner, note_id).await?;
        Ok(Response::new(to_pb(note)))
    }

    async fn list_notes(
        &self,
        request: Request<ListNotesRequest>,
    ) -> Result<Response<ListNotesResponse>, Status> {
        let owner = owner(&request, "ListNotes")?;
        let req = request.into_inner();
        let limit = page_size(req.page_size)?;
        let after = match req.page_token.as_str() {
            "" => None,
            token => Some(
                self.pages
                    .open(&owner, token)
                    .map_err(|e| invalid("page_token", e))?,
            ),
        };
        let page = self.store.list(&owner, limit, after).await?;
        let (notes, cut_after) = within_page_bytes(page.notes);
        Ok(Response::new(ListNotesResponse {
            next_page_token: cut_after
                .or(page.next_after)
                .map(|id| self.pages.seal(&owner, id))
                .unwrap_or_default(),
            notes,
        }))
    }

    async fn update_note(
        &self,
        request: Request<UpdateNoteRequest>,
    ) -> Result<Response<pb::Note>, Status> {
        let owner = owner(&request, "UpdateNote")?;
        let req = request.into_inner();
        let note_id = parse_note_id(&req.note_id)?;
        validate_content("content", &req.content)?;
        let change = Change {
            expected_version: parse_expected_version(req.expected_version)?,
            request_id: parse_request_id(req.request_id)?,
            now: SystemTime::now(),
        };
        let note = self
            .store
            .update(&owner, note_id, req.content, change)
            .await?;
        Ok(Response::new(to_pb(note)))
    }

    async fn delete_note(
        &self,
        request: Request<DeleteNoteRequest>,
    ) -> Result<Response<DeleteNoteResponse>, Status> {
        let owner = owner(&request, "DeleteNote")?;
        let req = request.into_inner();
        let note_id = parse_note_id(&req.note_id)?;
        let change = Change {
            expected_version: parse_expected_version(req.expected_version)?,
            request_id: parse_request_id(req.request_id)?,
            now: SystemTime::now(),
        };
        self.store.delete(&owner, note_id, change).await?;
        Ok(Response::new(DeleteNoteResponse {}))
    }
}
