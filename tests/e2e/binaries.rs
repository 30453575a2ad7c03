//! The shipped binaries, as an operator and a caller run them: `notes-server
//! init-table` and `serve` configured through NOTES_* variables against the
//! DynamoDB test server, and the `notes` CLI talking to it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

use crate::harness::{
    CLIENT_ID, ISSUER, dynamodb_config, dynamodb_endpoint, issuer, pki::write_files, token_for,
};

/// A binary built next to this test executable (`scripts/test` builds them
/// with `cargo build --workspace --bins` first).
pub(crate) fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the workspace's tests",
        path.display()
    );
    path
}

fn server_command(dir: &Path, table: &str, port: u16) -> Command {
    configured("serve", dir, table, port)
}

/// `notes-server SUBCOMMAND` with serve's settings from `NOTES_*` variables,
/// using the files [`write_files`] wrote in `dir`.
fn configured(subcommand: &str, dir: &Path, table: &str, port: u16) -> Command {
    let mut cmd = Command::new(bin("notes-server"));
    cmd.kill_on_drop(true)
        .arg(subcommand)
        .env("NOTES_LISTEN", format!("127.0.0.1:{port}"))
        .env("NOTES_ADMIN_LISTEN", "127.0.0.1:0")
        .env("NOTES_TLS_CERT", dir.join("server.pem"))
        .env("NOTES_TLS_KEY", dir.join("server.key"))
        .env("NOTES_CLIENT_CA", dir.join("ca.pem"))
        .env("NOTES_ISSUER", ISSUER)
        .env("NOTES_JWKS_FILE", dir.join("jwks.json"))
        .env("NOTES_CLIENT_IDS", CLIENT_ID)
        .env("NOTES_PAGE_TOKEN_KEY_FILE", dir.join("page.key"))
        .env("NOTES_TABLE", table)
        .env("NOTES_DYNAMODB_ENDPOINT", dynamodb_endpoint())
        // One moto serves every test and answers one request at a time, so
        // a request can queue past the 1 s attempt deadline meant for
        // DynamoDB; these tests are not about deadlines.
        .env("NOTES_DYNAMODB_ATTEMPT_TIMEOUT_MS", "10000")
        .env("NOTES_DYNAMODB_TIMEOUT_MS", "20000")
        .env("NOTES_GRACE_PERIOD_SECS", "2");
    cmd
}

/// Runs `cmd` to completion, killing it if it takes more than 30 s.
async fn run(mut cmd: Command) -> Output {
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("command did not finish within 30 s")
        .unwrap()
}

async fn init_table(table: &str) -> Output {
    let mut cmd = Command::new(bin("notes-server"));
    cmd.args(["init-table", "--table", table, "--dynamodb-endpoint"])
        .arg(dynamodb_endpoint());
    run(cmd).await
}

async fn notes(dir: &Path, port: u16, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin("notes"));
    cmd.args(["--endpoint", &format!("https://localhost:{port}")])
        .arg("--ca-cert")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("client.pem"))
        .arg("--key")
        .arg(dir.join("client.key"))
        .args(["--token", &token_for("cli-user")])
        .args(args);
    run(cmd).await
}

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

#[tokio::test]
async fn the_cli_logs_in_through_cognito_and_decodes_the_saved_token() {
    let pool = crate::harness::cognito::Pool::create().await;
    pool.register("frank").await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let config = dir.path().join("notes.toml");
    std::fs::write(
        &config,
        format!(
            "cognito_endpoint = \"{}\"\nclient_id = \"{}\"\nusername = \"frank\"\ntoken_file = \"{}\"\n",
            pool.endpoint,
            pool.client_id,
            token_file.display()
        ),
    )
    .unwrap();
    let cli = |args: &[&str], password: &str| {
        let mut cmd = Command::new(bin("notes"));
        cmd.arg("--config")
            .arg(&config)
            .args(args)
            .env("NOTES_PASSWORD", password);
        cmd
    };

    let wrong = run(cli(&["login"], "not-the-password")).await;
    let login = run(cli(&["login"], crate::harness::cognito::PASSWORD)).await;
    let token = run(cli(&["token"], "")).await;

    assert_eq!(
        wrong.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let decoded: serde_json::Value = serde_json::from_slice(&token.stdout).unwrap();
    assert_eq!(decoded["verified"], false);
    assert_eq!(decoded["claims"]["username"], "frank");
    assert_eq!(decoded["claims"]["token_use"], "access");
}

#[tokio::test]
async fn the_certs_tool_stands_up_a_pki_that_serves_and_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let certs = |args: &[&str]| {
        let mut cmd = Command::new(bin("notes-server"));
        cmd.arg("certs").arg("--certs-dir").arg(&pki_dir).args(args);
        run(cmd)
    };
    for args in [
        &["init-ca"][..],
        &["server", "notes", "--dns", "localhost", "--ip", "127.0.0.1"],
        &["client", "billing", "--uri", "spiffe://example.org/billing"],
    ] {
        let out = certs(args).await;
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "notes.key", "billing.key"] {
        let mode = std::fs::metadata(pki_dir.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    std::fs::write(
        dir.path().join("jwks.json"),
        serde_json::to_vec(&issuer().jwks).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("page.key"), [9u8; 32]).unwrap();
    let mut server = Command::new(bin("notes-server"));
    server
        .kill_on_drop(true)
        .arg("serve")
        .env("NOTES_LISTEN", "127.0.0.1:0")
        .env("NOTES_LOG_FORMAT", "json")
        .env("NOTES_ADMIN_LISTEN", "127.0.0.1:0")
        .env("NOTES_TLS_CERT", pki_dir.join("notes.pem"))
        .env("NOTES_TLS_KEY", pki_dir.join("notes.key"))
        .env("NOTES_CLIENT_CA", pki_dir.join("ca.pem"))
        .env("NOTES_CLIENT_CRL", pki_dir.join("crl.pem"))
        .env("NOTES_TLS_RELOAD_INTERVAL_SECS", "1")
        .env("NOTES_ISSUER", ISSUER)
        .env("NOTES_JWKS_FILE", dir.path().join("jwks.json"))
        .env("NOTES_CLIENT_IDS", CLIENT_ID)
        .env("NOTES_PAGE_TOKEN_KEY_FILE", dir.path().join("page.key"))
        .env("NOTES_STORE", "memory")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server: Child = server.spawn().unwrap();
    let (port, _) = serving_ports(&mut server).await.unwrap();
    let list = || {
        let mut cmd = Command::new(bin("notes"));
        cmd.args(["--endpoint", &format!("https://localhost:{port}")])
            .arg("--ca-cert")
            .arg(pki_dir.join("ca.pem"))
            .arg("--cert")
            .arg(pki_dir.join("billing.pem"))
            .arg("--key")
            .arg(pki_dir.join("billing.key"))
            .args(["--token", &token_for("alice"), "list"]);
        run(cmd)
    };

    let before = list().await;
    // Another CA's certificate: not trusted by the server (the alert is
    // named, with the authentication exit code), and never put on this
    // CA's CRL, even with the same CA name.
    let other_dir = dir.path().join("other-pki");
    for args in [
        &["init-ca", "--name", "another CA"][..],
        &[
            "client",
            "stranger",
            "--uri",
            "spiffe://example.org/stranger",
        ],
    ] {
        let mut cmd = Command::new(bin("notes-server"));
        cmd.arg("certs")
            .arg("--certs-dir")
            .arg(&other_dir)
            .args(args);
        assert!(run(cmd).await.status.success());
    }
    let mut stranger = Command::new(bin("notes"));
    stranger
        .args(["--endpoint", &format!("https://localhost:{port}")])
        .arg("--ca-cert")
        .arg(pki_dir.join("ca.pem"))
        .arg("--cert")
        .arg(other_dir.join("stranger.pem"))
        .arg("--key")
        .arg(other_dir.join("stranger.key"))
        .args(["--token", &token_for("alice"), "list"]);
    let stranger = run(stranger).await;
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert_eq!(stranger.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("the server refused this client certificate: UnknownCA"),
        "{stderr}"
    );
    let foreign = certs(&["revoke", other_dir.join("stranger.pem").to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&foreign.stderr);
    assert!(!foreign.status.success(), "{stderr}");
    assert!(
        stderr.contains("not a certificate of the CA in") && stderr.contains("another CA"),
        "{stderr}"
    );
    // A CA of the same name but another key: refused all the same.
    let twin_dir = dir.path().join("twin-pki");
    for args in [
        &["init-ca"][..],
        &["client", "twin", "--uri", "spiffe://example.org/twin"],
    ] {
        let mut cmd = Command::new(bin("notes-server"));
        cmd.arg("certs")
            .arg("--certs-dir")
            .arg(&twin_dir)
            .args(args);
        assert!(run(cmd).await.status.success());
    }
    let twin = certs(&["revoke", twin_dir.join("twin.pem").to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&twin.stderr);
    assert!(
        stderr.contains("names this CA as issuer but is not signed by its key"),
        "{stderr}"
    );
    let unknown = certs(&["revoke", "nobody"]).await;
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no certificate \"nobody\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    // Revoked by the NAME it was issued under.
    let revoked = certs(&["revoke", "billing"]).await;
    let mut after = list().await;
    for _ in 0..40 {
        // Until the server reloads, calls succeed. A client certificate
        // checked just before the reload, in a handshake that ends just
        // after it, is let in and closed at once by the check against the
        // new CRL (exit 7, "connection closed"); the next connection is
        // refused in the handshake. Anything else ends the wait.
        let closed_after_handshake = after.status.code() == Some(7)
            && String::from_utf8_lossy(&after.stderr).contains("connection closed");
        if !after.status.success() && !closed_after_handshake {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = list().await;
    }

    assert!(
        before.status.success(),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    // Refused for being revoked, said so, with the authentication exit code
    // (not 7, which a crashed server or a stolen port would also give).
    let stderr = String::from_utf8_lossy(&after.stderr);
    assert_eq!(after.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("refused this client certificate: CertificateRevoked"),
        "{stderr}"
    );
}

/// The commands of the README's "grpcurl" section, as written there.
fn readme_grpcurl_commands() -> String {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### grpcurl")
        .nth(1)
        .expect("README has a grpcurl section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the grpcurl section has a sh block");
    block.to_owned()
}

/// Starts `notes-server dev` in `cwd` on an ephemeral port and returns it
/// with the port it printed.
async fn start_dev(cwd: &Path) -> (Child, u16) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut server = Command::new(bin("notes-server"));
    server
        .kill_on_drop(true)
        .current_dir(cwd)
        .args(["dev", "--dev-listen", "127.0.0.1:0"])
        .env_remove("NOTES_HANDSHAKE_TIMEOUT_SECS")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = server.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("notes-server dev: listening on 127.0.0.1:") {
                return rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse::<u16>()
                    .unwrap();
            }
        }
        panic!("notes-server dev exited without listening");
    })
    .await
    .expect("notes-server dev did not start within 30 s");
    // Keep reading so the banner never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// Runs `script` with bash in `cwd`, the real grpcurl first on PATH.
async fn bash(cwd: &Path, script: &str) -> Output {
    let grpcurl = std::env::var("NOTES_TEST_GRPCURL")
        .expect("the grpcurl test needs grpcurl: run ./scripts/test, which installs it");
    let dir = Path::new(&grpcurl).parent().unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.current_dir(cwd)
        .env("PATH", path)
        .args(["-euo", "pipefail", "-c", script]);
    run(cmd).await
}

#[tokio::test]
async fn dev_mode_answers_the_readmes_grpcurl_commands_through_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = start_dev(dir.path()).await;
    // The README's commands exactly as written, on the port this server got.
    let script = readme_grpcurl_commands().replace("localhost:50051", &format!("localhost:{port}"));

    let out = bash(dir.path(), &script).await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""content": "hello""#), "{stdout}");
    assert!(stdout.contains("notes.v1.NotesService\n"), "{stdout}");
    assert!(stdout.contains("grpc.health.v1.Health"), "{stdout}");

    // The rest of the API through the same tool: get, update, delete, and
    // the NOT_FOUND of a deleted note.
    let rest = format!(
        r#"D=.notes-dev
call() {{ grpcurl -cacert $D/ca.pem -cert $D/client.pem -key $D/client.key \
  -H "authorization: Bearer $(cat $D/token)" -d "$2" localhost:{port} notes.v1.NotesService/$1; }}
id=$(call CreateNote '{{"content":"first"}}' | sed -n 's/.*"noteId": "\([^"]*\)".*/\1/p')
call GetNote "{{\"noteId\":\"$id\"}}"
call UpdateNote "{{\"noteId\":\"$id\",\"content\":\"second\",\"expectedVersion\":1}}"
call DeleteNote "{{\"noteId\":\"$id\",\"expectedVersion\":2}}"
call GetNote "{{\"noteId\":\"$id\"}}" 2>&1 || echo "exit $?"
"#
    );
    let out = bash(dir.path(), &rest).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(r#""content": "first""#), "{stdout}");
    assert!(stdout.contains(r#""content": "second""#), "{stdout}");
    assert!(stdout.contains(r#""version": "2""#), "{stdout}");
    assert!(stdout.contains("Code: NotFound"), "{stdout}");
}

/// Starts `serve` on `port` (0: any) with the files [`write_files`] wrote
/// in `dir` and these extra variables, and returns it with the port it
/// bound, read from its start-up log line.
pub(crate) async fn start_serve(
    dir: &Path,
    table: &str,
    port: u16,
    env: &[(&str, &str)],
) -> (Child, u16) {
    let (child, port, _) = start_serve_with_admin(dir, table, port, env).await;
    (child, port)
}

/// The port in a JSON log line's `addr` field, e.g. `Some(127.0.0.1:4567)`.
fn logged_port(line: &str) -> Option<u16> {
    let at = line.find("127.0.0.1:")?;
    line[at + "127.0.0.1:".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Like [`start_serve`], also returning the admin listener's port.
pub(crate) async fn start_serve_with_admin(
    dir: &Path,
    table: &str,
    port: u16,
    env: &[(&str, &str)],
) -> (Child, u16, u16) {
    try_start_serve(dir, table, port, env)
        .await
        .unwrap_or_else(|said| panic!("{said}"))
}

/// Like [`start_serve_with_admin`]; what it said when it did not serve.
pub(crate) async fn try_start_serve(
    dir: &Path,
    table: &str,
    port: u16,
    env: &[(&str, &str)],
) -> Result<(Child, u16, u16), String> {
    let mut cmd = server_command(dir, table, port);
    cmd.env("NOTES_LOG_FORMAT", "json");
    // An empty value removes the variable.
    for (key, value) in env {
        if value.is_empty() {
            cmd.env_remove(key);
        } else {
            cmd.env(key, value);
        }
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (bound, admin) = serving_ports(&mut child).await?;
    Ok((child, bound, admin))
}

/// Reads a `serve` child's JSON logs (stderr, piped) until it serves;
/// returns the ports it bound (data plane, admin) and keeps draining them.
async fn serving_ports(child: &mut Child) -> Result<(u16, u16), String> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (bound, admin) = tokio::time::timeout(Duration::from_secs(30), async {
        let mut admin = 0;
        let mut said = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            said.push(line.clone());
            if line.contains("admin endpoints") {
                admin = logged_port(&line).unwrap_or(0);
            }
            if line.contains("serving notes.v1.NotesService")
                && let Some(port) = logged_port(&line)
            {
                return Ok((port, admin));
            }
        }
        Err(format!(
            "notes-server serve exited before serving:\n{}",
            said.join("\n")
        ))
    })
    .await
    .map_err(|_| "notes-server serve did not start within 30 s".to_owned())??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((bound, admin))
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

#[tokio::test]
async fn dev_mode_refuses_a_non_loopback_address_without_the_unsafe_flag_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("notes-server"));
    cmd.current_dir(dir.path())
        .env("NOTES_DEV_LISTEN", "0.0.0.0:0")
        .arg("dev");

    let out = run(cmd).await;

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--unsafe-listen-beyond-loopback") && stderr.contains("NOTES_DEV_LISTEN"),
        "{stderr}"
    );
    assert!(
        !dir.path().join(".notes-dev").exists(),
        "dev wrote material before refusing"
    );
}

#[tokio::test]
async fn dev_mode_on_a_busy_port_fails_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = Command::new(bin("notes-server"));
    cmd.current_dir(dir.path()).args([
        "dev",
        "--dev-listen",
        &busy.local_addr().unwrap().to_string(),
    ]);

    let out = run(cmd).await;

    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("binding"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join(".notes-dev").exists(),
        "dev wrote material before binding"
    );
}

#[tokio::test]
async fn dev_mode_uses_its_own_table_and_ignores_serves_variables() {
    let dir = tempfile::tempdir().unwrap();
    let production = dynamodb_config(dynamodb_endpoint()).table;
    let mut server = Command::new(bin("notes-server"));
    server
        .kill_on_drop(true)
        .current_dir(dir.path())
        .env("NOTES_TABLE", &production)
        .env("NOTES_LISTEN", "0.0.0.0:50051")
        .env("NOTES_DEV_DYNAMODB_ENDPOINT", dynamodb_endpoint())
        .args(["dev", "--dev-listen", "127.0.0.1:0", "--store", "dynamodb"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = server.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stdout, &mut buf).await {
            if n == 0 {
                break;
            }
            banner.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&banner).contains("listening on") {
                break;
            }
        }
    })
    .await;

    let tables = |table: &str| {
        let mut config = dynamodb_config(dynamodb_endpoint());
        config.table = table.to_owned();
        async move {
            notes_server::startup::dynamodb_store(&config)
                .await
                .unwrap()
                .check_table()
                .await
        }
    };
    assert!(String::from_utf8_lossy(&banner).contains("listening on 127.0.0.1:"));
    assert!(
        tables("notes-dev").await.is_ok(),
        "dev did not create notes-dev"
    );
    assert!(
        tables(&production).await.is_err(),
        "dev created serve's table"
    );
    child.start_kill().unwrap();
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

/// The first hour's natural mistakes, through the real binaries: each gets
/// a message that names the problem and the fix, with a documented exit code.
#[tokio::test]
async fn the_cli_names_the_fix_for_common_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = start_dev(dir.path()).await;
    let endpoint = format!("https://localhost:{port}");
    let notes = |cwd: &Path, args: &[&str]| {
        let mut cmd = Command::new(bin("notes"));
        cmd.current_dir(cwd).args(args);
        run(cmd)
    };
    let expect = |out: &Output, code: i32, text: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{text}: {stderr}");
        assert!(stderr.contains(text), "{text}: {stderr}");
        // No cause printed twice.
        let line = stderr.trim();
        for part in line.split(": ").filter(|p| p.len() > 12) {
            assert_eq!(line.matches(part).count(), 1, "{part:?} twice in {line}");
        }
    };

    // A scheme other than https://, or none.
    for bad in [
        format!("http://localhost:{port}"),
        format!("localhost:{port}"),
    ] {
        let out = notes(dir.path(), &["--endpoint", &bad, "list"]).await;
        expect(&out, 8, "use https://HOST:PORT");
    }
    // Swapped --cert and --key: the file and the likely cause are named.
    let out = notes(
        dir.path(),
        &[
            "--endpoint",
            &endpoint,
            "--cert",
            ".notes-dev/client.key",
            "--key",
            ".notes-dev/client.pem",
            "list",
        ],
    )
    .await;
    expect(&out, 8, "are --cert and --key swapped?");
    // No dev material where the CLI looked: it says where and what to do.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = notes(elsewhere.path(), &["--endpoint", &endpoint, "list"]).await;
    expect(&out, 8, "no dev material: looked for the folder .notes-dev");

    // Paths in a --config file are relative to the file, wherever the CLI runs.
    std::fs::write(
        dir.path().join("notes.toml"),
        format!("endpoint = \"{endpoint}\"\ndev_dir = \".notes-dev\"\n"),
    )
    .unwrap();
    let config = dir.path().join("notes.toml");
    let out = notes(
        elsewhere.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "create",
            "from elsewhere",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A variable exported long ago that conflicts with a flag is named.
#[tokio::test]
async fn a_conflicting_variable_is_named_as_the_cause() {
    let mut cmd = Command::new(bin("notes-server"));
    cmd.args(["check", "--auth-config", "auth.toml"])
        .env("NOTES_ISSUER", "https://issuer.example");
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--issuer was set by the environment variable NOTES_ISSUER"),
        "{stderr}"
    );
}

/// The dev banner's commands reach this server: a port or folder other than
/// the defaults is in them.
#[tokio::test]
async fn the_dev_banner_names_a_non_default_endpoint_and_folder() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("notes-server"));
    cmd.kill_on_drop(true)
        .current_dir(dir.path())
        .args(["dev", "--dev-listen", "127.0.0.1:0", "--dev-dir", "dev55"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            banner.push_str(&line);
            banner.push('\n');
            if line.ends_with(" list") {
                break;
            }
        }
    })
    .await
    .expect("the dev banner within 30 s");
    let port = banner
        .split("listening on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a port in the banner");
    assert!(
        banner.contains(&format!(
            "notes -- --endpoint https://localhost:{port} --dev-dir dev55 list"
        )),
        "{banner}"
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

/// The README's "Running for real" block, run as written from an empty
/// folder (with `check` for `serve` and the memory store): the certs
/// tool's file names, the page-token key command and the flags stay true.
#[tokio::test]
async fn the_readme_running_for_real_block_works_as_written() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split("## Running for real")
        .nth(1)
        .and_then(|section| section.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("README's Running for real has a sh block");
    assert!(block.contains("notes-server serve"), "{block}");
    // `check` with its default thresholds: what the block makes passes them.
    let script = block.replace("notes-server serve", "notes-server check");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("jwks.json"),
        serde_json::to_vec(&issuer().jwks).unwrap(),
    )
    .unwrap();
    let bin_dir = bin("notes-server").parent().unwrap().to_owned();
    let mut cmd = Command::new("bash");
    cmd.current_dir(dir.path())
        .args(["-euo", "pipefail", "-c", &script])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("NOTES_STORE", "memory");
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("checks passed"));
}

/// The README's Rust client snippet is `client/examples/machine.rs`, which
/// the build compiles: the two must not drift.
#[test]
fn the_readme_rust_snippet_is_the_compiled_example() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../../client/examples/machine.rs");
    let body = &example[example.find("use std::sync::Arc;").unwrap()..];
    assert!(
        readme.contains(&format!("```rust\n{body}```")),
        "README's Rust client snippet differs from client/examples/machine.rs"
    );
}

/// `notes login` never overwrites the dev token by default.
#[tokio::test]
async fn login_refuses_to_overwrite_the_dev_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("notes"));
    cmd.current_dir(dir.path())
        .args([
            "login",
            "--cognito-endpoint",
            "http://127.0.0.1:9",
            "--client-id",
            "x",
            "--username",
            "u",
        ])
        .env("NOTES_PASSWORD", "p");
    let out = run(cmd).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains("login would overwrite the dev token"),
        "{stderr}"
    );
}

/// A `sh` block of README.md: the first after `heading` whose text contains `marker`.
fn readme_block(heading: &str, marker: &str) -> String {
    let readme = include_str!("../../README.md");
    readme
        .split(heading)
        .nth(1)
        .expect("the heading is in README.md")
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|block| block.contains(marker))
        .expect("a sh block with the marker")
        .to_owned()
}

/// The README's CLI quick start and its DynamoDB commands, run as written
/// (the built binaries for `cargo run`, the test's ports and moto's address
/// for the defaults, `check` for the long-running `serve`).
#[tokio::test]
async fn the_readmes_cli_and_dynamodb_commands_work_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = start_dev(dir.path()).await;
    let bin_dir = bin("notes").parent().unwrap().to_owned();
    let sh = |script: String| {
        let mut cmd = Command::new("bash");
        cmd.current_dir(dir.path())
            .args(["-euo", "pipefail", "-c", &script])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("NOTES_TABLE", format!("readme-{}", std::process::id()));
        run(cmd)
    };
    let check = |out: &Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let quick = readme_block("## Quick start", "--bin notes").replace(
        "cargo run -p notes-client --bin notes --",
        &format!("notes --endpoint https://localhost:{port}"),
    );
    let lines: Vec<&str> = quick.lines().filter(|l| !l.trim().is_empty()).collect();
    let created = check(&sh(lines[0].to_owned()).await, lines[0]);
    let id = created.split_whitespace().next().unwrap().to_owned();
    let listed = check(&sh(lines[1].to_owned()).await, lines[1]);
    assert!(listed.contains(&id), "{listed}");
    let got = check(&sh(lines[2].replace("<note-id>", &id)).await, lines[2]);
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["noteId"], id.as_str());

    let dynamodb = readme_block("### DynamoDB", "init-table")
        .replace("cargo run -p notes-server --", "notes-server")
        .replace("http://127.0.0.1:5000", &dynamodb_endpoint())
        .replace("notes-server serve", "notes-server check");
    let out = sh(dynamodb).await;
    assert!(check(&out, "DynamoDB block").contains("checks passed"));
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

/// The default handshake timeout holds in the built binary: a client that
/// connects and sends nothing is disconnected once it has passed, not
/// before (the other handshake tests set a short timeout of their own).
#[tokio::test]
async fn dev_mode_disconnects_a_silent_client_after_the_default_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = start_dev(dir.path()).await;
    let default = notes_server::limits::HANDSHAKE_TIMEOUT;
    assert_eq!(default, Duration::from_secs(10), "the README states 10 s");

    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(default * 4, tcp.read(&mut buf)).await;
    let waited = started.elapsed();

    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was still open after {waited:?}: {read:?}"
    );
    // Closed by the timeout: not before it, and not long after (a busy
    // machine may be late, never early).
    assert!(
        waited >= default - Duration::from_millis(50),
        "closed after {waited:?}, before the {default:?} timeout"
    );
    assert!(
        waited < default + Duration::from_secs(5),
        "closed after {waited:?}, long after the {default:?} timeout"
    );
}
