//! Wall-clock time, injectable: the token verifier's `exp`/`nbf` checks and
//! the TLS watcher's certificate expiry read a [`Clock`], which tests move
//! instead of sleeping.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// What time it is, as a duration since the Unix epoch: the system clock,
/// or one a test sets.
pub type Clock = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    })
}
