//! The shipped binaries, as an operator and a caller run them, by subject:
//!
//! - [`serve`]: `init-table`, `serve` and `check`.
//! - [`certs_tool`]: the certs tool.
//! - [`dev_mode`]: `notes-server dev`.
//! - [`cli`]: the `notes` CLI.
//! - [`readme`]: the README's commands, as written.
//!
//! The processes are started by [`crate::harness::process`].

mod certs_tool;
mod cli;
mod dev_mode;
mod readme;
mod serve;

use std::{
    net::TcpListener,
    path::Path,
    process::{Output, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

use crate::harness::{
    CLIENT_ID, ISSUER, dynamodb_config, dynamodb_endpoint, issuer, pki::write_files, process::*,
    token_for,
};
