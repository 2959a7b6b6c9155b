//! Generates the driver–worker gRPC code with a vendored `protoc`, so that building needs no
//! protobuf compiler on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.bytes(["."]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/core.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/core.proto");
    Ok(())
}
