//! Token revocation at the resource server (issue 27): an entry on the
//! deployment's revocation list refuses the tokens it names on every
//! instance within its poll interval, cached or not, while every other
//! token keeps working.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use notes_api::pb::{ListNotesRequest, notes_service_client::NotesServiceClient};
use notes_server::{
    auth::revocation::RevocationSettings,
    store::{MemoryStore, NoteStore, Revocation, Revoked, StoreError},
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::harness::tokens::ISSUER;
use crate::harness::{
    TestApp, claims, list_as, pki,
    process::{bin, init_table, run, start_serve},
    sign, token_for, with_token,
};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A token of `subject` with these extra or changed claims.
fn token_with(subject: &str, changes: &[(&str, serde_json::Value)]) -> String {
    let mut claims = claims(subject);
    for (name, value) in changes {
        claims[*name] = value.clone();
    }
    sign(&claims)
}

/// Waits (up to `limit`) until `call` is refused "token revoked"; how long
/// that took.
async fn until_revoked<F, Fut>(limit: Duration, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Err(status) if status.code() == Code::Unauthenticated => {
                assert_eq!(status.message(), "token revoked", "{status:?}");
                return started.elapsed();
            }
            other => assert!(
                started.elapsed() < limit,
                "not refused within {limit:?}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_kind_of_revocation_refuses_its_tokens_cached_or_not_and_no_other() {
    let store = Arc::new(MemoryStore::new());
    let app = TestApp::builder()
        .store_impl(store.clone())
        .settings(|s, _| {
            s.revocations = Some(RevocationSettings {
                poll_every: Duration::from_millis(200),
                max_staleness: Duration::from_secs(5),
                fail_open: false,
            })
        })
        .spawn()
        .await;
    let revoke_at = |what: Revoked, before: u64, recorded_ns: u64| {
        let store = store.clone();
        async move {
            store
                .revoke_tokens(&Revocation {
                    issuer: ISSUER.into(),
                    what,
                    before,
                    recorded_ns,
                })
                .await
                .unwrap()
        }
    };
    let revoke = |what: Revoked, before: u64| revoke_at(what, before, now_ns());
    let alice = token_for("alice");
    let bob = token_for("bob");
    let session = token_with("carol", &[("origin_jti", "sign-in-1".into())]);
    let other_session = token_with("carol", &[("origin_jti", "sign-in-2".into())]);
    let jti = token_with("dave", &[("jti", "one-token".into())]);
    let dave = token_for("dave");
    let old = token_with("erin", &[("iat", (now_secs() - 600).into())]);
    let fresh = token_for("erin");
    let zed = token_for("zed");
    for token in [
        &alice,
        &bob,
        &session,
        &other_session,
        &jti,
        &dave,
        &old,
        &fresh,
        &zed,
    ] {
        // Each verified, and so in the cache, before its revocation.
        list_as(&app, token).await.unwrap();
    }

    // A writer whose clock runs ten minutes ahead goes first: the entries
    // written after it, by correct clocks, are read all the same.
    revoke_at(
        Revoked::Subject("zed".into()),
        now_secs(),
        now_ns() + 600_000_000_000,
    )
    .await;
    until_revoked(Duration::from_secs(3), || list_as(&app, &zed)).await;

    revoke(Revoked::Subject("alice".into()), now_secs()).await;
    revoke(Revoked::Session("sign-in-1".into()), u64::MAX).await;
    revoke(Revoked::Token("one-token".into()), u64::MAX).await;
    // The app client's tokens issued before five minutes ago.
    revoke(
        Revoked::Client(crate::harness::tokens::CLIENT_ID.into()),
        now_secs() - 300,
    )
    .await;
    let limit = Duration::from_secs(3);
    for token in [&alice, &session, &jti, &old] {
        until_revoked(limit, || list_as(&app, token)).await;
    }

    for token in [&bob, &other_session, &dave, &fresh] {
        list_as(&app, token)
            .await
            .expect("a token no entry names is served");
    }
    let text = notes_server::metrics::metrics().render();
    assert!(text.contains("notes_token_revocations 5"), "{text}");
}

/// One mutual-TLS connection to `port` with the test client certificate.
async fn stub(port: u16) -> NotesServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&pki().ca_pem))
                .identity(Identity::from_pem(
                    &pki().client.cert_pem,
                    &pki().client.key_pem,
                )),
        )
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    NotesServiceClient::new(channel)
}

async fn list(stub: &NotesServiceClient<Channel>, token: &str) -> Result<(), tonic::Status> {
    stub.clone()
        .list_notes(with_token(ListNotesRequest::default(), token))
        .await
        .map(drop)
}

#[tokio::test]
async fn two_instances_refuse_what_the_operator_revokes_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    crate::harness::pki::write_files(dir.path());
    let table = format!("revocation-{}", uuid::Uuid::new_v4().simple());
    let made = init_table(&table).await;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let poll = [
        ("NOTES_STORE", "dynamodb"),
        ("NOTES_REVOCATION_POLL_SECS", "1"),
    ];
    let (_a, port_a) = start_serve(dir.path(), &table, 0, &poll).await;
    let (_b, port_b) = start_serve(dir.path(), &table, 0, &poll).await;
    let (a, b) = (stub(port_a).await, stub(port_b).await);
    let alice = token_for("alice");
    let bob = token_for("bob");
    let session = token_with("carol", &[("origin_jti", "sign-in-1".into())]);
    let machine = token_with(
        crate::harness::tokens::CLIENT_ID,
        &[
            ("username", serde_json::Value::Null),
            ("iat", (now_secs() - 120).into()),
        ],
    );
    for stub in [&a, &b] {
        for token in [&alice, &bob, &session, &machine] {
            list(stub, token).await.expect("served before revocation");
        }
    }

    let revoke = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(bin("notes-server"));
        cmd.arg("revoke-tokens")
            .args(["--issuer", ISSUER, "--table", &table, "--dynamodb-endpoint"])
            .arg(crate::harness::app::dynamodb_endpoint())
            .args(args);
        run(cmd)
    };
    let limit = Duration::from_secs(10);
    let mut measured = Vec::new();
    for (what, args, token) in [
        ("a user (--subject)", vec!["--subject", "alice"], &alice),
        (
            "a sign-in (--origin-jti)",
            vec!["--origin-jti", "sign-in-1"],
            &session,
        ),
        (
            "a machine client (--client-id, tokens of the last minute spared)",
            vec!["--client-id", crate::harness::tokens::CLIENT_ID, "--before"],
            &machine,
        ),
    ] {
        let before = (now_secs() - 60).to_string();
        let mut args: Vec<&str> = args;
        if args.last() == Some(&"--before") {
            args.push(&before);
        }
        let started = Instant::now();
        let out = revoke(&args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let command = started.elapsed();
        let (on_a, on_b) = tokio::join!(
            until_revoked(limit, || list(&a, token)),
            until_revoked(limit, || list(&b, token)),
        );
        measured.push(format!(
            "{what}: command {command:?}, then refused by instance A after {on_a:?}, B after {on_b:?}"
        ));
    }
    for stub in [&a, &b] {
        list(stub, &bob).await.expect("another user keeps working");
        list(stub, &token_for("frank"))
            .await
            .expect("a new token of the revoked client keeps working");
    }
    eprintln!(
        "time to effect (poll every 1 s):\n  {}",
        measured.join("\n  ")
    );
}

/// The memory store, with a revocation list that can be made unreadable.
struct UnreadableList {
    inner: MemoryStore,
    broken: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl NoteStore for UnreadableList {
    async fn create(
        &self,
        owner: &str,
        note: notes_server::store::NewNote,
    ) -> Result<notes_server::store::Note, StoreError> {
        self.inner.create(owner, note).await
    }
    async fn get(
        &self,
        owner: &str,
        note_id: uuid::Uuid,
    ) -> Result<notes_server::store::Note, StoreError> {
        self.inner.get(owner, note_id).await
    }
    async fn list(
        &self,
        owner: &str,
        limit: usize,
        after: Option<uuid::Uuid>,
    ) -> Result<notes_server::store::NotePage, StoreError> {
        self.inner.list(owner, limit, after).await
    }
    async fn update(
        &self,
        owner: &str,
        note_id: uuid::Uuid,
        content: String,
        change: notes_server::store::Change,
    ) -> Result<notes_server::store::Note, StoreError> {
        self.inner.update(owner, note_id, content, change).await
    }
    async fn delete(
        &self,
        owner: &str,
        note_id: uuid::Uuid,
        change: notes_server::store::Change,
    ) -> Result<(), StoreError> {
        self.inner.delete(owner, note_id, change).await
    }
    async fn revocations_since(&self, since_ns: u64) -> Result<Vec<Revocation>, StoreError> {
        if self.broken.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::Unavailable(
                "the list's partition is unreachable".into(),
            ));
        }
        self.inner.revocations_since(since_ns).await
    }
}

#[tokio::test]
async fn an_unreadable_list_fails_closed_after_its_limit_and_recovers_or_fails_open_if_asked() {
    for fail_open in [false, true] {
        let store = Arc::new(UnreadableList {
            inner: MemoryStore::new(),
            broken: false.into(),
        });
        let app = TestApp::builder()
            .store_impl(store.clone())
            .settings(move |s, _| {
                s.revocations = Some(RevocationSettings {
                    poll_every: Duration::from_millis(100),
                    max_staleness: Duration::from_millis(600),
                    fail_open,
                })
            })
            .spawn()
            .await;
        let token = token_for("alice");
        list_as(&app, &token).await.unwrap();
        store
            .broken
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let while_broken = list_as(&app, &token).await;
        store
            .broken
            .store(false, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let after = list_as(&app, &token).await;

        if fail_open {
            assert!(while_broken.is_ok(), "fail open: {while_broken:?}");
        } else {
            let refused = while_broken.unwrap_err();
            assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
            assert!(refused.message().contains("revocation list"), "{refused:?}");
        }
        assert!(
            after.is_ok(),
            "fail_open={fail_open}: not served again: {after:?}"
        );
    }
    let text = notes_server::metrics::metrics().render();
    let errors: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("notes_token_revocation_read_errors_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    assert!(errors > 0.0, "no failed read counted: {text}");
}
