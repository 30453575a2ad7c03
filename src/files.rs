//! Writing files that other processes read (keys, certificates, CRLs,
//! tokens), shared by the server's `certs` and `dev` commands and the CLI.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// Replaces `path` with `bytes` atomically: the bytes go to a new temporary
/// file in the same folder, created with `mode` (0600 for keys, so a key is
/// never readable by others even for a moment), flushed to disk, then renamed
/// over `path`. A reader sees the old file or the new one, never a missing or
/// half-written one.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut suffix = [0u8; 8];
    getrandom_suffix(&mut suffix);
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// A name suffix unlikely to collide with another writer's (process id and
/// time; no secrecy needed, `create_new` refuses a collision anyway).
fn getrandom_suffix(out: &mut [u8; 8]) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    out[..4].copy_from_slice(&std::process::id().to_le_bytes());
    out[4..].copy_from_slice(&nanos.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replaces_the_file_with_the_given_mode_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("notes-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
