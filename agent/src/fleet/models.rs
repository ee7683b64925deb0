//! Models to the fleet (`[fleet.models]`): signed bundles in a `JetStream` object store, and a
//! pointer per host group in a key-value bucket that says which bundle the group runs.
//!
//! `vigil model publish BUNDLE --group G` puts the bundle's files into the object store
//! (bucket `VIGIL_BUNDLES`) as `<sha256>/manifest.json`, `<sha256>/manifest.sig`,
//! `<sha256>/iforest.json`, `<sha256>/autoencoder.onnx` and the classifier's file if it has one
//! (`<sha256>/classifier.json` or `.onnx`), where `<sha256>` is the hash of its
//! `manifest.json` (which holds the hashes of the model files, so it names the whole bundle),
//! then writes the group's pointer (key `G` of the bucket `VIGIL_MODELS`, a [`Pointer`]). A
//! canary rollout is a pointer for a small group first, then for the rest.
//!
//! An agent with `[fleet.models] group = "G"` watches that key (its value at start, then each
//! change). For a pointer it has not seen it downloads the bundle's objects, each capped in size
//! before it is read, and checks them as `vigil run` checks a bundle directory and more:
//! the manifest's hash must be the pointer's, the model files must match the manifest's hashes
//! and sizes, the signature must verify with one of `detection.trusted_keys` (always: a fleet
//! bundle is never loaded unsigned, whatever `detection.allow_unsigned` says), and the models
//! must load and pass their probes. A bundle that passes goes to the live path, which swaps it
//! in between two cycles (phase `fleet`); one that fails is refused and reported (log, metric,
//! a `model-refused` event to the alert sinks) and the model in use stays. The version in use
//! reaches the collector in every heartbeat (`model_sha256`, `model_phase`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use crate::alert::sink::nats::is_token;
use crate::features::Schema;
use crate::model::bundle::{
    AUTOENCODER, AUTOENCODER_MAX_BYTES, IFOREST, IFOREST_MAX_BYTES, MANIFEST, MANIFEST_MAX_BYTES, Manifest,
    SIGNATURE_MAX_BYTES,
};
use crate::model::sign::{PublicKey, SIGNATURE};
use crate::model::{Bundle, Detector};

/// The version of [`Pointer`] documents.
pub const SCHEMA: u32 = 1;

/// `[fleet.models]`: the fleet's model for this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsSection {
    /// The host group whose pointer this agent follows (`canary`, `web`, ...).
    pub group: String,
    /// The key-value bucket of pointers, a key per group.
    #[serde(default = "default_pointers")]
    pub pointers: String,
    /// The object store the bundles are in.
    #[serde(default = "default_objects")]
    pub objects: String,
    /// Where the last verified bundle is kept (`<dir>/<sha256>/`, `<dir>/current`), so that a
    /// restart scores with it from the first cycle, bus or no bus. Only the agent's user may
    /// write it; the bundle is verified again when it is loaded.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
}

#[must_use]
pub fn default_pointers() -> String {
    "VIGIL_MODELS".to_owned()
}
#[must_use]
pub fn default_objects() -> String {
    "VIGIL_BUNDLES".to_owned()
}
#[must_use]
pub fn default_dir() -> PathBuf {
    PathBuf::from("/var/lib/vigil/fleet-model")
}

impl ModelsSection {
    /// # Errors
    /// The key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        crate::alert::sink::nats::check_tokens([
            ("fleet.models.group", self.group.as_str()),
            ("fleet.models.pointers", self.pointers.as_str()),
            ("fleet.models.objects", self.objects.as_str()),
        ])
    }
}

/// A group's pointer: which bundle it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    pub schema: u32,
    /// sha256 of the bundle's `manifest.json`.
    pub sha256: String,
    /// When it was published (Unix ms).
    pub published_ms: u64,
    /// Who published it and why (free text, for people).
    #[serde(default)]
    pub note: String,
}

/// The object holding `file` of the bundle `sha256`.
#[must_use]
pub fn object_name(sha256: &str, file: &str) -> String {
    format!("{sha256}/{file}")
}

/// The files of a bundle as downloaded, not yet checked.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub iforest: Vec<u8>,
    pub autoencoder: Vec<u8>,
    /// The classifier's file, if the manifest names one.
    pub classifier: Option<Vec<u8>>,
}

/// A bundle that passed every check, ready for the live path.
pub struct Accepted {
    pub detector: Detector,
    pub sha256: String,
    /// The key that signed it.
    pub key: PublicKey,
    /// Its files, to keep for the next start.
    pub bundle: Bundle,
}

/// Checks a downloaded bundle: the pointer's hash, the files' hashes and sizes, the signature
/// against `keys` (required), and that the models load for `schema`.
///
/// # Errors
/// Why it is refused, naming the file or check.
pub fn accept(pointer: &Pointer, received: Received, keys: &[PublicKey], schema: &Schema) -> Result<Accepted, String> {
    let sha256 = crate::model::bundle::sha256_hex(&received.manifest);
    if sha256 != pointer.sha256 {
        return Err(format!("{MANIFEST} has sha256 {sha256}, the pointer names {}", pointer.sha256));
    }
    let bundle = Bundle::from_bytes(&received.manifest, received.iforest, received.autoencoder, received.classifier)
        .map_err(|e| e.to_string())?
        .with_signature(received.signature);
    if keys.is_empty() {
        return Err("no trusted keys to verify the signature with (detection.trusted_keys)".to_owned());
    }
    let key = bundle.verify(keys).map_err(|e| e.to_string())?;
    let detector = bundle.detector(schema).map_err(|e| e.to_string())?;
    Ok(Accepted { detector, sha256, key, bundle })
}

/// The file in [`ModelsSection::dir`] naming the bundle kept.
pub const CURRENT: &str = "current";
/// Bundles kept in [`ModelsSection::dir`], the current one included.
const KEEP: usize = 2;

fn is_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An I/O error on `path`, as a message.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Keeps `bundle` in `dir` (created private) as the one to start with: its files in
/// `<dir>/<sha256>/`, then `<dir>/current` naming it (replaced atomically); older bundles beyond
/// the last [`KEEP`] go.
///
/// # Errors
/// The directory is not private or a file cannot be written.
pub fn keep(dir: &Path, bundle: &Bundle) -> Result<(), String> {
    crate::private_dir::ensure(dir).map_err(|e| e.to_string())?;
    let sha256 = bundle.sha256();
    let target = dir.join(&sha256);
    if !target.join(MANIFEST).exists() {
        let tmp = dir.join(format!(".{sha256}.{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        bundle.write_dir(&tmp).map_err(|e| e.to_string())?;
        let _ = fs::remove_dir_all(&target);
        fs::rename(&tmp, &target).map_err(io(&target))?;
    }
    let current = dir.join(CURRENT);
    let tmp = dir.join(format!(".{CURRENT}.{}", std::process::id()));
    fs::write(&tmp, format!("{sha256}\n")).map_err(io(&tmp))?;
    fs::rename(&tmp, &current).map_err(io(&current))?;
    // The oldest go; the current one stays whatever its time.
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| is_sha256(n) && n != sha256))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    kept.sort();
    for (_, old) in kept.iter().rev().skip(KEEP - 1) {
        let _ = fs::remove_dir_all(old);
    }
    Ok(())
}

/// The bundle an earlier run kept in `dir`, checked as `vigil run` checks a bundle directory
/// (private files, checksums, a signature by one of `keys`, probes). `None` if none was kept.
///
/// # Errors
/// What is wrong with the bundle kept.
pub fn kept(dir: &Path, keys: &[PublicKey], schema: &Schema) -> Result<Option<Accepted>, String> {
    let current = dir.join(CURRENT);
    let name = match fs::read_to_string(&current) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", current.display())),
    };
    if !is_sha256(&name) {
        return Err(format!("{}: not a bundle's sha256", current.display()));
    }
    let path = dir.join(&name);
    let trust = crate::model::Trust { keys: keys.to_vec(), allow_unsigned: false };
    let fail = |e: crate::model::BundleError| format!("{}: {e}", path.display());
    // A directory, not `default`, with unsigned bundles refused: a trusted key signed it.
    let (bundle, crate::model::Provenance::Signed { key }) = Bundle::load_trusted(&path, &trust).map_err(&fail)? else {
        return Err(format!("{}: not signed by a trusted key", path.display()));
    };
    if bundle.sha256() != name {
        return Err(format!("{}: its manifest's sha256 is {}", path.display(), bundle.sha256()));
    }
    let detector = bundle.detector(schema).map_err(fail)?;
    Ok(Some(Accepted { detector, sha256: name, key, bundle }))
}

/// What the follower hands the live path.
pub enum ModelUpdate {
    /// A bundle that passed: swap it in.
    Ready { accepted: Box<Accepted>, group: String },
    /// A bundle refused; the model in use stays.
    Refused { sha256: String, group: String, why: String },
}

/// What the follower did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Bundles that passed and went to the live path.
    pub accepted: u64,
    /// Bundles refused (tampered, unsigned, signed by another key, not loading, missing).
    pub refused: u64,
    /// Downloads that failed for the bus's sake (retried).
    pub failed: u64,
}

/// Why a download did not bring a bundle.
enum Fetch {
    /// The objects are not there or not what a bundle is: refused.
    Bad(String),
    /// The bus failed: try again.
    Bus(String),
}

/// Reads the object `name`, refusing one larger than `limit` bytes before reading it.
async fn read_object(
    store: &async_nats::jetstream::object_store::ObjectStore,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, Fetch> {
    use async_nats::jetstream::object_store::GetErrorKind;
    let object = store.get(name).await.map_err(|e| match e.kind() {
        GetErrorKind::NotFound => Fetch::Bad(format!("{name}: not in the object store")),
        _ => Fetch::Bus(format!("{name}: {e}")),
    })?;
    let size = object.info().size as u64;
    if size > limit {
        return Err(Fetch::Bad(format!("{name}: {size} bytes, more than the {limit} it may be")));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    object.take(limit + 1).read_to_end(&mut bytes).await.map_err(|e| Fetch::Bus(format!("{name}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Fetch::Bad(format!("{name}: more than the {limit} bytes it may be")));
    }
    Ok(bytes)
}

/// Downloads the bundle `sha256`: the manifest first, whose sizes cap the model files.
async fn fetch(store: &async_nats::jetstream::object_store::ObjectStore, sha256: &str) -> Result<Received, Fetch> {
    let manifest = read_object(store, &object_name(sha256, MANIFEST), MANIFEST_MAX_BYTES).await?;
    let parsed: Manifest =
        serde_json::from_slice(&manifest).map_err(|e| Fetch::Bad(format!("{MANIFEST}: not a manifest: {e}")))?;
    let claimed = |file: &str, most: u64| parsed.files.get(file).map_or(0, |f| f.bytes).min(most);
    let signature = read_object(store, &object_name(sha256, SIGNATURE), SIGNATURE_MAX_BYTES).await?;
    let iforest = read_object(store, &object_name(sha256, IFOREST), claimed(IFOREST, IFOREST_MAX_BYTES)).await?;
    let autoencoder =
        read_object(store, &object_name(sha256, AUTOENCODER), claimed(AUTOENCODER, AUTOENCODER_MAX_BYTES)).await?;
    let classifier = match Bundle::files_of(&parsed).get(2) {
        Some(&(file, most)) => Some(read_object(store, &object_name(sha256, file), claimed(file, most)).await?),
        None => None,
    };
    Ok(Received { manifest, signature, iforest, autoencoder, classifier })
}

/// The object store `name`; created (file storage) when it is missing and `create` is set.
async fn object_store(
    jetstream: &async_nats::jetstream::Context,
    name: &str,
    create: bool,
) -> Result<async_nats::jetstream::object_store::ObjectStore, String> {
    match jetstream.get_object_store(name).await {
        Ok(store) => Ok(store),
        Err(_) if create => jetstream
            .create_object_store(async_nats::jetstream::object_store::Config {
                bucket: name.to_owned(),
                description: Some("Vigil model bundles: <manifest sha256>/<file>".into()),
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating object store {name}: {e}")),
        Err(e) => Err(format!("object store {name}: {e}")),
    }
}

/// The pointer bucket `name`, created when missing and `create` is set (the last 16 pointers
/// of each group are kept: the rollout's history).
async fn pointers(
    jetstream: &async_nats::jetstream::Context,
    name: &str,
    create: bool,
) -> Result<async_nats::jetstream::kv::Store, String> {
    let layout = super::KvLayout {
        description: "Vigil model pointers: a key per host group, the value the bundle it runs",
        history: 16,
        max_age: Duration::ZERO,
    };
    super::kv_bucket(jetstream, name, create.then_some(&layout)).await
}

/// Publishes `bundle` for `group`: its files into the object store `objects` (created when
/// missing), then the group's pointer into the bucket `bucket` (created when missing).
/// Answers the pointer written.
///
/// # Errors
/// The bundle is not signed, or the bus refused.
pub async fn publish(
    jetstream: &async_nats::jetstream::Context,
    bucket: &str,
    objects: &str,
    group: &str,
    bundle: &Bundle,
    note: &str,
) -> Result<Pointer, String> {
    let signature = bundle.signature().ok_or("the bundle is not signed (sign it with `vigil model sign`)")?;
    let sha256 = bundle.sha256();
    let store = object_store(jetstream, objects, true).await?;
    let classifier = bundle.manifest.classifier.as_ref().map(|c| c.file.as_str()).zip(bundle.classifier.as_deref());
    let files: Vec<(&str, &[u8])> =
        [(SIGNATURE, signature), (IFOREST, &bundle.iforest), (AUTOENCODER, &bundle.autoencoder)]
            .into_iter()
            .chain(classifier)
            // The manifest last: a bundle whose manifest is there has all its files.
            .chain([(MANIFEST, bundle.manifest_json())])
            .collect();
    for (file, mut bytes) in files {
        let name = object_name(&sha256, file);
        store.put(name.as_str(), &mut bytes).await.map_err(|e| format!("writing {name}: {e}"))?;
    }
    let pointer =
        Pointer { schema: SCHEMA, sha256, published_ms: crate::clock::wall_ns() / 1_000_000, note: note.to_owned() };
    let kv = pointers(jetstream, bucket, true).await?;
    let value = serde_json::to_vec(&pointer).map_err(|e| e.to_string())?;
    kv.put(group, value.into()).await.map_err(|e| format!("writing the pointer of {group}: {e}"))?;
    Ok(pointer)
}

/// `vigil model publish`: connects with `bus` and publishes `bundle` for `group` into the
/// bucket `pointers` and object store `objects` (each created when missing).
///
/// # Errors
/// A bad group name, a bundle that is not signed, a bus that cannot be reached or refuses.
pub fn publish_with(
    bus: &crate::alert::sink::nats::NatsSettings,
    pointers: &str,
    objects: &str,
    group: &str,
    bundle: &Bundle,
    note: &str,
) -> Result<Pointer, String> {
    if !is_token(group) {
        return Err(format!("group {group:?} must be letters, digits, - or _"));
    }
    let options = crate::alert::sink::nats::Options::new(bus).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let jetstream = options.connect().await?;
        let pointer = publish(&jetstream, pointers, objects, group, bundle, note).await?;
        // The pointer is acknowledged by the server; flushing leaves nothing in the client.
        let _ = jetstream.client().flush().await;
        Ok(pointer)
    })
}

/// Downloads and checks the bundle `pointer` names: what to hand the live path, or the bus's
/// error (to try again).
async fn take(
    jetstream: &async_nats::jetstream::Context,
    section: &ModelsSection,
    pointer: &Pointer,
    keys: &[PublicKey],
    schema: &Schema,
) -> Result<ModelUpdate, String> {
    let refused = |why| ModelUpdate::Refused { sha256: pointer.sha256.clone(), group: section.group.clone(), why };
    let store = object_store(jetstream, &section.objects, false).await?;
    let received = match fetch(&store, &pointer.sha256).await {
        Ok(received) => received,
        Err(Fetch::Bad(why)) => return Ok(refused(why)),
        Err(Fetch::Bus(e)) => return Err(e),
    };
    let (keys, schema, p) = (keys.to_vec(), schema.clone(), pointer.clone());
    // Loading the models (ONNX, probes) is CPU work: off the export's thread.
    Ok(match tokio::task::spawn_blocking(move || accept(&p, received, &keys, &schema)).await {
        Ok(Ok(accepted)) => ModelUpdate::Ready { accepted: Box::new(accepted), group: section.group.clone() },
        Ok(Err(why)) => refused(why),
        Err(e) => refused(format!("checking stopped: {e}")),
    })
}

/// The agent's model follower, on the fleet export's runtime until it shuts down: watches the
/// group's pointer and hands each new bundle, checked, to the live path through `tx`; a broken
/// watch or a missing bucket is retried every few seconds, and so is a download the bus broke.
pub(crate) async fn follow(
    options: crate::alert::sink::nats::Options,
    section: ModelsSection,
    keys: Vec<PublicKey>,
    schema: Schema,
    tx: mpsc::Sender<ModelUpdate>,
    shared: Arc<Mutex<ModelStats>>,
    running: Option<String>,
) {
    use futures_util::StreamExt as _;
    use tracing::{info, warn};

    const RETRY: Duration = Duration::from_secs(2);
    let count = |f: fn(&mut ModelStats)| {
        if let Ok(mut s) = shared.lock() {
            f(&mut s);
        }
    };
    let group = section.group.clone();
    let mut jetstream = None;
    let mut last_error = String::new();
    // The last bundle accepted or refused: a pointer seen again (a new watch) is not fetched again.
    let mut done: Option<String> = running;
    loop {
        let watch = async {
            options.ensure_connected(&mut jetstream).await?;
            let js = jetstream.as_ref().ok_or("not connected")?;
            let kv = pointers(js, &section.pointers, false).await?;
            kv.watch_with_history(&group).await.map_err(|e| format!("watching {}: {e}", section.pointers))
        };
        let mut watch = match watch.await {
            Ok(w) => w,
            Err(e) => {
                if e != last_error {
                    warn!(error = %e, group, "fleet models: the group's pointer is not followed yet; retrying");
                    last_error = e;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        last_error.clear();
        info!(group, bucket = section.pointers, "following the fleet's model pointer");
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry.inspect_err(|e| warn!(error = %e, "fleet models: the watch broke; watching again"))
            else {
                break;
            };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                info!(group, "fleet models: the group's pointer was removed; the model in use stays");
                continue;
            }
            let pointer = match serde_json::from_slice::<Pointer>(&entry.value) {
                Ok(p) if p.schema == SCHEMA => p,
                Ok(p) => {
                    warn!(group, schema = p.schema, "fleet models: a pointer of another schema; ignored");
                    continue;
                }
                Err(e) => {
                    warn!(group, error = %e, "fleet models: the pointer is not JSON of this schema; ignored");
                    continue;
                }
            };
            if done.as_deref() == Some(pointer.sha256.as_str()) {
                continue;
            }
            let Some(js) = jetstream.as_ref() else { break };
            let update = match take(js, &section, &pointer, &keys, &schema).await {
                Ok(update) => update,
                Err(e) => {
                    count(|s| s.failed += 1);
                    warn!(group, sha256 = pointer.sha256, error = e, "fleet models: download failed; trying again");
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            };
            match &update {
                ModelUpdate::Ready { accepted, .. } => {
                    count(|s| s.accepted += 1);
                    info!(group, sha256 = accepted.sha256, key = %accepted.key, "fleet models: bundle verified");
                    let (dir, bundle) = (section.dir.clone(), accepted.bundle.clone());
                    match tokio::task::spawn_blocking(move || keep(&dir, &bundle)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!(error = e, "fleet models: the bundle cannot be kept for the next start"),
                        Err(e) => warn!(error = %e, "fleet models: keeping the bundle stopped"),
                    }
                }
                ModelUpdate::Refused { why, .. } => {
                    count(|s| s.refused += 1);
                    warn!(group, sha256 = pointer.sha256, why, "fleet models: bundle refused; the model in use stays");
                }
            }
            done = Some(pointer.sha256.clone());
            if tx.send(update).is_err() {
                return;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
#[path = "models_tests.rs"]
mod tests;
