//! Every connection is mutual TLS: no client certificate, or one from
//! another CA, fails the handshake before any gRPC is spoken.

use std::sync::Arc;

use notes_api::pb::ListNotesRequest;
use rustls::{
    AlertDescription, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::helpers::{TestApp, pki, token_for, with_token};
use notes_server::tls::pki::CertifiedKey;

/// Handshakes with `identity` (or none), sends the HTTP/2 preface and returns
/// the first read's error: with TLS 1.3 the server's verdict on the client
/// certificate arrives after the client considers the handshake done.
async fn server_verdict(
    app: &TestApp,
    identity: Option<&CertifiedKey>,
) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki().ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(notes_server::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = match TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(tls) => tls,
        Err(err) => return Err(rustls_error(err)),
    };
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(rustls::Error::General("closed without an alert".into())),
        Err(err) => Err(rustls_error(err)),
    }
}

fn rustls_error(err: std::io::Error) -> rustls::Error {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| rustls::Error::General(err.to_string()))
}

#[tokio::test]
async fn a_trusted_client_certificate_completes_the_handshake() {
    let app = TestApp::spawn().await;

    server_verdict(&app, Some(&pki().client)).await.unwrap();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_in_the_handshake() {
    let app = TestApp::spawn().await;

    let err = server_verdict(&app, None).await.unwrap_err();

    assert_eq!(
        err,
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
    );
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_in_the_handshake() {
    let app = TestApp::spawn().await;

    let err = server_verdict(&app, Some(&pki().foreign_client))
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

    for identity in [None, Some(&pki().foreign_client)] {
        let channel = app.channel(identity).await;
        let mut client = notes_api::pb::notes_service_client::NotesServiceClient::new(channel);
        let result = client
            .list_notes(with_token(ListNotesRequest::default(), &token))
            .await;
        assert!(
            result.is_err(),
            "a call succeeded without a trusted client certificate"
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
