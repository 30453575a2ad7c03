//! Every connection is mutual TLS: no client certificate, or one from
//! another CA, fails the handshake before any gRPC is spoken.

use notes_api::pb::ListNotesRequest;
use rustls::AlertDescription;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

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
