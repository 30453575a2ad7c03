//! The TLS configuration in force, swapped atomically on reload.
//!
//! New connections take [`ServerTls::current`] at accept time; established
//! connections keep the configuration they were made with, so a reload never
//! drops them, except those whose client certificate the new CRLs revoke or
//! that has expired: every check closes those ([`OpenConnections`]). A
//! handshake still under way when new CRLs load is checked against them
//! ([`super::RevocationsInForce`]). A reload
//! that fails (a file that does not parse, a CRL file with no CRL, a key that
//! does not match its certificate) is logged and changes nothing. A CRL past
//! its `nextUpdate` is warned about at every check.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::clock::{Clock, system_clock};

use rustls::ServerConfig;
use tokio_util::sync::CancellationToken;

use super::{
    OpenConnections, PeerIdentity, RevocationsInForce, Revoked, TlsError, TlsMaterial,
    config_in_force, read,
};

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unix_secs(since_epoch: Duration) -> i64 {
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// The files the server's TLS configuration is made from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server key (PEM).
    pub key: PathBuf,
    /// Client CA bundle (PEM).
    pub client_ca: PathBuf,
    /// Client CRLs (PEM).
    pub crls: Vec<PathBuf>,
}

impl TlsFiles {
    /// Reads every file: the material, and a digest of all bytes read.
    fn load(&self) -> Result<(TlsMaterial, Vec<u8>), TlsError> {
        let cert = read(&self.cert, "server certificate")?;
        let key = read(&self.key, "server key")?;
        let ca = read(&self.client_ca, "client CA bundle")?;
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for bytes in [&cert, &key, &ca] {
            digest.update(&(bytes.len() as u64).to_be_bytes());
            digest.update(bytes);
        }
        let mut material = TlsMaterial::from_pem(&cert, &key, &ca)?;
        for path in &self.crls {
            let crl = read(path, "client CRL")?;
            digest.update(&(crl.len() as u64).to_be_bytes());
            digest.update(&crl);
            material = material.with_crls_pem(&crl, &path.display().to_string())?;
        }
        publish_dates(&material);
        let now = now_unix();
        for (path, next_update) in &material.crl_next_updates {
            if next_update.is_some_and(|at| at < now) {
                tracing::warn!(
                    crl = %path,
                    "client CRL is past its nextUpdate: issue a fresh one (`notes-server certs revoke` rewrites it)"
                );
            }
        }
        Ok((material, digest.finish().as_ref().to_vec()))
    }
}

/// Sets the certificate and CRL date gauges from `material`.
fn publish_dates(material: &TlsMaterial) {
    use x509_parser::prelude::FromDer;
    let not_after = |der: &[u8]| {
        x509_parser::certificate::X509Certificate::from_der(der)
            .ok()
            .map(|(_, cert)| cert.validity().not_after.timestamp())
    };
    let metrics = crate::metrics::metrics();
    if let Some(at) = material.cert_chain.first().and_then(|c| not_after(c)) {
        metrics.server_certificate_not_after.set(at);
    }
    if let Some(at) = material.client_ca.iter().filter_map(|c| not_after(c)).min() {
        metrics.client_ca_not_after.set(at);
    }
    for (path, next_update) in &material.crl_next_updates {
        if let Some(at) = next_update {
            metrics.crl_next_update.with_label_values(&[path]).set(*at);
        }
    }
}

/// The server's TLS configuration, reloadable when it came from files.
pub struct ServerTls {
    current: RwLock<Arc<ServerConfig>>,
    revocations: Arc<RevocationsInForce>,
    files: Option<TlsFiles>,
    loaded_digest: Mutex<Vec<u8>>,
    clock: Clock,
}

impl ServerTls {
    /// A configuration that never changes.
    pub fn fixed(config: Arc<ServerConfig>) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(config),
            revocations: Arc::default(),
            files: None,
            loaded_digest: Mutex::default(),
            clock: system_clock(),
        })
    }

    /// Loads `files`; later [`reload`](Self::reload)s read them again.
    pub fn from_files(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        Self::from_files_with_clock(files, system_clock())
    }

    /// [`from_files`](Self::from_files), with the time read from `clock`
    /// for the expiry checks of established connections (tests move it;
    /// the handshake itself checks validity against the system clock).
    pub fn from_files_with_clock(files: TlsFiles, clock: Clock) -> Result<Arc<Self>, TlsError> {
        let (mut material, digest) = files.load()?;
        let revoked = Arc::new(std::mem::take(&mut material.revoked));
        let revocations = RevocationsInForce::new(revoked.clone());
        Ok(Arc::new(Self {
            current: RwLock::new(config_in_force(&material, revoked, &revocations)?),
            revocations,
            files: Some(files),
            loaded_digest: Mutex::new(digest),
            clock,
        }))
    }

    /// Now, in Unix seconds, by this configuration's clock.
    pub fn now_unix(&self) -> i64 {
        unix_secs((self.clock)())
    }

    /// Whether `peer`'s certificate is still good: not revoked by the CRLs
    /// in force, and not expired.
    pub fn is_live(&self, peer: &PeerIdentity) -> bool {
        !self.is_revoked(peer) && peer.not_after >= self.now_unix()
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the files; swaps the configuration if they changed and are
    /// valid. `Ok(true)`: a new configuration is in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let (mut material, digest) = files.load()?;
        let mut loaded = self.loaded_digest.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == digest {
            return Ok(false);
        }
        let revoked = Arc::new(std::mem::take(&mut material.revoked));
        let config = config_in_force(&material, revoked.clone(), &self.revocations)?;
        // The CRLs first: handshakes under the configuration being replaced
        // check them from now on.
        self.revocations.set(revoked);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        *loaded = digest;
        Ok(true)
    }

    /// Whether the CRLs in force revoke `peer`'s certificate.
    pub fn is_revoked(&self, peer: &PeerIdentity) -> bool {
        self.revocations.get().contains(&peer.issuer_and_serial)
    }

    /// The (issuer, serial) pairs the CRLs in force revoke.
    pub fn revoked(&self) -> Arc<Revoked> {
        self.revocations.get()
    }

    /// Closes the open connections whose certificate is now revoked or expired.
    fn close_revoked(&self, open: &OpenConnections) {
        let closed = open.close_where(|peer| !self.is_live(peer));
        if closed > 0 {
            tracing::warn!(
                closed,
                "closed connections whose client certificate is revoked or expired"
            );
        }
    }

    fn reload_logged(&self, trigger: &str) {
        match self.reload() {
            Ok(true) => tracing::info!(trigger, "TLS configuration reloaded"),
            Ok(false) => {}
            Err(err) => tracing::error!(
                trigger,
                error = %crate::error::error_chain(&err),
                "TLS reload refused; the previous configuration stays in force"
            ),
        }
    }

    /// Reloads when the files change (checked every `interval`) and on
    /// SIGHUP, until `stop`; after each check, closes the connections in
    /// `open` whose certificate is revoked or expired.
    pub fn spawn_watch(
        self: &Arc<Self>,
        interval: Duration,
        open: Arc<OpenConnections>,
        stop: CancellationToken,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(
                    |e| tracing::warn!(error = %e, "cannot listen for SIGHUP; file changes only"),
                )
                .ok();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        this.reload_logged("file change");
                        this.close_revoked(&open);
                    }
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                        this.reload_logged("SIGHUP");
                        this.close_revoked(&open);
                    }
                }
            }
        });
    }
}
