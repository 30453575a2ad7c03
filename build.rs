//! Generates the notes.v1 types and gRPC stubs from `proto/`.
//!
//! protox parses the .proto files in Rust, so no system `protoc` is needed.
//! The encoded descriptor set is kept too: the server serves it through gRPC
//! reflection so grpcurl needs no local copy of the proto.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/notes/v1/notes.proto";
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("notes_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
