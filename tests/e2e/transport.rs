//! Every connection is mutual TLS: no client certificate, or one from
//! another CA, fails the handshake before any gRPC is spoken.

use std::sync::Arc;

use notes_api::pb::ListNotesRequest;
use rustls::AlertDescription;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use tokio_rustls::TlsConnector;

use crate::harness::{TestApp, pki, tls_probe, token_for, with_token};

#[tokio::test]
async fn a_trusted_client_certificate_completes_the_handshake() {
    let app = TestApp::spawn().await;

    tls_probe(app.addr, Some(&pki().client)).await.unwrap();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    let app = TestApp::spawn().await;

    let err = tls_probe(app.addr, None).await.unwrap_err();

    assert_eq!(
        err,
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_in_the_handshake() {
    let app = TestApp::spawn().await;

    let err = tls_probe(app.addr, Some(&pki().foreign_client))
        .await
        .unwrap_err();

    assert_eq!(
        err,
        rustls::Error::AlertReceived(AlertDescription::UnknownCA)
    );
}

#[tokio::test]
async fn grpc_calls_without_a_trusted_certificate_fail_even_with_a_valid_token() {
    let app = TestApp::spawn().await;
    let token = token_for("alice");

    for (identity, alert) in [
        (None, "CertificateRequired"),
        (Some(&pki().foreign_client), "UnknownCA"),
    ] {
        let channel = app.channel(identity).await;
        let mut client = notes_api::pb::notes_service_client::NotesServiceClient::new(channel);
        let status = client
            .list_notes(with_token(ListNotesRequest::default(), &token))
            .await
            .expect_err("a call succeeded without a trusted client certificate");
        // Refused by the handshake (the server's alert), not by a handler.
        assert!(
            cause_chain(&status).contains(&format!("received fatal alert: {alert}")),
            "{alert}: {status:?}"
        );
    }
}

#[tokio::test]
async fn plaintext_http2_is_not_served() {
    let app = TestApp::spawn().await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();

    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).await.unwrap_or(0);

    // The server answers a TLS alert record (type 21) or just closes; never HTTP/2.
    assert!(
        n == 0 || buf[0] == 21,
        "unexpected plaintext answer: {:?}",
        &buf[..n]
    );
}

/// A status's message and its causes, on one line.
pub(crate) fn cause_chain(status: &tonic::Status) -> String {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
