//! Key material on disk and in memory: the one rule for a private key file, and a type that
//! holds secret bytes without ever showing them.
//!
//! - [`read_private`]: reads a file that holds key material (a TLS private key, the gossip
//!   key), refusing it when its mode lets the group or others read it (on Unix), with a
//!   message that names the file and the `chmod 600` to run.
//! - [`Secret`]: bytes whose `Debug` shows only their length, so a key cannot reach a log
//!   line, an error or a `{:?}` by accident. Its memory is overwritten with zeros when it
//!   is dropped (best effort: copies made by the code that used it are not).
//!
//! Both `rpc` (TLS keys) and `gossip` (the gossip key) read their keys through here, so a
//! node refuses a readable key file the same way whichever flag named it.
//!
//! This crate must never depend on a crate of ours, nor on tokio, tonic or openraft
//! (`cargo xtask deps` checks this): everything that reads a key may use it.

use std::path::{Path, PathBuf};

/// Why a key file cannot be used; every message names the file and never its contents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// The file could not be read.
    #[error("reading the key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The group or others may read the file.
    #[error(
        "the key file {} can be read by {who} (mode {mode:04o}); a key must be readable by its owner only: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "its group", "others" or "its group and others".
        who: &'static str,
    },
}

/// Secret bytes: a key, or a file holding one. `Debug` prints only the length; there is no
/// `Display`. Zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes`.
    #[must_use]
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes, for the code that uses the key; never print them.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// How many bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&self.0);
    }
}

/// Checks that only the owner may read `path` (on Unix: no read, write or execute bit for
/// the group or others). Elsewhere it checks nothing.
///
/// # Errors
/// [`SecretFileError::TooOpen`] naming the file and the `chmod` to run;
/// [`SecretFileError::Read`] when its metadata cannot be read.
pub fn check_private(path: &Path) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read { path: path.to_path_buf(), source })?;
    check_mode(path, &meta)
}

#[cfg(unix)]
fn check_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "others",
        (true, true) => "its group and others",
    };
    Err(SecretFileError::TooOpen { path: path.to_path_buf(), mode, who })
}

#[cfg(not(unix))]
fn check_mode(_: &Path, _: &std::fs::Metadata) -> Result<(), SecretFileError> {
    Ok(())
}

/// Reads a key file after [`check_private`].
///
/// # Errors
/// As [`check_private`], or when the file cannot be read.
pub fn read_private(path: &Path) -> Result<Secret, SecretFileError> {
    check_private(path)?;
    std::fs::read(path).map(Secret).map_err(|source| SecretFileError::Read { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn debug_shows_no_bytes() {
        let s = Secret::new(b"hunter2-key-material".to_vec());
        let shown = format!("{s:?} {:#?}", s);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("20 bytes"), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn a_file_readable_by_group_or_others_is_refused_with_the_chmod_to_run() -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("node.key");
        std::fs::write(&path, "secret-bytes")?;
        for (mode, who) in
            [(0o640, "its group"), (0o604, "others"), (0o644, "its group and others"), (0o660, "its group")]
        {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            let e = read_private(&path).err().ok_or("a readable key was accepted")?.to_string();
            assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
            assert!(e.contains(who) && e.contains(&format!("{mode:04o}")), "{e}");
            assert!(!e.contains("secret-bytes"), "{e}");
        }
        for mode in [0o600, 0o400, 0o700] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            assert_eq!(read_private(&path)?.expose(), b"secret-bytes");
        }
        Ok(())
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = read_private(Path::new("/nonexistent/gossip.key")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("/nonexistent/gossip.key"), "{e}");
    }
}
