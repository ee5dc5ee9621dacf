//! Compiles `linking/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "linking/v1/common.proto",
        "linking/v1/portal.proto",
        "linking/v1/device.proto",
        "linking/v1/events.proto",
        "linking/v1/queries.proto",
        "linking/v1/audit.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection serves this encoded set; tonic's compile_fds does not write it itself.
    std::fs::write(
        out_dir.join("linking_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
