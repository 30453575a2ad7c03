//! DynamoDB mode: the real server over a DynamoDB endpoint (moto in
//! practice), counting the HTTP requests the SDK sends for each RPC.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use aws_sdk_dynamodb::config::{
    ConfigBag, Intercept, RuntimeComponents, interceptors::BeforeTransmitInterceptorContextRef,
};
use hdrhistogram::Histogram;
use notes_api::pb::{
    CreateNoteRequest, DeleteNoteRequest, GetNoteRequest, ListNotesRequest, UpdateNoteRequest,
};
use notes_server::{
    auth::AuditAllowed, config::DynamoConfig, dev::DevMaterial, store::DynamoStore,
};

use crate::{
    load::{Target, authorized},
    servers,
};

/// Requests sent, by `X-Amz-Target` operation (retries are requests too),
/// and their body bytes.
#[derive(Debug, Default, Clone)]
struct Requests(Arc<Mutex<BTreeMap<String, (u64, u64)>>>);

impl Requests {
    fn take(&self) -> BTreeMap<String, (u64, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Intercept for Requests {
    fn name(&self) -> &'static str {
        "notes-bench request counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let operation = context
            .request()
            .headers()
            .get("x-amz-target")
            .and_then(|target| target.rsplit('.').next())
            .unwrap_or("unknown")
            .to_owned();
        let body = context.request().body().bytes().unwrap_or_default();
        // The server's own reads of the token revocation list (every 2 s,
        // in the table's `#revocations` partition) are not an RPC's.
        if body
            .windows(b"#revocations".len())
            .any(|w| w == b"#revocations")
        {
            return Ok(());
        }
        let bytes = body.len() as u64;
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = counts.entry(operation).or_default();
        entry.0 += 1;
        entry.1 += bytes;
        Ok(())
    }
}

/// One RPC's row.
pub struct Row {
    /// The RPC.
    pub rpc: &'static str,
    /// Calls made (all succeeded, or the run failed).
    pub calls: usize,
    /// DynamoDB requests during them, by operation (the readiness probe's
    /// DescribeTable and the revocation list's reads left out).
    pub requests: BTreeMap<String, u64>,
    /// Their body bytes in all.
    pub bytes: u64,
    /// Median latency, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
}

impl Row {
    /// DynamoDB requests per call.
    pub fn per_call(&self) -> f64 {
        self.requests.values().sum::<u64>() as f64 / self.calls.max(1) as f64
    }

    /// Request bytes per call.
    pub fn bytes_per_call(&self) -> u64 {
        self.bytes / self.calls.max(1) as u64
    }
}

/// What the runs left in the table.
pub struct Stored {
    /// The item size of a note (DynamoDB's rule: names plus values), after
    /// one update, in bytes.
    pub once_updated: usize,
    /// The same for the note every call of the busy-note row updated.
    pub busy: usize,
}

/// DynamoDB's size of an item: attribute names plus values (numbers
/// counted as their digits, about what DynamoDB charges).
fn item_size(
    item: &std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
) -> usize {
    use aws_sdk_dynamodb::types::AttributeValue;
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
            AttributeValue::M(m) => {
                3 + m.iter().map(|(k, v)| k.len() + value(v) + 1).sum::<usize>()
            }
            AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
            _ => 16,
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

/// Runs `calls` of each RPC, one after the other, against the real server
/// over the table of `config` (created if missing).
pub async fn run(
    material: &DevMaterial,
    config: &DynamoConfig,
    calls: usize,
    audit: AuditAllowed,
) -> anyhow::Result<(Vec<Row>, Stored)> {
    let created = notes_server::startup::init_table(config).await?;
    let client = created.client();
    let requests = Requests::default();
    let counted = aws_sdk_dynamodb::Client::from_conf(
        client
            .config()
            .to_builder()
            .interceptor(requests.clone())
            .build(),
    );
    let client_for_sizes = client.clone();
    let table = created.table().to_owned();
    let store = Arc::new(DynamoStore::new(counted, created.table()));
    let server = servers::real(material, Some(store), audit).await?;
    let target = Target::new(server.addr, &material.dir)?;
    let mut client = target.connect().await?;
    let token: tonic::metadata::MetadataValue<_> = format!(
        "Bearer {}",
        std::fs::read_to_string(material.path("token"))?
    )
    .parse()?;

    let mut rows = Vec::new();
    let mut ids = Vec::with_capacity(calls);
    macro_rules! phase {
        ($rpc:literal, $i:ident => $call:expr) => {{
            requests.take();
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for $i in 0..calls {
                let began = Instant::now();
                $call;
                latencies.saturating_record(began.elapsed().as_micros().max(1) as u64);
            }
            let mut requests = requests.take();
            requests.remove("DescribeTable");
            rows.push(Row {
                rpc: $rpc,
                calls,
                bytes: requests.values().map(|(_, b)| b).sum(),
                requests: requests.into_iter().map(|(op, (n, _))| (op, n)).collect(),
                p50_us: latencies.value_at_quantile(0.5),
                p99_us: latencies.value_at_quantile(0.99),
            });
        }};
    }
    phase!("CreateNote", i => {
        let note = client
            .create_note(authorized(&token, CreateNoteRequest {
                content: servers::content(i),
                request_id: uuid::Uuid::new_v4().to_string(),
            }))
            .await?
            .into_inner();
        ids.push(note.note_id);
    });
    phase!("GetNote", i => {
        client
            .get_note(authorized(&token, GetNoteRequest { note_id: ids[i].clone() }))
            .await?;
    });
    phase!("ListNotes", _i => {
        client
            .list_notes(authorized(&token, ListNotesRequest {
                page_size: servers::LIST_PAGE as i32,
                page_token: String::new(),
            }))
            .await?;
    });
    phase!("UpdateNote", i => {
        client
            .update_note(authorized(&token, UpdateNoteRequest {
                note_id: ids[i].clone(),
                content: "updated".into(),
                expected_version: 1,
                request_id: String::new(),
            }))
            .await?;
    });
    phase!("UpdateNote with request_id", i => {
        client
            .update_note(authorized(&token, UpdateNoteRequest {
                note_id: ids[i].clone(),
                content: "updated again".into(),
                expected_version: 0,
                request_id: uuid::Uuid::new_v4().to_string(),
            }))
            .await?;
    });
    // One note takes every call: its record of recent writes fills and is
    // pruned (one call in 16 sends a second request).
    phase!("UpdateNote, one busy note", i => {
        client
            .update_note(authorized(&token, UpdateNoteRequest {
                note_id: ids[0].clone(),
                content: servers::content(i),
                expected_version: 0,
                request_id: if i % 2 == 0 { uuid::Uuid::new_v4().to_string() } else { String::new() },
            }))
            .await?;
    });
    let size_of = |id: &String| {
        let client = client_for_sizes.clone();
        let table = table.clone();
        let id = id.clone();
        async move {
            let item = client
                .get_item()
                .table_name(table)
                .key(
                    "userId",
                    aws_sdk_dynamodb::types::AttributeValue::S(
                        notes_server::dev::DEV_SUBJECT.into(),
                    ),
                )
                .key("noteId", aws_sdk_dynamodb::types::AttributeValue::S(id))
                .consistent_read(true)
                .send()
                .await?;
            anyhow::Ok(item.item.as_ref().map_or(0, item_size))
        }
    };
    let stored = Stored {
        once_updated: size_of(&ids[calls - 1]).await?,
        busy: size_of(&ids[0]).await?,
    };
    phase!("DeleteNote", i => {
        client
            .delete_note(authorized(&token, DeleteNoteRequest {
                note_id: ids[i].clone(),
                expected_version: 0,
                request_id: String::new(),
            }))
            .await?;
    });
    drop(server);
    Ok((rows, stored))
}
