//! Compiles `fareway/v1/*.proto` with protox, a pure-Rust protobuf compiler, so that
//! building needs no system `protoc`.

use std::path::PathBuf;

use prost::Message as _;

const PROTO_FILES: &[&str] = &[
    "fareway/v1/token.proto",
    "fareway/v1/gate.proto",
    "fareway/v1/admin.proto",
    "fareway/v1/settlement.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(PROTO_FILES, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Server reflection serves this set; compile_fds does not write it, so write it here.
    std::fs::write(
        out_dir.join("fareway_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Our codec: prost's, except that a message that does not parse is the sender's
    // fault (INVALID_ARGUMENT), not the server's (prost's codec says INTERNAL).
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}
