//! End-to-end tests: a real server on 127.0.0.1 with an ephemeral port,
//! reached over real TCP and mutual TLS, with RSA-signed tokens.
//!
//! One binary, one module per area; [`helpers`] holds the harness.

mod crud;
mod helpers;
mod isolation;
mod public_services;
mod tokens;
mod transport;
