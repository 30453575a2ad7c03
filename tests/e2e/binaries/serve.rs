//! `notes-server init-table`, `serve` and `check` as an operator runs them: configured through `NOTES_*`
//! variables against the DynamoDB test server, started, reloaded, killed and
//! stopped, and what they say when a setting is wrong.

use super::*;

#[tokio::test]
async fn init_table_is_safe_to_run_twice() {
    let table = dynamodb_config(dynamodb_endpoint()).table;

    let first = init_table(&table).await;
    let second = init_table(&table).await;

    for out in [&first, &second] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ACTIVE"));
    }
}

#[tokio::test]
async fn serve_on_dynamodb_answers_the_cli_and_stops_gracefully_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let table = dynamodb_config(dynamodb_endpoint()).table;
    assert!(init_table(&table).await.status.success());
    // Port 0: the server binds a free port itself and logs it; nothing can
    // take it between choosing and binding.
    let (mut server, port) = start_serve(dir.path(), &table, 0, &[]).await;

    let created = notes(dir.path(), port, &["--json", "create", "from the CLI"]).await;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let note: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = note["noteId"].as_str().unwrap();
    let listed = notes(dir.path(), port, &["list"]).await;
    let missing = notes(
        dir.path(),
        port,
        &["get", &uuid::Uuid::now_v7().to_string()],
    )
    .await;
    let conflict = notes(
        dir.path(),
        port,
        &["update", id, "x", "--expected-version", "7"],
    )
    .await;
    let invalid = notes(dir.path(), port, &["get", "not-a-uuid"]).await;

    assert!(String::from_utf8_lossy(&listed.stdout).contains("from the CLI"));
    assert_eq!(note["version"], 1);
    assert_eq!(note["userId"], "cli-user");
    assert_eq!(missing.status.code(), Some(3));
    assert_eq!(conflict.status.code(), Some(4));
    assert_eq!(invalid.status.code(), Some(5));

    let pid = server.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("notes-server did not stop within 30 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "notes-server exited with {status}");
}

#[tokio::test]
async fn serve_refuses_to_start_on_a_missing_table_and_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());

    let out = run(server_command(dir.path(), "no-such-table", 0)).await;

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("NOTES_TABLE") && stderr.contains("init-table"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_refuses_an_invalid_setting_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    std::fs::write(dir.path().join("page.key"), b"short").unwrap();

    let mut leeway = server_command(dir.path(), "notes", 0);
    leeway.env("NOTES_TOKEN_LEEWAY_SECS", "3600");
    let leeway = run(leeway).await;
    let key = run(server_command(dir.path(), "notes", 0)).await;

    let leeway = String::from_utf8_lossy(&leeway.stderr);
    let key = String::from_utf8_lossy(&key.stderr);
    assert!(leeway.contains("NOTES_TOKEN_LEEWAY_SECS"), "{leeway}");
    assert!(
        key.contains("NOTES_PAGE_TOKEN_KEY_FILE") && key.contains("at least 32"),
        "{key}"
    );
}

/// Start-up errors blame the setting that is wrong, in one line, with no
/// SDK dumps: the endpoint when nothing answers there, its form when it
/// has no scheme, the region when there is none.
#[tokio::test]
async fn serve_start_up_errors_name_the_wrong_setting() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    // Held, never accepted from: DynamoDB there never answers (no port race).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = listener.local_addr().unwrap().port();
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[(
                "NOTES_DYNAMODB_ENDPOINT",
                &*format!("http://127.0.0.1:{silent}"),
            )],
            "--dynamodb-endpoint / NOTES_DYNAMODB_ENDPOINT: DynamoDB at http://127.0.0.1:",
        ),
        (
            &[("NOTES_DYNAMODB_ENDPOINT", "127.0.0.1:5000")],
            "\"127.0.0.1:5000\" is not a URL with a scheme and a host",
        ),
        (
            &[("AWS_REGION", ""), ("AWS_DEFAULT_REGION", "")],
            "--aws-region / NOTES_AWS_REGION (or AWS_REGION): no AWS region configured",
        ),
    ];
    for (env, expected) in cases {
        let mut cmd = server_command(dir.path(), "notes-startup", 0);
        cmd.env("NOTES_STORE", "dynamodb");
        for (key, value) in env {
            if value.is_empty() {
                cmd.env_remove(key);
            } else {
                cmd.env(key, value);
            }
        }
        let out = run(cmd).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{expected}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.contains(expected), "{expected}: {stderr}");
        assert!(
            !stderr.contains("Request {") && !stderr.contains("IMDS"),
            "an SDK dump: {stderr}"
        );
    }
}

/// A port already taken is named with the setting that chose it: the admin
/// listener's default port is one the user never set.
#[tokio::test]
async fn a_taken_port_names_the_setting_that_chose_it() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cmd = server_command(dir.path(), "notes", 0);
    cmd.env("NOTES_STORE", "memory")
        .env("NOTES_ADMIN_LISTEN", format!("127.0.0.1:{port}"));
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "binding 127.0.0.1:{port} (--admin-listen / NOTES_ADMIN_LISTEN)"
        )),
        "{stderr}"
    );
}

/// `serve` says in one line what it is about to do: issuers, CA, CRLs with
/// their revoked-entry counts, store and table, limits.
#[tokio::test]
async fn serve_logs_one_start_up_summary() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let mut cmd = server_command(dir.path(), "notes-summary", 0);
    cmd.env("NOTES_STORE", "memory")
        .env("NOTES_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let summary = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("\"message\":\"settings\"") {
                return line;
            }
        }
        panic!("no summary line");
    })
    .await
    .expect("a summary within 30 s");
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let fields = &summary["fields"];
    assert_eq!(fields["issuers"], ISSUER, "{summary}");
    assert_eq!(fields["crls"], "none", "{summary}");
    assert!(
        fields["store"].as_str().unwrap().starts_with("memory"),
        "{summary}"
    );
    assert_eq!(fields["max_requests_in_flight"], 1024, "{summary}");
    assert_eq!(fields["rate_limit"], "off", "{summary}");
    assert_eq!(fields["refusal_budget"], "10/s, burst 100", "{summary}");
}

/// A table with another key schema stops start-up, naming what is wrong.
#[tokio::test]
async fn a_table_with_the_wrong_key_schema_stops_start_up() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let table = format!("wrong-schema-{}", uuid::Uuid::new_v4().simple());
    let config = crate::harness::dynamodb_config(dynamodb_endpoint());
    let client = notes_server::startup::dynamodb_client(&config)
        .await
        .unwrap();
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let mut cmd = server_command(dir.path(), &table, 0);
    cmd.env("NOTES_STORE", "dynamodb");
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--table / NOTES_TABLE")
            && stderr.contains("expected userId (S, HASH) and noteId (S, RANGE)"),
        "{stderr}"
    );
}

/// A JWKS URL must be HTTPS (plain HTTP only to loopback, for tests).
#[tokio::test]
async fn a_plain_http_jwks_url_beyond_loopback_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let mut cmd = server_command(dir.path(), "notes-jwks-url", 0);
    cmd.env("NOTES_STORE", "memory")
        .env_remove("NOTES_JWKS_FILE")
        .env("NOTES_JWKS_URL", "http://keys.example.org/jwks.json");
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--jwks-url") && stderr.contains("https"),
        "{stderr}"
    );
}

/// SIGHUP reloads the TLS files at once (the periodic reload is an hour
/// away here), and new connections get the new server certificate.
#[tokio::test]
async fn sighup_reloads_the_tls_files_at_once() {
    use crate::harness::pki::{DAY, localhost, pki, tls_probe, write};
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let (server, port) = start_serve(
        dir.path(),
        "notes-sighup",
        0,
        &[
            ("NOTES_STORE", "memory"),
            ("NOTES_TLS_RELOAD_INTERVAL_SECS", "3600"),
        ],
    )
    .await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let before = tls_probe(addr, Some(&pki().client)).await.unwrap();
    let rotated = pki().ca.issue_server(&localhost(), DAY).unwrap();
    write(&dir.path().join("server.key"), rotated.key_pem.as_bytes());
    write(&dir.path().join("server.pem"), rotated.cert_pem.as_bytes());
    let pid = server.id().unwrap().to_string();

    // Before the signal the old certificate is still served: the periodic
    // reload is not what changes it.
    assert_eq!(tls_probe(addr, Some(&pki().client)).await.unwrap(), before);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let mut served = before.clone();
    for _ in 0..50 {
        served = tls_probe(addr, Some(&pki().client)).await.unwrap();
        if served != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    use rustls::pki_types::pem::PemObject;
    let expected =
        rustls::pki_types::CertificateDer::from_pem_slice(rotated.cert_pem.as_bytes()).unwrap();
    assert_eq!(served, expected, "SIGHUP did not reload the certificate");
}

/// What one writer saw.
#[derive(Default)]
struct Outcomes {
    attempted_creates: usize,
    /// Content -> the note id the server acknowledged.
    acknowledged: Vec<(String, String)>,
    /// Note id -> (updates acknowledged, updates with an unknown outcome).
    updates: std::collections::HashMap<String, (i64, i64)>,
}

#[tokio::test]
async fn sigkill_under_load_loses_no_acknowledged_write_and_applies_none_twice() {
    use notes_client::{NotesClient, RetryPolicy};
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let table = dynamodb_config(dynamodb_endpoint()).table;
    assert!(init_table(&table).await.status.success());
    let (mut server, port) = start_serve(dir.path(), &table, 0, &[]).await;

    let tls = notes_client::TlsFiles::new(
        dir.path().join("ca.pem"),
        dir.path().join("client.pem"),
        dir.path().join("client.key"),
    )
    .load()
    .unwrap();
    let client = NotesClient::builder(format!("https://localhost:{port}"), tls)
        .token(token_for("crash-test"))
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .retry(RetryPolicy {
            max_attempts: 12,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
        })
        .connect_lazy()
        .unwrap();

    // Four writers for 7 s: creates with request ids (the client adds
    // them), and updates at the version each writer last saw.
    let stop = tokio_util_stop();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Outcomes::default();
                let mut versions: Vec<(String, i64)> = Vec::new();
                let mut i = 0;
                while !*stop.borrow() {
                    i += 1;
                    let content = format!("writer {w} note {i}");
                    seen.attempted_creates += 1;
                    if let Ok(note) = client.create(&content, None).await {
                        seen.acknowledged.push((content, note.note_id.clone()));
                        versions.push((note.note_id, note.version));
                    }
                    if let Some((id, version)) = versions.last_mut() {
                        let counts = seen.updates.entry(id.clone()).or_default();
                        match client.update(id, &format!("update {i}"), *version).await {
                            Ok(note) => {
                                counts.0 += 1;
                                *version = note.version;
                            }
                            Err(
                                notes_client::Error::Conflict(_) | notes_client::Error::NotFound(_),
                            ) => {}
                            // Sent, answer lost: applied or not, never twice.
                            Err(_) => {
                                counts.1 += 1;
                                versions.pop();
                            }
                        }
                    }
                }
                seen
            })
        })
        .collect();

    // SIGKILL three times, restarting on the same port each time.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.start_kill().unwrap();
        server.wait().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        server = start_serve(dir.path(), &table, port, &[]).await.0;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.send_replace(true);
    let mut outcomes = Vec::new();
    for writer in writers {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(60), writer)
                .await
                .unwrap()
                .unwrap(),
        );
    }

    use futures_util::TryStreamExt;
    let stored: Vec<_> = client.list_all(100).try_collect().await.unwrap();
    let attempted: usize = outcomes.iter().map(|o| o.attempted_creates).sum();
    let acknowledged: Vec<_> = outcomes.iter().flat_map(|o| &o.acknowledged).collect();
    let mut by_content = std::collections::HashMap::<&str, usize>::new();
    for note in &stored {
        *by_content.entry(&note.content).or_default() += 1;
    }
    let ids: std::collections::HashMap<&str, &notes_api::pb::Note> =
        stored.iter().map(|n| (n.note_id.as_str(), n)).collect();
    let (updates_acked, updates_unanswered) = outcomes
        .iter()
        .flat_map(|o| o.updates.values())
        .fold((0, 0), |(a, u), (acked, unknown)| (a + acked, u + unknown));
    eprintln!(
        "crash test: 3 SIGKILLs; creates attempted {attempted}, acknowledged {}, retried attempts {}, \
         notes present {}; updates acknowledged {updates_acked}, unanswered {updates_unanswered}",
        acknowledged.len(),
        client.retries(),
        stored.len()
    );

    // Every acknowledged create is there, exactly once.
    for (content, id) in &acknowledged {
        assert!(
            ids.contains_key(id.as_str()),
            "acknowledged note {id} ({content}) is missing"
        );
    }
    // No create made two notes: every create had content of its own, and a
    // second note of one create would still carry it (only the first, whose
    // id the writer knew, was ever updated).
    for (content, count) in &by_content {
        assert!(
            !content.starts_with("writer ") || *count == 1,
            "{count} notes hold {content:?}"
        );
    }
    for (content, id) in &acknowledged {
        let twins = stored
            .iter()
            .filter(|n| n.content == *content && n.note_id != *id)
            .count();
        assert_eq!(
            twins, 0,
            "acknowledged create {content:?} made a second note"
        );
    }
    assert_eq!(ids.len(), stored.len(), "a note id is listed twice");
    assert!(
        stored.len() <= attempted,
        "more notes than creates attempted"
    );
    let acked_ids: std::collections::HashSet<&str> =
        acknowledged.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        acked_ids.len(),
        acknowledged.len(),
        "two creates were answered with one note"
    );
    // No update was applied twice: each note's version is 1 plus at least
    // the updates acknowledged and at most those plus the ones whose answer
    // was lost.
    for outcome in &outcomes {
        for (id, (acked, unknown)) in &outcome.updates {
            let Some(note) = ids.get(id.as_str()) else {
                continue;
            };
            let applied = note.version - 1;
            assert!(
                applied >= *acked && applied <= acked + unknown,
                "note {id}: version {} after {acked} acknowledged and {unknown} unanswered updates",
                note.version
            );
        }
    }
    assert!(
        acknowledged.len() > 10,
        "the load barely ran: {}",
        acknowledged.len()
    );
    server.start_kill().unwrap();
}

/// A flag the writers poll to stop.
fn tokio_util_stop() -> std::sync::Arc<tokio::sync::watch::Sender<bool>> {
    std::sync::Arc::new(tokio::sync::watch::channel(false).0)
}

/// A failure case of `check`: its name, the variables that cause it, the
/// line that must name it.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

/// Runs `notes-server check` with serve's settings plus `env`.
async fn check(dir: &Path, table: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = configured("check", dir, table, 0);
    // The test PKI lives a day: only an expired date fails here.
    cmd.env("NOTES_MIN_DAYS_LEFT", "0")
        .env("NOTES_CLIENT_CRL", dir.join("crl.pem"));
    // An empty value removes the variable.
    for (key, value) in env {
        if value.is_empty() {
            cmd.env_remove(key);
        } else {
            cmd.env(key, value);
        }
    }
    let out = run(cmd).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn check_passes_on_a_ready_deployment_and_names_every_failure() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let table = dynamodb_config(dynamodb_endpoint()).table;
    assert!(init_table(&table).await.status.success());

    let (ok, text) = check(dir.path(), &table, &[]).await;
    assert!(ok, "{text}");
    for line in [
        "ok    keys of",
        "ok    TLS configuration",
        "ok    client CRL",
        "TTL: enabled on expiresAt",
        "all ",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }

    // Each failure, one at a time, named on its own line with a non-zero exit.
    let other_key = crate::harness::pki()
        .ca
        .issue_server(
            &crate::harness::pki::localhost(),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(dir.path().join("other.key"), other_key.key_pem).unwrap();
    let stale_crl = crate::harness::pki()
        .ca
        .crl(&[], 9, std::time::Duration::ZERO)
        .unwrap();
    std::fs::write(dir.path().join("stale-crl.pem"), stale_crl).unwrap();
    std::fs::write(dir.path().join("empty-crl.pem"), "").unwrap();
    let no_ttl_table = dynamodb_config(dynamodb_endpoint()).table;
    create_table_without_ttl(&no_ttl_table).await;
    let cases: [Case; 5] = [
        (
            "no such table",
            &[("NOTES_TABLE", "no-such-table")],
            "FAIL  table no-such-table",
        ),
        (
            "unreachable JWKS",
            &[
                ("NOTES_JWKS_FILE", ""),
                ("NOTES_JWKS_URL", "http://127.0.0.1:9/jwks.json"),
            ],
            "FAIL  keys of",
        ),
        (
            "key of another certificate",
            &[("NOTES_TLS_KEY", "other.key")],
            "FAIL  TLS configuration",
        ),
        (
            "empty CRL file",
            &[("NOTES_CLIENT_CRL", "empty-crl.pem")],
            "holds no CRL",
        ),
        (
            "CRL past nextUpdate",
            &[("NOTES_CLIENT_CRL", "stale-crl.pem")],
            "FAIL  client CRL",
        ),
    ];
    for (case, env, expected) in cases {
        let env: Vec<(&str, String)> = env
            .iter()
            .map(|(k, v)| {
                let v = if v.ends_with(".key") || v.ends_with(".pem") {
                    dir.path().join(v).display().to_string()
                } else {
                    (*v).to_owned()
                };
                (*k, v)
            })
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (ok, text) = check(dir.path(), &table, &env).await;
        assert!(!ok, "{case}: passed\n{text}");
        assert!(
            text.contains(expected),
            "{case}: {expected:?} missing\n{text}"
        );
    }
    let (ok, text) = check(dir.path(), &no_ttl_table, &[]).await;
    assert!(
        !ok && text.contains("FAIL  table") && text.contains("TTL"),
        "{text}"
    );
}

/// A table with the right keys but TTL never enabled.
async fn create_table_without_ttl(table: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let mut config = dynamodb_config(dynamodb_endpoint());
    config.table = table.to_owned();
    let client = notes_server::startup::dynamodb_client(&config)
        .await
        .unwrap();
    let attr = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("userId"))
        .attribute_definitions(attr("noteId"))
        .key_schema(key("userId", KeyType::Hash))
        .key_schema(key("noteId", KeyType::Range))
        .send()
        .await
        .unwrap();
}
