//! Compiles `eventstore.proto` with protox, a pure-Rust protobuf compiler, so a fresh clone builds
//! without a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=eventstore.proto");
    let descriptors = protox::compile(["eventstore.proto"], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
