//! Dev mode: everything the server needs, made on first start under one
//! git-ignored folder and reused afterwards.
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the dev CA (trusted for both server and client certificates) |
//! | `server.pem`, `server.key` | server certificate for `localhost`, `127.0.0.1`, `::1` |
//! | `client.pem`, `client.key` | client certificate `spiffe://notes.dev/notes-cli` |
//! | `signing.key` | RSA key of the dev token issuer |
//! | `jwks.json` | its public key set |
//! | `page-token.key` | page-token MAC key |
//! | `token` | a ready access token (re-issued on every start) |
//!
//! Key files are created with mode 0600 inside a 0700 folder.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use crate::{
    auth::{
        Bindings, ScopePolicy, TokenPolicy,
        signer::{AccessTokenSpec, TokenSigner},
        verify::{DEFAULT_CACHE_CAPACITY, DEFAULT_MAX_TOKEN_BYTES},
    },
    certs::{
        authority::{CertificateAuthority, Subject},
        write_file,
    },
    config::{AuthSettings, IssuerSettings, JwksLocation, Settings, StoreSettings},
    tls::TlsFiles,
};

/// The dev issuer (`iss`), shaped like a Cognito user pool's.
pub const DEV_ISSUER: &str = "https://cognito-idp.localhost/us-east-1_NotesDev";
/// The dev app client id (`client_id`).
pub const DEV_CLIENT_ID: &str = "notes-dev-client";
/// The dev user's `sub`.
pub const DEV_SUBJECT: &str = "7d5a0c3e-5b1f-4f2a-9c1d-00000000d001";
/// Scopes granted to the dev token, and required by dev mode.
pub const DEV_READ_SCOPE: &str = "notes/read";
/// Write scope of dev mode.
pub const DEV_WRITE_SCOPE: &str = "notes/write";
/// Key id of the dev signing key.
pub const DEV_KID: &str = "notes-dev-1";
/// Lifetime of the dev token.
pub const DEV_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Dev mode's settings: its material, the dev issuer, notes in `store`, and
/// every other setting at `serve`'s default; [`crate::startup::build`]
/// assembles the server from them as it does `serve`'s.
pub fn settings(material: &DevMaterial, store: StoreSettings) -> Settings {
    let scopes = ScopePolicy::same_for_all(
        [DEV_READ_SCOPE.to_owned()].into(),
        [DEV_WRITE_SCOPE.to_owned()].into(),
    );
    let auth = AuthSettings {
        issuers: vec![IssuerSettings {
            setting: "--dev-dir (the dev issuer's jwks.json)",
            policy: TokenPolicy::new(DEV_ISSUER, [DEV_CLIENT_ID.to_owned()]).with_scopes(scopes),
            jwks: JwksLocation::File(material.path("jwks.json")),
        }],
        max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
        cache_capacity: DEFAULT_CACHE_CAPACITY,
        bindings: Bindings::new(),
        several_issuers: false,
    };
    let tls = TlsFiles {
        cert: material.path("server.pem"),
        key: material.path("server.key"),
        client_ca: material.path("ca.pem"),
        crls: Vec::new(),
    };
    Settings {
        store,
        ..Settings::new(tls, auth, material.path("page-token.key"))
    }
}

/// The dev material's folder; [`settings`] serves from it.
#[derive(Debug, Clone)]
pub struct DevMaterial {
    /// The folder holding every file listed above.
    pub dir: PathBuf,
}

impl DevMaterial {
    /// A path in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates what is missing under `dir` and re-issues the token.
    pub fn ensure(dir: &Path) -> anyhow::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let material = Self {
            dir: dir.to_path_buf(),
        };
        const FILES: [&str; 8] = [
            "ca.pem",
            "ca.key",
            "server.pem",
            "server.key",
            "client.pem",
            "client.key",
            "signing.key",
            "page-token.key",
        ];
        if FILES.iter().any(|f| !material.path(f).exists()) {
            material.generate()?;
        }
        let signer = material.signer()?;
        write_file(
            &material.path("jwks.json"),
            serde_json::to_string_pretty(&signer.jwks())?.as_bytes(),
            0o644,
        )?;
        let token = signer.access_token(&AccessTokenSpec {
            issuer: DEV_ISSUER.into(),
            subject: DEV_SUBJECT.into(),
            client_id: DEV_CLIENT_ID.into(),
            username: Some("dev".into()),
            scopes: vec![DEV_READ_SCOPE.into(), DEV_WRITE_SCOPE.into()],
            lifetime: DEV_TOKEN_LIFETIME,
        })?;
        write_file(&material.path("token"), token.as_bytes(), 0o600)?;
        Ok(material)
    }

    fn generate(&self) -> anyhow::Result<()> {
        tracing::info!(dir = %self.dir.display(), "creating dev CA, certificates and signing key");
        let ca = CertificateAuthority::generate("notes dev CA", CERT_VALIDITY)?;
        let server = ca.issue_server(
            &Subject {
                common_name: "localhost".into(),
                dns_names: vec!["localhost".into()],
                ips: vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
                uris: vec![],
            },
            CERT_VALIDITY,
        )?;
        let client = ca.issue_client(
            &Subject {
                common_name: "notes-cli".into(),
                dns_names: vec!["notes-cli.notes.dev".into()],
                ips: vec![],
                uris: vec!["spiffe://notes.dev/notes-cli".into()],
            },
            CERT_VALIDITY,
        )?;
        let (_, signing_pem) = TokenSigner::generate(DEV_KID)?;
        let mut page_key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut page_key)
            .map_err(|_| anyhow::anyhow!("no system randomness"))?;

        write_file(&self.path("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
        write_file(&self.path("ca.key"), ca.key_pem().as_bytes(), 0o600)?;
        write_file(&self.path("server.pem"), server.cert_pem.as_bytes(), 0o644)?;
        write_file(&self.path("server.key"), server.key_pem.as_bytes(), 0o600)?;
        write_file(&self.path("client.pem"), client.cert_pem.as_bytes(), 0o644)?;
        write_file(&self.path("client.key"), client.key_pem.as_bytes(), 0o600)?;
        write_file(&self.path("signing.key"), signing_pem.as_bytes(), 0o600)?;
        write_file(&self.path("page-token.key"), &page_key, 0o600)?;
        Ok(())
    }

    /// The dev issuer's signing key.
    pub fn signer(&self) -> anyhow::Result<TokenSigner> {
        let pem = read(&self.path("signing.key"))?;
        Ok(TokenSigner::from_pem(DEV_KID, &pem)?)
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}
