//! Builds the XDP program (`agent-ebpf`) for the BPF target with aya-build, on the nightly
//! toolchain, and leaves the object in `OUT_DIR` for `include_bytes_aligned!`.
//! `AYA_BUILD_SKIP=1` skips it (for `cargo check` on machines without bpf-linker).

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent-ebpf");
    let root = root.to_str().context("non-UTF-8 path to agent-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "agent-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the XDP program; run `cargo xtask setup` if bpf-linker or rust-src is missing")
}
