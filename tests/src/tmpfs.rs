//! Small filesystems for the disk-full tests: a tmpfs of a given size mounted by the test on
//! a directory it owns, unmounted on drop. Mounting needs root (CI runs as root); elsewhere
//! [`Tmpfs::available`] says why the test is skipped, and under CI it fails instead, so a
//! CI that lost root does not pass by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BoxError;

/// A mounted tmpfs.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `Ok(true)` when tmpfs can be mounted here (root); `Ok(false)`, with the reason printed,
    /// when the test should be skipped (not root, not CI); an error under CI without root.
    pub fn available(test: &str) -> Result<bool, BoxError> {
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if root {
            return Ok(true);
        }
        if std::env::var_os("CI").is_some() {
            return Err(format!("{test}: CI must run as root to mount the small filesystems this test needs").into());
        }
        eprintln!("SKIPPED {test}: mounting a tmpfs needs root (CI runs as root)");
        Ok(false)
    }

    /// Mounts a tmpfs of `mib` MiB on `dir` (created if needed).
    pub fn mount(dir: &Path, mib: u64) -> Result<Self, BoxError> {
        std::fs::create_dir_all(dir)?;
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"]).arg(dir))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// Grows (or shrinks) the filesystem to `mib` MiB, as an operator adding disk would.
    pub fn resize(&self, mib: u64) -> Result<(), BoxError> {
        run(Command::new("mount").args(["-o", &format!("remount,size={mib}m")]).arg(&self.dir))
    }

    /// The mount point.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

fn run(cmd: &mut Command) -> Result<(), BoxError> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a node process still holding a file must not keep the mount (and the test's
        // temporary directory) around.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}
