//! The `notes` CLI as a person runs it: sign-in, the saved token, and the
//! messages and exit codes of the first hour's mistakes.

use super::*;

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
