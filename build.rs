//! Compiles `proto/ipam/v1/ipam.proto` and `proto/ipam/admin/v1/admin.proto` with protox (pure Rust: no system protoc) and writes the
//! encoded descriptor set that server reflection serves (comments included, for `describe`).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(
        [
            "proto/ipam/v1/ipam.proto",
            "proto/ipam/admin/v1/admin.proto",
        ],
        ["proto"],
    )?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ipam_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Malformed requests are INVALID_ARGUMENT (src/api/codec.rs).
        .codec_path("crate::api::codec::Codec")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
