//! Builds the XDP program (`agent-ebpf`) for the BPF target with aya-build, on the nightly
//! toolchain, and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//! `AYA_BUILD_SKIP=1` skips it (for `cargo check` on machines without bpf-linker).
//!
//! Also stages the default model bundle (`models/default`, with its signature) and the models
//! key it is signed with (`models/vigil-models.pub`) in `OUT_DIR` for embedding. When the
//! bundle is missing (bootstrapping the first one) empty files are staged and the binary
//! reports that it has no default model; a missing signature or key is staged empty too, and
//! the agent then reports the built-in bundle as not verified (it is trusted as part of the
//! binary either way).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

const MODEL_FILES: [&str; 3] = ["manifest.json", "iforest.json", "autoencoder.onnx"];
const SIGNATURE: &str = "manifest.sig";
/// The default bundle's classifier, if it has one, is staged as `classifier` (empty if none).
const CLASSIFIER_FILES: [&str; 3] = ["classifier.json", "boosted.json", "classifier.onnx"];
const MODELS_KEY: &str = "vigil-models.pub";

/// This crate's directory, read when the script runs (not `env!`, which bakes in wherever the
/// script was compiled: a build directory shared by two checkouts would stage the other's
/// files, or none).
fn manifest_dir() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is set by cargo")?))
}

fn stage_default_model() -> anyhow::Result<()> {
    let models = manifest_dir()?.join("../models");
    let src = models.join("default");
    let dst = Path::new(&std::env::var("OUT_DIR").context("OUT_DIR is set by cargo")?).join("default-model");
    fs::create_dir_all(&dst)?;
    println!("cargo:rerun-if-changed={}", src.display());
    let complete = MODEL_FILES.iter().all(|f| src.join(f).is_file());
    for f in MODEL_FILES {
        println!("cargo:rerun-if-changed={}", src.join(f).display());
        if complete {
            fs::copy(src.join(f), dst.join(f)).with_context(|| format!("staging models/default/{f}"))?;
        } else {
            fs::write(dst.join(f), b"")?;
        }
    }
    let classifier = CLASSIFIER_FILES.iter().map(|f| src.join(f)).find(|p| complete && p.is_file());
    for f in CLASSIFIER_FILES {
        println!("cargo:rerun-if-changed={}", src.join(f).display());
    }
    match classifier {
        Some(from) => {
            fs::copy(&from, dst.join("classifier")).with_context(|| format!("staging {}", from.display()))?;
        }
        None => fs::write(dst.join("classifier"), b"")?,
    }
    for (from, to) in [(src.join(SIGNATURE), dst.join(SIGNATURE)), (models.join(MODELS_KEY), dst.join(MODELS_KEY))] {
        println!("cargo:rerun-if-changed={}", from.display());
        if complete && from.is_file() {
            fs::copy(&from, &to).with_context(|| format!("staging {}", from.display()))?;
        } else {
            fs::write(&to, b"")?;
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    stage_default_model()?;
    // aya-build watches the eBPF crate's own directory only; the parser and flow update it
    // compiles live in agent-common, so a change there must rebuild the object too.
    println!("cargo:rerun-if-changed={}", manifest_dir()?.join("../agent-common").display());
    let root = manifest_dir()?.join("../agent-ebpf");
    let root = root.to_str().context("non-UTF-8 path to agent-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "agent-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the XDP program; run `cargo xtask setup` if bpf-linker or rust-src is missing")
}
