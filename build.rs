//! Compiles mlc's Core ML `.proto` subset into Rust with prost.
//!
//! protox parses the schema in pure Rust, so building mlc needs neither `protoc` nor Python.

use std::error::Error;

const PROTOS: &[&str] = &["Model.proto", "FeatureTypes.proto", "MIL.proto"];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    prost_build::Config::new()
        // BTreeMap keeps map fields in key order, so encoding the same model twice gives the
        // same bytes.
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
