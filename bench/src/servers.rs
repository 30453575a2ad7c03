//! The two servers under load, each on a runtime of its own (two worker
//! threads, as a separate process would have): the bare tonic server and
//! the real one as `notes-server dev` assembles it.

use std::{io, net::SocketAddr, sync::Arc};

use anyhow::Context;
use notes_api::pb::{
    CreateNoteRequest, DeleteNoteRequest, DeleteNoteResponse, GetNoteRequest, ListNotesRequest,
    ListNotesResponse, Note, UpdateNoteRequest,
    notes_service_server::{NotesService, NotesServiceServer},
};
use notes_server::{
    auth::AuditAllowed,
    config::StoreSettings,
    dev::{self, DevMaterial},
    startup,
    store::NoteStore,
    tls::{self, TlsMaterial},
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Request, Response, Status, transport::Server};

/// Notes in a ListNotes page of the benchmark.
pub const LIST_PAGE: usize = 20;

/// A note's content in the benchmark: about the size of a short note.
pub fn content(i: usize) -> String {
    format!(
        "{i:>6} {}",
        "benchmark note content, about one line of text. ".repeat(2)
    )
}

/// A server running on its own runtime; dropping it stops both.
pub struct Running {
    /// Where it listens (mutual TLS).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn server_runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .context("building a server runtime")
}

/// A listener on a free loopback port, for a runtime to adopt.
fn bind() -> anyhow::Result<(std::net::TcpListener, SocketAddr)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

fn fixed_note(i: usize) -> Note {
    let time = prost_timestamp();
    Note {
        note_id: format!("0193a8f0-7c2e-7b4e-9d1a-{i:012}"),
        user_id: notes_server::dev::DEV_SUBJECT.to_owned(),
        content: content(i),
        create_time: Some(time),
        update_time: Some(time),
        version: 1,
    }
}

fn prost_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: 1_764_000_000,
        nanos: 0,
    }
}

/// Fixed answers: what tonic, rustls and protobuf cost with nothing else.
struct Bare {
    note: Note,
    page: ListNotesResponse,
}

#[tonic::async_trait]
impl NotesService for Bare {
    async fn create_note(&self, _: Request<CreateNoteRequest>) -> Result<Response<Note>, Status> {
        Ok(Response::new(self.note.clone()))
    }

    async fn get_note(&self, _: Request<GetNoteRequest>) -> Result<Response<Note>, Status> {
        Ok(Response::new(self.note.clone()))
    }

    async fn list_notes(
        &self,
        _: Request<ListNotesRequest>,
    ) -> Result<Response<ListNotesResponse>, Status> {
        Ok(Response::new(self.page.clone()))
    }

    async fn update_note(&self, _: Request<UpdateNoteRequest>) -> Result<Response<Note>, Status> {
        Ok(Response::new(self.note.clone()))
    }

    async fn delete_note(
        &self,
        _: Request<DeleteNoteRequest>,
    ) -> Result<Response<DeleteNoteResponse>, Status> {
        Ok(Response::new(DeleteNoteResponse {}))
    }
}

/// The bare server: the same proto and the same rustls configuration as the
/// real server (`notes_server::tls::server_config` over the dev PKI), fixed
/// responses, no authentication, limits, metrics or logs.
pub fn bare(material: &DevMaterial) -> anyhow::Result<Running> {
    let tls = TlsMaterial::from_files(
        &material.path("server.pem"),
        &material.path("server.key"),
        &material.path("ca.pem"),
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&tls)?);
    let service = Bare {
        note: fixed_note(0),
        page: ListNotesResponse {
            notes: (0..LIST_PAGE).map(fixed_note).collect(),
            next_page_token: String::new(),
        },
    };
    let runtime = server_runtime("bare-server")?;
    let (listener, addr) = bind()?;
    let (stop, stopped) = oneshot::channel::<()>();
    runtime.spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<_>>(64);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(conn) = acceptor.accept(tcp).await {
                        let _ = tx.send(Ok(conn)).await;
                    }
                });
            }
        });
        let _ = Server::builder()
            .add_service(NotesServiceServer::new(service))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(Running {
        addr,
        stop: Some(stop),
        runtime: Some(runtime),
    })
}

/// A memory store whose token revocation list holds `count` entries, none
/// naming the benchmark's token (subjects, sign-ins and tokens of others);
/// `None` for none.
pub async fn with_revocations(count: usize) -> anyhow::Result<Option<Arc<dyn NoteStore>>> {
    use notes_server::store::{MemoryStore, Revocation, Revoked};
    if count == 0 {
        return Ok(None);
    }
    let store = MemoryStore::new();
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    for i in 0..count {
        let what = match i % 3 {
            0 => Revoked::Subject(format!("revoked-user-{i}")),
            1 => Revoked::Session(format!("revoked-sign-in-{i}")),
            _ => Revoked::Token(format!("revoked-token-{i}")),
        };
        store
            .revoke_tokens(&Revocation {
                issuer: dev::DEV_ISSUER.into(),
                what,
                before: now_ns / 1_000_000_000,
                recorded_ns: now_ns + i as u64,
            })
            .await?;
    }
    Ok(Some(Arc::new(store)))
}

/// The real server as `notes-server dev` assembles it (`startup::build`
/// from `dev::settings`: dev PKI and issuer, audit trail, metrics, limits,
/// refusal budget), over `store` when given (the DynamoDB mode's counting
/// client) or in memory, auditing the allowed calls `audit` covers.
pub async fn real(
    material: &DevMaterial,
    store: Option<Arc<dyn NoteStore>>,
    audit: AuditAllowed,
) -> anyhow::Result<Running> {
    let mut settings = dev::settings(material, StoreSettings::Memory);
    settings.audit_allowed = audit;
    let server = match store {
        Some(store) => startup::build_with_store(settings, store)?,
        None => startup::build(settings).await?,
    };
    let runtime = server_runtime("notes-server")?;
    let (listener, addr) = bind()?;
    let (stop, stopped) = oneshot::channel::<()>();
    runtime.spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        let shutdown = async {
            let _ = stopped.await;
        };
        if let Err(err) = server.serve(listener, None, shutdown).await {
            eprintln!("notes-bench: the real server failed: {err}");
        }
    });
    Ok(Running {
        addr,
        stop: Some(stop),
        runtime: Some(runtime),
    })
}
