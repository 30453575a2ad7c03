//! The certificate ledger: every certificate the `certs` tool issued in a
//! folder, one JSON line each in `ledger.jsonl` (serial, NAME, kind,
//! identity, notAfter, SHA-256 fingerprint), appended to and never
//! rewritten. It is what `certs revoke NAME` revokes (every serial ever
//! issued under NAME, not only the current file) and what `certs list`
//! shows.

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The ledger's file in a certs folder.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("ledger.jsonl")
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The NAME it was issued under (its file stem).
    pub name: String,
    /// `client` or `server`.
    pub kind: String,
    /// Its identity: URI SANs, else DNS SANs, else the common name.
    pub identity: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of its DER, lowercase hex.
    pub sha256: String,
}

/// Every entry of the ledger in `dir`, oldest first (none if it has none).
pub fn read(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let path = path(dir);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a ledger entry", path.display(), i + 1))
        })
        .collect()
}

/// Appends `entry` to the ledger in `dir` (created 0644 if missing).
pub fn append(dir: &Path, entry: &Entry) -> anyhow::Result<()> {
    let path = path(dir);
    let mut line = serde_json::to_string(entry)?;
    line.push('\n');
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_and_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        let entry = |serial: &str| Entry {
            serial: serial.into(),
            name: "svc".into(),
            kind: "client".into(),
            identity: "spiffe://example.org/svc".into(),
            not_after: 1_900_000_000,
            sha256: "00".repeat(32),
        };
        append(dir.path(), &entry("0a")).unwrap();
        append(dir.path(), &entry("0b")).unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![entry("0a"), entry("0b")]);
        fs::write(path(dir.path()), "{not json\n").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
