//! Who may use the console: a generated token (a file only the agent's user can read), and
//! sessions after a login, each with its own CSRF token that every state change must carry.

use std::{
    collections::HashMap,
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
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
            if !meta.file_type().is_file() {
                return Err(io::Error::other(format!("{} is not a regular file", path.display())));
            }
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(io::Error::other(format!(
                    "{} is readable or writable by group or others (mode {:04o}): `chmod 600` it",
                    path.display(),
                    meta.permissions().mode() & 0o7777
                )));
            }
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
