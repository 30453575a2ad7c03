//! `notes-server certs`: a PKI stood up, served and revoked through the tool.

use super::*;

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
    let list_with = |stem: std::path::PathBuf| {
        let mut cmd = Command::new(bin("notes"));
        cmd.args(["--endpoint", &format!("https://localhost:{port}")])
            .arg("--ca-cert")
            .arg(pki_dir.join("ca.pem"))
            .arg("--cert")
            .arg(stem.with_extension("pem"))
            .arg("--key")
            .arg(stem.with_extension("key"))
            .args(["--token", &token_for("alice"), "list"]);
        run(cmd)
    };
    let list = || list_with(pki_dir.join("billing"));

    // A rotation, the old pair kept as a leaked key would be: issuing over
    // a NAME is refused without --rotate, and with it the old pair goes to
    // the archive, still valid.
    let leaked = dir.path().join("leaked");
    std::fs::copy(pki_dir.join("billing.pem"), leaked.with_extension("pem")).unwrap();
    std::fs::copy(pki_dir.join("billing.key"), leaked.with_extension("key")).unwrap();
    let again = certs(&["client", "billing", "--uri", "spiffe://example.org/billing"]).await;
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("--rotate"),
        "{stderr}"
    );
    let rotated = certs(&[
        "client",
        "billing",
        "--uri",
        "spiffe://example.org/billing",
        "--rotate",
    ])
    .await;
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let old_before = list_with(leaked.clone()).await;
    assert!(
        old_before.status.success(),
        "the pre-rotation certificate works until revoked: {}",
        String::from_utf8_lossy(&old_before.stderr)
    );

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

    // Revoked by the NAME it was issued under: every certificate it had.
    let revoked = certs(&["revoke", "billing"]).await;
    let listing = certs(&["list"]).await;
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let revoked_lines = listing
        .lines()
        .filter(|l| l.contains(" billing ") && l.contains("revoked"))
        .count();
    assert_eq!(revoked_lines, 2, "{listing}");
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
    // The leaked pre-rotation certificate is refused too.
    let old_after = list_with(leaked).await;
    let stderr = String::from_utf8_lossy(&old_after.stderr);
    assert_eq!(old_after.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("refused this client certificate: CertificateRevoked"),
        "{stderr}"
    );
}
