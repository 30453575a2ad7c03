//! Production mutual TLS: certificates that are expired, not yet valid, for
//! the wrong usage, revoked or from an unknown CA fail the handshake; the
//! caller's identity reaches the handler; the identity allow-list; hot reload
//! of the server certificate and the CRL without dropping connections, and a
//! broken file that changes nothing.

use std::{sync::Arc, time::Duration};

use notes_api::pb::ListNotesRequest;
use notes_server::{
    certs::authority::{CertifiedKey, Subject, Usage, Validity},
    tls::{Identity, ServerTls, TlsFiles},
};
use rustls::{
    AlertDescription,
    pki_types::{CertificateDer, pem::PemObject},
};
use time::OffsetDateTime;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1;

use crate::harness::{
    CLIENT_SPIFFE, LogSink, TestApp, pki,
    pki::{DAY, client_config, localhost, write, write_files},
    tls_probe, token_for, with_token,
};

fn client(name: &str, usage: Usage, validity: Validity) -> CertifiedKey {
    let subject = Subject {
        common_name: name.into(),
        uris: vec![format!("spiffe://notes.test/{name}")],
        ..Subject::default()
    };
    pki().ca.issue(&subject, usage, validity).unwrap()
}

/// A client certificate that expired yesterday.
fn expired_client(name: &str) -> CertifiedKey {
    let now = OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    client(name, Usage::Client, validity)
}

fn valid() -> Validity {
    Validity::starting_now(DAY)
}

fn alert(description: AlertDescription) -> rustls::Error {
    rustls::Error::AlertReceived(description)
}

#[tokio::test]
async fn a_client_that_stalls_in_the_handshake_is_disconnected() {
    use tokio::io::AsyncReadExt;
    let app = TestApp::spawn().await; // handshake timeout: 2 s
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();

    // Send nothing. The server must close the connection by itself; the 30 s
    // bound only keeps a broken server from hanging the test.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await;

    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "connection still open: {read:?}"
    );
}

/// In TLS 1.3 a client's handshake is over before the server has checked its
/// certificate, so it sends its first request at once, and may send more
/// before the refusal arrives. It must still read why it was refused, not
/// "broken pipe" or "connection reset": the server stops writing but keeps
/// reading for a moment, so its kernel never answers those bytes with a reset
/// that would discard the alert.
#[tokio::test]
async fn a_refused_client_that_keeps_writing_still_reads_why() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(client_config(Some(&pki().foreign_client)))
        .connect(name, tcp)
        .await
        .expect("TLS 1.3: the client is done before the server checks its certificate");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();

    // Meanwhile the server refuses the certificate and hangs up.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = async {
        stream.write_all(&[0; 64]).await?;
        stream.flush().await
    }
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut buf = [0u8; 64];
    let read = stream.read(&mut buf).await;

    assert!(second.is_ok(), "{second:?}");
    assert!(
        matches!(&read, Err(err) if rustls_error_of(err) == Some(alert(AlertDescription::UnknownCA))),
        "{read:?}"
    );
}

fn rustls_error_of(err: &std::io::Error) -> Option<rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>().cloned()
}

#[tokio::test]
async fn an_expired_client_certificate_fails_the_handshake() {
    let app = TestApp::spawn().await;
    let expired = expired_client("expired");

    let err = tls_probe(app.addr, Some(&expired)).await.unwrap_err();

    assert_eq!(err, alert(AlertDescription::CertificateExpired));
}

#[tokio::test]
async fn a_not_yet_valid_client_certificate_fails_the_handshake() {
    let app = TestApp::spawn().await;
    let now = OffsetDateTime::now_utc();
    let future = client(
        "future",
        Usage::Client,
        Validity {
            not_before: now + time::Duration::days(1),
            not_after: now + time::Duration::days(10),
        },
    );

    let err = tls_probe(app.addr, Some(&future)).await.unwrap_err();

    assert_eq!(err, alert(AlertDescription::CertificateExpired));
}

#[tokio::test]
async fn a_server_certificate_presented_as_a_client_certificate_fails_the_handshake() {
    let app = TestApp::spawn().await;
    let wrong_usage = client("server-usage", Usage::Server, valid());

    let err = tls_probe(app.addr, Some(&wrong_usage)).await.unwrap_err();

    assert_eq!(err, alert(AlertDescription::UnsupportedCertificate));
}

/// Captures the logs of this test's thread while the guard lives ([`LogSink::capture`]).
fn capture_logs(filter: &str) -> (LogSink, tracing::subscriber::DefaultGuard) {
    LogSink::capture(filter)
}

fn text(logs: &LogSink) -> String {
    logs.text()
}

#[tokio::test]
async fn a_refused_certificate_is_logged_with_its_name_and_reason() {
    let (logs, _scope) = capture_logs("notes_server::tls=warn");
    let app = TestApp::spawn().await;
    // A neutral name: the reason must come from the verifier, not the name.
    let expired = expired_client("probe-client");

    tls_probe(app.addr, Some(&expired)).await.unwrap_err();

    let logs = text(&logs);
    let line = logs
        .lines()
        .find(|l| l.contains("client certificate refused"))
        .unwrap_or_else(|| panic!("no refusal line: {logs}"));
    assert!(line.contains("spiffe://notes.test/probe-client"), "{line}");
    assert!(
        line.contains("error=invalid peer certificate: certificate expired"),
        "the reason is not named: {line}"
    );
}

#[tokio::test]
async fn the_callers_certificate_identity_reaches_the_handler() {
    let (logs, _scope) = capture_logs("notes_server::api=debug");
    let app = TestApp::spawn().await;

    app.raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &token_for("alice")))
        .await
        .unwrap();

    let logs = text(&logs);
    let line = logs
        .lines()
        .find(|l| l.contains("ListNotes"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains(&format!("peer={CLIENT_SPIFFE}")), "{line}");
    assert!(line.contains("subject=alice"), "{line}");
}

#[tokio::test]
async fn only_allow_listed_identities_may_call_even_with_a_valid_token() {
    let other = client("reports", Usage::Client, valid());
    let app = TestApp::builder()
        .allowed_identities([Identity::Uri(CLIENT_SPIFFE.to_owned())])
        .spawn()
        .await;
    let token = token_for("alice");

    app.raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap();
    let mut theirs = notes_api::pb::notes_service_client::NotesServiceClient::new(
        app.channel(Some(&other)).await,
    );
    let refused = theirs
        .list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap_err();
    let health = HealthClient::new(app.channel(Some(&other)).await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();

    for status in [&refused, &health] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(
            status.message().contains("spiffe://notes.test/reports"),
            "{status:?}"
        );
    }
}

/// Server TLS files in a temporary folder, reloaded every 100 ms by the server.
struct TlsDir {
    dir: tempfile::TempDir,
}

impl TlsDir {
    fn new() -> TlsDir {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        let tls = TlsDir { dir };
        // A server certificate of its own, so rotating it changes what is served.
        tls.write_server(&pki().ca.issue_server(&localhost(), DAY).unwrap());
        tls
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn write_server(&self, server: &CertifiedKey) {
        write(&self.path("server.key"), server.key_pem.as_bytes());
        write(&self.path("server.pem"), server.cert_pem.as_bytes());
    }

    fn server_tls(&self) -> Arc<ServerTls> {
        ServerTls::from_files(self.files()).unwrap()
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: self.path("ca.pem"),
            crls: vec![self.path("crl.pem")],
        }
    }
}

fn der(cert_pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()
}

/// Probes new connections until the server presents `expected` (or gives up).
async fn wait_for_server_cert(app: &TestApp, expected: &CertificateDer<'static>) -> bool {
    for _ in 0..50 {
        if tls_probe(app.addr, Some(&pki().client)).await.as_ref() == Ok(expected) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_rotated_server_certificate_is_used_by_new_connections_while_open_ones_keep_working() {
    let files = TlsDir::new();
    let app = TestApp::builder()
        .settings(|s, _| s.tls = files.files())
        .spawn()
        .await;
    // A bidirectional stream stays on one connection: it proves that connection survives.
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(
        app.channel(Some(&pki().client)).await,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let list = || v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    tx.send(list()).await.unwrap();
    let mut stream = reflection
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();

    let rotated = pki().ca.issue_server(&localhost(), DAY).unwrap();
    files.write_server(&rotated);
    let switched = wait_for_server_cert(&app, &der(&rotated.cert_pem)).await;
    tx.send(list()).await.unwrap();
    let after = stream.message().await;

    assert!(
        switched,
        "new connections never saw the rotated certificate"
    );
    assert!(
        matches!(after, Ok(Some(_))),
        "the open connection was dropped: {after:?}"
    );
}

#[tokio::test]
async fn a_broken_or_mismatched_file_is_refused_and_the_old_configuration_stays() {
    let files = TlsDir::new();
    let app = TestApp::builder()
        .settings(|s, _| s.tls = files.files())
        .spawn()
        .await;
    let original = tls_probe(app.addr, Some(&pki().client)).await.unwrap();

    write(
        &files.path("server.pem"),
        b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after_garbage = tls_probe(app.addr, Some(&pki().client)).await;
    let other = pki().ca.issue_server(&localhost(), DAY).unwrap();
    write(&files.path("server.pem"), other.cert_pem.as_bytes()); // the key on disk is not this one's
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after_mismatch = tls_probe(app.addr, Some(&pki().client)).await;

    assert_eq!(after_garbage, Ok(original.clone()));
    assert_eq!(after_mismatch, Ok(original));
    // The reloader is alive after refusing both (the assertions above also
    // hold with no reloader at all): a good pair is taken up.
    let good = pki().ca.issue_server(&localhost(), DAY).unwrap();
    files.write_server(&good);
    assert!(
        wait_for_server_cert(&app, &der(&good.cert_pem)).await,
        "the reloader stopped after a broken file"
    );
}

#[tokio::test]
async fn a_client_certificate_revoked_by_a_reloaded_crl_fails_its_next_connection() {
    let files = TlsDir::new();
    let app = TestApp::builder()
        .settings(|s, _| s.tls = files.files())
        .spawn()
        .await;
    let doomed = client("doomed", Usage::Client, valid());
    tls_probe(app.addr, Some(&doomed)).await.unwrap();

    let crl = pki()
        .ca
        .crl(std::slice::from_ref(&doomed.serial), 2, DAY)
        .unwrap();
    write(&files.path("crl.pem"), crl.as_bytes());
    let mut verdict = Ok(der(&doomed.cert_pem));
    for _ in 0..50 {
        verdict = tls_probe(app.addr, Some(&doomed)).await;
        if verdict.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(verdict, Err(alert(AlertDescription::CertificateRevoked)));
    tls_probe(app.addr, Some(&pki().client)).await.unwrap();
}

/// A connection accepted just before a reload makes its handshake under the
/// configuration in force when it was accepted. New CRLs still apply to it:
/// the client is refused in the handshake, with the alert that says why, not
/// let in and cut off right after.
#[tokio::test]
async fn a_handshake_under_way_when_a_crl_reloads_is_checked_against_the_new_crl() {
    let files = TlsDir::new();
    let tls = files.server_tls();
    let accepted_before_the_reload = tokio_rustls::TlsAcceptor::from(tls.current());
    let doomed = client("doomed-mid-handshake", Usage::Client, valid());
    let crl = pki()
        .ca
        .crl(std::slice::from_ref(&doomed.serial), 2, DAY)
        .unwrap();
    write(&files.path("crl.pem"), crl.as_bytes());
    assert!(tls.reload().unwrap());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move { tls_probe(addr, Some(&doomed)).await });
    let (tcp, _) = listener.accept().await.unwrap();
    let refused = accepted_before_the_reload
        .accept(tcp)
        .into_fallible()
        .await
        .map(drop);
    // Keep the socket open until the client has read the alert.
    let verdict = client.await.unwrap();
    drop(refused);

    assert_eq!(verdict, Err(alert(AlertDescription::CertificateRevoked)));
}

#[tokio::test]
async fn a_client_ca_added_to_the_bundle_by_a_reload_is_trusted_and_the_old_one_still_is() {
    let files = TlsDir::new();
    let app = TestApp::builder()
        .settings(|s, _| s.tls = files.files())
        .spawn()
        .await;
    let partner_ca =
        notes_server::certs::authority::CertificateAuthority::generate("partner CA", DAY).unwrap();
    let partner = partner_ca
        .issue_client(
            &notes_server::certs::authority::Subject {
                common_name: "partner".into(),
                uris: vec!["spiffe://partner.test/reports".into()],
                ..Default::default()
            },
            DAY,
        )
        .unwrap();
    let before = tls_probe(app.addr, Some(&partner)).await;

    // The bundle gains the partner's CA, and the CRL file its CRL (the
    // server wants a CRL for every CA it trusts).
    let bundle = format!("{}{}", pki().ca_pem, partner_ca.cert_pem());
    let crls = format!(
        "{}{}",
        std::fs::read_to_string(files.path("crl.pem")).unwrap(),
        partner_ca.crl(&[], 1, DAY).unwrap()
    );
    write(&files.path("crl.pem"), crls.as_bytes());
    write(&files.path("ca.pem"), bundle.as_bytes());
    let mut after = before.clone();
    for _ in 0..100 {
        after = tls_probe(app.addr, Some(&partner)).await;
        if after.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(before, Err(alert(AlertDescription::UnknownCA)));
    assert!(after.is_ok(), "{after:?}");
    tls_probe(app.addr, Some(&pki().client)).await.unwrap();
}

/// A NotesService stub on one channel presenting `identity`.
async fn stub_for(
    app: &TestApp,
    identity: &CertifiedKey,
) -> notes_api::pb::notes_service_client::NotesServiceClient<tonic::transport::Channel> {
    notes_api::pb::notes_service_client::NotesServiceClient::new(app.channel(Some(identity)).await)
}

#[tokio::test]
async fn an_open_connection_whose_certificate_a_reload_revokes_is_closed() {
    let (logs, _scope) = capture_logs("notes_server::tls=warn");
    let files = TlsDir::new();
    let app = TestApp::builder()
        .settings(|s, _| s.tls = files.files())
        .spawn()
        .await;
    let doomed = client("doomed-open", Usage::Client, valid());
    let mut doomed_stub = stub_for(&app, &doomed).await;
    let mut other_stub = stub_for(&app, &pki().client).await;
    let token = token_for("alice");
    let list = || with_token(ListNotesRequest::default(), &token);
    doomed_stub.list_notes(list()).await.unwrap();
    other_stub.list_notes(list()).await.unwrap();

    let crl = pki()
        .ca
        .crl(std::slice::from_ref(&doomed.serial), 2, DAY)
        .unwrap();
    write(&files.path("crl.pem"), crl.as_bytes());
    // The watcher checks every 100 ms here.
    let refused = until_refused(|| {
        let mut stub = doomed_stub.clone();
        async move { stub.list_notes(list()).await.err() }
    })
    .await;
    assert!(
        refused.is_some(),
        "the revoked certificate's open connection still serves"
    );
    other_stub
        .list_notes(list())
        .await
        .expect("other connections stay open");
    // The channel reconnects on its own, so the calls above cannot tell a
    // closed connection from an open one: the server's count can.
    assert_eq!(closed_counts(&logs), [1], "{}", text(&logs));
}

#[tokio::test]
async fn an_open_connection_whose_certificate_expires_is_closed() {
    // The server's clock is the test's: the certificate expires when the
    // clock is moved, not after a wait.
    let clock = Arc::new(std::sync::atomic::AtomicU64::new(
        OffsetDateTime::now_utc().unix_timestamp() as u64,
    ));
    let (logs, _scope) = capture_logs("notes_server::tls=warn");
    let files = TlsDir::new();
    let app = {
        let clock = clock.clone();
        TestApp::builder()
            .settings(|s, _| {
                s.tls = files.files();
                s.clock = Arc::new(move || {
                    Duration::from_secs(clock.load(std::sync::atomic::Ordering::SeqCst))
                });
            })
            .spawn()
            .await
    };
    let now = OffsetDateTime::now_utc();
    let brief = client(
        "brief",
        Usage::Client,
        Validity {
            not_before: now - time::Duration::minutes(5),
            not_after: now + time::Duration::minutes(10),
        },
    );
    let mut stub = stub_for(&app, &brief).await;
    let token = token_for("alice");
    let list = || with_token(ListNotesRequest::default(), &token);
    stub.list_notes(list()).await.unwrap();
    // Within its validity by the server's clock, it keeps serving across
    // several watcher checks (100 ms apart here).
    clock.fetch_add(9 * 60, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stub.list_notes(list())
        .await
        .expect("a certificate still valid by the server's clock is not closed");
    // (The channel would reconnect after a close: the server's count says
    // none happened.)
    assert_eq!(closed_counts(&logs), [0; 0], "{}", text(&logs));

    clock.fetch_add(2 * 60, std::sync::atomic::Ordering::SeqCst);
    let refused = until_refused(|| {
        let mut stub = stub.clone();
        async move { stub.list_notes(list()).await.err() }
    })
    .await;
    assert!(
        refused.is_some(),
        "an expired certificate's open connection still serves"
    );
    assert_eq!(closed_counts(&logs), [1], "{}", text(&logs));
}

/// The `closed` count of each "closed connections whose client certificate
/// is revoked or expired" line in `logs`.
fn closed_counts(logs: &LogSink) -> Vec<u64> {
    text(logs)
        .lines()
        .filter(|l| l.contains("closed connections whose client certificate"))
        .map(|l| {
            let (_, rest) = l.split_once("closed=").expect("a closed= field");
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// Calls `call` every 50 ms until it fails, for at most 10 s: the failure,
/// or `None` if every call succeeded.
async fn until_refused<F, Fut>(call: F) -> Option<tonic::Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = call().await {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test]
async fn a_crl_file_without_a_crl_is_refused_at_start_and_at_reload() {
    let files = TlsDir::new();
    let tls = files.server_tls();
    let revoked_before = tls.revoked();
    let bad_files = |crl: &std::path::Path| TlsFiles {
        cert: files.path("server.pem"),
        key: files.path("server.key"),
        client_ca: files.path("ca.pem"),
        crls: vec![crl.to_path_buf()],
    };
    std::fs::write(files.path("empty.pem"), b"").unwrap();

    let empty = ServerTls::from_files(bad_files(&files.path("empty.pem"))).err();
    // A CA certificate given where a CRL belongs.
    let wrong = ServerTls::from_files(bad_files(&files.path("ca.pem"))).err();
    write(&files.path("crl.pem"), b"");
    let reload = tls.reload();

    for err in [&empty, &wrong] {
        let text = notes_server::error::error_chain(err.as_ref().expect("refused"));
        assert!(text.contains("holds no CRL"), "{text}");
    }
    assert!(
        matches!(reload, Err(notes_server::tls::TlsError::NoCrl(ref p)) if p.ends_with("crl.pem"))
    );
    assert_eq!(
        tls.revoked(),
        revoked_before,
        "the old revocations stay in force"
    );
}

#[test]
fn a_reload_racing_200_revocations_never_drops_the_revocation() {
    use notes_server::certs::{CertsCommand, run};
    notes_server::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().to_path_buf();
    let certs = |command| run(&pki_dir, command).unwrap();
    certs(CertsCommand::InitCa {
        name: "race CA".into(),
        days: 2,
    });
    certs(CertsCommand::Server {
        name: "server".into(),
        dns: vec!["localhost".into()],
        ips: vec![],
        days: 2,
        rotate: false,
    });
    certs(CertsCommand::Client {
        name: "victim".into(),
        uris: vec!["spiffe://race/victim".into()],
        dns: vec![],
        days: 2,
        rotate: false,
    });
    let revoke = || CertsCommand::Revoke {
        cert: pki_dir.join("victim.pem").display().to_string(),
        serial: None,
        crl_days: 1,
    };
    certs(revoke());
    let tls = ServerTls::from_files(TlsFiles {
        cert: pki_dir.join("server.pem"),
        key: pki_dir.join("server.key"),
        client_ca: pki_dir.join("ca.pem"),
        crls: vec![pki_dir.join("crl.pem")],
    })
    .unwrap();
    let victim = tls
        .revoked()
        .iter()
        .next()
        .cloned()
        .expect("victim revoked");

    let writer = std::thread::spawn({
        let pki_dir = pki_dir.clone();
        move || {
            for _ in 0..200 {
                run(
                    &pki_dir,
                    CertsCommand::Revoke {
                        cert: pki_dir.join("victim.pem").display().to_string(),
                        serial: None,
                        crl_days: 1,
                    },
                )
                .unwrap();
            }
        }
    });
    let mut reloads = 0;
    while !writer.is_finished() {
        match tls.reload() {
            Ok(true) => reloads += 1,
            Ok(false) => {}
            Err(err) => panic!("a reload read a half-written file: {err}"),
        }
        assert!(
            tls.revoked().contains(&victim),
            "a reload dropped the revocation"
        );
    }
    writer.join().unwrap();

    assert!(reloads > 0, "no reload happened during the race");
}

#[tokio::test]
async fn a_certificate_name_with_a_newline_cannot_forge_a_log_line() {
    let (logs, _scope) = capture_logs("notes_server=info,notes::audit=info");
    let app = TestApp::spawn().await;
    let forged = "evil\nFORGED 2026-01-01T00:00:00Z INFO notes::audit: decision=\"allow\"";
    let subject = notes_server::certs::authority::Subject {
        common_name: forged.into(),
        ..Default::default()
    };
    // Trusted (no SANs: its name in logs is its subject) and untrusted.
    let trusted = pki().ca.issue_client(&subject, DAY).unwrap();
    let stranger = notes_server::certs::authority::CertificateAuthority::generate(forged, DAY)
        .unwrap()
        .issue_client(&subject, DAY)
        .unwrap();

    let call = notes_api::pb::notes_service_client::NotesServiceClient::new(
        app.channel(Some(&trusted)).await,
    )
    .list_notes(with_token(ListNotesRequest::default(), &token_for("alice")))
    .await;
    let refused = tls_probe(app.addr, Some(&stranger)).await;

    let logs = text(&logs);
    assert!(call.is_ok(), "{call:?}");
    assert!(refused.is_err());
    assert!(
        logs.contains("evil\\u{a}FORGED"),
        "the name is logged, escaped: {logs}"
    );
    assert!(
        logs.lines().all(|line| !line.starts_with("FORGED")),
        "a forged line: {logs}"
    );
}

/// An identity off the allow-list may hold 4 connections (enough to be
/// told PERMISSION_DENIED), and the next are closed at once.
#[tokio::test]
async fn an_identity_off_the_allow_list_holds_at_most_four_connections() {
    use notes_server::tls::Identity;
    let app = TestApp::builder()
        .allowed_identities([Identity::parse("uri:spiffe://notes.test/someone-else").unwrap()])
        .spawn()
        .await;
    let (served, _held) = open_connections(&app, 6).await;
    assert_eq!(served, [true, true, true, true, false, false]);
}

/// Opens `n` connections with the test client's certificate, one after
/// another, each kept open: whether the server answered each one's HTTP/2
/// preface, and the connections.
async fn open_connections(
    app: &TestApp,
    n: usize,
) -> (Vec<bool>, Vec<tokio_rustls::client::TlsStream<TcpStream>>) {
    let mut held = Vec::new();
    let mut served = Vec::new();
    for _ in 0..n {
        let tcp = TcpStream::connect(app.addr).await.unwrap();
        let mut stream =
            TlsConnector::from(crate::harness::pki::client_config(Some(&pki().client)))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        served.push(matches!(stream.read(&mut buf).await, Ok(n) if n > 0));
        held.push(stream);
    }
    (served, held)
}

/// The other side of that cap: an identity on the allow-list, or any
/// identity when there is no allow-list, holds the full per-identity cap
/// (more than four).
#[tokio::test]
async fn an_admitted_identity_holds_more_than_four_connections() {
    use notes_server::tls::Identity;
    let on_list = Identity::parse(&format!("uri:{CLIENT_SPIFFE}")).unwrap();
    for allowed in [vec![], vec![on_list]] {
        let app = TestApp::builder().allowed_identities(allowed).spawn().await;
        let (served, _held) = open_connections(&app, 6).await;
        assert_eq!(served, [true; 6]);
    }
}
