//! The `notes.v1.NotesService` gRPC server.
//!
//! Every connection is mutual TLS: the caller proves which service it is with
//! a client certificate. Every call carries an Amazon Cognito access token
//! that [`auth`] verifies before any handler runs; the token's subject owns the
//! notes, so a caller only ever sees its own.
//!
//! # Layout
//! - [`config`]: typed configuration (`NOTES_*` environment, flags), secrets that do not print.
//! - [`tls`]: rustls server configuration, the mTLS accept loop, certificate identities, reload, the PKI.
//! - [`auth`]: token verification, key sources, the per-method scope policy and the tower layer.
//! - [`store`]: the [`store::NoteStore`] trait and one file per backend.
//! - [`api`]: the gRPC handlers: validate, call the store, map errors; opaque page tokens.
//! - [`certs`]: `notes-server certs`: create a CA, issue server and client certificates, revoke them.
//! - [`dev`]: dev-mode material (PKI, signing key, ready token) on embedded defaults.
//! - [`server`]: [`server::run`], which serves a bound listener until a shutdown future resolves.
//! - [`telemetry`]: tracing set-up.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod certs;
pub mod config;
pub mod dev;
mod files;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use server::{App, run};
