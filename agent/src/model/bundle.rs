//! Model bundles: a directory with `manifest.json`, `iforest.json`, `autoencoder.onnx`, maybe
//! a supervised classifier (`classifier.json`, `boosted.json` or `classifier.onnx`, format 2)
//! and, when signed,
//! `manifest.sig`.
//!
//! The manifest carries the format version, the feature schema, the scaler, the baseline, how
//! scores combine, the thresholds, a summary of the training data and the sha256 and size of
//! the other files (and, format 2, the classifier's classes and when it fires). Loading checks all of it before anything is used: sizes are capped
//! before a file is read, a bundle of another schema, a file that does not match its checksum
//! or size, a forest with an index out of range or of a shape training never makes, an ONNX
//! model of the wrong width, a value outside its range or a model that does not react to
//! off-baseline probe rows is refused with a message that names the problem. `vigil run` also
//! refuses files other users own or can write, and bundles not signed by a trusted key
//! ([`super::sign`]).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    detector::{Combine, Detector, DetectorError, FeatureRange, Scaler, Thresholds},
    files::{self, Access, FileError},
    iforest::{ForestError, IsolationForest},
    kind_classifier::{self, ClassifierSpec, KindClassifier, KindClassifierError},
    onnx::OnnxScorer,
    sign::{self, Provenance, PublicKey, SIGNATURE, SecretKey, SignError, Trust},
};
use crate::features::Schema;

/// The newest version of the bundle format this build reads and writes: 2 carries a
/// supervised classifier. A bundle is written with the oldest version that holds it (1 without
/// a classifier), so agents of the previous format keep reading bundles they can use, and
/// refuse by version, not by an unknown file, the ones they cannot.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// The version that added the classifier.
pub const CLASSIFIER_FORMAT_VERSION: u32 = 2;
pub const MANIFEST: &str = "manifest.json";
pub const IFOREST: &str = "iforest.json";
pub const AUTOENCODER: &str = "autoencoder.onnx";
/// Largest `manifest.json` read (the shipped one is under 10 KiB).
pub const MANIFEST_MAX_BYTES: u64 = 4 << 20;
/// Largest `iforest.json` read (the shipped one is about 0.5 MiB; see also
/// [`super::iforest::MAX_NODES`]).
pub const IFOREST_MAX_BYTES: u64 = 256 << 20;
/// Largest `autoencoder.onnx` read (the shipped one is about 40 KiB).
pub const AUTOENCODER_MAX_BYTES: u64 = 64 << 20;
/// Largest `manifest.sig` read (one line of 128 hex digits).
pub const SIGNATURE_MAX_BYTES: u64 = 4096;

/// The model files every manifest lists, with the most each may be.
const MODEL_FILES: [(&str, u64); 2] = [(IFOREST, IFOREST_MAX_BYTES), (AUTOENCODER, AUTOENCODER_MAX_BYTES)];
/// The classifier files a manifest may list (one, the one its `classifier.file` names).
pub const CLASSIFIER_FILES: [&str; 3] =
    [kind_classifier::FOREST_FILE, kind_classifier::BOOSTED_FILE, kind_classifier::ONNX_FILE];

/// A checksummed file of the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub created_by: String,
    pub schema: Schema,
    pub scaler: Scaler,
    /// Median raw value of each feature in the training data (explanations compare to it).
    pub baseline: Vec<f32>,
    pub combine: Combine,
    /// Each scaled feature's training range (the third score; absent: none).
    #[serde(default)]
    pub range: FeatureRange,
    pub thresholds: Thresholds,
    /// What the models were trained on and how (free-form, for people).
    pub training: serde_json::Value,
    /// sha256 and size of `iforest.json`, `autoencoder.onnx` and the classifier's file.
    pub files: BTreeMap<String, FileEntry>,
    /// The supervised classifier (format 2; absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierSpec>,
}

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{file}: not valid JSON for this format: {source}")]
    Json { file: String, source: serde_json::Error },
    #[error("{MANIFEST}: format version {found}, this build reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}")]
    Version { found: u32 },
    #[error("{MANIFEST}: a classifier needs format version {CLASSIFIER_FORMAT_VERSION}, the manifest says {found}")]
    ClassifierVersion { found: u32 },
    #[error("{MANIFEST}: the classifier's file {0} has no entry in files, or its bytes are missing")]
    MissingClassifier(String),
    #[error(transparent)]
    Classifier(#[from] KindClassifierError),
    #[error("{MANIFEST}: features do not match: {0}")]
    Schema(String),
    #[error("{MANIFEST}: no entry for {0}")]
    MissingEntry(&'static str),
    #[error("{MANIFEST}: files lists {0}, which is not part of a bundle")]
    ExtraEntry(String),
    #[error("{MANIFEST}: files.\"{file}\".bytes is {claimed}; it must be at most {limit}")]
    SizeClaim { file: &'static str, claimed: u64, limit: u64 },
    #[error("{file}: {found} bytes where the manifest says {claimed}")]
    Size { file: &'static str, claimed: u64, found: u64 },
    #[error("{file}: sha256 {found} does not match the manifest's {expected}")]
    Checksum { file: &'static str, expected: String, found: String },
    #[error("{IFOREST}: {0}")]
    Forest(#[from] ForestError),
    #[error("{AUTOENCODER}: {0}")]
    Onnx(#[from] super::onnx::OnnxError),
    #[error(transparent)]
    Detector(#[from] DetectorError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("this build of vigil has no default model (models/default was missing when it was compiled)")]
    NoDefault,
}

/// The files of a bundle, in memory.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    pub iforest: Vec<u8>,
    pub autoencoder: Vec<u8>,
    /// The classifier's file (`manifest.classifier.file`), if the bundle has one.
    pub classifier: Option<Vec<u8>>,
    /// `manifest.json` as read (or as [`Bundle::write_dir`] writes it): what the bundle's
    /// hash and signature cover.
    manifest_json: Vec<u8>,
    /// `manifest.sig`, if the bundle has one.
    signature: Option<Vec<u8>>,
}

/// Hex sha256 of bytes.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    sign::to_hex(&Sha256::digest(bytes))
}

fn entry(bytes: &[u8]) -> FileEntry {
    FileEntry { sha256: sha256_hex(bytes), bytes: bytes.len() as u64 }
}

/// The default bundle, embedded at build time from `models/default` (see `build.rs`).
mod embedded {
    pub const MANIFEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-model/manifest.json"));
    pub const IFOREST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-model/iforest.json"));
    pub const AUTOENCODER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-model/autoencoder.onnx"));
    /// Empty when the default bundle has no classifier.
    pub const CLASSIFIER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-model/classifier"));
    pub const SIGNATURE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-model/manifest.sig"));
}

impl Bundle {
    /// Builds a bundle from trained parts, filling in the file checksums.
    ///
    /// # Panics
    /// Never: a forest and a manifest always serialise.
    #[must_use]
    pub fn new(mut manifest: Manifest, forest: &IsolationForest, autoencoder: Vec<u8>) -> Self {
        let iforest = serde_json::to_vec(forest).expect("a forest serialises");
        manifest.files =
            BTreeMap::from([(IFOREST.to_owned(), entry(&iforest)), (AUTOENCODER.to_owned(), entry(&autoencoder))]);
        manifest.classifier = None;
        manifest.format_version = OLDEST_FORMAT_VERSION;
        let manifest_json = Self::manifest_bytes(&manifest);
        Self { manifest, iforest, autoencoder, classifier: None, manifest_json, signature: None }
    }

    /// The bundle with `classifier` (the file its spec names) as its supervised classifier, in
    /// place of any it had; format 2, unsigned (the manifest changed).
    #[must_use]
    pub fn with_classifier(mut self, spec: ClassifierSpec, bytes: Vec<u8>) -> Self {
        self.manifest.files.retain(|name, _| !CLASSIFIER_FILES.contains(&name.as_str()));
        self.manifest.files.insert(spec.file.clone(), entry(&bytes));
        self.manifest.classifier = Some(spec);
        self.manifest.format_version = CLASSIFIER_FORMAT_VERSION;
        self.manifest_json = Self::manifest_bytes(&self.manifest);
        self.classifier = Some(bytes);
        self.signature = None;
        self
    }

    fn manifest_bytes(manifest: &Manifest) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
        json.push(b'\n');
        json
    }

    /// Parses the manifest: version first (so an old or new format gets a version error, not
    /// a parse error), then the whole of it, then the size each model file claims.
    fn parse_manifest(bytes: &[u8]) -> Result<Manifest, BundleError> {
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let json = |source| BundleError::Json { file: MANIFEST.into(), source };
        let version: Version = serde_json::from_slice(bytes).map_err(json)?;
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version.format_version) {
            return Err(BundleError::Version { found: version.format_version });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(json)?;
        let classifier_file = manifest.classifier.as_ref().map(|c| c.file.as_str());
        if classifier_file.is_some() && manifest.format_version < CLASSIFIER_FORMAT_VERSION {
            return Err(BundleError::ClassifierVersion { found: manifest.format_version });
        }
        if let Some(file) = classifier_file.filter(|f| !CLASSIFIER_FILES.contains(f)) {
            return Err(KindClassifierError::File(file.to_owned()).into());
        }
        if let Some(extra) = manifest
            .files
            .keys()
            .find(|k| !MODEL_FILES.iter().any(|(f, _)| f == k) && Some(k.as_str()) != classifier_file)
        {
            return Err(BundleError::ExtraEntry(extra.clone()));
        }
        for (file, limit) in Self::files_of(&manifest) {
            let claimed = manifest.files.get(file).ok_or(BundleError::MissingEntry(file))?.bytes;
            if claimed > limit {
                return Err(BundleError::SizeClaim { file, claimed, limit });
            }
        }
        Ok(manifest)
    }

    /// The model files `manifest` lists, with the most each may be: the two anomaly models
    /// and the classifier's file, if it has one.
    #[must_use]
    pub fn files_of(manifest: &Manifest) -> Vec<(&'static str, u64)> {
        let classifier = manifest
            .classifier
            .as_ref()
            .and_then(|c| CLASSIFIER_FILES.iter().find(|f| **f == c.file))
            .map(|f| (*f, kind_classifier::MAX_BYTES));
        MODEL_FILES.into_iter().chain(classifier).collect()
    }

    /// Checks a model file's checksum and size against the manifest.
    fn check_file(manifest: &Manifest, file: &'static str, bytes: &[u8]) -> Result<(), BundleError> {
        let expected = manifest.files.get(file).ok_or(BundleError::MissingEntry(file))?;
        let found = sha256_hex(bytes);
        if found != expected.sha256 {
            return Err(BundleError::Checksum { file, expected: expected.sha256.clone(), found });
        }
        let found = bytes.len() as u64;
        if found != expected.bytes {
            return Err(BundleError::Size { file, claimed: expected.bytes, found });
        }
        Ok(())
    }

    /// Parses the files; checks version, sizes and checksums (not yet the schema). `classifier`
    /// is the file the manifest's `classifier.file` names, if it names one.
    ///
    /// # Errors
    /// [`BundleError`] naming the file and the problem.
    pub fn from_bytes(
        manifest: &[u8],
        iforest: Vec<u8>,
        autoencoder: Vec<u8>,
        classifier: Option<Vec<u8>>,
    ) -> Result<Self, BundleError> {
        let parsed = Self::parse_manifest(manifest)?;
        Self::check_file(&parsed, IFOREST, &iforest)?;
        Self::check_file(&parsed, AUTOENCODER, &autoencoder)?;
        let classifier = Self::check_classifier(&parsed, classifier)?;
        Ok(Self {
            manifest: parsed,
            iforest,
            autoencoder,
            classifier,
            manifest_json: manifest.to_vec(),
            signature: None,
        })
    }

    /// The classifier's bytes checked against the manifest: present exactly when it names one.
    fn check_classifier(manifest: &Manifest, bytes: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, BundleError> {
        match (Self::files_of(manifest).get(MODEL_FILES.len()), bytes) {
            (None, None) => Ok(None),
            (Some((file, _)), Some(bytes)) => {
                Self::check_file(manifest, file, &bytes)?;
                Ok(Some(bytes))
            }
            (Some((file, _)), None) => Err(BundleError::MissingClassifier((*file).to_owned())),
            (None, Some(_)) => Err(BundleError::ExtraEntry("a classifier file the manifest does not name".into())),
        }
    }

    /// Reads a bundle directory as an offline command does (any owner, any mode).
    ///
    /// # Errors
    /// [`BundleError`] naming the file and the problem.
    pub fn read_dir(dir: &Path) -> Result<Self, BundleError> {
        Self::read_dir_with(dir, Access::Any)
    }

    /// Reads a bundle directory. Every file is capped in size before it is read (a model
    /// file at the size its manifest claims, itself capped); with [`Access::Private`] the
    /// directory and every file must belong to root or the agent's user and be writable by
    /// nobody else.
    ///
    /// # Errors
    /// [`BundleError`] naming the file and the problem.
    pub fn read_dir_with(dir: &Path, access: Access) -> Result<Self, BundleError> {
        if access == Access::Private {
            files::check_dir(dir, access)?;
        }
        let manifest_json = files::read_capped(&dir.join(MANIFEST), MANIFEST_MAX_BYTES, access)?;
        let manifest = Self::parse_manifest(&manifest_json)?;
        let read = |file: &'static str| -> Result<Vec<u8>, BundleError> {
            let claimed = manifest.files.get(file).ok_or(BundleError::MissingEntry(file))?.bytes;
            let bytes = files::read_capped(&dir.join(file), claimed, access).map_err(|e| match e {
                FileError::TooLarge { size, .. } => BundleError::Size { file, claimed, found: size },
                e => e.into(),
            })?;
            Self::check_file(&manifest, file, &bytes)?;
            Ok(bytes)
        };
        let (iforest, autoencoder) = (read(IFOREST)?, read(AUTOENCODER)?);
        let classifier = Self::files_of(&manifest).get(MODEL_FILES.len()).map(|(f, _)| read(f)).transpose()?;
        let signature = match files::read_capped(&dir.join(SIGNATURE), SIGNATURE_MAX_BYTES, access) {
            Ok(bytes) => Some(bytes),
            Err(FileError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Self { manifest, iforest, autoencoder, classifier, manifest_json, signature })
    }

    /// The bundle shipped in the binary.
    ///
    /// # Errors
    /// [`BundleError::NoDefault`] if the build had none, or any check failing.
    pub fn embedded() -> Result<Self, BundleError> {
        if embedded::MANIFEST.is_empty() {
            return Err(BundleError::NoDefault);
        }
        let classifier = (!embedded::CLASSIFIER.is_empty()).then(|| embedded::CLASSIFIER.to_vec());
        let mut bundle = Self::from_bytes(
            embedded::MANIFEST,
            embedded::IFOREST.to_vec(),
            embedded::AUTOENCODER.to_vec(),
            classifier,
        )?;
        bundle.signature = (!embedded::SIGNATURE.is_empty()).then(|| embedded::SIGNATURE.to_vec());
        Ok(bundle)
    }

    /// The bundle a command line or configuration names: `default` for the built-in one,
    /// otherwise a directory (read as an offline command does).
    ///
    /// # Errors
    /// As [`Bundle::embedded`] or [`Bundle::read_dir`].
    pub fn load(name: &Path) -> Result<Self, BundleError> {
        if name.as_os_str() == "default" { Self::embedded() } else { Self::read_dir(name) }
    }

    /// The bundle `vigil run` scores with: `default` (trusted as the binary is; its signature
    /// is checked against the compiled-in models key and reported), or a directory that only
    /// root or the agent's user can write, signed by one of `trust.keys` unless
    /// `trust.allow_unsigned`.
    ///
    /// # Errors
    /// As [`Bundle::read_dir_with`], or [`BundleError::Sign`] for a bundle not signed by a
    /// trusted key.
    pub fn load_trusted(name: &Path, trust: &Trust) -> Result<(Self, Provenance), BundleError> {
        if name.as_os_str() == "default" {
            let bundle = Self::embedded()?;
            let signed = PublicKey::models_key().is_some_and(|key| bundle.verify(&[key]).is_ok());
            return Ok((bundle, Provenance::BuiltIn { signed }));
        }
        let bundle = Self::read_dir_with(name, Access::Private)?;
        match bundle.verify(&trust.keys) {
            Ok(key) => Ok((bundle, Provenance::Signed { key })),
            Err(e) if trust.allow_unsigned => Ok((bundle, Provenance::Unverified { why: e.to_string() })),
            Err(e) => Err(e.into()),
        }
    }

    /// The hex sha256 of `manifest.json`, which names the bundle: the manifest holds the
    /// checksums of the model files, so it changes whenever any file does.
    #[must_use]
    pub fn sha256(&self) -> String {
        sha256_hex(&self.manifest_json)
    }

    /// `manifest.sig`, if the bundle has one.
    #[must_use]
    pub fn signature(&self) -> Option<&[u8]> {
        self.signature.as_deref()
    }

    /// `manifest.json` as read: what the bundle's hash and signature cover.
    #[must_use]
    pub fn manifest_json(&self) -> &[u8] {
        &self.manifest_json
    }

    /// The bundle with `signature` as its `manifest.sig` (as received, not yet verified).
    #[must_use]
    pub fn with_signature(mut self, signature: Vec<u8>) -> Self {
        self.signature = Some(signature);
        self
    }

    /// Checks the bundle's signature against `keys`; answers the key that made it.
    ///
    /// # Errors
    /// [`SignError::Unsigned`] without a signature, otherwise as [`sign::verify`].
    pub fn verify(&self, keys: &[PublicKey]) -> Result<PublicKey, SignError> {
        let signature = self.signature.as_deref().ok_or(SignError::Unsigned)?;
        sign::verify(keys, &self.manifest_json, signature)
    }

    /// Signs the bundle in `dir` with `key`: checks that it loads (checksums, ranges, probes),
    /// then writes `manifest.sig` (replacing it atomically). Answers the signature's path.
    ///
    /// # Errors
    /// [`BundleError`] for a bundle that does not load or a file that cannot be written.
    pub fn sign_dir(dir: &Path, key: &SecretKey) -> Result<PathBuf, BundleError> {
        let bundle = Self::read_dir(dir)?;
        bundle.detector(&Schema::flow())?;
        let path = dir.join(SIGNATURE);
        let tmp = dir.join(format!(".{SIGNATURE}.{}", std::process::id()));
        let io = |source| BundleError::Io { path: path.clone(), source };
        fs::write(&tmp, key.sign(&bundle.manifest_json)).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }

    /// Writes the bundle into `dir` (created if needed), with its signature if it has one.
    ///
    /// # Errors
    /// [`BundleError::Io`] naming the file.
    pub fn write_dir(&self, dir: &Path) -> Result<(), BundleError> {
        fs::create_dir_all(dir).map_err(|source| BundleError::Io { path: dir.into(), source })?;
        let classifier = self.manifest.classifier.as_ref().map(|c| c.file.as_str()).zip(self.classifier.as_ref());
        let files = [(MANIFEST, &self.manifest_json), (IFOREST, &self.iforest), (AUTOENCODER, &self.autoencoder)];
        for (name, bytes) in files.into_iter().chain(classifier).chain(self.signature.as_ref().map(|s| (SIGNATURE, s)))
        {
            let path = dir.join(name);
            fs::write(&path, bytes).map_err(|source| BundleError::Io { path, source })?;
        }
        Ok(())
    }

    /// Checks the bundle against the schema the caller computes and builds its detector.
    ///
    /// # Errors
    /// [`BundleError::Schema`] if the features differ; other variants for bad model files or
    /// values out of range.
    pub fn detector(&self, expected: &Schema) -> Result<Detector, BundleError> {
        if let Some(why) = expected.mismatch(&self.manifest.schema) {
            return Err(BundleError::Schema(why));
        }
        let forest: IsolationForest = serde_json::from_slice(&self.iforest)
            .map_err(|source| BundleError::Json { file: IFOREST.into(), source })?;
        forest.validate()?;
        let width = expected.len();
        let autoencoder = OnnxScorer::load(&self.autoencoder, width)?;
        let m = &self.manifest;
        let classifier = match (&m.classifier, &self.classifier) {
            (Some(spec), Some(bytes)) => Some(KindClassifier::load(spec, bytes, width)?),
            (None, None) => None,
            (Some(spec), None) => return Err(BundleError::MissingClassifier(spec.file.clone())),
            (None, Some(_)) => {
                return Err(BundleError::ExtraEntry("a classifier file the manifest does not name".into()));
            }
        };
        let mut detector = Detector {
            schema: m.schema.clone(),
            scaler: m.scaler.clone(),
            baseline: m.baseline.clone(),
            forest,
            autoencoder,
            combine: m.combine,
            range: m.range.clone(),
            thresholds: m.thresholds,
            classifier,
        };
        detector.range.resolve(&detector.schema)?;
        detector.check()?;
        Ok(detector)
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::model::{TrainConfig, autoencoder::AutoencoderParams, iforest::ForestParams, train};

    fn small_bundle() -> (Bundle, Array2<f32>) {
        let schema = Schema::flow();
        let mut rng = StdRng::seed_from_u64(11);
        let rows = Array2::from_shape_fn((200, schema.len()), |_| rng.random_range(0.0f32..5.0));
        let config = TrainConfig {
            forest: ForestParams { trees: 10, subsample: 64, seed: 1 },
            autoencoder: AutoencoderParams { hidden: vec![8, 4, 8], max_epochs: 5, ..AutoencoderParams::default() },
            ..TrainConfig::default()
        };
        let trained = train(&schema, rows.view(), &config, serde_json::json!({"test": true}), |_| {}).expect("trains");
        (trained.bundle, rows)
    }

    #[test]
    fn embedded_default_bundle_loads_against_the_flow_schema() {
        let bundle = Bundle::embedded().expect("the default bundle is built in");
        let detector = bundle.detector(&Schema::flow()).expect("matches the schema");
        assert_eq!(detector.schema, Schema::flow());
        assert!(detector.thresholds.alert.is_finite() && detector.thresholds.block > detector.thresholds.alert);
        assert!(bundle.manifest.training["data"]["flows"].as_u64().expect("flow count recorded") > 100);
        // It scores: an all-zero row is a finite score.
        let scores = detector.score(Array2::zeros((1, Schema::flow().len())).view()).expect("scores");
        assert!(scores[0].combined.is_finite());
    }

    #[test]
    fn explanation_names_the_feature_that_is_off_with_value_and_baseline() {
        let (bundle, rows) = small_bundle();
        let detector = bundle.detector(&Schema::flow()).expect("detector");
        let feature = Schema::flow().names().position(|n| n == "src_dst_ports").expect("feature");
        let mut raw = rows.slice(ndarray::s![0..1, ..]).to_owned();
        raw[[0, feature]] = 1e6; // a sweep's worth of ports; training values are below 5
        let prepared = detector.prepare(raw.view());
        let (scores, recon) = detector.score_prepared(prepared.view()).expect("scores");
        assert!(scores[0].combined > detector.thresholds.alert, "{:?} vs {:?}", scores[0], detector.thresholds);
        let why = detector.explain(raw.row(0), prepared.row(0), recon.row(0), 3);
        assert_eq!(why.len(), 3);
        assert_eq!(why[0].feature, "src_dst_ports");
        assert!((why[0].value - 1e6).abs() < f32::EPSILON);
        assert!((why[0].baseline - detector.baseline[feature]).abs() < f32::EPSILON && why[0].baseline < 5.0);
        assert!(why[0].share > why[1].share && why.iter().all(|c| c.share > 0.0 && c.share <= 1.0));
    }

    #[test]
    fn round_trip_through_a_directory_scores_the_same() {
        let (bundle, rows) = small_bundle();
        let dir = std::env::temp_dir().join(format!("vigil-bundle-{}", std::process::id()));
        bundle.write_dir(&dir).expect("writes");
        let back = Bundle::read_dir(&dir).expect("reads");
        let a = bundle.detector(&Schema::flow()).expect("detector").score(rows.view()).expect("scores");
        let b = back.detector(&Schema::flow()).expect("detector").score(rows.view()).expect("scores");
        assert_eq!(a, b);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_classifier_travels_in_the_bundle_under_format_2_and_fires_as_the_third_model() {
        let (bundle, _) = small_bundle();
        assert_eq!(bundle.manifest.format_version, 1, "no classifier: the oldest format that holds it");
        let features = Schema::flow().len();
        let (spec, bytes) = crate::model::kind_classifier::tests::small_forest(features);
        let with = bundle.with_classifier(spec, bytes.clone());
        assert_eq!(with.manifest.format_version, CLASSIFIER_FORMAT_VERSION);
        assert_eq!(with.manifest.files["classifier.json"].bytes, bytes.len() as u64);
        let dir = std::env::temp_dir().join(format!("vigil-bundle-classifier-{}", std::process::id()));
        with.write_dir(&dir).expect("writes");
        let back = Bundle::read_dir(&dir).expect("reads");
        assert_eq!(back.classifier.as_deref(), Some(bytes.as_slice()));
        let detector = back.detector(&Schema::flow()).expect("detector");
        // Feature 0 large is what the small forest calls a scan: the score reaches the alert
        // threshold on the classifier's word alone, and says so.
        let mut rows = Array2::zeros((2, features));
        rows[[1, 0]] = 105.0;
        let scores = detector.score(rows.view()).expect("scores");
        let said = scores[1].classifier.expect("classified");
        assert!(said.fired && said.kind == crate::alert::attack::AttackKind::Scan, "{said:?}");
        assert!(scores[1].combined >= detector.thresholds.alert);
        assert!(scores[1].fired().any(|m| m == super::super::detector::Fired::Classifier));
        assert!(!scores[0].classifier.expect("classified").fired);

        // A format-1 manifest cannot carry one; the file must be there; no stray classifier.
        let mut m = with.manifest.clone();
        m.format_version = 1;
        let json = |m: &Manifest| serde_json::to_vec(m).expect("json");
        let parts = || (with.iforest.clone(), with.autoencoder.clone());
        let (f, a) = parts();
        let e = Bundle::from_bytes(&json(&m), f, a, Some(bytes.clone())).expect_err("v1");
        assert!(e.to_string().contains("a classifier needs format version 2, the manifest says 1"), "{e}");
        let (f, a) = parts();
        let e = Bundle::from_bytes(&json(&with.manifest), f, a, None).expect_err("missing");
        assert!(e.to_string().contains("classifier.json has no entry in files, or its bytes are missing"), "{e}");
        std::fs::remove_file(dir.join("classifier.json")).expect("rm");
        let e = Bundle::read_dir(&dir).expect_err("missing file");
        assert!(e.to_string().contains("classifier.json"), "{e}");
        let mut m = with.manifest.clone();
        m.classifier = None;
        let (f, a) = parts();
        let e = Bundle::from_bytes(&json(&m), f, a, Some(bytes)).expect_err("stray");
        assert!(e.to_string().contains("files lists classifier.json, which is not part of a bundle"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn refuses_other_schema_tampered_files_and_other_versions() {
        let (bundle, _) = small_bundle();
        let mut other = Schema::flow();
        other.features.swap(0, 1);
        let e = bundle.detector(&other).expect_err("schema differs");
        assert!(e.to_string().contains("features do not match: feature 0 is `duration_s`"), "{e}");

        let manifest = serde_json::to_vec(&bundle.manifest).expect("json");
        let mut onnx = bundle.autoencoder.clone();
        let last = onnx.len() - 1;
        onnx[last] ^= 1;
        let e = Bundle::from_bytes(&manifest, bundle.iforest.clone(), onnx, None).expect_err("checksum");
        assert!(e.to_string().starts_with("autoencoder.onnx: sha256"), "{e}");

        let mut m = bundle.manifest.clone();
        m.format_version = 99;
        let e = Bundle::from_bytes(
            &serde_json::to_vec(&m).expect("json"),
            bundle.iforest.clone(),
            bundle.autoencoder.clone(),
            None,
        )
        .expect_err("version");
        assert!(matches!(e, BundleError::Version { found: 99 }));

        let e = Bundle::from_bytes(b"{", bundle.iforest.clone(), bundle.autoencoder, None).expect_err("json");
        assert!(e.to_string().starts_with("manifest.json: not valid JSON"), "{e}");
    }
}
