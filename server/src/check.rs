//! `notes-server check`: the pre-flight of a deployment. With exactly the
//! settings `serve` takes, it checks everything `serve` would need and
//! prints one line per check, `ok` or `FAIL`, with what it found: the
//! configuration, every issuer's key set (fetched), the TLS files (the key
//! matches the certificate; how long the certificate, the client CAs and
//! each CRL stay valid), the page-token key, and the table (key schema and
//! TTL on the idempotency records).

use std::{
    fmt,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    auth::keys::KeySource,
    config::{JwksLocation, ServeConfig, StoreKind},
    error::error_chain,
    startup,
    tls::{self, TlsFiles},
};

/// Certificates and CRLs with fewer days left than this are a failure by
/// default (`--min-days-left`): time to renew before callers are refused.
pub const MIN_DAYS_LEFT: i64 = 14;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `jwks https://…`.
    pub name: String,
    /// `Ok(what was found)` or `Err(what is wrong)`.
    pub outcome: Result<String, String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Ok(found) => write!(f, "ok    {}: {found}", self.name),
            Err(problem) => write!(f, "FAIL  {}: {problem}", self.name),
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// "valid N more days", or the failure when fewer than `min_days` are left.
fn days_left(until: Option<i64>, what: &str, min_days: i64) -> Result<String, String> {
    let Some(until) = until else {
        return Ok(format!("{what} has no end date"));
    };
    let days = (until - now_unix()).div_euclid(86_400);
    if until <= now_unix() {
        return Err(format!("{what} expired {} day(s) ago", -days));
    }
    if days < min_days {
        return Err(format!(
            "{what} ends in {days} day(s), under {min_days}: renew it"
        ));
    }
    Ok(format!("{what} valid {days} more day(s)"))
}

/// `notAfter` of each PEM certificate in `pem`.
fn not_afters(pem: &[u8]) -> Vec<i64> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    use x509_parser::prelude::FromDer;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .filter_map(|der| {
            x509_parser::certificate::X509Certificate::from_der(&der)
                .ok()
                .map(|(_, cert)| cert.validity().not_after.timestamp())
        })
        .collect()
}

fn check(name: impl Into<String>, outcome: Result<String, String>) -> Check {
    Check {
        name: name.into(),
        outcome,
    }
}

/// Runs every check; the lines in order. `serve` would start only if all
/// are ok; a certificate or CRL with fewer than `min_days` left fails. The
/// last line is the dry run: the server built by [`startup::build`] from
/// these settings, as `serve` builds it, then dropped.
pub async fn run(config: &ServeConfig, min_days: i64) -> Vec<Check> {
    let mut checks = vec![check(
        "limits",
        config
            .limits
            .limits()
            .map(|_| "every bound is set".to_owned())
            .map_err(|e| e.to_string()),
    )];
    match config.auth.settings() {
        Err(err) => checks.push(check("token settings", Err(err.to_string()))),
        Ok(settings) => {
            checks.push(check(
                "token settings",
                Ok(format!("{} issuer(s)", settings.issuers.len())),
            ));
            for issuer in &settings.issuers {
                checks.push(check(
                    format!("keys of {}", issuer.policy.issuer),
                    issuer_keys(&issuer.jwks).await,
                ));
            }
        }
    }
    checks.extend(tls_checks(config, min_days));
    checks.push(check(
        "page-token key",
        startup::page_tokens(&config.page_token_key_file)
            .map(|_| format!("{} is usable", config.page_token_key_file.display()))
            .map_err(|e| e.to_string()),
    ));
    checks.extend(store_checks(config).await);
    if checks.iter().all(|c| c.outcome.is_ok()) {
        let built = match config.settings() {
            Ok(settings) => startup::build(settings).await.map(drop),
            Err(err) => Err(err),
        };
        checks.push(check(
            "assembly",
            built
                .map(|()| "the server builds from these settings as serve builds it".to_owned())
                .map_err(|e| e.to_string()),
        ));
    }
    checks
}

/// An issuer's keys: read from their file, or fetched from their URL.
async fn issuer_keys(jwks: &JwksLocation) -> Result<String, String> {
    match jwks {
        JwksLocation::File(path) => crate::auth::keys::StaticKeys::from_jwks_file(path)
            .map(|_| format!("read {}", path.display()))
            .map_err(|e| error_chain(&e)),
        JwksLocation::Url(url, settings) => {
            let remote: Arc<dyn KeySource> = Arc::new(
                crate::auth::jwks::RemoteJwks::new(url.clone(), settings.clone())
                    .map_err(|e| error_chain(&e))?,
            );
            remote
                .refresh()
                .await
                .map(|()| format!("fetched {url}"))
                .map_err(|e| error_chain(&e))
        }
    }
}

/// TLS: the configuration builds (the key matches the certificate), and
/// how long the certificates and CRLs stay valid.
fn tls_checks(config: &ServeConfig, min_days: i64) -> Vec<Check> {
    let files = TlsFiles {
        cert: config.tls_cert.clone(),
        key: config.tls_key.clone(),
        client_ca: config.client_ca.clone(),
        crls: config.client_crls.clone(),
    };
    let mut checks = vec![check(
        "TLS configuration",
        tls::ServerTls::from_files(files)
            .map(|_| "certificate, key, client CAs and CRLs load; the key matches".to_owned())
            .map_err(|e| error_chain(&e)),
    )];
    let read = |path: &std::path::Path| std::fs::read(path).unwrap_or_default();
    for (name, path) in [
        ("server certificate", &config.tls_cert),
        ("client CA", &config.client_ca),
    ] {
        let ends = not_afters(&read(path));
        if ends.is_empty() {
            checks.push(check(
                format!("{name} {}", path.display()),
                Err("holds no readable certificate".into()),
            ));
        }
        for end in ends {
            checks.push(check(
                format!("{name} {}", path.display()),
                days_left(Some(end), "certificate", min_days),
            ));
        }
    }
    for path in &config.client_crls {
        let name = format!("client CRL {}", path.display());
        match tls::parse_crls(&read(path), &path.display().to_string()) {
            Err(err) => checks.push(check(name, Err(error_chain(&err)))),
            Ok(parsed) => {
                for next_update in parsed.next_updates {
                    checks.push(check(
                        name.clone(),
                        days_left(next_update, "CRL (until nextUpdate)", min_days)
                            .map(|found| format!("{found}; revokes {}", parsed.revoked.len())),
                    ));
                }
            }
        }
    }
    checks
}

/// The table: its key schema, and TTL on the idempotency records.
async fn store_checks(config: &ServeConfig) -> Vec<Check> {
    if config.store == StoreKind::Memory {
        return vec![check(
            "store",
            Ok("memory (one instance, notes lost on exit)".into()),
        )];
    }
    let name = format!("table {}", config.dynamodb.table);
    let store = match startup::dynamodb_store(&config.dynamodb).await {
        Err(err) => return vec![check(name, Err(err.to_string()))],
        Ok(store) => store,
    };
    vec![
        check(
            name.clone(),
            store
                .check_table()
                .await
                .map(|()| "exists with userId (S, HASH) + noteId (S, RANGE)".into())
                .map_err(|e| error_chain(&e)),
        ),
        check(
            format!("{name} TTL"),
            store
                .check_ttl()
                .await
                .map(|()| "enabled on expiresAt".into())
                .map_err(|e| error_chain(&e)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_close_to_their_end_fail() {
        let now = now_unix();
        let day = 86_400;
        assert!(days_left(Some(now + 90 * day), "x", MIN_DAYS_LEFT).is_ok());
        let soon = days_left(Some(now + day), "x", MIN_DAYS_LEFT);
        assert!(soon.unwrap_err().contains("renew"));
        assert!(days_left(Some(now + day), "x", 0).is_ok());
        let past = days_left(Some(now - day), "x", 0);
        assert!(past.unwrap_err().contains("expired"));
        assert!(days_left(None, "x", MIN_DAYS_LEFT).is_ok());
    }
}
