//! `notes-server certs`: stand up and run a small PKI from nothing.
//!
//! - [`authority`]: the certificate-authority toolkit (issue, revoke).
//!
//! Everything lives in one folder (default `certs/out`, git-ignored):
//! `ca.pem`/`ca.key`, one `NAME.pem`/`NAME.key` per issued certificate,
//! `revoked.txt` (hex serials) and `crl.pem`, regenerated on every revoke.
//! Keys are written with mode 0600.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};

pub mod authority;

use self::authority::{CertificateAuthority, Subject, Usage, Validity, serial_of};

/// Replaces `path` atomically with `bytes`, created with `mode` (0600 for keys).
pub(crate) fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    notes_api::files::write_atomically(path, bytes, mode)
        .with_context(|| format!("writing {}", path.display()))
}

const DAY: u64 = 24 * 3600;

/// Days until a CRL's nextUpdate, by default: past the 14 days at which
/// `check` fails and the `NotesCrlNextUpdateSoon` alert fires, so a fresh
/// CRL passes both, with two weeks of warning before it goes stale.
const CRL_DAYS: u64 = 30;

/// The `certs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a CA (refuses to overwrite one).
    InitCa {
        /// Common name of the CA.
        #[arg(long, default_value = "notes CA")]
        name: String,
        /// Validity in days (1 to 36,500).
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u64).range(1..=36_500))]
        days: u64,
    },
    /// Issue a server certificate (serverAuth) with DNS and IP SANs.
    Server {
        /// File stem and common name, e.g. `notes-server`.
        name: String,
        /// DNS SANs.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP SANs.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Validity in days (1 to 36,500).
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=36_500))]
        days: u64,
    },
    /// Issue a client certificate (clientAuth) with URI and/or DNS SANs.
    Client {
        /// File stem and common name, e.g. `billing`.
        name: String,
        /// URI SANs, e.g. spiffe://example.org/billing.
        #[arg(long = "uri")]
        uris: Vec<String>,
        /// DNS SANs.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Validity in days (1 to 36,500).
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=36_500))]
        days: u64,
    },
    /// Revoke a certificate this CA issued and rewrite crl.pem.
    Revoke {
        /// The certificate: a NAME given to `client`/`server` (the file
        /// CERTS_DIR/NAME.pem), or the path of a PEM file.
        cert: String,
        /// Days until the CRL's nextUpdate (1 to 36,500); `init-ca`'s first
        /// CRL has 30 too, past the 14 days at which `check` fails.
        #[arg(long, default_value_t = CRL_DAYS, value_parser = clap::value_parser!(u64).range(1..=36_500))]
        crl_days: u64,
    },
}

fn load_ca(dir: &Path) -> anyhow::Result<CertificateAuthority> {
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path)
            .with_context(|| format!("reading {} (run `certs init-ca` first)", path.display()))
    };
    Ok(CertificateAuthority::load(
        &read("ca.pem")?,
        &read("ca.key")?,
    )?)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name != "ca"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if !ok {
        bail!("name {name:?} must be letters, digits, '-', '_' or '.', and not 'ca'");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    let digits = s.as_bytes();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        bail!("serial {s:?} is not an even number of hex digits");
    }
    let nibble = |d: u8| (d as char).to_digit(16).map(|n| n as u8);
    digits
        .chunks(2)
        .map(|pair| match (nibble(pair[0]), nibble(pair[1])) {
            (Some(high), Some(low)) => Ok(high << 4 | low),
            _ => bail!("serial {s:?} is not hex"),
        })
        .collect()
}

/// The serials of a `revoked.txt` (one hex serial a line, blank lines
/// ignored); any other line is an error naming it.
pub fn parse_revoked(text: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(unhex)
        .collect()
}

/// Days of validity as a duration: 1 to 36,500 (clap checks the range).
fn days_of(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(DAY))
}

/// Issues `NAME.pem`/`NAME.key` in `dir`, signed by the CA there.
fn issue(
    dir: &Path,
    name: &str,
    subject: &Subject,
    usage: Usage,
    days: u64,
) -> anyhow::Result<String> {
    check_name(name)?;
    let validity = Validity::starting_now(days_of(days));
    let issued = load_ca(dir)?.issue(subject, usage, validity)?;
    write_file(
        &dir.join(format!("{name}.pem")),
        issued.cert_pem.as_bytes(),
        0o644,
    )?;
    write_file(
        &dir.join(format!("{name}.key")),
        issued.key_pem.as_bytes(),
        0o600,
    )?;
    let kind = match usage {
        Usage::Server => "server",
        Usage::Client => "client",
    };
    Ok(format!(
        "{kind} certificate {}/{name}.pem (serial {})",
        dir.display(),
        hex(&issued.serial)
    ))
}

/// Runs one `certs` command in `dir`; returns what it wrote, for the user.
pub fn run(dir: &Path, command: CertsCommand) -> anyhow::Result<String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    match command {
        CertsCommand::InitCa { name, days } => {
            if dir.join("ca.key").exists() {
                bail!(
                    "{} already holds a CA; refusing to overwrite it",
                    dir.display()
                );
            }
            let ca = CertificateAuthority::generate(&name, days_of(days))?;
            write_file(&dir.join("ca.pem"), ca.cert_pem().as_bytes(), 0o644)?;
            write_file(&dir.join("ca.key"), ca.key_pem().as_bytes(), 0o600)?;
            write_file(
                &dir.join("crl.pem"),
                ca.crl(&[], 1, days_of(CRL_DAYS))?.as_bytes(),
                0o644,
            )?;
            write_file(&dir.join("crl-number"), b"1", 0o644)?;
            Ok(format!(
                "CA {name:?}: {0}/ca.pem, {0}/ca.key, {0}/crl.pem revoking nothing",
                dir.display()
            ))
        }
        CertsCommand::Server {
            name,
            dns,
            ips,
            days,
        } => {
            if dns.is_empty() && ips.is_empty() {
                bail!("a server certificate needs at least one --dns or --ip");
            }
            let subject = Subject {
                common_name: name.clone(),
                dns_names: dns,
                ips,
                uris: vec![],
            };
            issue(dir, &name, &subject, Usage::Server, days)
        }
        CertsCommand::Client {
            name,
            uris,
            dns,
            days,
        } => {
            if uris.is_empty() && dns.is_empty() {
                bail!("a client certificate needs an identity: --uri spiffe://... and/or --dns");
            }
            let subject = Subject {
                common_name: name.clone(),
                dns_names: dns,
                ips: vec![],
                uris,
            };
            issue(dir, &name, &subject, Usage::Client, days)
        }
        CertsCommand::Revoke { cert, crl_days } => {
            let ca = load_ca(dir)?;
            let named = dir.join(format!("{cert}.pem"));
            let cert = if !cert.contains('/') && named.is_file() {
                named
            } else if Path::new(&cert).is_file() {
                PathBuf::from(&cert)
            } else {
                bail!(
                    "no certificate {cert:?}: neither {} (a NAME given to `certs client` or \
                     `certs server`) nor a file {cert:?} exists",
                    named.display()
                );
            };
            let pem =
                fs::read_to_string(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let serial = serial_of(&pem).with_context(|| cert.display().to_string())?;
            if pem.trim() == ca.cert_pem().trim() {
                bail!(
                    "refusing to revoke {}: it is the CA itself (rotate the CA instead)",
                    cert.display()
                );
            }
            // Only this CA's certificates go on its CRL: another CA's serial
            // there would revoke nothing it means to and may collide with ours.
            authority::check_issued_by(&pem, ca.cert_pem()).with_context(|| {
                format!(
                    "refusing to revoke {}: not a certificate of the CA in {}",
                    cert.display(),
                    dir.display()
                )
            })?;
            let revoked_path = dir.join("revoked.txt");
            let listing = match fs::read_to_string(&revoked_path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", revoked_path.display()));
                }
            };
            let mut serials =
                parse_revoked(&listing).with_context(|| revoked_path.display().to_string())?;
            if !serials.contains(&serial) {
                serials.push(serial.clone());
            }
            let number: u64 = fs::read_to_string(dir.join("crl-number"))
                .ok()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
                + 1;
            let crl = ca.crl(&serials, number, days_of(crl_days))?;
            let listing: String = serials.iter().map(|s| hex(s) + "\n").collect();
            write_file(&revoked_path, listing.as_bytes(), 0o644)?;
            write_file(&dir.join("crl.pem"), crl.as_bytes(), 0o644)?;
            write_file(
                &dir.join("crl-number"),
                number.to_string().as_bytes(),
                0o644,
            )?;
            Ok(format!(
                "revoked serial {}; {}/crl.pem (number {number}) lists {} certificate(s)",
                hex(&serial),
                dir.display(),
                serials.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_listings_parse_or_say_what_is_wrong_without_panicking() {
        assert_eq!(
            parse_revoked("0a1b\n\nFF\n").unwrap(),
            vec![vec![0x0a, 0x1b], vec![0xff]]
        );
        for bad in ["0a1", "zz", "é1", "1é", "0xff", "\u{1F600}"] {
            assert!(parse_revoked(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_absurd_validity_is_clamped_not_a_panic() {
        let ca = CertificateAuthority::generate("far", Duration::from_secs(u64::MAX)).unwrap();
        assert!(ca.crl(&[], 1, Duration::from_secs(u64::MAX)).is_ok());
        assert_eq!(days_of(u64::MAX), Duration::from_secs(u64::MAX));
    }
}
