//! `notes-bench`: the notes service's own load benchmark.
//!
//! - `compare` (default): the real server (as `notes-server dev` assembles
//!   it: memory store, audit trail, metrics) against a bare tonic server with
//!   the same proto and rustls configuration returning fixed answers, under
//!   the same closed-loop load, scenario by scenario.
//! - `dynamodb`: the real server over DynamoDB (moto), counting the SDK's
//!   requests per RPC: each must be exactly one.
//! - `soak`: a steady mixed load for a long time, resident memory sampled.
//! - `fairness`: tenant A beside each attacker of issue 26 (ratios to A
//!   alone), and an open-loop overload at twice the server's capacity.
//!
//! Run it with `scripts/bench` (release build); `--help` lists every knob.

mod dynamo;
mod fairness;
mod load;
mod servers;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use load::{Fixture, Scenario, Shape, Target};
use notes_api::pb::CreateNoteRequest;
use notes_server::{
    auth::{AuditAllowed, signer::AccessTokenSpec},
    config::DynamoConfig,
    dev::{self, DevMaterial},
    telemetry::LogFormat,
};

#[derive(Parser)]
#[command(name = "notes-bench", about = "Load benchmark of the notes service")]
struct Cli {
    /// Where the server's log lines (the audit trail) go; they are written,
    /// as in production, through the server's non-blocking queue.
    #[arg(long, global = true, default_value = "/dev/null")]
    server_log: PathBuf,
    /// How the server writes its log lines: `text` as `dev` does, `json` as
    /// `serve` does by default.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    server_log_format: LogFormat,
    /// Which allowed calls the real server audits, as `notes-server serve
    /// --audit-allowed` (refusals always): its default, `changes`, writes a
    /// token's first read on each connection, not the reads after it; `all`
    /// writes a line per call.
    #[arg(long, global = true, value_enum, default_value_t = AuditAllowed::default())]
    server_audit_allowed: AuditAllowed,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The real server against the bare one, scenario by scenario (the default).
    Compare(CompareArgs),
    /// DynamoDB requests per RPC, against a DynamoDB endpoint (moto).
    Dynamodb {
        /// Calls of each RPC.
        #[arg(long, default_value_t = 50)]
        calls: usize,
        /// The DynamoDB settings, as `notes-server serve` takes them.
        #[command(flatten)]
        dynamodb: DynamoConfig,
    },
    /// A steady mixed load, resident memory sampled.
    Soak(SoakArgs),
    /// Noisy neighbours: tenant A alone, then beside each attacker of issue
    /// 26 and all at once (ratios to A alone); then an open-loop overload.
    Fairness(fairness::FairnessArgs),
}

#[derive(Args, Clone)]
struct ShapeArgs {
    /// HTTP/2 connections the workers share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls in flight (closed loop: each worker sends its next call when its last answered).
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Calls in flight when every call opens its own connection (the server
    /// admits 32 handshakes at once from one address).
    #[arg(long, default_value_t = 8)]
    connect_in_flight: usize,
    /// Distinct tokens cycled by the cold-verification scenario; more than
    /// the server's token cache (10,000) makes every call a cold verification.
    #[arg(long, default_value_t = 20_000)]
    tokens: usize,
}

#[derive(Args, Clone)]
struct CompareArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Seconds of load before measuring, per round, scenario and server.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Seconds measured, per round, scenario and server.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Scenarios to run [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Rounds per scenario, alternating bare and real server (a noisy
    /// machine's drift then falls on both alike); results add up.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Entries on the real server's token revocation list (none of them
    /// naming the benchmark's token): the cost of the check per call.
    #[arg(long, default_value_t = 0)]
    revocations: usize,
}

#[derive(Args, Clone)]
struct SoakArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Seconds of load in all.
    #[arg(long, default_value_t = 600.0)]
    seconds: f64,
    /// Seconds between memory samples.
    #[arg(long, default_value_t = 60.0)]
    sample_seconds: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The load generator's runtime; each server gets one of its own.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("notes-bench: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("notes-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cli.server_log)
        .with_context(|| format!("opening {}", cli.server_log.display()))?;
    let _telemetry = notes_server::telemetry::init_non_blocking(
        cli.server_log_format == LogFormat::Json,
        false,
        log,
        notes_server::telemetry::LOG_QUEUE_LINES,
    );
    notes_server::tls::install_crypto_provider();
    let dir = tempfile::tempdir()?;
    let material = DevMaterial::ensure(dir.path())?;
    print_machine();
    let code = match cli.command.unwrap_or(Command::Compare(CompareArgs {
        shape: ShapeArgs {
            connections: 4,
            in_flight: 64,
            connect_in_flight: 8,
            tokens: 20_000,
        },
        warmup_seconds: 1.0,
        seconds: 5.0,
        scenarios: vec![],
        rounds: 3,
        revocations: 0,
    })) {
        Command::Compare(args) => compare(&material, args, cli.server_audit_allowed).await?,
        Command::Dynamodb { calls, dynamodb } => {
            let (rows, stored) =
                dynamo::run(&material, &dynamodb, calls, cli.server_audit_allowed).await?;
            print_dynamodb(&rows, &stored)
        }
        Command::Soak(args) => soak(&material, args, cli.server_audit_allowed).await?,
        Command::Fairness(args) => fairness::run(&material, args, cli.server_audit_allowed).await?,
    };
    let [audit, other] = notes_server::telemetry::dropped_log_lines();
    if audit + other > 0 {
        println!(
            "server log lines dropped by full queues (counted, never blocking): {audit} audit, {other} other"
        );
    }
    Ok(code)
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {cores} cores, {cpu}; server and load generator in one process, 2 runtime threads each\n"
    );
}

/// `count` tokens of the dev user, signed on every core.
pub(crate) fn sign_tokens(material: &DevMaterial, count: usize) -> anyhow::Result<Vec<String>> {
    let signer = material.signer()?;
    let spec = AccessTokenSpec {
        issuer: dev::DEV_ISSUER.into(),
        subject: dev::DEV_SUBJECT.into(),
        client_id: dev::DEV_CLIENT_ID.into(),
        username: Some("dev".into()),
        scopes: vec![dev::DEV_READ_SCOPE.into(), dev::DEV_WRITE_SCOPE.into()],
        lifetime: Duration::from_secs(3600),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = count.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let n = per_thread.min(count.saturating_sub(t * per_thread));
                let (signer, spec) = (&signer, &spec);
                scope.spawn(move || {
                    (0..n)
                        .map(|_| signer.access_token(spec))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut tokens = Vec::with_capacity(count);
        for handle in handles {
            let signed = handle
                .join()
                .map_err(|_| anyhow::anyhow!("signing thread panicked"))?;
            tokens.extend(signed?);
        }
        Ok(tokens)
    })
}

fn bearer(
    tokens: &[String],
) -> anyhow::Result<Vec<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
    tokens
        .iter()
        .map(|t| Ok(format!("Bearer {t}").parse()?))
        .collect()
}

/// Creates the notes the scenarios read on the real server; returns the fixture.
pub(crate) async fn fixture(target: &Target, tokens: &[String]) -> anyhow::Result<Fixture> {
    let tokens = bearer(tokens)?;
    let mut client = target.connect().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut note_id = String::new();
    for i in 0..servers::LIST_PAGE {
        loop {
            let mut request = tonic::Request::new(CreateNoteRequest {
                content: servers::content(i),
                request_id: uuid::Uuid::new_v4().to_string(),
            });
            request
                .metadata_mut()
                .insert("authorization", tokens[0].clone());
            match client.create_note(request).await {
                Ok(note) => {
                    note_id = note.into_inner().note_id;
                    break;
                }
                // Not ready until the token keys are loaded.
                Err(status)
                    if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => anyhow::bail!("preparing the notes: {status}"),
            }
        }
    }
    Ok(Fixture { note_id, tokens })
}

fn shape(args: &ShapeArgs, scenario: Scenario, warmup: f64, seconds: f64) -> Shape {
    Shape {
        connections: args.connections,
        in_flight: if scenario == Scenario::Connect {
            args.connect_in_flight
        } else {
            args.in_flight
        },
        warmup: Duration::from_secs_f64(warmup),
        duration: Duration::from_secs_f64(seconds),
    }
}

/// Threads of the bare server (see `servers`).
const BARE_THREADS: &[&str] = &["bare-server"];
/// Threads of the real server: its runtime and its log writer.
const REAL_THREADS: &[&str] = &["notes-server", "notes-log-write"];

/// The targets of issue 13: (minimum calls/s ratio, maximum p99 ratio).
fn targets(scenario: Scenario) -> (Option<f64>, Option<f64>) {
    match scenario {
        Scenario::Get => (Some(0.90), Some(1.5)),
        Scenario::List => (Some(0.75), None),
        Scenario::Connect => (Some(0.95), None),
        Scenario::GetCold | Scenario::Create | Scenario::Mixed => (None, None),
    }
}

async fn compare(
    material: &DevMaterial,
    args: CompareArgs,
    audit: AuditAllowed,
) -> anyhow::Result<ExitCode> {
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios.clone()
    };
    let count = if scenarios.contains(&Scenario::GetCold) {
        args.shape.tokens.max(1)
    } else {
        1
    };
    let began = Instant::now();
    let tokens = sign_tokens(material, count)?;
    println!(
        "signed {count} tokens in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    let bare = servers::bare(material)?;
    let store = servers::with_revocations(args.revocations).await?;
    let real = servers::real(material, store, audit).await?;
    let bare_target = Target::new(bare.addr, &material.dir)?;
    let real_target = Target::new(real.addr, &material.dir)?;
    let real_fixture = Arc::new(fixture(&real_target, &tokens).await?);
    let bare_fixture = Arc::new(Fixture {
        note_id: "0193a8f0-7c2e-7b4e-9d1a-000000000000".into(),
        tokens: real_fixture.tokens.clone(),
    });
    println!(
        "closed loop: {} connections, {} calls in flight ({} for new connections); per scenario {} rounds alternating bare and real, each {} s warm-up and {} s measured\n",
        args.shape.connections,
        args.shape.in_flight,
        args.shape.connect_in_flight,
        args.rounds.max(1),
        args.warmup_seconds,
        args.seconds
    );
    println!(
        "| scenario | bare calls/s | real calls/s | ratio | bare p50 / p99 | real p50 / p99 | p99 ratio | server CPU per call, bare / real | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    for scenario in scenarios {
        let shape = shape(&args.shape, scenario, args.warmup_seconds, args.seconds);
        // Cold verification is compared with the bare server's GetNote: the
        // bare server verifies nothing, whatever the token.
        let bare_scenario = if scenario == Scenario::GetCold {
            Scenario::Get
        } else {
            scenario
        };
        let (mut b, mut r) = (None::<load::Outcome>, None::<load::Outcome>);
        let (mut b_cpu, mut r_cpu) = (0.0, 0.0);
        for _ in 0..args.rounds.max(1) {
            let before = load::thread_cpu_seconds(BARE_THREADS);
            let round = load::run(bare_scenario, &bare_target, bare_fixture.clone(), shape).await?;
            b_cpu += load::thread_cpu_seconds(BARE_THREADS) - before;
            match &mut b {
                Some(total) => total.add(round)?,
                None => b = Some(round),
            }
            let before = load::thread_cpu_seconds(REAL_THREADS);
            let round = load::run(scenario, &real_target, real_fixture.clone(), shape).await?;
            r_cpu += load::thread_cpu_seconds(REAL_THREADS) - before;
            match &mut r {
                Some(total) => total.add(round)?,
                None => r = Some(round),
            }
        }
        let (b, r) = (b.expect("one round"), r.expect("one round"));
        let ratio = r.per_second() / b.per_second().max(f64::MIN_POSITIVE);
        let (b_p99, r_p99) = (b.percentile_us(0.99), r.percentile_us(0.99));
        let p99_ratio = r_p99 as f64 / b_p99.max(1) as f64;
        let b_cpu_us = b_cpu * 1e6 / b.all_calls.max(1) as f64;
        let r_cpu_us = r_cpu * 1e6 / r.all_calls.max(1) as f64;
        let (min_ratio, max_p99) = targets(scenario);
        let mut verdict = Vec::new();
        if let Some(min) = min_ratio {
            let ok = ratio >= min;
            failed |= !ok;
            verdict.push(format!("ratio ≥ {min:.2} {}", if ok { "✓" } else { "✗" }));
        }
        if let Some(max) = max_p99 {
            let ok = p99_ratio <= max;
            failed |= !ok;
            verdict.push(format!("p99 ≤ {max:.1}× {}", if ok { "✓" } else { "✗" }));
        }
        println!(
            "| {} | {:.0} | {:.0} | {ratio:.2} | {} / {b_p99} µs | {} / {r_p99} µs | {p99_ratio:.2} | {b_cpu_us:.1} / {r_cpu_us:.1} µs ({:.2}×) | {} |",
            scenario.label(),
            b.per_second(),
            r.per_second(),
            b.percentile_us(0.5),
            r.percentile_us(0.5),
            r_cpu_us / b_cpu_us.max(f64::MIN_POSITIVE),
            if verdict.is_empty() {
                "-".to_owned()
            } else {
                verdict.join(", ")
            }
        );
        for (name, outcome) in [("bare", &b), ("real", &r)] {
            if outcome.errors > 0 {
                failed = true;
                println!(
                    "  {name}: {} calls failed, first: {}",
                    outcome.errors,
                    outcome.first_error.as_deref().unwrap_or("?")
                );
            }
        }
    }
    drop((bare, real));
    Ok(if failed {
        println!("\nsome targets were missed (✗ above), or some calls failed");
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_dynamodb(rows: &[dynamo::Row], stored: &dynamo::Stored) -> ExitCode {
    println!(
        "| RPC | calls | DynamoDB requests | per call | operations | request bytes per call | p50 / p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut all_one = true;
    for row in rows {
        let per_call = row.per_call();
        // The busy note prunes its record of writes once in 16 calls.
        all_one &= per_call == 1.0 || (row.rpc.contains("busy") && per_call <= 1.1);
        let operations: Vec<_> = row
            .requests
            .iter()
            .map(|(op, n)| format!("{op} ×{n}"))
            .collect();
        println!(
            "| {} | {} | {} | {per_call:.2} | {} | {} | {} / {} µs |",
            row.rpc,
            row.calls,
            row.requests.values().sum::<u64>(),
            operations.join(", "),
            row.bytes_per_call(),
            row.p50_us,
            row.p99_us
        );
    }
    println!(
        "\nitem size: a note updated once {} bytes; the busy note (its record of \
         recent writes full) {} bytes",
        stored.once_updated, stored.busy
    );
    if all_one {
        println!("\nevery RPC made one DynamoDB request (a busy note: at most 1.1)");
        ExitCode::SUCCESS
    } else {
        println!("\nsome RPC made other than one DynamoDB request per call");
        ExitCode::from(2)
    }
}

/// Resident memory of this process (server and load generator), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

async fn soak(
    material: &DevMaterial,
    args: SoakArgs,
    audit: AuditAllowed,
) -> anyhow::Result<ExitCode> {
    let tokens = sign_tokens(material, args.shape.tokens.max(1))?;
    let real = servers::real(material, None, audit).await?;
    let target = Target::new(real.addr, &material.dir)?;
    let fixture = Arc::new(fixture(&target, &tokens).await?);
    println!(
        "soak: mixed load (GetNote one token, GetNote new tokens, ListNotes, new connections), {} connections, {} in flight, {} s, a sample every {} s\n",
        args.shape.connections, args.shape.in_flight, args.seconds, args.sample_seconds
    );
    println!("| after | calls/s | p99 | errors | RSS (MiB) |");
    println!("|---|---|---|---|---|");
    let samples = (args.seconds / args.sample_seconds).ceil().max(1.0) as usize;
    let mut rss = Vec::with_capacity(samples);
    let mut errors = 0;
    for i in 1..=samples {
        let shape = shape(&args.shape, Scenario::Mixed, 0.0, args.sample_seconds);
        let outcome = load::run(Scenario::Mixed, &target, fixture.clone(), shape).await?;
        let kib = rss_kib();
        rss.push(kib);
        errors += outcome.errors;
        println!(
            "| {:.0} s | {:.0} | {} µs | {} | {:.1} |",
            i as f64 * args.sample_seconds,
            outcome.per_second(),
            outcome.percentile_us(0.99),
            outcome.errors,
            kib as f64 / 1024.0
        );
    }
    drop(real);
    let first = *rss.first().unwrap_or(&0) as f64;
    let last = *rss.last().unwrap_or(&0) as f64;
    let growth = last / first.max(1.0);
    println!("\nRSS at the end / after the first sample: {growth:.3} (target ≤ 1.10)");
    Ok(if growth <= 1.10 && errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
