//! The `notes.v1` API, generated once from `proto/` and shared by the server
//! (`notes-server`) and the client (`notes-client`).
//!
//! # Layout
//! - [`pb`]: messages, the `NotesService` server trait and client stub.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, served by gRPC reflection.
//! - [`methods`]: the one table of per-method rules (access, retry), checked
//!   against the descriptors.
//! - [`files`]: atomic file writes, shared by the server's tools and the CLI.
//! - [`environment`]: every `NOTES_*` variable; unknown ones are refused.

pub mod environment;
pub mod files;
pub mod methods;

/// Generated protobuf messages and gRPC stubs for `notes.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("notes.v1");
}

/// The encoded `FileDescriptorSet` of `notes.v1` (with its imports), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/notes_descriptor.bin"));

/// Fully qualified name of the service, as used in gRPC paths and reflection.
pub const SERVICE_NAME: &str = "notes.v1.NotesService";
