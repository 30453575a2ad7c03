//! The bounds of `serve` as settings. Defaults and the reason for each live
//! in [`crate::limits`]; this file only names them and checks them.

use std::time::Duration;

use super::{ConfigError, config_err, setting};
use crate::limits::{self, Limits, RateLimit};

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// Timeouts and bounds of `serve` (`crate::limits` gives each default's reason).
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Seconds allowed for a TLS handshake, from the client's first bytes.
    #[arg(long, env = "NOTES_HANDSHAKE_TIMEOUT_SECS", default_value_t = secs(limits::HANDSHAKE_TIMEOUT))]
    pub handshake_timeout_secs: u64,
    /// Seconds a new connection may send nothing (no ClientHello) before it is closed.
    #[arg(long, env = "NOTES_FIRST_BYTES_TIMEOUT_SECS", default_value_t = secs(limits::FIRST_BYTES_TIMEOUT))]
    pub first_bytes_timeout_secs: u64,
    /// Seconds in-flight calls get to finish on shutdown.
    #[arg(long, env = "NOTES_GRACE_PERIOD_SECS", default_value_t = secs(limits::GRACE_PERIOD))]
    pub grace_period_secs: u64,
    /// Seconds between checks of the TLS files for changes (SIGHUP reloads at once).
    #[arg(long, env = "NOTES_TLS_RELOAD_INTERVAL_SECS", default_value_t = secs(limits::TLS_RELOAD_INTERVAL))]
    pub tls_reload_interval_secs: u64,
    /// Open connections at most (TLS or not yet); more are closed at once.
    #[arg(long, env = "NOTES_MAX_CONNECTIONS", default_value_t = limits::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// TLS handshakes in progress at most; more connections are closed at once.
    #[arg(long, env = "NOTES_MAX_HANDSHAKES", default_value_t = limits::MAX_HANDSHAKES)]
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one IP address at most.
    #[arg(long, env = "NOTES_MAX_HANDSHAKES_PER_IP", default_value_t = limits::MAX_HANDSHAKES_PER_IP)]
    pub max_handshakes_per_ip: usize,
    /// Open connections of one client-certificate identity at most.
    #[arg(long, env = "NOTES_MAX_CONNECTIONS_PER_IDENTITY", default_value_t = limits::MAX_CONNECTIONS_PER_IDENTITY)]
    pub max_connections_per_identity: usize,
    /// HTTP/2 streams open at once per connection.
    #[arg(long, env = "NOTES_MAX_CONCURRENT_STREAMS", default_value_t = limits::MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// Streams the server may reset for protocol errors before GOAWAY.
    #[arg(long, env = "NOTES_MAX_LOCAL_ERROR_RESETS", default_value_t = limits::MAX_LOCAL_ERROR_RESETS)]
    pub max_local_error_resets: usize,
    /// Streams a client may reset before they were accepted, before GOAWAY.
    #[arg(long, env = "NOTES_MAX_PENDING_ACCEPT_RESETS", default_value_t = limits::MAX_PENDING_ACCEPT_RESETS)]
    pub max_pending_accept_resets: usize,
    /// Largest decoded request header list, in bytes.
    #[arg(long, env = "NOTES_MAX_HEADER_LIST_BYTES", default_value_t = limits::MAX_HEADER_LIST_BYTES)]
    pub max_header_list_bytes: u32,
    /// Seconds between HTTP/2 PINGs on a connection.
    #[arg(long, env = "NOTES_KEEPALIVE_INTERVAL_SECS", default_value_t = secs(limits::KEEPALIVE_INTERVAL))]
    pub keepalive_interval_secs: u64,
    /// Seconds a PING may go unanswered before the connection is closed.
    #[arg(long, env = "NOTES_KEEPALIVE_TIMEOUT_SECS", default_value_t = secs(limits::KEEPALIVE_TIMEOUT))]
    pub keepalive_timeout_secs: u64,
    /// Seconds after which a connection is asked to go away (GOAWAY).
    #[arg(long, env = "NOTES_MAX_CONNECTION_AGE_SECS", default_value_t = secs(limits::MAX_CONNECTION_AGE))]
    pub max_connection_age_secs: u64,
    /// Seconds an aged connection's calls get before it is closed.
    #[arg(long, env = "NOTES_MAX_CONNECTION_AGE_GRACE_SECS", default_value_t = secs(limits::MAX_CONNECTION_AGE_GRACE))]
    pub max_connection_age_grace_secs: u64,
    /// Calls in flight across the server at most; more fail fast with UNAVAILABLE.
    #[arg(long, env = "NOTES_MAX_REQUESTS_IN_FLIGHT", default_value_t = limits::MAX_REQUESTS_IN_FLIGHT)]
    pub max_requests_in_flight: usize,
    /// Calls in flight of one client-certificate identity at most (its fair share).
    #[arg(long, env = "NOTES_MAX_REQUESTS_IN_FLIGHT_PER_IDENTITY", default_value_t = limits::MAX_REQUESTS_IN_FLIGHT_PER_IDENTITY)]
    pub max_requests_in_flight_per_identity: usize,
    /// Calls in flight of one token owner at most (within its certificate's share).
    #[arg(long, env = "NOTES_MAX_REQUESTS_IN_FLIGHT_PER_OWNER", default_value_t = limits::MAX_REQUESTS_IN_FLIGHT_PER_OWNER)]
    pub max_requests_in_flight_per_owner: usize,
    /// Seconds a unary call's request message may take to arrive after its headers.
    #[arg(long, env = "NOTES_REQUEST_MESSAGE_TIMEOUT_SECS", default_value_t = secs(limits::REQUEST_MESSAGE_TIMEOUT))]
    pub request_message_timeout_secs: u64,
    /// Calls per second per caller (token owner, else certificate identity); 0: no limit.
    #[arg(long, env = "NOTES_RATE_LIMIT_PER_SECOND", default_value_t = 0.0)]
    pub rate_limit_per_second: f64,
    /// Calls a caller may make at once after an idle period [default: one second's worth].
    #[arg(long, env = "NOTES_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
}

fn at_least_one<T: PartialOrd + From<u8>>(
    setting: &'static str,
    value: T,
) -> Result<T, ConfigError> {
    if value < T::from(1) {
        return Err(config_err(setting, "must be at least 1"));
    }
    Ok(value)
}

/// The longest any interval or age may be set to: a year. Longer values
/// would overflow the clocks they are added to.
const MAX_SECS: u64 = 365 * 24 * 3600;
/// The most connections, handshakes or calls a cap may allow.
const MAX_COUNT: u64 = 1_000_000;

fn at_least_one_sec(setting: &'static str, value: u64) -> Result<Duration, ConfigError> {
    if value > MAX_SECS {
        return Err(config_err(
            setting,
            format!("must be at most {MAX_SECS} (a year)"),
        ));
    }
    at_least_one(setting, value).map(Duration::from_secs)
}

fn count(setting: &'static str, value: usize) -> Result<usize, ConfigError> {
    if value as u64 > MAX_COUNT {
        return Err(config_err(setting, format!("must be at most {MAX_COUNT}")));
    }
    at_least_one(setting, value as u64).map(|v| v as usize)
}

impl LimitArgs {
    /// Checks every bound; zero is refused wherever it would disable one.
    pub fn limits(&self) -> Result<Limits, ConfigError> {
        let rate_limit = match self.rate_limit_per_second {
            0.0 => None,
            rate if !rate.is_finite() || rate < 0.0 => {
                return Err(config_err(
                    setting("rate-limit-per-second"),
                    "must be a positive number of calls per second, or 0 for no limit",
                ));
            }
            rate => Some(RateLimit {
                per_second: rate,
                burst: at_least_one(
                    setting("rate-limit-burst"),
                    self.rate_limit_burst.unwrap_or(rate.ceil() as u32),
                )?,
            }),
        };
        Ok(Limits {
            handshake_timeout: at_least_one_sec(
                setting("handshake-timeout-secs"),
                self.handshake_timeout_secs,
            )?,
            first_bytes_timeout: at_least_one_sec(
                setting("first-bytes-timeout-secs"),
                self.first_bytes_timeout_secs,
            )?,
            max_silent_connections: limits::MAX_SILENT_CONNECTIONS,
            grace_period: Duration::from_secs(self.grace_period_secs.min(MAX_SECS)),
            request_timeout: limits::REQUEST_TIMEOUT,
            tls_reload_interval: at_least_one_sec(
                setting("tls-reload-interval-secs"),
                self.tls_reload_interval_secs,
            )?,
            max_connections: count(setting("max-connections"), self.max_connections)?,
            max_handshakes: count(setting("max-handshakes"), self.max_handshakes)?,
            max_handshakes_per_ip: count(
                setting("max-handshakes-per-ip"),
                self.max_handshakes_per_ip,
            )?,
            max_connections_per_identity: count(
                setting("max-connections-per-identity"),
                self.max_connections_per_identity,
            )?,
            max_concurrent_streams: at_least_one(
                setting("max-concurrent-streams"),
                self.max_concurrent_streams,
            )?,
            max_local_error_resets: count(
                setting("max-local-error-resets"),
                self.max_local_error_resets,
            )?,
            max_pending_accept_resets: count(
                setting("max-pending-accept-resets"),
                self.max_pending_accept_resets,
            )?,
            max_header_list_bytes: at_least_one(
                setting("max-header-list-bytes"),
                self.max_header_list_bytes,
            )?,
            keepalive_interval: at_least_one_sec(
                setting("keepalive-interval-secs"),
                self.keepalive_interval_secs,
            )?,
            keepalive_timeout: at_least_one_sec(
                setting("keepalive-timeout-secs"),
                self.keepalive_timeout_secs,
            )?,
            max_connection_age: at_least_one_sec(
                setting("max-connection-age-secs"),
                self.max_connection_age_secs,
            )?,
            max_connection_age_grace: Duration::from_secs(
                self.max_connection_age_grace_secs.min(MAX_SECS),
            ),
            max_requests_in_flight: count(
                setting("max-requests-in-flight"),
                self.max_requests_in_flight,
            )?,
            max_requests_in_flight_per_identity: count(
                setting("max-requests-in-flight-per-identity"),
                self.max_requests_in_flight_per_identity,
            )?,
            max_requests_in_flight_per_owner: count(
                setting("max-requests-in-flight-per-owner"),
                self.max_requests_in_flight_per_owner,
            )?,
            reserved_in_flight_per_identity: limits::RESERVED_IN_FLIGHT_PER_IDENTITY,
            request_message_timeout: at_least_one_sec(
                setting("request-message-timeout-secs"),
                self.request_message_timeout_secs,
            )?,
            max_tokenless_streams_per_connection: limits::MAX_TOKENLESS_STREAMS_PER_CONNECTION,
            max_tokenless_streams_per_identity: limits::MAX_TOKENLESS_STREAMS_PER_IDENTITY,
            stream_lifetime: limits::STREAM_LIFETIME,
            rate_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        limits: LimitArgs,
    }

    fn limits(args: &[&str]) -> Result<Limits, String> {
        let args = Args::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        args.limits.limits().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_limits_module_defaults() {
        let parsed = limits(&[]).unwrap();
        let defaults = Limits::default();
        assert_eq!(parsed.max_connections, defaults.max_connections);
        assert_eq!(parsed.max_connection_age, defaults.max_connection_age);
        assert_eq!(parsed.rate_limit, None);
    }

    #[test]
    fn zero_and_absurd_values_are_refused_naming_the_setting() {
        for (args, setting) in [
            (&["--max-connections", "0"][..], "NOTES_MAX_CONNECTIONS"),
            (
                &["--tls-reload-interval-secs", "0"],
                "NOTES_TLS_RELOAD_INTERVAL_SECS",
            ),
            (
                &["--keepalive-interval-secs", "18446744073709551615"],
                "NOTES_KEEPALIVE_INTERVAL_SECS",
            ),
            (
                &["--max-connections", "18446744073709551615"],
                "NOTES_MAX_CONNECTIONS",
            ),
            (
                &["--rate-limit-per-second=-1"],
                "NOTES_RATE_LIMIT_PER_SECOND",
            ),
        ] {
            let err = limits(args).unwrap_err();
            assert!(err.contains(setting), "{args:?}: {err}");
        }
    }
}
