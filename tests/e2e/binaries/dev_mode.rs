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
async fn dev_mode_disconnects_silent_and_stalled_clients_after_their_default_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = start_dev(dir.path()).await;
    let first_bytes = notes_server::limits::FIRST_BYTES_TIMEOUT;
    let handshake = notes_server::limits::HANDSHAKE_TIMEOUT;
    assert_eq!(first_bytes, Duration::from_secs(2), "the README states 2 s");
    assert_eq!(handshake, Duration::from_secs(10), "the README states 10 s");

    // How long the server keeps a connection that sends `first` and then
    // nothing; the read's outcome.
    let closed_after = |first: &'static [u8]| async move {
        let started = std::time::Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.write_all(first).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(handshake * 4, tcp.read(&mut buf)).await;
        (started.elapsed(), read)
    };
    // Silent: no byte at all. Stalled: the start of a ClientHello record.
    let ((silent, silent_read), (stalled, stalled_read)) = tokio::join!(
        closed_after(b""),
        closed_after(&[0x16, 0x03, 0x01, 0x02, 0x00]),
    );

    for (what, waited, read, timeout) in [
        ("silent", silent, silent_read, first_bytes),
        ("stalled", stalled, stalled_read, handshake),
    ] {
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a {what} connection was still open after {waited:?}: {read:?}"
        );
        // Closed by its timeout: not before it, and not long after (a busy
        // machine may be late, never early).
        assert!(
            waited >= timeout - Duration::from_millis(50),
            "{what}: closed after {waited:?}, before the {timeout:?} timeout"
        );
        assert!(
            waited < timeout + Duration::from_secs(5),
            "{what}: closed after {waited:?}, long after the {timeout:?} timeout"
        );
    }
}
