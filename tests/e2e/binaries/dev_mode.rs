//! `notes-server dev`: embedded defaults, its own table and folder, loopback
//! only, and the commands its banner prints.

use super::*;

/// The commands of the README's "grpcurl" section, as written there.
fn readme_grpcurl_commands() -> String {
    let readme = include_str!("../../../README.md");
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
