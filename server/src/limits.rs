//! Every bound on what a peer can make the server hold, in one place, each
//! default with the reason for it. `serve` exposes each as a setting
//! (`--max-connections`, `NOTES_MAX_CONNECTIONS`, ...; see
//! [`crate::config::LimitArgs`]); `dev` and the tests use these defaults.

use std::time::Duration;

/// A TLS handshake that takes longer is dropped (counted from its first
/// bytes, the ClientHello).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing (no ClientHello) for this long is
/// closed: a real client sends its ClientHello in its first round trip.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections that have sent nothing yet, held apart from the handshake
/// slots (which only connections that sent their first bytes take). Past
/// it, the oldest silent connection is closed to make room: a newcomer is
/// never refused for silent sockets, and a real client, which speaks at
/// once, is never the oldest.
pub const MAX_SILENT_CONNECTIONS: usize = 256;
/// In-flight calls get this long to finish on shutdown; longer than the
/// per-call deadline most clients use, shorter than an orchestrator's kill.
pub const GRACE_PERIOD: Duration = Duration::from_secs(20);
/// The server's own deadline on every call, whatever the client asked.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the TLS files are checked for changes (SIGHUP also reloads).
pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Open connections (TCP accepted, TLS or not yet): each costs a file
/// descriptor and about 35 KiB (measured: `abuse::memory_per_…`); 4,096
/// stays far below the usual descriptor limits and under 150 MB.
pub const MAX_CONNECTIONS: usize = 4_096;
/// TLS handshakes in progress: each costs a signature of CPU; more than a
/// few dozen per core only queues.
pub const MAX_HANDSHAKES: usize = 128;
/// TLS handshakes in progress from one IP address, so one host cannot take
/// every handshake slot. Behind a load balancer that hides client addresses
/// every connection shares its address: raise this, or keep client IPs.
pub const MAX_HANDSHAKES_PER_IP: usize = 32;
/// Open connections of one client-certificate identity: one holder of a
/// certificate cannot take every connection slot (a service with many
/// instances shares its identity, hence the room).
pub const MAX_CONNECTIONS_PER_IDENTITY: usize = 1_024;
/// HTTP/2 streams open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS);
/// gRPC-Go and Envoy's edge guidance use 100 after CVE-2023-44487.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Streams the server may reset for protocol errors before it sends GOAWAY
/// (hyper's recommended value; RUSTSEC-2024-0003).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1_024;
/// Streams a client may reset before the server accepted them, before
/// GOAWAY (h2's default; the rapid-reset guard of CVE-2023-44487).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// The decoded header list of one request: above the 64 KiB a token may
/// reach, so an oversized token is refused UNAUTHENTICATED by the auth layer
/// instead of HTTP 431 by the transport.
pub const MAX_HEADER_LIST_BYTES: u32 = 96 * 1024;
/// HTTP/2 PING every this often on an idle connection, to find dead peers
/// behind load balancers that drop idle flows silently.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING not answered within this closes the connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection older than this is asked to go away (GOAWAY), so clients
/// re-handshake and meet rotated certificates and CRLs at least this often.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
/// Calls in flight on an aged connection get this long before it is closed.
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// Calls in flight across the server; beyond it calls fail fast with
/// UNAVAILABLE instead of queueing (health checks are never refused).
pub const MAX_REQUESTS_IN_FLIGHT: usize = 1_024;
/// Calls in flight of one client-certificate identity (a tenant): a
/// quarter of the server, so one tenant never holds it all.
pub const MAX_REQUESTS_IN_FLIGHT_PER_IDENTITY: usize = 256;
/// Calls in flight of one token owner: half its certificate's share, so
/// one end user behind a gateway's certificate never holds all of it.
pub const MAX_REQUESTS_IN_FLIGHT_PER_OWNER: usize = 128;
/// Calls of each tenant admitted even when the server is full: a tenant
/// holding fewer is served while others hold every shared slot (the server
/// may then hold this many more per tenant than its bound). At most a
/// sixteenth of `--max-requests-in-flight`.
pub const RESERVED_IN_FLIGHT_PER_IDENTITY: usize = 16;
/// A unary call's request message must arrive within this of its headers:
/// a call that stalls after its headers frees its slot in seconds.
pub const REQUEST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams without a token (Health/Watch, reflection) open on one
/// connection: a client needs one or two.
pub const MAX_TOKENLESS_STREAMS_PER_CONNECTION: usize = 8;
/// Streams without a token open for one client-certificate identity (about
/// 3.5 KiB each): a service with a Watch per instance fits.
pub const MAX_TOKENLESS_STREAMS_PER_IDENTITY: usize = 256;
/// How long a stream without a token lives; then it ends UNAVAILABLE and
/// the client calls again (as it does when a connection ages out).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Refusals that cost verification work (a token the verified-token cache
/// does not know, failing verification) one connection may draw: bursts of
/// 100, then 10 per second. Past it, that connection's calls with uncached
/// tokens are refused RESOURCE_EXHAUSTED before any verification, so
/// garbage tokens cannot buy RSA work; cached (valid) tokens are never
/// charged nor refused, and other connections are not affected.
pub const REFUSALS_PER_CONNECTION: RateLimit = RateLimit {
    per_second: 10.0,
    burst: 100,
};
/// The ceiling of one certificate identity over all its connections that
/// have drawn refusals, as so many connections' budgets: opening more
/// connections buys a misbehaving identity no more than ten connections'
/// worth of verification.
pub const REFUSAL_CEILING_CONNECTIONS: u32 = 10;
/// Largest NotesService request: a 64 KiB note plus its id, `request_id`
/// and protobuf framing, with a little headroom; larger ones are refused
/// RESOURCE_EXHAUSTED from the length prefix, before decoding.
pub const MAX_NOTES_MESSAGE_BYTES: usize = 70 * 1024;
/// Largest health or reflection request: a service name or a symbol.
pub const MAX_SMALL_MESSAGE_BYTES: usize = 4 * 1024;

/// A per-caller request rate: a token bucket of `burst` calls refilled at
/// `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls allowed at once after an idle period.
    pub burst: u32,
}

/// The bounds of one server; see the constants of this module for the
/// defaults and their reasons.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`FIRST_BYTES_TIMEOUT`].
    pub first_bytes_timeout: Duration,
    /// See [`MAX_SILENT_CONNECTIONS`].
    pub max_silent_connections: usize,
    /// See [`GRACE_PERIOD`].
    pub grace_period: Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`TLS_RELOAD_INTERVAL`].
    pub tls_reload_interval: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`MAX_HANDSHAKES`].
    pub max_handshakes: usize,
    /// See [`MAX_HANDSHAKES_PER_IP`].
    pub max_handshakes_per_ip: usize,
    /// See [`MAX_CONNECTIONS_PER_IDENTITY`].
    pub max_connections_per_identity: usize,
    /// See [`MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: u32,
    /// See [`MAX_LOCAL_ERROR_RESETS`].
    pub max_local_error_resets: usize,
    /// See [`MAX_PENDING_ACCEPT_RESETS`].
    pub max_pending_accept_resets: usize,
    /// See [`MAX_HEADER_LIST_BYTES`].
    pub max_header_list_bytes: u32,
    /// See [`KEEPALIVE_INTERVAL`].
    pub keepalive_interval: Duration,
    /// See [`KEEPALIVE_TIMEOUT`].
    pub keepalive_timeout: Duration,
    /// See [`MAX_CONNECTION_AGE`].
    pub max_connection_age: Duration,
    /// See [`MAX_CONNECTION_AGE_GRACE`].
    pub max_connection_age_grace: Duration,
    /// See [`MAX_REQUESTS_IN_FLIGHT`].
    pub max_requests_in_flight: usize,
    /// See [`MAX_REQUESTS_IN_FLIGHT_PER_IDENTITY`].
    pub max_requests_in_flight_per_identity: usize,
    /// See [`MAX_REQUESTS_IN_FLIGHT_PER_OWNER`].
    pub max_requests_in_flight_per_owner: usize,
    /// See [`RESERVED_IN_FLIGHT_PER_IDENTITY`].
    pub reserved_in_flight_per_identity: usize,
    /// See [`REQUEST_MESSAGE_TIMEOUT`].
    pub request_message_timeout: Duration,
    /// See [`MAX_TOKENLESS_STREAMS_PER_CONNECTION`].
    pub max_tokenless_streams_per_connection: usize,
    /// See [`MAX_TOKENLESS_STREAMS_PER_IDENTITY`].
    pub max_tokenless_streams_per_identity: usize,
    /// See [`STREAM_LIFETIME`].
    pub stream_lifetime: Duration,
    /// Per-caller rate limit; off by default.
    pub rate_limit: Option<RateLimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            first_bytes_timeout: FIRST_BYTES_TIMEOUT,
            max_silent_connections: MAX_SILENT_CONNECTIONS,
            grace_period: GRACE_PERIOD,
            request_timeout: REQUEST_TIMEOUT,
            tls_reload_interval: TLS_RELOAD_INTERVAL,
            max_connections: MAX_CONNECTIONS,
            max_handshakes: MAX_HANDSHAKES,
            max_handshakes_per_ip: MAX_HANDSHAKES_PER_IP,
            max_connections_per_identity: MAX_CONNECTIONS_PER_IDENTITY,
            max_concurrent_streams: MAX_CONCURRENT_STREAMS,
            max_local_error_resets: MAX_LOCAL_ERROR_RESETS,
            max_pending_accept_resets: MAX_PENDING_ACCEPT_RESETS,
            max_header_list_bytes: MAX_HEADER_LIST_BYTES,
            keepalive_interval: KEEPALIVE_INTERVAL,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
            max_connection_age: MAX_CONNECTION_AGE,
            max_connection_age_grace: MAX_CONNECTION_AGE_GRACE,
            max_requests_in_flight: MAX_REQUESTS_IN_FLIGHT,
            max_requests_in_flight_per_identity: MAX_REQUESTS_IN_FLIGHT_PER_IDENTITY,
            max_requests_in_flight_per_owner: MAX_REQUESTS_IN_FLIGHT_PER_OWNER,
            reserved_in_flight_per_identity: RESERVED_IN_FLIGHT_PER_IDENTITY,
            request_message_timeout: REQUEST_MESSAGE_TIMEOUT,
            max_tokenless_streams_per_connection: MAX_TOKENLESS_STREAMS_PER_CONNECTION,
            max_tokenless_streams_per_identity: MAX_TOKENLESS_STREAMS_PER_IDENTITY,
            stream_lifetime: STREAM_LIFETIME,
            rate_limit: None,
        }
    }
}
