//! Generates the storage service's gRPC code from `proto/` with a vendored `protoc`, so a fresh
//! machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The descriptor set lets the service answer gRPC reflection (grpcurl works without
    // the .proto files).
    let descriptor =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("storage_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptor)
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            prost_config,
            &["proto/peroxo/storage/v1/storage.proto"],
            &["proto"],
        )?;
    Ok(())
}
