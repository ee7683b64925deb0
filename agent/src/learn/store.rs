//! Site models on disk, under `learn.dir`: one signed bundle directory per model
//! (`site-<first 12 hex digits of its sha256>`), the host's key that signs them (`site-key/`),
//! `current` naming the one in use, and `history` listing them oldest first. The last
//! `learn.keep` are kept. `vigil model list|show|use|rollback` work on them, and the agent
//! follows a change to `current` within a cycle.

use std::path::{Path, PathBuf};

use tracing::warn;

use crate::{features::Schema, model::Detector};

/// The directory under `learn.dir` holding the host's site-model key pair.
pub const SITE_KEY_DIR: &str = "site-key";

/// Writes `bundle` to `dir/site-<sha256 prefix>`, signed with the host's site key
/// (`dir/site-key/`, made on first use, the secret 0600), in directories only the agent's
/// user can write.
///
/// # Errors
/// Any file that cannot be written.
pub(crate) fn save(
    dir: &Path,
    bundle: &crate::model::Bundle,
    sha256: &str,
    keep: usize,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    use crate::model::sign;
    crate::private_dir::ensure(dir)?;
    let key_dir = dir.join(SITE_KEY_DIR);
    crate::private_dir::ensure(&key_dir)?;
    let key_path = key_dir.join(sign::SECRET_KEY_FILE);
    if !key_path.exists() {
        sign::keygen(&key_dir)?;
    }
    let key = sign::SecretKey::read(&key_path)?;
    let name = format!("site-{}", short(sha256));
    let out = dir.join(&name);
    bundle.write_dir(&out)?;
    crate::model::Bundle::sign_dir(&out, &key)?;
    // Written last: a restart loads what `current` names, and it names only a signed bundle.
    crate::private_dir::write_file(dir, CURRENT, format!("{name}\n").as_bytes())?;
    let mut history = history(dir);
    history.retain(|h| *h != name);
    history.push(name);
    let dropped = history.len().saturating_sub(keep.max(1));
    for old in history.drain(..dropped) {
        if let Err(e) = std::fs::remove_dir_all(dir.join(&old)) {
            warn!(model = old, error = %e, "could not remove an old site model");
        }
    }
    crate::private_dir::write_file(dir, HISTORY, (history.join("\n") + "\n").as_bytes())?;
    Ok(out)
}

/// The first 12 hex digits of a sha256: a site model's directory name and how logs name it.
#[must_use]
pub fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// The file under `learn.dir` listing the kept site models, oldest first.
pub const HISTORY: &str = "history";

/// The kept site models' names, oldest first (well-formed names only).
#[must_use]
pub fn history(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join(HISTORY))
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|n| well_formed(n))
        .map(str::to_owned)
        .collect()
}

/// `site-` and 12 hex digits: a name `current` and `history` may hold.
fn well_formed(name: &str) -> bool {
    name.strip_prefix("site-").is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The name `current` holds, if any.
#[must_use]
pub fn current_name(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(CURRENT)).ok().map(|t| t.trim().to_owned())
}

/// One kept site model, for `vigil model list`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SiteEntry {
    pub name: String,
    pub sha256: String,
    pub current: bool,
    /// What training recorded (rows, the period, strata).
    pub training: serde_json::Value,
    pub alert_threshold: f32,
    /// Whether it loads: checksums, values and the host key's signature.
    pub problem: Option<String>,
}

/// The kept site models, oldest first, each checked as the agent would load it.
#[must_use]
pub fn list(dir: &Path) -> Vec<SiteEntry> {
    let current = current_name(dir);
    history(dir)
        .into_iter()
        .map(|name| {
            let is_current = current.as_deref() == Some(name.as_str());
            match load(dir, &name) {
                Ok((bundle, _)) => SiteEntry {
                    sha256: bundle.sha256(),
                    current: is_current,
                    training: bundle.manifest.training.clone(),
                    alert_threshold: bundle.manifest.thresholds.alert,
                    problem: None,
                    name,
                },
                Err(e) => SiteEntry {
                    sha256: String::new(),
                    current: is_current,
                    training: serde_json::Value::Null,
                    alert_threshold: f32::NAN,
                    problem: Some(e.error.to_string()),
                    name,
                },
            }
        })
        .collect()
}

/// Makes `name` (a `site-…` name or a prefix of its sha256 of at least 6 hex digits) the site
/// model in use: checked as the agent loads it, then written to `current`. A running agent
/// swaps it in within a cycle. Answers the name.
///
/// # Errors
/// No such kept model, or it does not load.
pub fn use_site(dir: &Path, name: &str) -> Result<String, SiteError> {
    let found = find(dir, name)?;
    load(dir, &found)?;
    crate::private_dir::write_file(dir, CURRENT, format!("{found}\n").as_bytes())
        .map_err(|source| SiteError::io(dir.join(CURRENT), source))?;
    Ok(found)
}

/// The kept site model `name` names: its directory name, or at least 6 hex digits of its
/// sha256.
///
/// # Errors
/// None or several kept models match.
pub fn find(dir: &Path, name: &str) -> Result<String, SiteError> {
    let wanted = name.strip_prefix("site-").unwrap_or(name).to_ascii_lowercase();
    let mut matches: Vec<String> = history(dir)
        .into_iter()
        .filter(|n| wanted.len() >= 6 && n.strip_prefix("site-").is_some_and(|h| h.starts_with(&wanted)))
        .collect();
    if matches.len() == 1 {
        return Ok(matches.remove(0));
    }
    let message = format!(
        "{} kept site models match {name:?} (give at least 6 hex digits of one listed by `vigil model list`)",
        matches.len()
    );
    Err(SiteError::io(dir.join(HISTORY), std::io::Error::new(std::io::ErrorKind::NotFound, message)))
}

/// Goes back to the site model kept before the one in use. Answers its name.
///
/// # Errors
/// None kept before it, or it does not load.
pub fn rollback(dir: &Path) -> Result<String, SiteError> {
    let kept = history(dir);
    let current = current_name(dir).unwrap_or_default();
    let at = kept.iter().position(|n| *n == current);
    let previous = match at {
        Some(i) if i > 0 => kept[i - 1].clone(),
        _ => {
            let message = format!("no site model kept before {current:?}");
            return Err(SiteError::io(dir.join(HISTORY), std::io::Error::new(std::io::ErrorKind::NotFound, message)));
        }
    };
    use_site(dir, &previous)
}

/// Loads the kept site model `name` as the agent does: from a directory the agent's user
/// owns, signed by the host's key.
fn load(dir: &Path, name: &str) -> Result<(crate::model::Bundle, PathBuf), SiteError> {
    use crate::model::{Bundle, Trust, files::Access, sign};
    let path = dir.join(name);
    let fail = |error: crate::model::BundleError| SiteError { path: path.clone(), error };
    let key = sign::PublicKey::read(&dir.join(SITE_KEY_DIR).join(sign::PUBLIC_KEY_FILE), Access::Private)
        .map_err(|e| fail(e.into()))?;
    let (bundle, _) = Bundle::load_trusted(&path, &Trust { keys: vec![key], allow_unsigned: false }).map_err(fail)?;
    Ok((bundle, path))
}

/// A site model an earlier run learnt and saved ([`current_site`]).
pub struct SavedSite {
    pub detector: Detector,
    pub sha256: String,
    pub path: PathBuf,
}

/// A saved site model that cannot be used: where, and what is wrong.
#[derive(Debug)]
pub struct SiteError {
    pub path: PathBuf,
    pub error: crate::model::BundleError,
}

impl SiteError {
    /// A file of the store (`current`, `history`) that cannot be read, written or used.
    fn io(path: PathBuf, source: std::io::Error) -> Self {
        Self { error: crate::model::BundleError::Io { path: path.clone(), source }, path }
    }
}

/// The file under `learn.dir` naming the site model in use; the next run loads it.
pub const CURRENT: &str = "current";

/// The site model a previous run learnt, as `learn.dir/current` names it: loaded only from a
/// directory the agent's user owns and only if signed by the host's site key. `None` when
/// there is none yet, or when it was learnt for another feature schema (an upgrade: the agent
/// then learns afresh, with a warning).
///
/// # Errors
/// The path and what is wrong with it: an unreadable or malformed `current`, a missing key,
/// or a bundle that fails its checks or its signature. Nothing is learnt over a site model
/// that cannot be trusted; removing `current` starts learning afresh.
pub fn current_site(dir: &Path) -> Result<Option<SavedSite>, SiteError> {
    use crate::model::BundleError;
    let current = dir.join(CURRENT);
    let name = match std::fs::read_to_string(&current) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SiteError::io(current, source)),
    };
    if !well_formed(&name) {
        let source =
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("names {name:?}, not site-<12 hex digits>"));
        return Err(SiteError::io(current, source));
    }
    let (bundle, path) = load(dir, &name)?;
    match bundle.detector(&Schema::flow()) {
        Ok(detector) => Ok(Some(SavedSite { detector, sha256: bundle.sha256(), path })),
        Err(e @ (BundleError::Schema(_) | BundleError::Version { .. })) => {
            warn!(model = %path.display(), error = %e, "the last site model was learnt for another schema: learning afresh");
            Ok(None)
        }
        Err(error) => Err(SiteError { path, error }),
    }
}

/// The file under `learn.dir` where `vigil feedback` leaves analysts' verdicts for the agent.
pub const FEEDBACK: &str = "feedback.json";
/// Verdicts kept in it at most (the oldest go first).
const MAX_FEEDBACK: usize = 1000;

/// One analyst verdict on an alert.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feedback {
    /// The alert's `event.id`.
    pub id: String,
    /// `false-positive`.
    pub verdict: String,
    pub at_ms: u64,
}

/// Whether `id` has the shape of an alert id: 8 hex digits, `-`, a decimal sequence number.
#[must_use]
pub fn is_alert_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(boot, seq)| {
        boot.len() == 8
            && boot.bytes().all(|b| b.is_ascii_hexdigit())
            && !seq.is_empty()
            && seq.len() <= 20
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The verdicts in `dir`, oldest first (none yet: empty). Read only if the agent's user or
/// root owns the file and nobody else may write it: a verdict puts traffic into training.
///
/// # Errors
/// The file cannot be read or is not a list of verdicts.
pub fn read_feedback(dir: &Path) -> Result<Vec<Feedback>, String> {
    use crate::model::files::{Access, FileError, read_capped};
    let path = dir.join(FEEDBACK);
    let bytes = match read_capped(&path, 1 << 20, Access::Private) {
        Ok(b) => b,
        Err(FileError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Records an analyst's verdict that alert `id` was a false positive.
///
/// # Errors
/// Not an alert id, or the file cannot be read or written.
pub fn add_feedback(dir: &Path, id: &str, at_ms: u64) -> Result<(), String> {
    if !is_alert_id(id) {
        return Err(format!("{id:?} is not an alert id (`event.id` of an alert, e.g. 3fa9c2d1-42)"));
    }
    crate::private_dir::ensure(dir).map_err(|e| e.to_string())?;
    let mut all = read_feedback(dir)?;
    all.push(Feedback { id: id.to_owned(), verdict: "false-positive".to_owned(), at_ms });
    let drop = all.len().saturating_sub(MAX_FEEDBACK);
    all.drain(..drop);
    let json = serde_json::to_vec_pretty(&all).map_err(|e| e.to_string())?;
    crate::private_dir::write_file(dir, FEEDBACK, &json).map_err(|e| format!("{}: {e}", dir.join(FEEDBACK).display()))
}
