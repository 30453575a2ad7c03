//! The closed-loop load generator: `in_flight` workers share `connections`
//! HTTP/2 connections; each sends its next call when the last one answered.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use hdrhistogram::Histogram;
use notes_api::pb::{
    CreateNoteRequest, GetNoteRequest, ListNotesRequest, notes_service_client::NotesServiceClient,
};
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// What one call of a scenario is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// GetNote of one note, always with the same token (verified once, then cached).
    Get,
    /// GetNote with a different token each call: every call is a cold verification.
    GetCold,
    /// ListNotes of a page of 20 notes.
    List,
    /// CreateNote with a fresh request_id, as the client sends it.
    Create,
    /// A new mutual-TLS connection per call (handshake, one GetNote, close).
    Connect,
    /// The soak's mix: of every 20 calls, 16 GetNote with one token, 2 with
    /// a new token, one ListNotes and one on a new connection.
    #[value(skip)]
    Mixed,
}

impl Scenario {
    /// Every scenario, in the order the table shows them.
    pub const ALL: [Scenario; 5] = [
        Scenario::Get,
        Scenario::GetCold,
        Scenario::List,
        Scenario::Create,
        Scenario::Connect,
    ];

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::Get => "GetNote, one token",
            Scenario::GetCold => "GetNote, a new token per call",
            Scenario::List => "ListNotes, 20 notes",
            Scenario::Create => "CreateNote",
            Scenario::Connect => "new connection per GetNote",
            Scenario::Mixed => "mixed",
        }
    }
}

/// How hard and how long to push.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// HTTP/2 connections shared by the workers (not for [`Scenario::Connect`]).
    pub connections: usize,
    /// Calls in flight (workers).
    pub in_flight: usize,
    /// Load before measuring starts.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
}

/// How to reach a server as the dev client.
#[derive(Clone)]
pub struct Target {
    endpoint: Endpoint,
}

impl Target {
    /// The server at `addr`, with the dev PKI's client certificate from `dir`.
    pub fn new(addr: SocketAddr, dir: &Path) -> anyhow::Result<Self> {
        let read =
            |name: &str| std::fs::read(dir.join(name)).with_context(|| format!("reading {name}"));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")?))
            .identity(Identity::from_pem(read("client.pem")?, read("client.key")?))
            .domain_name("localhost");
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(tls)?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        Ok(Self { endpoint })
    }

    /// A new connection.
    pub async fn connect(&self) -> anyhow::Result<NotesServiceClient<Channel>> {
        Ok(NotesServiceClient::new(self.endpoint.connect().await?))
    }
}

/// What the calls of a scenario need besides a connection.
pub struct Fixture {
    /// The note GetNote reads.
    pub note_id: String,
    /// Bearer tokens: the first is "the" token; all of them cycle for [`Scenario::GetCold`].
    pub tokens: Vec<MetadataValue<tonic::metadata::Ascii>>,
}

/// A scenario's measured result; results of several rounds add up.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latencies of successful measured calls, in microseconds.
    pub latencies: Histogram<u64>,
    /// Measured seconds.
    pub seconds: f64,
    /// Successful calls, warm-up included.
    pub all_calls: u64,
    /// Failed calls (counted, not timed).
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

impl Outcome {
    /// Successful calls per second of measured time.
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// A latency percentile, in microseconds.
    pub fn percentile_us(&self, quantile: f64) -> u64 {
        self.latencies.value_at_quantile(quantile)
    }

    /// This and `other`, as one run.
    pub fn add(&mut self, other: Outcome) -> anyhow::Result<()> {
        self.latencies.add(&other.latencies)?;
        self.seconds += other.seconds;
        self.all_calls += other.all_calls;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

/// `message` with `token` as its `authorization` metadata.
pub fn authorized<T>(token: &MetadataValue<tonic::metadata::Ascii>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.clone());
    request
}

/// One call of `scenario` on `client`; `n` is the call's global sequence number.
async fn call(
    scenario: Scenario,
    client: &mut NotesServiceClient<Channel>,
    target: &Target,
    fixture: &Fixture,
    n: usize,
) -> Result<(), String> {
    let scenario = match (scenario, n % 20) {
        (Scenario::Mixed, 0 | 1) => Scenario::GetCold,
        (Scenario::Mixed, 2) => Scenario::List,
        (Scenario::Mixed, 3) => Scenario::Connect,
        (Scenario::Mixed, _) => Scenario::Get,
        (scenario, _) => scenario,
    };
    let token = &fixture.tokens[0];
    let get = GetNoteRequest {
        note_id: fixture.note_id.clone(),
    };
    let answered = match scenario {
        Scenario::Get | Scenario::Mixed => client.get_note(authorized(token, get)).await.map(drop),
        Scenario::GetCold => {
            let token = &fixture.tokens[n % fixture.tokens.len()];
            client.get_note(authorized(token, get)).await.map(drop)
        }
        Scenario::List => {
            let list = ListNotesRequest {
                page_size: crate::servers::LIST_PAGE as i32,
                page_token: String::new(),
            };
            client
                .list_notes(authorized(token, list))
                .await
                .map(|page| debug_assert_eq!(page.get_ref().notes.len(), crate::servers::LIST_PAGE))
        }
        Scenario::Create => {
            let create = CreateNoteRequest {
                content: crate::servers::content(n),
                request_id: uuid::Uuid::new_v4().to_string(),
            };
            client
                .create_note(authorized(token, create))
                .await
                .map(drop)
        }
        Scenario::Connect => {
            let mut fresh = target.connect().await.map_err(|e| format!("{e:#}"))?;
            fresh.get_note(authorized(token, get)).await.map(drop)
        }
    };
    answered.map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

/// Drives `scenario` closed-loop against `target` and measures it.
pub async fn run(
    scenario: Scenario,
    target: &Target,
    fixture: Arc<Fixture>,
    shape: Shape,
) -> anyhow::Result<Outcome> {
    let mut clients = Vec::with_capacity(shape.connections.max(1));
    for _ in 0..shape.connections.max(1) {
        clients.push(target.connect().await?);
    }
    let sequence = Arc::new(AtomicUsize::new(0));
    let succeeded = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let start = Instant::now();
    let measure_from = start + shape.warmup;
    let stop = measure_from + shape.duration;
    let mut workers = Vec::with_capacity(shape.in_flight);
    for worker in 0..shape.in_flight.max(1) {
        let mut client = clients[worker % clients.len()].clone();
        let (target, fixture) = (target.clone(), fixture.clone());
        let (sequence, errors, first_error, succeeded) = (
            sequence.clone(),
            errors.clone(),
            first_error.clone(),
            succeeded.clone(),
        );
        workers.push(tokio::spawn(async move {
            // 1 µs to 60 s at 3 significant digits: a fixed few tens of KiB.
            let mut latencies =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            loop {
                let began = Instant::now();
                if began >= stop {
                    break;
                }
                let n = sequence.fetch_add(1, Ordering::Relaxed);
                let answered = call(scenario, &mut client, &target, &fixture, n).await;
                if answered.is_ok() {
                    succeeded.fetch_add(1, Ordering::Relaxed);
                }
                if began < measure_from {
                    continue;
                }
                match answered {
                    Ok(()) => {
                        let micros = began.elapsed().as_micros().max(1) as u64;
                        latencies.saturating_record(micros);
                    }
                    Err(message) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(message);
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for worker in workers {
        all.add(worker.await?)?;
    }
    let first_error = first_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(Outcome {
        latencies: all,
        seconds: stop.saturating_duration_since(measure_from).as_secs_f64(),
        all_calls: succeeded.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        first_error,
    })
}

/// CPU time (user and system) so far of this process's threads whose names
/// start with one of `prefixes`, in seconds (Linux, `/proc`).
pub fn thread_cpu_seconds(prefixes: &[&str]) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| prefixes.iter().any(|p| comm.trim().starts_with(p)))
        })
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}
