//! The shipped binaries as processes: where they are, `serve` configured
//! through `NOTES_*` variables over the files [`write_files`](super::pki::write_files) wrote and
//! started until it says it serves, `dev` started in a folder, the `notes`
//! CLI, and commands run with a deadline.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

use super::{CLIENT_ID, ISSUER, dynamodb_endpoint, token_for};

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

pub(crate) fn server_command(dir: &Path, table: &str, port: u16) -> Command {
    configured("serve", dir, table, port)
}

/// `notes-server SUBCOMMAND` with serve's settings from `NOTES_*` variables,
/// using the files [`write_files`](super::pki::write_files) wrote in `dir`.
pub(crate) fn configured(subcommand: &str, dir: &Path, table: &str, port: u16) -> Command {
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
pub(crate) async fn run(mut cmd: Command) -> Output {
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("command did not finish within 30 s")
        .unwrap()
}

pub(crate) async fn init_table(table: &str) -> Output {
    let mut cmd = Command::new(bin("notes-server"));
    cmd.args(["init-table", "--table", table, "--dynamodb-endpoint"])
        .arg(dynamodb_endpoint());
    run(cmd).await
}

pub(crate) async fn notes(dir: &Path, port: u16, args: &[&str]) -> Output {
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

/// Starts `serve` on `port` (0: any) with the files [`write_files`](super::pki::write_files) wrote
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
pub(crate) fn logged_port(line: &str) -> Option<u16> {
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
pub(crate) async fn serving_ports(child: &mut Child) -> Result<(u16, u16), String> {
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

/// Starts `notes-server dev` in `cwd` on an ephemeral port and returns it
/// with the port it printed.
pub(crate) async fn start_dev(cwd: &Path) -> (Child, u16) {
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
pub(crate) async fn bash(cwd: &Path, script: &str) -> Output {
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
