//! Compiles every `.proto` under `tandem/` with `protox` (pure Rust, no system `protoc`),
//! writes the encoded descriptor set for server reflection, and generates prost messages and
//! tonic clients and servers with `tonic-prost-build`.

use std::path::{Path, PathBuf};

use prost::Message as _;

/// Messages that carry a card number or key material: their generated `Debug` would print it,
/// so prost does not derive one and `src/lib.rs` implements a redacted `Debug` by hand.
const SECRET_MESSAGES: &[&str] = &[
    ".tandem.vault.v1.TokenizeRequest",
    ".tandem.vault.v1.UpdateCardRequest",
    ".tandem.vault.v1.RevokeByFingerprintRequest",
    ".tandem.vault.v1.UnsealRequest",
    ".tandem.vault.v1.RotateRootKeyResponse",
    ".tandem.orchestrator.v1.CreateWebhookEndpointResponse",
    ".tandem.orchestrator.v1.RotateWebhookSecretResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut files = Vec::new();
    collect_protos(&root.join("tandem"), &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed=tandem");

    // protox names files by their path relative to the include root, as imports spell them.
    let relative: Vec<&Path> = files
        .iter()
        .map(|file| file.strip_prefix(&root))
        .collect::<Result<_, _>>()?;
    let fds = protox::compile(&relative, [&root])?;
    std::fs::write(out_dir.join("tandem_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .skip_debug(SECRET_MESSAGES.iter().copied())
        .compile_fds(fds)?;
    Ok(())
}

fn collect_protos(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    // The tree is three levels deep (tandem/<package>/v1); an explicit stack keeps it iterative.
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "proto") {
                files.push(path);
            }
        }
    }
    Ok(())
}
