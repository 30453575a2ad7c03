//! A fault proxy between one `serve` instance and DynamoDB: each write
//! request (chosen at random from a seed) passes, has its reply dropped
//! after it was applied, or is held past the instance's timeout and then
//! delivered late, its reply dropped.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

use super::history::Event;
use crate::harness::net::read_message;

/// The DynamoDB operations that write.
const WRITES: [&str; 4] = [
    "dynamodb_20120810.updateitem",
    "dynamodb_20120810.putitem",
    "dynamodb_20120810.transactwriteitems",
    "dynamodb_20120810.deleteitem",
];

/// How often each fault strikes a write, in percent.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub drop_reply: u32,
    pub hold: u32,
    /// How long a held request waits before it is delivered.
    pub hold_for: (Duration, Duration),
}

/// A running proxy.
pub struct FaultProxy {
    pub endpoint: String,
}

/// A shared log of events, timed from `clock`.
#[derive(Clone)]
pub struct Events {
    clock: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Events {
    pub fn new(clock: Instant) -> Self {
        Self {
            clock,
            events: Arc::default(),
        }
    }

    pub fn now(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    pub fn record(&self, what: String) {
        let at = self.now();
        self.events.lock().unwrap().push(Event { at, what });
    }

    pub fn take(&self) -> Vec<Event> {
        let mut events = self.events.lock().unwrap().clone();
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        events
    }

    pub fn count(&self, word: &str) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.what.contains(word))
            .count()
    }
}

impl FaultProxy {
    /// A proxy for instance `name` to `upstream`, faulting with `faults`
    /// from `seed`, logging to `events`.
    pub async fn start(
        name: char,
        upstream: &str,
        faults: Faults,
        seed: u64,
        events: Events,
    ) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let rng = rng.clone();
                let events = events.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    while let Some((request, op)) = read_message(&mut inbound, "x-amz-target").await
                    {
                        let op = op.unwrap_or_default();
                        let write = WRITES.contains(&op.as_str());
                        let (roll, hold) = {
                            let mut rng = rng.lock().unwrap();
                            let millis = rng.u64(
                                faults.hold_for.0.as_millis() as u64
                                    ..=faults.hold_for.1.as_millis() as u64,
                            );
                            (rng.u32(0..100), Duration::from_millis(millis))
                        };
                        let name_of = op.trim_start_matches("dynamodb_20120810.");
                        if write && roll < faults.hold {
                            events.record(format!(
                                "{name}: {name_of} held {:.1} s",
                                hold.as_secs_f64()
                            ));
                            tokio::time::sleep(hold).await;
                            let _ = outbound.write_all(&request).await;
                            let _ = read_message(&mut outbound, "").await;
                            events
                                .record(format!("{name}: {name_of} delivered late, reply dropped"));
                            return;
                        }
                        if outbound.write_all(&request).await.is_err() {
                            return;
                        }
                        let Some((response, _)) = read_message(&mut outbound, "").await else {
                            return;
                        };
                        if write && roll < faults.hold + faults.drop_reply {
                            events.record(format!("{name}: reply to {name_of} dropped"));
                            return;
                        }
                        if inbound.write_all(&response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FaultProxy { endpoint }
    }
}
