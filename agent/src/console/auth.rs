//! Who may use the console: a generated token (a file only the agent's user can read), or a
//! password whose Argon2id hash is in such a file; and sessions after a login, each with its
//! own CSRF token that every state change must carry.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Random bytes in a token, a session id and a CSRF token.
const TOKEN_BYTES: usize = 32;
/// Sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 1024;

/// `n` random bytes as lowercase hex.
///
/// # Errors
/// The system has no randomness to give.
pub fn random_hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0_u8; n];
    getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(bytes.iter().fold(String::with_capacity(2 * n), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Compares two secrets in time that does not depend on where they differ.
#[must_use]
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The console's login token: read from `path`, or generated there (mode 0600) on first use.
/// A file others can read is refused: whoever reads it can change blocks.
///
/// # Errors
/// The file cannot be read or written, is readable by others, or holds no token.
pub fn load_or_create_token(path: &Path) -> io::Result<String> {
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            check_private(path, &meta)?;
            let token = fs::read_to_string(path)?.trim().to_owned();
            if token.len() < 32 {
                return Err(io::Error::other(format!(
                    "{} holds no token of at least 32 characters; remove it to have one generated",
                    path.display()
                )));
            }
            Ok(token)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::private_dir::ensure(dir).map_err(|e| io::Error::other(e.to_string()))?;
            }
            let token = random_hex(TOKEN_BYTES)?;
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            writeln!(f, "{token}")?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// A secret's file must be a regular file only its owner can read or write.
fn check_private(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if !meta.file_type().is_file() {
        return Err(io::Error::other(format!("{} is not a regular file", path.display())));
    }
    crate::private_dir::check_secret_mode(meta).map_err(|e| io::Error::other(format!("{} is {e}", path.display())))
}

/// Passwords shorter than this are refused.
pub const MIN_PASSWORD: usize = 12;

/// The Argon2id hash of `password` (PHC string format, a fresh random salt), with the
/// parameters the argon2 crate defaults to (19 MiB, 2 passes: OWASP's minimum).
///
/// # Errors
/// The password is shorter than [`MIN_PASSWORD`], or there is no randomness.
pub fn hash_password(password: &str) -> io::Result<String> {
    use argon2::password_hash::{PasswordHasher as _, SaltString};
    if password.chars().count() < MIN_PASSWORD {
        return Err(io::Error::other(format!("a console password needs at least {MIN_PASSWORD} characters")));
    }
    let mut salt = [0_u8; 16];
    getrandom::fill(&mut salt).map_err(|e| io::Error::other(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| io::Error::other(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`.
#[must_use]
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Reads a password hash written by [`write_password_hash`]: a private file holding one
/// Argon2id PHC string.
///
/// # Errors
/// The file is missing, open to others, or holds no Argon2id hash.
pub fn load_password_hash(path: &Path) -> io::Result<String> {
    let meta = fs::symlink_metadata(path)?;
    check_private(path, &meta)?;
    let hash = fs::read_to_string(path)?.trim().to_owned();
    match argon2::password_hash::PasswordHash::new(&hash) {
        Ok(h) if h.algorithm.as_str() == "argon2id" => Ok(hash),
        _ => Err(io::Error::other(format!(
            "{} holds no Argon2id hash; write one with `vigil console --set-password`",
            path.display()
        ))),
    }
}

/// Writes `hash` to `path` (mode 0600), replacing what was there in one step.
///
/// # Errors
/// The directory or file cannot be written.
pub fn write_password_hash(path: &Path, hash: &str) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private_dir::ensure(dir).map_err(|e| io::Error::other(e.to_string()))?;
    }
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    writeln!(f, "{hash}")?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// A logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub csrf: String,
    expires: Instant,
}

/// Sessions by id, in memory: a console restart logs everyone out.
pub struct Sessions {
    ttl: Duration,
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    #[must_use]
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, map: Mutex::new(HashMap::new()) }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new session: its id (the cookie) and its CSRF token.
    ///
    /// # Errors
    /// No randomness.
    pub fn create(&self) -> io::Result<(String, Session)> {
        let id = random_hex(TOKEN_BYTES)?;
        let session = Session { csrf: random_hex(TOKEN_BYTES)?, expires: Instant::now() + self.ttl };
        let mut map = self.map();
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session `id` names.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<Session> {
        let map = self.map();
        // Looked up by key; the id itself is 64 hex digits of randomness.
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, id: &str) {
        self.map().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn tokens_are_generated_private_and_refused_when_others_can_read_them() {
        let dir = std::env::temp_dir().join(format!("vigil-console-auth-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("console.token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_or_create_token(&path).unwrap(), token, "the same token next time");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create_token(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_are_stored_as_argon2id_hashes_in_private_files() {
        assert!(hash_password("short").unwrap_err().to_string().contains("at least 12"));
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert_ne!(hash, hash_password("correct horse battery").unwrap(), "a fresh salt each time");
        assert!(verify_password(&hash, "correct horse battery"));
        assert!(!verify_password(&hash, "correct horse battery "));
        assert!(!verify_password("not a hash", "correct horse battery"));

        let dir = std::env::temp_dir().join(format!("vigil-console-password-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("console.password");
        write_password_hash(&path, &hash).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_password_hash(&path).unwrap(), hash);
        fs::write(&path, "plain text\n").unwrap();
        assert!(load_password_hash(&path).unwrap_err().to_string().contains("no Argon2id hash"));
        write_password_hash(&path, &hash).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load_password_hash(&path).unwrap_err().to_string().contains("chmod 600"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sessions_expire_and_secrets_compare_whole() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let (id, s) = sessions.create().unwrap();
        assert_eq!(sessions.get(&id).unwrap().csrf, s.csrf);
        assert!(sessions.get("nope").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.get(&id).is_none(), "expired");
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd") && !same_secret("abc", "abcd"));
    }
}
