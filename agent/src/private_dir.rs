//! Directories only the agent's user may change: the pin directory (whoever can unlink
//! `link` there detaches the sensor) and the run directory (the status file the control
//! commands trust).
//!
//! A missing directory is created mode 0700. An existing one must be a real directory (not a
//! symlink), owned by the agent's user, and writable by nobody else; it is then narrowed to
//! 0700. Anything else is refused with the path, its owner and mode, and what to do.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Why a directory cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is a symbolic link or not a directory; remove it so the agent can create its own")]
    NotADirectory { path: PathBuf },
    #[error(
        "{path} is owned by uid {owner}, not by the agent's uid {agent}: someone else could change what is in it; \
         remove it (or chown it) so the agent can create its own"
    )]
    Owner { path: PathBuf, owner: u32, agent: u32 },
    #[error(
        "{path} is writable by group or others (mode {mode:04o}): anyone with that access could change what is in it; \
         `chmod 700` it or remove it"
    )]
    Mode { path: PathBuf, mode: u32 },
}

/// Makes sure `path` is a directory only the current effective user can change, creating it
/// (and missing parents) with mode 0700.
///
/// # Errors
/// [`PrivateDirError`] naming the path and the problem.
pub fn ensure(path: &Path) -> Result<(), PrivateDirError> {
    let io_err = |source| PrivateDirError::Io { path: path.to_owned(), source };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io_err)?;
        }
        Err(e) => return Err(io_err(e)),
        Ok(_) => {}
    }
    let meta = fs::symlink_metadata(path).map_err(io_err)?;
    check(path, &meta, nix::unistd::geteuid().as_raw())?;
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    }
    Ok(())
}

/// A secret's file (a key, a password or its hash, credentials) must not be readable or
/// writable by group or others. The message says what is wrong and what to do; callers put the
/// path or the setting in front of it.
///
/// # Errors
/// The mode, when group or others have any access.
pub fn check_secret_mode(meta: &fs::Metadata) -> Result<(), String> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!("readable or writable by group or others (mode {mode:04o}): `chmod 600` it"));
    }
    Ok(())
}

/// The rules, apart from the file system: a directory, owned by `agent_uid`, not writable by
/// group or others.
fn check(path: &Path, meta: &fs::Metadata, agent_uid: u32) -> Result<(), PrivateDirError> {
    if !meta.file_type().is_dir() {
        return Err(PrivateDirError::NotADirectory { path: path.to_owned() });
    }
    if meta.uid() != agent_uid {
        return Err(PrivateDirError::Owner { path: path.to_owned(), owner: meta.uid(), agent: agent_uid });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PrivateDirError::Mode { path: path.to_owned(), mode });
    }
    Ok(())
}

/// Writes `bytes` to `dir/name` atomically without following symbolic links: a temporary
/// file is created exclusively (`O_EXCL | O_NOFOLLOW`, mode 0644), then renamed over `name`
/// (a rename replaces a symlink, it never writes through one).
///
/// # Errors
/// If the file cannot be created, written or renamed.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
    file.write_all(bytes)?;
    drop(file);
    fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-private-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn missing_directories_are_created_0700() {
        let base = temp("create");
        let dir = base.join("a/b");
        ensure(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn others_write_access_symlinks_and_strangers_are_refused() {
        let base = temp("refuse");
        fs::create_dir_all(&base).unwrap();
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure(&open).unwrap_err().to_string();
        assert!(err.contains("writable by group or others") && err.contains("0777"), "{err}");
        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(matches!(ensure(&link), Err(PrivateDirError::NotADirectory { .. })));
        let meta = fs::symlink_metadata(&base).unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let err = check(&base, &meta, me + 1).unwrap_err().to_string();
        assert!(err.contains(&format!("owned by uid {me}")), "{err}");
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_readable_directory_of_ours_is_narrowed() {
        let dir = temp("narrow");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        ensure(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_are_written_without_following_symlinks() {
        let dir = temp("write");
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, b"keep").unwrap();
        // A planted symlink in place of the status file, and one in place of the temporary.
        std::os::unix::fs::symlink(&victim, dir.join("status.json")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(format!(".status.json.{}", std::process::id()))).unwrap();
        write_file(&dir, "status.json", b"{}").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(dir.join("status.json")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(dir.join("status.json")).unwrap(), b"{}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
