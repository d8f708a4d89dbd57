//! Generates the gRPC client and server code from `proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/converge/v1/entities.proto"], &["proto"])?;
    Ok(())
}
