//! The per-process test PKI, written to disk one way ([`write_files`]), and
//! a raw TLS probe that reports the alert a refused handshake ends with.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use notes_server::{
    certs::authority::{CertificateAuthority, CertifiedKey, Subject},
    tls,
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::tokens::issuer;

pub const CLIENT_SPIFFE: &str = "spiffe://notes.test/billing";

pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Certificates: one CA for the server and trusted clients, and a second,
/// untrusted CA with a client certificate of its own.
pub struct TestPki {
    pub ca: CertificateAuthority,
    pub ca_pem: String,
    pub server: CertifiedKey,
    pub client: CertifiedKey,
    pub foreign_client: CertifiedKey,
}

/// The server's subject: `localhost` and 127.0.0.1.
pub fn localhost() -> Subject {
    Subject {
        common_name: "localhost".into(),
        dns_names: vec!["localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap()],
        uris: vec![],
    }
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = CertificateAuthority::generate("notes test CA", DAY).unwrap();
        let server = ca.issue_server(&localhost(), DAY).unwrap();
        let client = ca
            .issue_client(
                &Subject {
                    common_name: "billing".into(),
                    dns_names: vec!["billing.notes.test".into()],
                    ips: vec![],
                    uris: vec![CLIENT_SPIFFE.into()],
                },
                DAY,
            )
            .unwrap();
        let foreign = CertificateAuthority::generate("someone else's CA", DAY).unwrap();
        let foreign_client = foreign
            .issue_client(
                &Subject {
                    common_name: "billing".into(),
                    uris: vec![CLIENT_SPIFFE.into()],
                    ..Subject::default()
                },
                DAY,
            )
            .unwrap();
        TestPki {
            ca_pem: ca.cert_pem().to_owned(),
            ca,
            server,
            client,
            foreign_client,
        }
    })
}

/// Writes what a `serve` and a CLI need into `dir`: `server.pem`/`.key`,
/// `ca.pem`, `client.pem`/`.key`, an empty `crl.pem`, the issuer's
/// `jwks.json` and a 32-byte `page.key`. Files are replaced atomically, so a
/// reloading server never reads one half-written.
pub fn write_files(dir: &Path) {
    let pki = pki();
    for (name, contents) in [
        ("server.pem", pki.server.cert_pem.as_bytes()),
        ("server.key", pki.server.key_pem.as_bytes()),
        ("ca.pem", pki.ca_pem.as_bytes()),
        ("client.pem", pki.client.cert_pem.as_bytes()),
        ("client.key", pki.client.key_pem.as_bytes()),
        ("page.key", &[9u8; 32]),
    ] {
        write(&dir.join(name), contents);
    }
    write(
        &dir.join("crl.pem"),
        pki.ca.crl(&[], 1, DAY).unwrap().as_bytes(),
    );
    write(
        &dir.join("jwks.json"),
        &serde_json::to_vec(&issuer().jwks).unwrap(),
    );
}

/// Replaces `path` with `contents` atomically.
pub fn write(path: &Path, contents: &[u8]) {
    notes_api::files::write_atomically(path, contents, 0o600).unwrap();
}

/// Handshakes with the server at `addr` presenting `identity` (or no
/// certificate), sends the HTTP/2 preface and reads: with TLS 1.3 the
/// server's verdict on the client certificate arrives after the client
/// considers the handshake done. Returns the server's leaf certificate, or
/// the TLS error (e.g. the alert the server sent).
pub async fn tls_probe(
    addr: SocketAddr,
    identity: Option<&CertifiedKey>,
) -> Result<CertificateDer<'static>, rustls::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = TlsConnector::from(client_config(identity))
        .connect(name, tcp)
        .await
        .map_err(rustls_error)?;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf).await {
        Ok(n) if n > 0 => Ok(stream.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()),
        Ok(_) => Err(rustls::Error::General("closed without an alert".into())),
        Err(err) => Err(rustls_error(err)),
    }
}

/// A client configuration trusting the test CA, presenting `identity` (or
/// no certificate), offering ALPN `h2`.
pub fn client_config(identity: Option<&CertifiedKey>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki().ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(tls::crypto_provider())
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
    Arc::new(config)
}

fn rustls_error(err: std::io::Error) -> rustls::Error {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| rustls::Error::General(err.to_string()))
}
