//! `notes-bench fairness`: the noisy-neighbour scenario of issue 26 and an
//! open-loop overload.
//!
//! Tenant A (the dev client certificate and token) runs a closed-loop
//! GetNote load and, beside it, new connections one after another; first
//! alone, then with each attacker running, then with all of them at once.
//! Each row is A's goodput and p99 as ratios to A alone (targets: at least
//! 0.90x goodput, at most 2x p99). The attackers, as issue 26 found them:
//!
//! - `idle`: 64 sockets from A's own address that never send a byte, each
//!   replaced as soon as the server closes it;
//! - `stalled`: identity B holds 1,100 CreateNote calls that send headers
//!   and never a body (11 connections of 100 streams), renewed as they end
//!   (a refused one a second later);
//! - `garbage`: a connection with A's own certificate sends forged tokens
//!   flat out (4 calls at a time);
//! - `watch`: identity B keeps trying to hold 2,000 Health/Watch streams
//!   (a refused one again a second later).
//!
//! Everything runs on this machine's cores: the attackers' own client work
//! takes CPU from the server as well, so a flood row measures CPU sharing
//! as much as admission.
//!
//! The overload: A's peak goodput (closed loop), then an open-loop load at
//! twice that rate; admitted calls' goodput as a ratio to the peak (target
//! 0.90x) and the median time to a refusal (target under 1 ms).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use notes_api::pb::{CreateNoteRequest, GetNoteRequest, Note};
use notes_server::{
    auth::{AuditAllowed, signer::AccessTokenSpec},
    certs::authority::{CertificateAuthority, Subject},
    dev::{self, DevMaterial},
};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    load::{self, Fixture, Outcome, Scenario, Shape, Target, authorized},
    servers,
};

/// What the fairness run does.
#[derive(clap::Args, Clone)]
pub struct FairnessArgs {
    /// Seconds measured per row.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Seconds of load (and attack) before measuring, per row.
    #[arg(long, default_value_t = 1.0)]
    pub warmup_seconds: f64,
    /// Tenant A's calls in flight (closed loop).
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// The open-loop rate, as a multiple of A's peak goodput.
    #[arg(long, default_value_t = 2.0)]
    pub overload: f64,
}

/// One attacker of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attack {
    Idle,
    Stalled,
    Garbage,
    Watch,
}

impl Attack {
    const ALL: [Attack; 4] = [
        Attack::Idle,
        Attack::Stalled,
        Attack::Garbage,
        Attack::Watch,
    ];

    fn label(self) -> &'static str {
        match self {
            Attack::Idle => "64 idle sockets from A's address",
            Attack::Stalled => "B: 1,100 stalled request bodies",
            Attack::Garbage => "garbage tokens on A's certificate",
            Attack::Watch => "B: 2,000 Health/Watch streams",
        }
    }
}

/// What the attackers reach the server with.
struct Attackers {
    addr: std::net::SocketAddr,
    /// Identity B's endpoint.
    b: Endpoint,
    /// A's own endpoint (the garbage-token connection shares A's certificate).
    a: Target,
    /// A valid token of B's.
    b_token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    /// A forged token.
    forged: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

/// B's client certificate, from the dev CA.
fn endpoint_b(material: &DevMaterial, addr: std::net::SocketAddr) -> anyhow::Result<Endpoint> {
    let read = |name: &str| std::fs::read_to_string(material.path(name));
    let ca = CertificateAuthority::load(&read("ca.pem")?, &read("ca.key")?)?;
    let b = ca.issue_client(
        &Subject {
            common_name: "noisy neighbour".into(),
            uris: vec!["spiffe://notes.dev/noisy-neighbour".into()],
            ..Default::default()
        },
        Duration::from_secs(3600),
    )?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(&b.cert_pem, &b.key_pem))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5)))
}

fn token(material: &DevMaterial, subject: &str) -> anyhow::Result<String> {
    Ok(material.signer()?.access_token(&AccessTokenSpec {
        issuer: dev::DEV_ISSUER.into(),
        subject: subject.into(),
        client_id: dev::DEV_CLIENT_ID.into(),
        username: Some(subject.into()),
        scopes: vec![dev::DEV_READ_SCOPE.into(), dev::DEV_WRITE_SCOPE.into()],
        lifetime: Duration::from_secs(3600),
    })?)
}

impl Attackers {
    /// Starts `attack` until `until`; its tasks end by themselves then.
    async fn start(
        &self,
        attack: Attack,
        until: Instant,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let until = tokio::time::Instant::from_std(until);
        let mut tasks = Vec::new();
        match attack {
            Attack::Idle => {
                for _ in 0..64 {
                    let addr = self.addr;
                    tasks.push(tokio::spawn(async move {
                        while tokio::time::Instant::now() < until {
                            let Ok(mut idle) = TcpStream::connect(addr).await else {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            };
                            let mut byte = [0u8; 1];
                            tokio::select! {
                                _ = idle.read(&mut byte) => {}
                                () = tokio::time::sleep_until(until) => {}
                            }
                        }
                    }));
                }
            }
            Attack::Stalled => {
                for _ in 0..11 {
                    let channel = self.b.connect().await?;
                    for _ in 0..100 {
                        let (channel, token) = (channel.clone(), self.b_token.clone());
                        tasks.push(tokio::spawn(async move {
                            while tokio::time::Instant::now() < until {
                                let began = tokio::time::Instant::now();
                                tokio::select! {
                                    _ = stalled_create(channel.clone(), token.clone()) => {}
                                    () = tokio::time::sleep_until(until) => {}
                                }
                                // Renewed as soon as the server ends a held
                                // call; a call refused at once is tried again
                                // a second later (retrying at once is a call
                                // flood, the rate limit's business).
                                if began.elapsed() < Duration::from_millis(500) {
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                            }
                        }));
                    }
                }
            }
            Attack::Garbage => {
                let client = self.a.connect().await?;
                for _ in 0..4 {
                    let (mut client, forged) = (client.clone(), self.forged.clone());
                    tasks.push(tokio::spawn(async move {
                        while tokio::time::Instant::now() < until {
                            let get = GetNoteRequest {
                                note_id: uuid::Uuid::new_v4().to_string(),
                            };
                            let _ = client.get_note(authorized(&forged, get)).await;
                        }
                    }));
                }
            }
            Attack::Watch => {
                for _ in 0..20 {
                    let channel = self.b.connect().await?;
                    for _ in 0..100 {
                        let mut health = HealthClient::new(channel.clone());
                        tasks.push(tokio::spawn(async move {
                            while tokio::time::Instant::now() < until {
                                match health.watch(HealthCheckRequest::default()).await {
                                    Ok(stream) => {
                                        tokio::time::sleep_until(until).await;
                                        drop(stream);
                                    }
                                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                                }
                            }
                        }));
                    }
                }
            }
        }
        Ok(tasks)
    }
}

/// A CreateNote call that sends its headers and never its message.
async fn stalled_create(
    channel: Channel,
    token: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
) -> Result<Note, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    grpc.client_streaming(
        authorized(&token, tokio_stream::pending::<CreateNoteRequest>()),
        tonic::codegen::http::uri::PathAndQuery::from_static("/notes.v1.NotesService/CreateNote"),
        tonic_prost::ProstCodec::<CreateNoteRequest, Note>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A's load for one row: GetNote closed-loop and new connections beside it.
async fn tenant_a(
    target: &Target,
    fixture: &Arc<Fixture>,
    args: &FairnessArgs,
) -> anyhow::Result<(Outcome, Outcome)> {
    let shape = Shape {
        connections: 2,
        in_flight: args.in_flight,
        warmup: Duration::from_secs_f64(args.warmup_seconds),
        duration: Duration::from_secs_f64(args.seconds),
    };
    let connect = Shape {
        in_flight: 1,
        ..shape
    };
    let (calls, connections) = tokio::join!(
        load::run(Scenario::Get, target, fixture.clone(), shape),
        load::run(Scenario::Connect, target, fixture.clone(), connect),
    );
    Ok((calls?, connections?))
}

/// Runs the table and the overload; prints both.
pub async fn run(
    material: &DevMaterial,
    args: FairnessArgs,
    audit: AuditAllowed,
) -> anyhow::Result<std::process::ExitCode> {
    let real = servers::real(material, None, audit).await?;
    let target = Target::new(real.addr, &material.dir)?;
    let tokens = crate::sign_tokens(material, 1)?;
    let fixture = Arc::new(crate::fixture(&target, &tokens).await?);
    let bearer = |token: String| -> anyhow::Result<_> { Ok(format!("Bearer {token}").parse()?) };
    let attackers = Attackers {
        addr: real.addr,
        b: endpoint_b(material, real.addr)?,
        a: target.clone(),
        b_token: bearer(token(material, "noisy-neighbour")?)?,
        forged: bearer(format!("{}AAAA", token(material, "mallory")?))?,
    };
    let (alone, alone_connect) = tenant_a(&target, &fixture, &args).await?;
    println!(
        "\nnoisy neighbours: tenant A alone: {:.0} GetNote/s, p99 {} us; {:.0} new connections/s",
        alone.per_second(),
        alone.percentile_us(0.99),
        alone_connect.per_second()
    );
    println!("| attack | A goodput | A p99 | A new connections/s | A errors | within target |");
    println!("|---|---:|---:|---:|---:|---|");
    let mut all_within = true;
    let rows: Vec<(String, Vec<Attack>)> = Attack::ALL
        .iter()
        .map(|a| (a.label().to_owned(), vec![*a]))
        .chain(std::iter::once((
            "all four at once".to_owned(),
            Attack::ALL.to_vec(),
        )))
        .collect();
    for (label, attacks) in rows {
        let until =
            Instant::now() + Duration::from_secs_f64(args.warmup_seconds + args.seconds + 0.5);
        let mut tasks = Vec::new();
        for attack in attacks {
            tasks.extend(attackers.start(attack, until).await?);
        }
        // The attack takes hold before A's warm-up ends.
        let (with, with_connect) = tenant_a(&target, &fixture, &args).await?;
        for task in tasks {
            let _ = task.await;
        }
        let goodput = with.per_second() / alone.per_second().max(f64::MIN_POSITIVE);
        let p99 = with.percentile_us(0.99) as f64 / alone.percentile_us(0.99).max(1) as f64;
        let connects =
            with_connect.per_second() / alone_connect.per_second().max(f64::MIN_POSITIVE);
        let within = goodput >= 0.90 && p99 <= 2.0;
        all_within &= within;
        println!(
            "| {label} | {goodput:.2}x | {p99:.2}x | {connects:.2}x | {} | {} |",
            with.errors + with_connect.errors,
            if within { "yes" } else { "NO" }
        );
        // Let the server settle: stalled calls time out, streams close.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    overload(&target, &fixture, &args).await?;
    Ok(if all_within {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    })
}

/// A's peak closed-loop goodput, then an open loop at `args.overload` times it.
async fn overload(
    target: &Target,
    fixture: &Arc<Fixture>,
    args: &FairnessArgs,
) -> anyhow::Result<()> {
    let shape = Shape {
        connections: 4,
        in_flight: 64,
        warmup: Duration::from_secs_f64(args.warmup_seconds),
        duration: Duration::from_secs_f64(args.seconds),
    };
    let peak = load::run(Scenario::Get, target, fixture.clone(), shape).await?;
    let rate = peak.per_second() * args.overload;
    // Enough connections that calls never queue in the client (100
    // streams each), so a refusal's time is the server's.
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(target.connect().await?);
    }
    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let seen = Arc::new(Mutex::new((histogram(), histogram(), 0u64)));
    let started = Instant::now();
    let measure_from = started + shape.warmup;
    let stop = measure_from + shape.duration;
    let tick = Duration::from_millis(1);
    let per_tick = rate / 1000.0;
    let (mut owed, mut sent, mut calls) = (0.0, 0u64, Vec::new());
    let mut next = tokio::time::Instant::now();
    while Instant::now() < stop {
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            sent += 1;
            let mut client = clients[sent as usize % clients.len()].clone();
            let (token, note_id, seen) = (
                fixture.tokens[0].clone(),
                fixture.note_id.clone(),
                seen.clone(),
            );
            calls.push(tokio::spawn(async move {
                let began = Instant::now();
                let answered = client
                    .get_note(authorized(&token, GetNoteRequest { note_id }))
                    .await;
                if began < measure_from || began >= stop {
                    return;
                }
                let micros = began.elapsed().as_micros().max(1) as u64;
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                match answered {
                    Ok(_) => seen.0.saturating_record(micros),
                    Err(status)
                        if matches!(status.code(), Code::Unavailable | Code::ResourceExhausted) =>
                    {
                        seen.1.saturating_record(micros)
                    }
                    Err(_) => seen.2 += 1,
                }
            }));
        }
        next += tick;
        tokio::time::sleep_until(next).await;
        calls.retain(|c| !c.is_finished());
    }
    for call in calls {
        let _ = call.await;
    }
    let (admitted, refused, failed) = {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        (seen.0.clone(), seen.1.clone(), seen.2)
    };
    let seconds = shape.duration.as_secs_f64();
    let goodput = admitted.len() as f64 / seconds;
    println!(
        "\nopen-loop overload: peak {:.0} GetNote/s (closed loop, 64 in flight); offered {:.0}/s ({:.1}x)",
        peak.per_second(),
        rate,
        args.overload
    );
    println!(
        "| admitted goodput | vs peak | admitted p99 | refused | refused median | other errors |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {goodput:.0}/s | {:.2}x | {} us | {:.0}/s | {} us | {failed} |",
        goodput / peak.per_second().max(f64::MIN_POSITIVE),
        admitted.value_at_quantile(0.99),
        refused.len() as f64 / seconds,
        refused.value_at_quantile(0.5),
    );
    Ok(())
}
