//! `notes-server certs`: stand up and run a small PKI from nothing.
//!
//! - [`authority`]: the certificate-authority toolkit (issue, revoke).
//! - [`ledger`]: every certificate issued here, for `revoke` and `list`.
//!
//! Everything lives in one folder (default `certs/out`, git-ignored):
//! `ca.pem`/`ca.key`, one `NAME.pem`/`NAME.key` per current certificate,
//! `archive/SERIAL.pem`/`.key` for the ones a rotation replaced,
//! `ledger.jsonl` (every certificate issued), `revoked.txt` (hex serials)
//! and `crl.pem`, regenerated on every revoke and refresh. Keys are written
//! with mode 0600.

use std::{
    fs,
    net::IpAddr,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};

pub mod authority;
pub mod ledger;

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
        /// Replace NAME's certificate: the old pair moves to archive/SERIAL.*.
        #[arg(long)]
        rotate: bool,
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
        /// Replace NAME's certificate: the old pair moves to archive/SERIAL.*.
        #[arg(long)]
        rotate: bool,
    },
    /// Revoke certificates this CA issued and rewrite crl.pem: under a NAME,
    /// every unexpired certificate ever issued (rotated ones too).
    Revoke {
        /// The certificate: a NAME given to `client`/`server` (every
        /// certificate the ledger has under it, and CERTS_DIR/NAME.pem), or
        /// the path of a PEM file.
        cert: String,
        /// Only this serial (hex) of NAME's.
        #[arg(long)]
        serial: Option<String>,
        /// Days until the CRL's nextUpdate (1 to 36,500); `init-ca`'s first
        /// CRL has 30 too, past the 14 days at which `check` fails.
        #[arg(long, default_value_t = CRL_DAYS, value_parser = clap::value_parser!(u64).range(1..=36_500))]
        crl_days: u64,
    },
    /// Every certificate issued here, with its state.
    List,
    /// The CRL's own maintenance.
    #[command(subcommand)]
    Crl(CrlCommand),
}

/// `certs crl` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CrlCommand {
    /// Re-sign crl.pem with a new number and nextUpdate, revoking nothing new.
    Refresh {
        /// Days until the CRL's nextUpdate (1 to 36,500).
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

/// The identity a ledger entry shows: URI SANs, else DNS SANs, else the CN.
fn identity_of(subject: &Subject) -> String {
    if !subject.uris.is_empty() {
        subject.uris.join(",")
    } else if !subject.dns_names.is_empty() {
        subject.dns_names.join(",")
    } else {
        subject.common_name.clone()
    }
}

/// Moves NAME's current pair to `archive/SERIAL.pem`/`.key`, recording it in
/// the ledger first if it is not there (a folder made before the ledger).
fn archive(dir: &Path, name: &str, kind: &str) -> anyhow::Result<String> {
    let pem_path = dir.join(format!("{name}.pem"));
    let pem =
        fs::read_to_string(&pem_path).with_context(|| format!("reading {}", pem_path.display()))?;
    let facts = authority::facts_of(&pem).with_context(|| pem_path.display().to_string())?;
    let serial = hex(&facts.serial);
    if !ledger::read(dir)?.iter().any(|e| e.serial == serial) {
        ledger::append(
            dir,
            &ledger::Entry {
                serial: serial.clone(),
                name: name.to_owned(),
                kind: kind.to_owned(),
                identity: String::new(),
                not_after: facts.not_after,
                sha256: hex(&facts.sha256),
            },
        )?;
    }
    let archive = dir.join("archive");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&archive)
        .with_context(|| format!("creating {}", archive.display()))?;
    for ext in ["pem", "key"] {
        let from = dir.join(format!("{name}.{ext}"));
        if from.exists() {
            let to = archive.join(format!("{serial}.{ext}"));
            fs::rename(&from, &to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(serial)
}

/// Issues `NAME.pem`/`NAME.key` in `dir`, signed by the CA there, and
/// records it in the ledger. A NAME that has a certificate is refused
/// unless `rotate`, which archives the old pair first.
fn issue(
    dir: &Path,
    name: &str,
    subject: &Subject,
    usage: Usage,
    days: u64,
    rotate: bool,
) -> anyhow::Result<String> {
    check_name(name)?;
    let kind = match usage {
        Usage::Server => "server",
        Usage::Client => "client",
    };
    let current = dir.join(format!("{name}.pem"));
    let ca = load_ca(dir)?;
    let rotated = match (current.exists(), rotate) {
        (false, _) => None,
        (true, false) => bail!(
            "{} already holds {name}'s certificate; issuing another would leave the old one \
             valid and untracked. Pass --rotate to replace it (the old pair is kept in {}/archive/ \
             and `certs revoke {name}` revokes both)",
            current.display(),
            dir.display()
        ),
        (true, true) => Some(archive(dir, name, kind)?),
    };
    let validity = Validity::starting_now(days_of(days));
    let issued = ca.issue(subject, usage, validity)?;
    let facts = authority::facts_of(&issued.cert_pem)?;
    ledger::append(
        dir,
        &ledger::Entry {
            serial: hex(&issued.serial),
            name: name.to_owned(),
            kind: kind.to_owned(),
            identity: identity_of(subject),
            not_after: facts.not_after,
            sha256: hex(&facts.sha256),
        },
    )?;
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
    let rotated = rotated
        .map(|old| format!("; the previous one (serial {old}) is in archive/ and still valid until revoked or expired"))
        .unwrap_or_default();
    Ok(format!(
        "{kind} certificate {}/{name}.pem (serial {}){rotated}",
        dir.display(),
        hex(&issued.serial)
    ))
}

/// The serials in `revoked.txt` (none if it is missing).
fn revoked_serials(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let revoked_path = dir.join("revoked.txt");
    let listing = match fs::read_to_string(&revoked_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", revoked_path.display()));
        }
    };
    parse_revoked(&listing).with_context(|| revoked_path.display().to_string())
}

/// Writes `revoked.txt` and a CRL of `serials` with the next number; the
/// number.
fn write_crl(
    dir: &Path,
    ca: &CertificateAuthority,
    serials: &[Vec<u8>],
    crl_days: u64,
) -> anyhow::Result<u64> {
    let number: u64 = fs::read_to_string(dir.join("crl-number"))
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
        + 1;
    let crl = ca.crl(serials, number, days_of(crl_days))?;
    let listing: String = serials.iter().map(|s| hex(s) + "\n").collect();
    write_file(&dir.join("revoked.txt"), listing.as_bytes(), 0o644)?;
    write_file(&dir.join("crl.pem"), crl.as_bytes(), 0o644)?;
    write_file(
        &dir.join("crl-number"),
        number.to_string().as_bytes(),
        0o644,
    )?;
    Ok(number)
}

/// The certificates `cert` names: a file path (one), or a NAME (every
/// unexpired one the ledger has under it and its current file; with
/// `serial`, only that one of them).
fn to_revoke(
    dir: &Path,
    ca: &CertificateAuthority,
    cert: &str,
    serial: Option<&str>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let named = dir.join(format!("{cert}.pem"));
    let by_name = !cert.contains('/') && check_name(cert).is_ok();
    let on_record: Vec<ledger::Entry> = if by_name {
        ledger::read(dir)?
            .into_iter()
            .filter(|e| e.name == cert)
            .collect()
    } else {
        Vec::new()
    };
    let file = if by_name && named.is_file() {
        Some(named.clone())
    } else if !by_name && Path::new(cert).is_file() {
        Some(PathBuf::from(cert))
    } else {
        None
    };
    if file.is_none() && on_record.is_empty() {
        bail!(
            "no certificate {cert:?}: neither {} (a NAME given to `certs client` or \
             `certs server`) nor a file {cert:?} exists, and the ledger has nothing under it",
            named.display()
        );
    }
    let mut serials = Vec::new();
    if let Some(path) = &file {
        let pem =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        if pem.trim() == ca.cert_pem().trim() {
            bail!(
                "refusing to revoke {}: it is the CA itself (rotate the CA instead)",
                path.display()
            );
        }
        // Only this CA's certificates go on its CRL: another CA's serial
        // there would revoke nothing it means to and may collide with ours.
        authority::check_issued_by(&pem, ca.cert_pem()).with_context(|| {
            format!(
                "refusing to revoke {}: not a certificate of the CA in {}",
                path.display(),
                dir.display()
            )
        })?;
        serials.push(serial_of(&pem).with_context(|| path.display().to_string())?);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for entry in &on_record {
        let entry_serial = unhex(&entry.serial)?;
        if entry.not_after > now && !serials.contains(&entry_serial) {
            serials.push(entry_serial);
        }
    }
    if let Some(wanted) = serial {
        let wanted = unhex(&wanted.to_ascii_lowercase())?;
        if !serials.contains(&wanted) {
            bail!(
                "serial {} is not one of {cert:?}'s unexpired certificates",
                hex(&wanted)
            );
        }
        serials = vec![wanted];
    }
    Ok(serials)
}

/// `certs list`: the ledger, one line per certificate, with its state.
fn list(dir: &Path) -> anyhow::Result<String> {
    let entries = ledger::read(dir)?;
    if entries.is_empty() {
        return Ok(format!(
            "no certificates on record in {}",
            ledger::path(dir).display()
        ));
    }
    let revoked: Vec<String> = revoked_serials(dir)?.iter().map(|s| hex(s)).collect();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = String::from("SERIAL  NAME  KIND  IDENTITY  NOT-AFTER  STATE\n");
    for entry in entries {
        let current = fs::read_to_string(dir.join(format!("{}.pem", entry.name)))
            .ok()
            .and_then(|pem| serial_of(&pem).ok())
            .is_some_and(|serial| hex(&serial) == entry.serial);
        let state = if revoked.contains(&entry.serial) {
            "revoked"
        } else if entry.not_after <= now {
            "expired"
        } else {
            "valid"
        };
        let not_after = time::OffsetDateTime::from_unix_timestamp(entry.not_after)
            .map(|t| t.date().to_string())
            .unwrap_or_default();
        out.push_str(&format!(
            "{}  {}  {}  {}  {not_after}  {state}{}\n",
            entry.serial,
            entry.name,
            entry.kind,
            if entry.identity.is_empty() {
                "-"
            } else {
                &entry.identity
            },
            if current { " (current)" } else { "" },
        ));
    }
    Ok(out.trim_end().to_owned())
}

/// Runs one `certs` command in `dir`; returns what it wrote, for the user.
pub fn run(dir: &Path, command: CertsCommand) -> anyhow::Result<String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // One command at a time per folder: a `crl refresh` from cron racing a
    // `revoke` would otherwise write a CRL without the new revocation, and
    // two rotations could mix their pairs.
    let lock_path = dir.join(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
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
            rotate,
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
            issue(dir, &name, &subject, Usage::Server, days, rotate)
        }
        CertsCommand::Client {
            name,
            uris,
            dns,
            days,
            rotate,
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
            issue(dir, &name, &subject, Usage::Client, days, rotate)
        }
        CertsCommand::Revoke {
            cert,
            serial,
            crl_days,
        } => {
            let ca = load_ca(dir)?;
            let chosen = to_revoke(dir, &ca, &cert, serial.as_deref())?;
            let mut serials = revoked_serials(dir)?;
            for serial in &chosen {
                if !serials.contains(serial) {
                    serials.push(serial.clone());
                }
            }
            let number = write_crl(dir, &ca, &serials, crl_days)?;
            let listed: Vec<String> = chosen.iter().map(|s| hex(s)).collect();
            Ok(format!(
                "revoked serial {}; {}/crl.pem (number {number}) lists {} certificate(s)",
                listed.join(", "),
                dir.display(),
                serials.len()
            ))
        }
        CertsCommand::List => list(dir),
        CertsCommand::Crl(CrlCommand::Refresh { crl_days }) => {
            let ca = load_ca(dir)?;
            let serials = revoked_serials(dir)?;
            let number = write_crl(dir, &ca, &serials, crl_days)?;
            Ok(format!(
                "{}/crl.pem re-signed (number {number}, next update in {crl_days} days); \
                 it lists the same {} certificate(s)",
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

    /// A CA in `dir`, and `certs client svc` as issuing it with `rotate`.
    fn ca_in(dir: &Path) -> impl Fn(bool) -> CertsCommand {
        run(
            dir,
            CertsCommand::InitCa {
                name: "test CA".into(),
                days: 10,
            },
        )
        .unwrap();
        |rotate| CertsCommand::Client {
            name: "svc".into(),
            uris: vec!["spiffe://test/svc".into()],
            dns: vec![],
            days: 1,
            rotate,
        }
    }

    #[test]
    fn a_name_is_rotated_only_when_asked_and_revoke_covers_every_serial_it_had() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let client = ca_in(dir);
        let current = || serial_of(&fs::read_to_string(dir.join("svc.pem")).unwrap()).unwrap();
        run(dir, client(false)).unwrap();
        let first = current();
        let refused = run(dir, client(false)).unwrap_err().to_string();
        assert!(refused.contains("--rotate"), "{refused}");
        assert_eq!(current(), first, "a refused issue changes nothing");
        let rotated = run(dir, client(true)).unwrap();
        let second = current();
        assert_ne!(first, second);
        assert!(rotated.contains(&hex(&first)), "{rotated}");
        assert!(dir.join(format!("archive/{}.key", hex(&first))).exists());

        run(
            dir,
            CertsCommand::Revoke {
                cert: "svc".into(),
                serial: None,
                crl_days: 30,
            },
        )
        .unwrap();
        let revoked = revoked_serials(dir).unwrap();
        assert!(revoked.contains(&first) && revoked.contains(&second));
        let listing = run(dir, CertsCommand::List).unwrap();
        assert_eq!(listing.matches("revoked").count(), 2, "{listing}");
        assert!(listing.contains("(current)"), "{listing}");

        let crl = fs::read(dir.join("crl.pem")).unwrap();
        run(dir, CertsCommand::Crl(CrlCommand::Refresh { crl_days: 30 })).unwrap();
        assert_ne!(fs::read(dir.join("crl.pem")).unwrap(), crl, "re-signed");
        assert_eq!(
            revoked_serials(dir).unwrap(),
            revoked,
            "nothing new revoked"
        );
        assert_eq!(fs::read_to_string(dir.join("crl-number")).unwrap(), "3");
    }

    #[test]
    fn one_serial_of_a_name_can_be_revoked_alone_and_a_stranger_serial_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let client = ca_in(dir);
        run(dir, client(false)).unwrap();
        let first = serial_of(&fs::read_to_string(dir.join("svc.pem")).unwrap()).unwrap();
        run(dir, client(true)).unwrap();
        let revoke = |serial: &str| CertsCommand::Revoke {
            cert: "svc".into(),
            serial: Some(serial.into()),
            crl_days: 30,
        };
        let refused = run(dir, revoke("0abc")).unwrap_err().to_string();
        assert!(refused.contains("not one of"), "{refused}");
        run(dir, revoke(&hex(&first))).unwrap();
        assert_eq!(revoked_serials(dir).unwrap(), vec![first]);
    }

    #[test]
    fn an_absurd_validity_is_clamped_not_a_panic() {
        let ca = CertificateAuthority::generate("far", Duration::from_secs(u64::MAX)).unwrap();
        assert!(ca.crl(&[], 1, Duration::from_secs(u64::MAX)).is_ok());
        assert_eq!(days_of(u64::MAX), Duration::from_secs(u64::MAX));
    }
}
