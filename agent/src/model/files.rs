//! Reading the files a model depends on (bundle files, signatures, key files) without trusting
//! them: regular files only, a size cap checked before reading, and for `vigil run` the
//! ownership and mode checks that keep other users from swapping what the agent loads.
//!
//! Checks run on the opened file (`fstat`), not on the path, so a file replaced between the
//! check and the read is not what gets read.

use std::{
    fs::{File, Metadata},
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// Why a file is not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not a regular file")]
    NotRegular { path: PathBuf },
    #[error("{path}: not a directory")]
    NotDirectory { path: PathBuf },
    #[error("{path}: {size} bytes, more than the {limit} allowed")]
    TooLarge { path: PathBuf, size: u64, limit: u64 },
    #[error("{path}: writable by group or others (mode {mode:04o}); only its owner may write it (`chmod go-w`)")]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path}: owned by uid {uid}; it must belong to root or to the agent's user (uid {agent})")]
    Owner { path: PathBuf, uid: u32, agent: u32 },
}

/// Whether ownership and mode are checked: `vigil run` loads only what root or its own user
/// owns and nobody else can write; offline commands read what they are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Any owner, any mode (`vigil eval`, `vigil model verify`).
    Any,
    /// Owned by root or the agent's effective user, not writable by group or others.
    Private,
}

impl Access {
    fn check(self, path: &Path, meta: &Metadata) -> Result<(), FileError> {
        match self {
            Self::Any => Ok(()),
            Self::Private => private(path, meta.uid(), meta.mode(), nix::unistd::geteuid().as_raw()),
        }
    }
}

/// The [`Access::Private`] rule for a file of owner `uid` and `mode`, read by an agent running
/// as `agent`.
fn private(path: &Path, uid: u32, mode: u32, agent: u32) -> Result<(), FileError> {
    if uid != 0 && uid != agent {
        return Err(FileError::Owner { path: path.to_owned(), uid, agent });
    }
    let mode = mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(FileError::Writable { path: path.to_owned(), mode });
    }
    Ok(())
}

/// What tells a file changed without reading it: modified time, length, inode.
pub type Stamp = (std::time::SystemTime, u64, u64);

/// `path`'s [`Stamp`], if it exists.
#[must_use]
pub fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Checks that `path` is a directory the access level allows.
///
/// # Errors
/// [`FileError`] naming the directory.
pub fn check_dir(path: &Path, access: Access) -> Result<(), FileError> {
    let meta = std::fs::metadata(path).map_err(|source| FileError::Io { path: path.to_owned(), error: source })?;
    if !meta.is_dir() {
        return Err(FileError::NotDirectory { path: path.to_owned() });
    }
    access.check(path, &meta)
}

/// Reads a regular file of at most `limit` bytes, refusing a larger one before reading it.
///
/// # Errors
/// [`FileError`] naming the file: missing, not a regular file, too large, or (with
/// [`Access::Private`]) owned or writable by someone else.
pub fn read_capped(path: &Path, limit: u64, access: Access) -> Result<Vec<u8>, FileError> {
    let io = |error| FileError::Io { path: path.to_owned(), error };
    // O_NONBLOCK: opening a FIFO planted in place of a file must not hang the agent.
    let file = File::options().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular { path: path.to_owned() });
    }
    access.check(path, &meta)?;
    if meta.len() > limit {
        return Err(FileError::TooLarge { path: path.to_owned(), size: meta.len(), limit });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow after the check: read one byte past the limit to notice.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(io)?;
    let size = bytes.len() as u64;
    if size > limit {
        return Err(FileError::TooLarge { path: path.to_owned(), size, limit });
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A directory under the system temp directory, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(name: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("vigil-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn reads_within_the_cap_and_refuses_more_before_reading() {
        let dir = TempDir::new("files-cap");
        let path = dir.0.join("f");
        std::fs::write(&path, b"0123456789").expect("write");
        chmod(&path, 0o644);
        assert_eq!(read_capped(&path, 10, Access::Private).expect("fits"), b"0123456789");
        let e = read_capped(&path, 9, Access::Private).expect_err("too large");
        assert!(e.to_string().ends_with("f: 10 bytes, more than the 9 allowed"), "{e}");
        // A sparse 2 GiB file is refused from its size alone, without reading it.
        let big = dir.0.join("big");
        File::create(&big).expect("create").set_len(2 << 30).expect("sparse");
        let e = read_capped(&big, 1 << 20, Access::Any).expect_err("too large");
        assert!(matches!(e, FileError::TooLarge { size, .. } if size == 2 << 30), "{e}");
    }

    #[test]
    fn refuses_non_regular_files_without_blocking() {
        let dir = TempDir::new("files-kind");
        let e = read_capped(&dir.0, 10, Access::Any).expect_err("a directory");
        assert!(matches!(e, FileError::NotRegular { .. }), "{e}");
        let fifo = dir.0.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let e = read_capped(&fifo, 10, Access::Any).expect_err("a FIFO");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read_capped(&dir.0.join("missing"), 10, Access::Any).expect_err("missing");
        assert!(e.to_string().contains("missing: No such file"), "{e}");
        let e = check_dir(&fifo, Access::Any).expect_err("not a directory");
        assert!(e.to_string().ends_with("fifo: not a directory"), "{e}");
    }

    #[test]
    fn private_access_refuses_files_others_can_write_or_own() {
        let dir = TempDir::new("files-private");
        let path = dir.0.join("f");
        std::fs::write(&path, b"x").expect("write");
        for mode in [0o664, 0o646, 0o666, 0o620] {
            chmod(&path, mode);
            let e = read_capped(&path, 10, Access::Private).expect_err("writable by others");
            assert!(e.to_string().contains(&format!("writable by group or others (mode {mode:04o})")), "{e}");
            read_capped(&path, 10, Access::Any).expect("offline reads ignore the mode");
        }
        chmod(&path, 0o644);
        read_capped(&path, 10, Access::Private).expect("owner-only writes are fine");

        chmod(&dir.0, 0o777);
        let e = check_dir(&dir.0, Access::Private).expect_err("world-writable directory");
        assert!(e.to_string().contains("mode 0777"), "{e}");
        chmod(&dir.0, 0o755);
        check_dir(&dir.0, Access::Private).expect("a private directory");
    }

    #[test]
    fn private_access_accepts_root_and_the_agents_user_only() {
        let p = Path::new("/b/manifest.json");
        private(p, 0, 0o644, 1000).expect("root's file");
        private(p, 1000, 0o600, 1000).expect("the agent's own file");
        private(p, 0, 0o1755, 0).expect("sticky and execute bits are fine");
        let e = private(p, 65534, 0o644, 0).expect_err("another user's file");
        assert_eq!(
            e.to_string(),
            "/b/manifest.json: owned by uid 65534; it must belong to root or to the agent's user (uid 0)"
        );
        let e = private(p, 1001, 0o644, 1000).expect_err("another user's file");
        assert!(e.to_string().contains("owned by uid 1001"), "{e}");
        let e = private(p, 0, 0o100_664, 0).expect_err("group-writable");
        assert!(e.to_string().contains("(mode 0664)"), "{e}");
    }
}
