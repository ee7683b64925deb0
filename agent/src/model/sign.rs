//! Ed25519 signatures over model bundles, the keys that make them, and the trust policy of
//! `vigil run`.
//!
//! A signature covers `manifest.json` byte for byte, and the manifest carries the sha256 of
//! the two model files, so one signature vouches for the whole bundle. What is signed is the
//! manifest behind a fixed context line ([`CONTEXT`]), so a signature made with the same key
//! for anything else never passes as a bundle signature. It is stored next to the manifest as
//! `manifest.sig`: 128 hex digits and a newline. Keys are files of 64 hex digits (`#` lines
//! are comments): the private key is the Ed25519 seed, the public key the encoded point.
//!
//! `vigil run` loads a bundle directory only if its signature verifies with one of
//! `detection.trusted_keys`, unless `detection.allow_unsigned` is set. The built-in bundle is
//! part of the binary and trusted as the binary is; it is signed by the project's models key
//! (`models/vigil-models.pub`, compiled in) so that it verifies like any other bundle.

use std::{
    fmt,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::files::{self, Access, FileError};

/// The signature file in a bundle directory.
pub const SIGNATURE: &str = "manifest.sig";
/// File names `vigil model keygen` writes.
pub const SECRET_KEY_FILE: &str = "vigil-model.key";
pub const PUBLIC_KEY_FILE: &str = "vigil-model.pub";
/// What is signed is this line followed by the manifest's bytes.
pub const CONTEXT: &[u8] = b"vigil model bundle v1\n";
/// Key and signature files are a few lines; anything longer is not one.
const KEY_FILE_MAX: u64 = 4096;

/// The models key the built-in bundle is signed with (`models/vigil-models.pub`).
const MODELS_KEY: &str = include_str!(concat!(env!("OUT_DIR"), "/default-model/vigil-models.pub"));

/// Why a key or a signature is refused.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} exists; refusing to overwrite a key (move it away first)")]
    Exists { path: PathBuf },
    #[error("{name}: not an Ed25519 {kind} key: {why}")]
    BadKey { name: String, kind: &'static str, why: &'static str },
    #[error("{path}: a private key others can read (mode {mode:04o}); `chmod 600` it")]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("no {SIGNATURE}: the bundle is not signed (sign it with `vigil model sign`)")]
    Unsigned,
    #[error("{SIGNATURE}: not a signature (one line of 128 hex digits expected)")]
    Malformed,
    #[error(
        "{SIGNATURE} does not verify with {keys} trusted key(s): signed by another key, or manifest.json changed after signing"
    )]
    Mismatch { keys: usize },
    #[error("no trusted keys to verify the signature with (detection.trusted_keys)")]
    NoKeys,
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// Lower-case hex of bytes.
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Exactly `N` bytes from hex digits (either case).
fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The one non-comment line of a key or signature file, trimmed.
fn payload(text: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(text).ok()?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next()?;
    lines.next().is_none().then_some(line)
}

/// A public key bundles are verified with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 64 hex digits; `name` labels errors (the entry or the file).
    ///
    /// # Errors
    /// [`SignError::BadKey`] for anything else, a point off the curve or a weak key.
    pub fn parse(text: &str, name: &str) -> Result<Self, SignError> {
        let bad = |why| SignError::BadKey { name: name.to_owned(), kind: "public", why };
        let bytes = from_hex::<32>(text.trim()).ok_or_else(|| bad("64 hex digits expected"))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a point on the curve"))?;
        if key.is_weak() {
            return Err(bad("a weak key (small order), which anyone can sign for"));
        }
        Ok(Self(key))
    }

    /// Reads a public key file.
    ///
    /// # Errors
    /// [`SignError`] naming the file.
    pub fn read(path: &Path, access: Access) -> Result<Self, SignError> {
        let text = files::read_capped(path, KEY_FILE_MAX, access)?;
        let name = path.display().to_string();
        let line = payload(&text).ok_or(SignError::BadKey {
            name: name.clone(),
            kind: "public",
            why: "one line of 64 hex digits expected",
        })?;
        Self::parse(line, &name)
    }

    /// A configuration entry: 64 hex digits, or else the path of a public key file.
    ///
    /// # Errors
    /// [`SignError`] naming the entry or the file.
    pub fn from_entry(entry: &str, access: Access) -> Result<Self, SignError> {
        if is_hex_key(entry) { Self::parse(entry, entry) } else { Self::read(Path::new(entry), access) }
    }

    /// The project's models key, compiled in; `None` in a build without one.
    #[must_use]
    pub fn models_key() -> Option<Self> {
        payload(MODELS_KEY.as_bytes()).and_then(|line| Self::parse(line, "models key").ok())
    }
}

/// Whether a configuration entry is a key written out (64 hex digits) rather than a path.
#[must_use]
pub fn is_hex_key(entry: &str) -> bool {
    entry.len() == 64 && entry.bytes().all(|b| b.is_ascii_hexdigit())
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(self.0.as_bytes()))
    }
}

/// A private key bundles are signed with.
pub struct SecretKey(SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public())
    }
}

impl SecretKey {
    /// A new key from the operating system's random source.
    ///
    /// # Errors
    /// [`SignError::Random`] if there is none.
    pub fn generate() -> Result<Self, SignError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SignError::Random(e.to_string()))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    #[must_use]
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Reads a private key file, refusing one that group or others can read.
    ///
    /// # Errors
    /// [`SignError`] naming the file.
    pub fn read(path: &Path) -> Result<Self, SignError> {
        let meta = std::fs::metadata(path).map_err(|error| SignError::Io { path: path.to_owned(), error })?;
        if meta.mode() & 0o077 != 0 {
            return Err(SignError::KeyExposed { path: path.to_owned(), mode: meta.mode() & 0o7777 });
        }
        let text = files::read_capped(path, KEY_FILE_MAX, Access::Any)?;
        let bad = |why| SignError::BadKey { name: path.display().to_string(), kind: "private", why };
        let line = payload(&text).ok_or_else(|| bad("one line of 64 hex digits expected"))?;
        let seed = from_hex::<32>(line).ok_or_else(|| bad("64 hex digits expected"))?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    /// The `manifest.sig` text for `manifest` (the bytes of `manifest.json`).
    #[must_use]
    pub fn sign(&self, manifest: &[u8]) -> String {
        format!("{}\n", to_hex(&self.0.sign(&message(manifest)).to_bytes()))
    }
}

fn message(manifest: &[u8]) -> Vec<u8> {
    [CONTEXT, manifest].concat()
}

/// Checks `signature` (the text of `manifest.sig`) over `manifest` against `keys`; answers
/// the key that made it.
///
/// # Errors
/// [`SignError::NoKeys`], [`SignError::Malformed`] or [`SignError::Mismatch`].
pub fn verify(keys: &[PublicKey], manifest: &[u8], signature: &[u8]) -> Result<PublicKey, SignError> {
    if keys.is_empty() {
        return Err(SignError::NoKeys);
    }
    let bytes = payload(signature).and_then(from_hex::<64>).ok_or(SignError::Malformed)?;
    let signature = Signature::from_bytes(&bytes);
    let message = message(manifest);
    keys.iter()
        .find(|k| k.0.verify_strict(&message, &signature).is_ok())
        .copied()
        .ok_or(SignError::Mismatch { keys: keys.len() })
}

/// Writes a new key pair into `dir` (created if needed): [`SECRET_KEY_FILE`] with mode 0600
/// and [`PUBLIC_KEY_FILE`]. Refuses to overwrite either.
///
/// # Errors
/// [`SignError::Exists`] or an I/O error naming the file.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf, PublicKey), SignError> {
    let io = |path: &Path, error| SignError::Io { path: path.to_owned(), error };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let (secret_path, public_path) = (dir.join(SECRET_KEY_FILE), dir.join(PUBLIC_KEY_FILE));
    for path in [&secret_path, &public_path] {
        if path.symlink_metadata().is_ok() {
            return Err(SignError::Exists { path: path.clone() });
        }
    }
    let key = SecretKey::generate()?;
    let public = key.public();
    let write = |path: &Path, mode: u32, text: String| {
        let mut file = std::fs::File::options().write(true).create_new(true).mode(mode).open(path).map_err(
            |source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => SignError::Exists { path: path.to_owned() },
                _ => SignError::Io { path: path.to_owned(), error: source },
            },
        )?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| io(path, e))
    };
    write(
        &secret_path,
        0o600,
        format!(
            "# Vigil model signing key (Ed25519 seed). Keep it secret; public key {public}\n{}\n",
            to_hex(key.0.as_bytes())
        ),
    )?;
    write(&public_path, 0o644, format!("# Vigil model verification key (Ed25519)\n{public}\n"))?;
    Ok((secret_path, public_path, public))
}

/// Which bundles `vigil run` accepts.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub keys: Vec<PublicKey>,
    /// Load bundles not signed by a trusted key (with a warning).
    pub allow_unsigned: bool,
}

impl Trust {
    /// Resolves `detection.trusted_keys` entries; key files must be private (as bundles).
    ///
    /// # Errors
    /// [`SignError`] naming the entry or file.
    pub fn from_config(entries: &[String], allow_unsigned: bool) -> Result<Self, SignError> {
        let keys = entries.iter().map(|e| PublicKey::from_entry(e, Access::Private)).collect::<Result<_, _>>()?;
        Ok(Self { keys, allow_unsigned })
    }
}

/// Why a loaded bundle is trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// The bundle compiled into the binary; whether its signature verifies with the models key.
    BuiltIn { signed: bool },
    /// Signed by this trusted key.
    Signed { key: PublicKey },
    /// Not signed by a trusted key, loaded because `detection.allow_unsigned` is set.
    Unverified { why: String },
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BuiltIn { signed: true } => f.write_str("built in, signed by the models key"),
            Self::BuiltIn { signed: false } => f.write_str("built in, its signature does not verify"),
            Self::Signed { key } => write!(f, "signed by {key}"),
            Self::Unverified { why } => write!(f, "not verified (allow_unsigned): {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::files::tests::{TempDir, chmod};

    #[test]
    fn sign_and_verify_round_trip_and_tampering_fails() {
        let key = SecretKey::generate().expect("random");
        let other = SecretKey::generate().expect("random");
        let manifest = br#"{"format_version": 1}"#;
        let sig = key.sign(manifest);
        assert_eq!(sig.len(), 129, "128 hex digits and a newline");
        assert_eq!(verify(&[other.public(), key.public()], manifest, sig.as_bytes()).expect("verifies"), key.public());
        let e = verify(&[key.public()], br#"{"format_version": 2}"#, sig.as_bytes()).expect_err("tampered");
        assert!(e.to_string().contains("does not verify with 1 trusted key(s)"), "{e}");
        let e = verify(&[other.public()], manifest, sig.as_bytes()).expect_err("another key");
        assert!(matches!(e, SignError::Mismatch { keys: 1 }));
        assert!(matches!(verify(&[], manifest, sig.as_bytes()), Err(SignError::NoKeys)));
        let e = verify(&[key.public()], manifest, b"abcd\n").expect_err("short");
        assert!(e.to_string().starts_with("manifest.sig: not a signature"), "{e}");
        // The context line is part of what is signed: the bare manifest's signature is not one.
        let bare = format!("{}\n", to_hex(&key.0.sign(manifest).to_bytes()));
        assert!(verify(&[key.public()], manifest, bare.as_bytes()).is_err());
    }

    #[test]
    fn public_keys_parse_from_hex_or_file_and_bad_ones_are_named() {
        let key = SecretKey::generate().expect("random").public();
        let hex = key.to_string();
        assert!(is_hex_key(&hex));
        assert_eq!(PublicKey::from_entry(&hex, Access::Private).expect("hex"), key);
        assert_eq!(PublicKey::from_entry(&hex.to_uppercase(), Access::Private).expect("upper-case hex"), key);
        let e = PublicKey::parse(&hex[..62], "entry").expect_err("short");
        assert_eq!(e.to_string(), "entry: not an Ed25519 public key: 64 hex digits expected");
        // The identity point has small order: anyone can make signatures that verify with it.
        let mut weak = [0u8; 32];
        weak[0] = 1;
        let e = PublicKey::parse(&to_hex(&weak), "entry").expect_err("weak");
        assert!(e.to_string().contains("weak key"), "{e}");

        let dir = TempDir::new("sign-keys");
        let path = dir.0.join("k.pub");
        std::fs::write(&path, format!("# comment\n{hex}\n")).expect("write");
        chmod(&path, 0o644);
        assert_eq!(PublicKey::from_entry(path.to_str().expect("utf-8"), Access::Private).expect("file"), key);
        chmod(&path, 0o666);
        let e = Trust::from_config(&[path.display().to_string()], false).expect_err("others can swap the key");
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        let e = PublicKey::from_entry("/nonexistent/k.pub", Access::Private).expect_err("missing");
        assert!(e.to_string().starts_with("/nonexistent/k.pub: No such file"), "{e}");
        std::fs::write(&path, format!("{hex}\n{hex}\n")).expect("write");
        let e = PublicKey::read(&path, Access::Any).expect_err("two keys in one file");
        assert!(e.to_string().contains("one line of 64 hex digits expected"), "{e}");
    }

    #[test]
    fn keygen_writes_a_private_key_0600_and_never_overwrites() {
        let dir = TempDir::new("sign-keygen");
        let (secret, public, key) = keygen(&dir.0).expect("keygen");
        assert_eq!(std::fs::metadata(&secret).expect("key").mode() & 0o777, 0o600);
        assert_eq!(PublicKey::read(&public, Access::Any).expect("public key file"), key);
        let loaded = SecretKey::read(&secret).expect("reads back");
        assert_eq!(loaded.public(), key);
        let e = keygen(&dir.0).expect_err("exists");
        assert!(e.to_string().contains("vigil-model.key exists; refusing to overwrite"), "{e}");
        chmod(&secret, 0o640);
        let e = SecretKey::read(&secret).expect_err("readable by the group");
        assert!(e.to_string().contains("a private key others can read (mode 0640)"), "{e}");
    }

    #[test]
    fn the_models_key_is_compiled_in() {
        let key = PublicKey::models_key().expect("models/vigil-models.pub is a key");
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/vigil-models.pub");
        assert_eq!(PublicKey::read(&file, Access::Any).expect("the file"), key);
    }
}
