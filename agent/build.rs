//! Builds the XDP program (`agent-ebpf`) for the BPF target with aya-build, on the nightly
//! toolchain, and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//! `AYA_BUILD_SKIP=1` skips it (for `cargo check` on machines without bpf-linker).
//!
//! Also stages the default model bundle (`models/default`) in `OUT_DIR` for embedding. When it
//! is missing (bootstrapping the first bundle) empty files are staged and the binary reports
//! that it has no default model.

use std::{fs, path::Path};

use anyhow::Context as _;

const MODEL_FILES: [&str; 3] = ["manifest.json", "iforest.json", "autoencoder.onnx"];

fn stage_default_model() -> anyhow::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
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
    Ok(())
}

fn main() -> anyhow::Result<()> {
    stage_default_model()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-ebpf");
    let root = root.to_str().context("non-UTF-8 path to agent-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "agent-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the XDP program; run `cargo xtask setup` if bpf-linker or rust-src is missing")
}
