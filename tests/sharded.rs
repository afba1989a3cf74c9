//! Sharded weights (`*.safetensors.index.json` and its shards, as diffusers and transformers
//! save large models) build the same package, byte for byte, as the one file they were split
//! from.

mod common;

use common::shared;
use mlc::compiler::{build, BuildOptions, Sizes};
use mlc::models::Part;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Splits the safetensors file `src` into `n` shards `<stem>-0000i-of-0000n.safetensors` in
/// `dir`, each tensor's dtype and bytes kept, and writes `<file name>.index.json` over them and
/// a copy of the `config.json` beside `src`. Returns the index's path.
fn split(src: &Path, dir: &Path, n: usize) -> PathBuf {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let name = src.file_name().unwrap().to_str().unwrap();
    let stem = name.strip_suffix(".safetensors").unwrap();
    let per = tensors.len().div_ceil(n);
    let mut map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let shard = format!("{stem}-{:05}-of-{n:05}.safetensors", i + 1);
        for (k, _) in chunk {
            map.insert(k.clone(), shard.clone().into());
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = chunk.to_vec();
        safetensors::serialize_to_file(views, None, &dir.join(&shard)).unwrap();
    }
    let index = dir.join(format!("{name}.index.json"));
    let json = serde_json::json!({"metadata": {"total_size": bytes.len()}, "weight_map": map});
    std::fs::write(&index, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let config = src.with_file_name("config.json");
    if config.exists() {
        std::fs::copy(config, dir.join("config.json")).unwrap();
    }
    index
}

/// Every file of the package built with `set` from `weights`, by path inside the package.
fn package(
    model: &str,
    weights: &Path,
    out: &Path,
    set: impl Fn(&mut BuildOptions),
) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut o = BuildOptions::new(model, weights);
    o.output = Some(out.to_path_buf());
    set(&mut o);
    let root = build(&o).unwrap().package;
    let mut files = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(&root).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

#[test]
fn a_sharded_vae_builds_the_package_of_the_whole_file() {
    let src = shared("fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let index = split(&src, dir.path(), 3);
    let shards = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(shards, 5, "3 shards, the index and config.json");
    for part in [Part::DECODER, Part::ENCODER] {
        let set = |o: &mut BuildOptions| {
            o.part = Some(part.into());
            o.sizes = Sizes::Latent(vec![[8, 8]]);
        };
        let out = |n: &str| dir.path().join(format!("{part}_{n}.mlpackage"));
        let whole = package("sd-vae", &src, &out("whole"), set);
        assert!(whole.len() >= 3, "{:?}", whole.keys());
        assert!(package("sd-vae", &index, &out("index"), set) == whole);
        // The file name a diffusers folder would have, absent: the index beside it is read.
        let by_name = dir.path().join("diffusion_pytorch_model.safetensors");
        assert!(package("sd-vae", &by_name, &out("name"), set) == whole);
    }
}

#[test]
fn a_sharded_text_encoder_records_the_whole_files_name() {
    // CLIP records the weights' name in the package (`mlc.weights.source`): the shards' index
    // records the name of the file it stands for.
    let src = shared("fixtures/clip/clip_l/model.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let index = split(&src, dir.path(), 2);
    let whole = package("clip-l", &src, &dir.path().join("whole.mlpackage"), |_| {});
    let sharded = package(
        "clip-l",
        &index,
        &dir.path().join("index.mlpackage"),
        |_| {},
    );
    assert!(sharded == whole);
}
