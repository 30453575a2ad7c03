//! A robustness test in the manner of etcd's and Jepsen's: two `serve`
//! processes on one table, each reaching DynamoDB through its own fault
//! proxy (replies dropped after the write was applied, requests held past
//! the instance's timeout and delivered late), a nemesis that SIGKILLs one
//! instance and restarts it, and eight clients (two owners, their notes
//! shared) creating, updating (with and without `expected_version` and
//! `request_id`), reading, listing and deleting. Every call is recorded
//! with its invoke and complete times; [`checker`] checks the history.
//!
//! In the test command it runs for 40 s; `scripts/robustness --seconds N
//! --seed S` runs it longer (`NOTES_TEST_ROBUSTNESS_SECONDS`,
//! `NOTES_TEST_ROBUSTNESS_SEED`) and prints every anomaly with the calls and
//! faults around it.

mod checker;
mod history;
mod proxy;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::TryStreamExt;
use notes_client::{Error, NotesClient, RetryPolicy};
use notes_server::{config::DynamoConfig, startup, store::NoteStore};
use tokio::process::Child;

use self::{
    history::{Call, History, Op, Outcome, Seen},
    proxy::{Events, FaultProxy, Faults},
};
use crate::harness::{
    dynamodb_config, dynamodb_endpoint, pki::write_files, process::try_start_serve, token_for,
};

/// Clients, and the owners they write as.
const CLIENTS: usize = 8;
const OWNERS: usize = 2;
/// Notes each owner keeps in play; deletes and creates keep it in range.
const POOL: (usize, usize) = (3, 8);

struct Settings {
    seconds: f64,
    seed: u64,
}

fn settings() -> Settings {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let seconds = var("NOTES_TEST_ROBUSTNESS_SECONDS").map_or(40.0, |s| {
        s.parse().expect("NOTES_TEST_ROBUSTNESS_SECONDS: a number")
    });
    let seed = var("NOTES_TEST_ROBUSTNESS_SEED").map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        },
        |s| s.parse().expect("NOTES_TEST_ROBUSTNESS_SEED: an integer"),
    );
    Settings { seconds, seed }
}

/// The two instances, restartable on their ports.
struct Instances {
    dir: std::path::PathBuf,
    table: String,
    endpoints: [String; 2],
    children: [Option<Child>; 2],
    ports: [u16; 2],
}

impl Instances {
    fn env(&self, i: usize) -> Vec<(&'static str, String)> {
        vec![
            ("NOTES_DYNAMODB_ENDPOINT", self.endpoints[i].clone()),
            // serve's defaults: 1 s per attempt, 3 s in all.
            ("NOTES_DYNAMODB_ATTEMPT_TIMEOUT_MS", "1000".into()),
            ("NOTES_DYNAMODB_TIMEOUT_MS", "3000".into()),
        ]
    }

    /// Starts instance `i`, trying again while it refuses to start (it
    /// stops at once when its start-up check of the table times out, as it
    /// may while DynamoDB is slow).
    async fn start(&mut self, i: usize) {
        let env = self.env(i);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut said = String::new();
        for _ in 0..60 {
            match try_start_serve(&self.dir, &self.table, self.ports[i], &env).await {
                Ok((child, port, _)) => {
                    self.ports[i] = port;
                    self.children[i] = Some(child);
                    return;
                }
                Err(why) => said = why,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!("instance {} did not start again: {said}", name(i));
    }

    async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }
}

fn name(i: usize) -> char {
    ['A', 'B'][i]
}

/// The owners: Cognito-shaped subjects (UUIDs), fixed by the seed.
fn owners(seed: u64) -> Vec<String> {
    (0..OWNERS)
        .map(|o| uuid::Uuid::from_u128(u128::from(seed) << 8 | o as u128).to_string())
        .collect()
}

fn client(dir: &std::path::Path, port: u16, owner: &str) -> NotesClient {
    let tls = notes_client::TlsFiles::new(
        dir.join("ca.pem"),
        dir.join("client.pem"),
        dir.join("client.key"),
    )
    .load()
    .unwrap();
    NotesClient::builder(format!("https://localhost:{port}"), tls)
        .token(token_for(owner))
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .retry(RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
        })
        .connect_lazy()
        .unwrap()
}

/// How a client's error counts for the checker.
fn outcome_of(err: Error) -> Outcome {
    use tonic::Code;
    match err.code() {
        Some(
            code @ (Code::NotFound
            | Code::Aborted
            | Code::AlreadyExists
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted),
        ) => Outcome::Failed(code, err.to_string()),
        _ => Outcome::Unknown(err.to_string()),
    }
}

/// A note in play: its id and the last version a client saw.
type Pool = Arc<Mutex<Vec<(String, i64)>>>;

/// One client's calls until `until`.
#[allow(clippy::too_many_arguments)]
async fn run_client(
    process: usize,
    instance: usize,
    owner: String,
    client: NotesClient,
    pool: Pool,
    seed: u64,
    events: Events,
    until: f64,
) -> Vec<Op> {
    let mut rng = fastrand::Rng::with_seed(seed ^ (process as u64 + 1).wrapping_mul(0x9e37_79b9));
    let tag = &owner[..8];
    let mut ops = Vec::new();
    let mut seq = 0;
    while events.now() < until {
        // A little think time: moto answers one request at a time.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..8))).await;
        seq += 1;
        let content = format!("{tag}:w{process}.{seq}");
        let keyed = rng.u32(0..10) < 7;
        let picked = {
            let pool = pool.lock().unwrap();
            (!pool.is_empty()).then(|| pool[rng.usize(0..pool.len())].clone())
        };
        let pool_len = pool.lock().unwrap().len();
        let roll = rng.u32(0..100);
        let call = match (roll, &picked) {
            (80..90, _) if pool_len < POOL.1 => Call::Create { content },
            (_, None) => Call::Create { content },
            (0..30, Some((note, _))) => Call::Update {
                note: note.clone(),
                content,
                expected: 0,
                keyed,
            },
            (30..55, Some((note, version))) => Call::Update {
                note: note.clone(),
                content,
                expected: *version,
                keyed,
            },
            (55..70, Some((note, _))) => Call::Get { note: note.clone() },
            (70..80, _) => Call::List,
            (90..100, Some((note, version))) if pool_len > POOL.0 => {
                pool.lock().unwrap().retain(|(id, _)| id != note);
                Call::Delete {
                    note: note.clone(),
                    expected: if rng.bool() { 0 } else { *version },
                    keyed,
                }
            }
            (_, Some((note, _))) => Call::Get { note: note.clone() },
        };
        let invoke = events.now();
        let outcome = match &call {
            Call::Create { content } => match client.create(content, None).await {
                Ok(note) => {
                    let mut pool = pool.lock().unwrap();
                    if pool.len() < POOL.1 {
                        pool.push((note.note_id.clone(), note.version));
                    }
                    Outcome::Note(note.into())
                }
                Err(e) => outcome_of(e),
            },
            Call::Get { note } => match client.get(note).await {
                Ok(note) => Outcome::Note(note.into()),
                Err(e) => outcome_of(e),
            },
            Call::List => match client.list(100, "").await {
                Ok(page) => Outcome::Notes(
                    page.notes.into_iter().map(Seen::from).collect(),
                    page.next_page_token.is_empty(),
                ),
                Err(e) => outcome_of(e),
            },
            Call::Update {
                note,
                content,
                expected,
                keyed,
            } => {
                let sent = if *keyed {
                    client.update(note, content, *expected).await
                } else {
                    client
                        .update_with_request_id(note, content, *expected, None)
                        .await
                };
                match sent {
                    Ok(note) => Outcome::Note(note.into()),
                    Err(e) => outcome_of(e),
                }
            }
            Call::Delete {
                note,
                expected,
                keyed,
            } => {
                let sent = if *keyed {
                    client.delete(note, *expected).await
                } else {
                    client.delete_with_request_id(note, *expected, None).await
                };
                match sent {
                    Ok(()) => Outcome::Deleted,
                    Err(e) => outcome_of(e),
                }
            }
        };
        if let Outcome::Note(seen) = &outcome {
            for entry in pool.lock().unwrap().iter_mut() {
                if entry.0 == seen.id && entry.1 < seen.version {
                    entry.1 = seen.version;
                }
            }
        }
        ops.push(Op {
            process,
            instance: name(instance),
            owner: owner.clone(),
            call,
            invoke,
            complete: events.now(),
            outcome,
        });
    }
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_under_faults_and_kills_apply_every_write_once() {
    let settings = settings();
    eprintln!(
        "robustness: seed {} for {} s (NOTES_TEST_ROBUSTNESS_SEED / NOTES_TEST_ROBUSTNESS_SECONDS)",
        settings.seed, settings.seconds
    );
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    // The test's own view of the table, patient with a busy moto.
    let config = DynamoConfig {
        dynamodb_timeout_ms: 30_000,
        dynamodb_attempt_timeout_ms: 10_000,
        ..dynamodb_config(dynamodb_endpoint())
    };
    let direct = startup::dynamodb_store(&config).await.unwrap();
    direct.init_table(Duration::from_secs(30)).await.unwrap();

    let events = Events::new(Instant::now());
    let faults = Faults {
        drop_reply: 6,
        hold: 4,
        hold_for: (Duration::from_millis(1200), Duration::from_millis(3500)),
    };
    let mut proxies = Vec::new();
    for i in 0..2 {
        proxies.push(
            FaultProxy::start(
                name(i),
                &dynamodb_endpoint(),
                faults,
                settings.seed.wrapping_add(i as u64 * 7919),
                events.clone(),
            )
            .await,
        );
    }
    let mut instances = Instances {
        dir: dir.path().to_owned(),
        table: config.table.clone(),
        endpoints: [proxies[0].endpoint.clone(), proxies[1].endpoint.clone()],
        children: [None, None],
        ports: [0, 0],
    };
    instances.start(0).await;
    instances.start(1).await;
    let ports = instances.ports;

    let owners = owners(settings.seed);
    let pools: Vec<Pool> = owners.iter().map(|_| Pool::default()).collect();
    let until = events.now() + settings.seconds;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|process| {
            let owner = owners[process % OWNERS].clone();
            let instance = (process / OWNERS) % 2;
            tokio::spawn(run_client(
                process,
                instance,
                owner.clone(),
                client(dir.path(), ports[instance], &owner),
                pools[process % OWNERS].clone(),
                settings.seed,
                events.clone(),
                until,
            ))
        })
        .collect();

    // The nemesis: SIGKILL one instance every 4 to 9 s, restart it.
    let mut rng = fastrand::Rng::with_seed(settings.seed ^ 0x6e656d65);
    let mut kills = 0;
    loop {
        let pause = Duration::from_millis(rng.u64(4000..9000));
        if events.now() + pause.as_secs_f64() + 1.0 > until {
            break;
        }
        tokio::time::sleep(pause).await;
        let victim = rng.usize(0..2);
        events.record(format!("SIGKILL {}", name(victim)));
        instances.kill(victim).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        instances.start(victim).await;
        events.record(format!("{} serving again", name(victim)));
        kills += 1;
    }

    let mut ops = Vec::new();
    for client in clients {
        ops.extend(
            tokio::time::timeout(Duration::from_secs(60), client)
                .await
                .expect("a client did not finish")
                .unwrap(),
        );
    }
    // Let every held request be delivered before reading the end state.
    tokio::time::sleep(faults.hold_for.1 + Duration::from_secs(1)).await;
    let mut history = History {
        ops,
        events: Vec::new(),
        final_state: BTreeMap::new(),
        end: events.now(),
    };
    for owner in &owners {
        let stored = direct.list(owner, 1000, None).await.unwrap();
        let seen: Vec<Seen> = stored
            .notes
            .into_iter()
            .map(|n| Seen {
                id: n.note_id.to_string(),
                owner: n.owner,
                version: n.version,
                content: n.content,
            })
            .collect();
        // Both instances answer the same.
        for (i, port) in ports.iter().enumerate() {
            let listed: Vec<Seen> = client(dir.path(), *port, owner)
                .list_all(100)
                .map_ok(Seen::from)
                .try_collect()
                .await
                .unwrap();
            assert_eq!(listed, seen, "instance {} lists another state", name(i));
        }
        history.final_state.insert(owner.clone(), seen);
    }
    history.events = events.take();
    instances.kill(0).await;
    instances.kill(1).await;

    let anomalies = checker::check(&history);
    let count = |f: fn(&Op) -> bool| history.ops.iter().filter(|op| f(op)).count();
    eprintln!(
        "robustness: seed {}: {} calls ({} writes: {} acknowledged, {} refused, {} unknown), \
         {} kills, {} replies dropped, {} requests held and delivered late; {} notes at the end; \
         {} anomalies",
        settings.seed,
        history.ops.len(),
        count(|op| op.call.is_write()),
        count(|op| op.call.is_write() && matches!(op.outcome, Outcome::Note(_) | Outcome::Deleted)),
        count(|op| op.call.is_write() && matches!(op.outcome, Outcome::Failed(..))),
        count(|op| op.call.is_write() && matches!(op.outcome, Outcome::Unknown(_))),
        kills,
        events.count("dropped") - events.count("delivered late"),
        events.count("delivered late"),
        history.final_state.values().map(Vec::len).sum::<usize>(),
        anomalies.len(),
    );
    for anomaly in anomalies.iter().take(20) {
        eprintln!(
            "\nANOMALY {}: {} (note {})",
            anomaly.kind,
            anomaly.detail,
            anomaly.note.as_deref().unwrap_or("-")
        );
        for line in checker::excerpt(&history, anomaly) {
            eprintln!("  {line}");
        }
    }
    assert!(
        anomalies.is_empty(),
        "{} anomalies with seed {} (see above)",
        anomalies.len(),
        settings.seed
    );
    assert!(history.ops.len() >= 100, "the load barely ran");
    assert!(
        events.count("dropped") >= 3,
        "too few faults to mean anything"
    );
    assert!(
        kills >= 1 || settings.seconds < 10.0,
        "no instance was killed"
    );
}
