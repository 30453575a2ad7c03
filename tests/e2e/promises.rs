//! Promises the README makes that no other test checked: fail-closed paths,
//! the audit trail's contents, TLS parameters, the table's TTL, and what a
//! table that disappears at run time answers.

use std::{sync::Arc, time::Duration};

use notes_api::pb::{CreateNoteRequest, DeleteNoteRequest, GetNoteRequest, ListNotesRequest};
use notes_server::{startup, store::DynamoStore, store::NoteStore};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::harness::{
    CLIENT_SPIFFE, LogSink, TestApp, dynamodb_config, dynamodb_endpoint, pki::pki, token_for,
    with_token,
};

/// A unary call to any path, with the notes API's empty request.
async fn call_path(app: &TestApp, path: &'static str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(app.channel(Some(&pki().client)).await);
    grpc.ready().await.unwrap();
    let request = match token {
        Some(token) => with_token(ListNotesRequest::default(), token),
        None => tonic::Request::new(ListNotesRequest::default()),
    };
    grpc.unary::<_, notes_api::pb::ListNotesResponse, _>(
        request,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect_err("an unknown path answered")
}

/// An unknown path is refused UNAUTHENTICATED without a valid token (it
/// never reaches the router); with one, it is authenticated, audited, and
/// then UNIMPLEMENTED.
#[tokio::test]
async fn an_unknown_path_is_unauthenticated_without_a_valid_token() {
    let app = TestApp::spawn().await;
    let token = token_for("alice");
    let forged = with_other_signature(&token);
    for path in [
        "/notes.v1.NotesService/ExportEverything",
        "/notes.v2.NotesService/ListNotes",
        "/grpc.admin.v1/Shutdown",
    ] {
        for bad in [None, Some(forged.as_str())] {
            let status = call_path(&app, path, bad).await;
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{path}: {status:?}"
            );
        }
        let status = call_path(&app, path, Some(&token)).await;
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
    }
}

/// `token` with the signature of another token of the same issuer: well
/// formed, and refused only by the signature check.
fn with_other_signature(token: &str) -> String {
    let other = token_for("mallory");
    let (signed, _) = token.rsplit_once('.').unwrap();
    let (_, signature) = other.rsplit_once('.').unwrap();
    format!("{signed}.{signature}")
}

#[tokio::test]
async fn every_decision_writes_one_audit_event_with_its_fields_and_never_the_token() {
    let logs = LogSink::default();
    logs.install_server_telemetry();
    let app = TestApp::spawn().await;
    let token = token_for("alice");
    let mut raw = app.raw().await;

    raw.list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap();
    let forged = with_other_signature(&token);
    raw.get_note(with_token(
        GetNoteRequest {
            note_id: "x".into(),
        },
        &forged,
    ))
    .await
    .unwrap_err();

    let text = logs.text();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("notes::audit"))
        .collect();
    assert_eq!(audit.len(), 2, "{text}");
    let (allow, deny) = (audit[0], audit[1]);
    for field in [
        "method=/notes.v1.NotesService/ListNotes",
        "subject=alice",
        "kind=User",
        "peer=spiffe://notes.test/billing",
        "decision=\"allow\"",
        "reason=\"ok\"",
    ] {
        assert!(allow.contains(field), "{field} not in {allow}");
    }
    for field in [
        "method=/notes.v1.NotesService/GetNote",
        "peer=spiffe://notes.test/billing",
        "decision=\"deny\"",
        "reason=\"bad_signature\"",
    ] {
        assert!(deny.contains(field), "{field} not in {deny}");
    }
    // Neither the token nor its signature is ever written.
    let signature = token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "a token reached the log");
}

/// TLS 1.2 is served only with AEAD suites, and ALPN offers only h2.
#[tokio::test]
async fn tls_1_2_negotiates_an_aead_suite_and_alpn_offers_only_h2() {
    let app = TestApp::spawn().await;
    let handshake = |versions: &'static [&'static rustls::SupportedProtocolVersion],
                     alpn: Vec<Vec<u8>>| {
        // The test client's roots and certificate, with these versions and ALPN.
        let mut config =
            rustls::ClientConfig::builder_with_provider(notes_server::tls::crypto_provider())
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(root_store())
                .with_client_auth_cert(
                    vec![pem_cert(&pki().client.cert_pem)],
                    pem_key(&pki().client.key_pem),
                )
                .unwrap();
        config.alpn_protocols = alpn;
        let addr = app.addr;
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut stream = TlsConnector::from(Arc::new(config))
                .connect("localhost".try_into().unwrap(), tcp)
                .await?;
            // The server's verdict arrives with its first bytes.
            stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await?;
            let mut buf = [0u8; 16];
            let n = stream.read(&mut buf).await?;
            let (_, conn) = stream.get_ref();
            Ok::<_, std::io::Error>((
                n,
                conn.protocol_version(),
                conn.negotiated_cipher_suite().map(|s| s.suite()),
                conn.alpn_protocol().map(<[u8]>::to_vec),
            ))
        }
    };

    let (read, version, suite, alpn) = handshake(TLS12_ONLY, vec![b"h2".to_vec()]).await.unwrap();
    assert!(read > 0);
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
    let suite = format!("{:?}", suite.unwrap());
    assert!(
        suite.contains("GCM") || suite.contains("CHACHA20_POLY1305"),
        "not an AEAD suite: {suite}"
    );
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

    // A client offering only HTTP/1.1 is refused in the handshake; one
    // offering nothing gets HTTP/2 all the same (there is nothing else).
    let refused = handshake(TLS13_ONLY, vec![b"http/1.1".to_vec()]).await;
    assert!(
        refused
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("NoApplicationProtocol")),
        "ALPN http/1.1 was served: {refused:?}"
    );
}

static TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn root_store() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_cert(&pki().ca_pem)).unwrap();
    roots
}

fn pem_cert(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn pem_key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn init_table_enables_ttl_on_the_idempotency_records_attribute() {
    let config = dynamodb_config(dynamodb_endpoint());
    let store = startup::init_table(&config).await.unwrap();
    let ttl = store
        .client()
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    let description = ttl.time_to_live_description().unwrap();
    assert_eq!(description.attribute_name(), Some("expiresAt"));
    assert_eq!(
        description.time_to_live_status(),
        Some(&aws_sdk_dynamodb::types::TimeToLiveStatus::Enabled)
    );
}

#[tokio::test]
async fn a_table_deleted_at_run_time_answers_internal_not_a_retryable_code() {
    let (logs, _scope) = crate::harness::LogSink::capture("notes_server=error");
    let config = dynamodb_config(dynamodb_endpoint());
    let store: DynamoStore = startup::init_table(&config).await.unwrap();
    let client = store.client().clone();
    let table = store.table().to_owned();
    let app = TestApp::builder()
        .store_impl(Arc::new(store) as Arc<dyn NoteStore>)
        .spawn()
        .await;
    let notes = app.client_as("alice").await;
    let note = notes.create("here", None).await.unwrap();

    client
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = app
        .raw()
        .await
        .get_note(with_token(
            GetNoteRequest {
                note_id: note.note_id.clone(),
            },
            &token_for("alice"),
        ))
        .await
        .unwrap_err();

    // A missing table is a deployment fault: INTERNAL (clients do not retry
    // it), with no AWS detail in the message.
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(!status.message().contains(&table), "{status:?}");
    // The operator's log says what is wrong.
    let text = logs.text();
    assert!(
        text.contains(&format!("DynamoDB table \"{table}\" does not exist")),
        "{text}"
    );
}

/// `--audit-allowed false`: allowed calls write no audit event, refusals
/// still do.
#[tokio::test]
async fn with_allowed_calls_unaudited_only_refusals_are_audited() {
    let logs = LogSink::default();
    logs.install_server_telemetry();
    let app = TestApp::builder()
        .settings(|s, _| s.audit_allowed = notes_server::auth::AuditAllowed::None)
        .spawn()
        .await;
    let token = token_for("alice");
    let mut raw = app.raw().await;
    raw.list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap();
    raw.list_notes(with_token(
        ListNotesRequest::default(),
        &with_other_signature(&token),
    ))
    .await
    .unwrap_err();

    let text = logs.text();
    let audit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("notes::audit"))
        .collect();
    assert_eq!(audit.len(), 1, "{text}");
    assert!(audit[0].contains("decision=\"deny\""), "{text}");
}

/// The default, `--audit-allowed changes`: every change, and each token's
/// first allowed read on each connection, are audited; further reads with
/// that token on that connection are counted, not written. A refused call
/// does not count as a token's first.
#[tokio::test]
async fn by_default_repeated_reads_with_one_token_on_one_connection_are_counted_not_audited() {
    let logs = LogSink::default();
    logs.install_server_telemetry();
    let app = TestApp::spawn().await;
    let token = token_for("alice");
    let mut raw = app.raw().await;
    for _ in 0..3 {
        raw.list_notes(with_token(ListNotesRequest::default(), &token))
            .await
            .unwrap();
    }
    let note = raw
        .create_note(with_token(
            CreateNoteRequest {
                content: "audited".into(),
                request_id: String::new(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    raw.get_note(with_token(
        GetNoteRequest {
            note_id: note.note_id.clone(),
        },
        &token,
    ))
    .await
    .unwrap();
    raw.delete_note(with_token(
        DeleteNoteRequest {
            note_id: note.note_id,
            expected_version: 0,
            request_id: String::new(),
        },
        &token,
    ))
    .await
    .unwrap();
    // Another token of the same subject (its own jti) is a first read again.
    raw.get_note(with_token(
        GetNoteRequest {
            note_id: "00000000-0000-4000-8000-000000000000".into(),
        },
        &token_for("alice"),
    ))
    .await
    .unwrap_err();
    // A token whose first call is refused: its first allowed read is audited.
    let mut read_only = crate::harness::tokens::claims("alice");
    read_only["scope"] = crate::harness::tokens::READ.into();
    let read_only = crate::harness::tokens::sign(&read_only);
    let status = raw
        .create_note(with_token(
            CreateNoteRequest {
                content: "refused".into(),
                request_id: String::new(),
            },
            &read_only,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    raw.list_notes(with_token(ListNotesRequest::default(), &read_only))
        .await
        .unwrap();
    // The first token over another connection (a replay elsewhere) is
    // audited again.
    app.raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &token))
        .await
        .unwrap();

    let text = logs.text();
    let audit: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| l.contains("notes::audit"))
        .map(|l| {
            let method = l
                .split("method=/notes.v1.NotesService/")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or(l);
            let decision = if l.contains("decision=\"allow\"") {
                "allow"
            } else {
                "deny"
            };
            (method, decision)
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("ListNotes", "allow"),
            ("CreateNote", "allow"),
            ("DeleteNote", "allow"),
            ("GetNote", "allow"),
            ("CreateNote", "deny"),
            ("ListNotes", "allow"),
            ("ListNotes", "allow"),
        ],
        "{text}"
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
