//! The `notes.v1.NotesService` gRPC server.
//!
//! Every connection is mutual TLS: the caller proves which service it is with
//! a client certificate. Every call carries an Amazon Cognito access token
//! that [`auth`] verifies before any handler runs; the token's subject owns the
//! notes, so a caller only ever sees its own.
//!
//! # Layout
//! - [`config`]: typed settings (flags, `NOTES_*` environment, TOML) and their validation; secrets that do not print.
//! - [`startup`]: [`startup::build`] assembles the [`Server`] from [`config::Settings`], the one way it is made.
//! - [`server`]: [`Server::serve`] serves bound listeners until a shutdown future resolves; the tower stack is built here.
//! - [`limits`]: every bound on what a peer can make the server hold, with its default and reason.
//! - [`metrics`]: Prometheus metrics: go-grpc-middleware's RPC metrics and the service's `notes_*`.
//! - [`admin`]: the admin listener: `/metrics`, `/livez`, `/readyz`, apart from the data plane.
//! - [`admission`]: admission and overload: connection and handshake caps, calls in flight, the rate limit, the refusal budget.
//! - [`tls`]: rustls server configuration, the mTLS accept loop, certificate identities, reload.
//! - [`audit`]: the audit trail: which calls get an event, what a connection remembers, the events.
//! - [`auth`]: one file per step: the tower layer, the per-call decision, the policy table, token verification, JWKS, the cache.
//! - [`api`]: the gRPC handlers: validate, call the store, map errors; sealed page tokens.
//! - [`store`]: the [`store::NoteStore`] trait and one module per backend (memory, DynamoDB).
//! - [`check`]: `notes-server check`, the pre-flight: every setting, key set, TLS file and the table, one line each.
//! - [`certs`]: `notes-server certs` and the certificate-authority toolkit behind it.
//! - [`dev`]: dev-mode material (PKI, signing key, ready token) on embedded defaults.
//! - [`error`]: the cause-chain helper for logs and start-up messages.
//! - [`clock`]: the injectable wall clock that token and certificate expiry checks read.
//! - [`telemetry`]: tracing set-up and the log line formats.
//!
//! Modules depend downwards only: `startup` on everything below it, `server`
//! on `api`, `auth`, `store` and `tls`, `api` on `auth` and `store`, `auth`
//! on `tls`; `config` names `auth` types but builds nothing.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod certs;
pub mod check;
pub mod clock;
pub mod config;
pub mod dev;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use limits::Limits;
pub use server::Server;
