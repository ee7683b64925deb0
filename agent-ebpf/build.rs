use which::which;

/// Building this crate has an undeclared dependency on the `bpf-linker` binary. Rebuild when
/// it changes, so a newly installed linker is picked up.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
