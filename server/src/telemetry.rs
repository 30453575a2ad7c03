//! Tracing set-up shared by the binary and the tests.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs a global subscriber that writes to stderr, filtered by `RUST_LOG`
/// (default `info`), as JSON when `json` is set. Calling it twice is harmless.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
