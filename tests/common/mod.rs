//! Shared test helpers: paths to ../shared, fixtures, synthetic weights and the coremltools oracle.
#![allow(dead_code)]

pub mod cli;
pub mod files;
pub mod round_trip;

// Each test crate uses a different part of these.
#[allow(unused_imports)]
pub use cli::*;
#[allow(unused_imports)]
pub use files::*;

use mlc::kernels::Array;
use mlc::tensor::Tensor;
use mlc::weights::Weights;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn shared(rel: &str) -> PathBuf {
    repo().join("../shared").join(rel)
}

pub fn taef2_weights() -> PathBuf {
    shared("weights/taef2_decoder.safetensors")
}

/// A fresh, empty directory under tests/out/ for what a test emits (the oracle checks it later).
/// When the test ends without panicking, every package it left there goes through the compiled
/// round trip ([`round_trip`]): so each package the suite writes is also compiled, read back
/// and evaluated, without every test having to ask for it.
pub fn out_dir(test: &str) -> OutDir {
    let d = repo().join("tests/out").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    OutDir(d)
}

/// A test's output directory; see [`out_dir`].
pub struct OutDir(PathBuf);

impl std::ops::Deref for OutDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for OutDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        // A failed test's packages may be half-made; its own failure is the report.
        if !std::thread::panicking() {
            round_trip::compiled_round_trip(&self.0);
        }
    }
}

/// (latent, image) of a fixture in ../shared/fixtures/taef2.
pub fn fixture(name: &str) -> (Array, Array) {
    let mut t =
        mlc::run::read_safetensors(&shared(&format!("fixtures/taef2/{name}.safetensors"))).unwrap();
    (t.remove("latent").unwrap(), t.remove("image").unwrap())
}

/// Deterministic pseudo-random values in [-scale, scale).
pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Synthetic weights with the upstream key set of a TAESD decoder (`latent` channels, optional
/// TAEF2 pool branch): small graphs with real structure, no download.
pub fn synthetic_taesd(latent: usize, pool: bool) -> Weights {
    let mut t = BTreeMap::new();
    let mut seed = 1;
    let mut add = |key: String, shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        seed += 1;
        t.insert(key, Tensor::f32(shape, random(n, seed, scale)));
    };
    let conv = |add: &mut dyn FnMut(String, Vec<usize>, f32),
                k: &str,
                cin: usize,
                cout: usize,
                ks: usize,
                bias: bool| {
        add(
            format!("{k}.weight"),
            vec![cout, cin, ks, ks],
            1.0 / ((cin * ks * ks) as f32).sqrt(),
        );
        if bias {
            add(format!("{k}.bias"), vec![cout], 0.1);
        }
    };
    conv(&mut add, "1", latent, 64, 3, true);
    for i in [3, 4, 5, 8, 9, 10, 13, 14, 15, 18] {
        for j in [0, 2, 4] {
            conv(&mut add, &format!("{i}.conv.{j}"), 64, 64, 3, true);
        }
        if pool && i <= 5 {
            conv(&mut add, &format!("{i}.pool.0"), 64, 256, 1, false);
            add(format!("{i}.pool.1.weight"), vec![256], 1.0);
            add(format!("{i}.pool.1.bias"), vec![256], 0.1);
            conv(&mut add, &format!("{i}.pool.3"), 256, 64, 1, false);
        }
    }
    for i in [7, 12, 17] {
        conv(&mut add, &i.to_string(), 64, 64, 3, false);
    }
    conv(&mut add, "19", 64, 3, 3, true);
    Weights::from_tensors(PathBuf::from("synthetic.safetensors"), t)
}

/// Runs coremltools (the outside oracle) over every package under `dir`. With
/// MLC_ORACLE_PYTHON unset the check is skipped locally and fails under CI.
pub fn oracle(dir: &Path) {
    let Ok(py) = std::env::var("MLC_ORACLE_PYTHON") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must set MLC_ORACLE_PYTHON (see .ci/run)"
        );
        eprintln!(
            "note: MLC_ORACLE_PYTHON is unset; skipping the coremltools check of {}",
            dir.display()
        );
        return;
    };
    let out = Command::new(py)
        .arg(repo().join("tests/oracle/check_packages.py"))
        .arg(dir)
        .output()
        .expect("run the oracle");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "coremltools rejected a package under {}:\n{text}",
        dir.display()
    );
}

/// Max abs error, mean abs error and PSNR of `out` against `reference`.
pub fn compare(out: &Array, reference: &Array) -> mlc::run::Compare {
    mlc::run::compare(out, reference)
}

/// Writes f32 tensors to a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    write_safetensors_with(path, tensors, None);
}

/// [`write_safetensors`] with the header's `__metadata__` strings.
pub fn write_safetensors_with(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b = t.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, b, s)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b);
            (k.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, metadata, path).unwrap();
}

/// Writes f32 tensors as a PyTorch training checkpoint (`.ckpt`: a `torch.save` zip whose pickle
/// is `{"global_step": 1, "state_dict": OrderedDict(...)}`), one storage per tensor.
pub fn write_ckpt(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    let n = |v: usize| u32::try_from(v).unwrap();
    let keys: Vec<String> = (0..tensors.len()).map(|i| i.to_string()).collect();
    let dims: Vec<(Vec<u32>, Vec<u32>)> = tensors
        .values()
        .map(|t| {
            // Contiguous strides, innermost 1.
            let mut strides = vec![1usize; t.shape.len()];
            for d in (0..t.shape.len().saturating_sub(1)).rev() {
                strides[d] = strides[d + 1] * t.shape[d + 1];
            }
            (
                t.shape.iter().map(|&d| n(d)).collect(),
                strides.into_iter().map(n).collect(),
            )
        })
        .collect();
    let entries: Vec<mlc::fuzzing::torch::Entry> = tensors
        .iter()
        .zip(&keys)
        .zip(&dims)
        .map(|(((key, t), skey), (size, stride))| {
            let (size, stride) = (&size[..], &stride[..]);
            (
                key.as_str(),
                "FloatStorage",
                skey.as_str(),
                n(t.len()),
                0,
                size,
                stride,
            )
        })
        .collect();
    let pickle = mlc::fuzzing::torch::checkpoint_pickle("state_dict", &entries);
    let data: Vec<Vec<u8>> = tensors
        .values()
        .map(|t| t.to_f32().iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let storages: Vec<(&str, &[u8])> = keys
        .iter()
        .map(String::as_str)
        .zip(data.iter().map(Vec::as_slice))
        .collect();
    let bytes = mlc::fuzzing::torch::archive("ckpt", &pickle, &storages, false);
    std::fs::write(path, bytes).unwrap();
}

/// Largest |a - b| over the largest |b|: the numerics tests' error measure.
pub fn relative_error(out: &Array, reference: &Array) -> f32 {
    assert_eq!(out.shape, reference.shape);
    let peak = reference.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = out
        .data
        .iter()
        .zip(&reference.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / peak
}

/// Prints `what`'s [`relative_error`] and checks that it is at most `tol`.
pub fn assert_within(what: &str, got: &Array, reference: &Array, tol: f32) {
    let e = relative_error(got, reference);
    println!("{what}: relative max error {e:.2e}");
    assert!(e <= tol, "{what}: {e} > {tol}");
}

/// Synthetic weights with the diffusers keys and full sizes of the SD VAE decoder (4 latent
/// channels, block channels 128, 256, 512, 512, two resnets per level plus one, mid-block
/// attention) and its quant convs, written as f32 safetensors to `path` (about 200 MB): the
/// real model's shapes without a download.
pub fn write_full_size_sd_vae_decoder(path: &Path) {
    // (key, shape, scale of the random values)
    type Specs = Vec<(String, Vec<usize>, f32)>;
    fn conv(s: &mut Specs, k: &str, i: usize, o: usize, ks: usize) {
        let scale = 1.0 / ((i * ks * ks) as f32).sqrt();
        s.push((format!("{k}.weight"), vec![o, i, ks, ks], scale));
        s.push((format!("{k}.bias"), vec![o], 0.05));
    }
    fn norm(s: &mut Specs, k: &str, c: usize) {
        s.push((format!("{k}.weight"), vec![c], 1.0));
        s.push((format!("{k}.bias"), vec![c], 0.05));
    }
    fn resnet(s: &mut Specs, k: &str, i: usize, o: usize) {
        norm(s, &format!("{k}.norm1"), i);
        conv(s, &format!("{k}.conv1"), i, o, 3);
        norm(s, &format!("{k}.norm2"), o);
        conv(s, &format!("{k}.conv2"), o, o, 3);
        if i != o {
            conv(s, &format!("{k}.conv_shortcut"), i, o, 1);
        }
    }
    let mut s = Specs::new();
    conv(&mut s, "quant_conv", 8, 8, 1);
    conv(&mut s, "post_quant_conv", 4, 4, 1);
    conv(&mut s, "decoder.conv_in", 4, 512, 3);
    for r in 0..2 {
        resnet(&mut s, &format!("decoder.mid_block.resnets.{r}"), 512, 512);
    }
    let a = "decoder.mid_block.attentions.0";
    norm(&mut s, &format!("{a}.group_norm"), 512);
    for p in ["to_q", "to_k", "to_v", "to_out.0"] {
        s.push((
            format!("{a}.{p}.weight"),
            vec![512, 512],
            1.0 / 512f32.sqrt(),
        ));
        s.push((format!("{a}.{p}.bias"), vec![512], 0.05));
    }
    let mut cin = 512;
    for (b, out) in [512usize, 512, 256, 128].into_iter().enumerate() {
        for r in 0..3 {
            let i = if r == 0 { cin } else { out };
            resnet(
                &mut s,
                &format!("decoder.up_blocks.{b}.resnets.{r}"),
                i,
                out,
            );
        }
        if b < 3 {
            let k = format!("decoder.up_blocks.{b}.upsamplers.0.conv");
            conv(&mut s, &k, out, out, 3);
        }
        cin = out;
    }
    norm(&mut s, "decoder.conv_norm_out", 128);
    conv(&mut s, "decoder.conv_out", 128, 3, 3);
    let t: BTreeMap<String, Tensor> = s
        .into_iter()
        .enumerate()
        .map(|(i, (k, shape, scale))| {
            let n = shape.iter().product();
            (k, Tensor::f32(shape, random(n, 100 + i as u64, scale)))
        })
        .collect();
    write_safetensors(path, &t);
}

/// Copies `weights` into `dir` and, one `(from, to, needle)` edit at a time, writes the
/// config.json beside `weights` with `from` replaced by `to` beside the copy: `error(copy)`, the
/// one-line error of a build of the copy, must name config.json and `needle`. Returns the copy
/// (its config.json the last edit's).
pub fn assert_config_edits_named(
    dir: &Path,
    weights: &Path,
    edits: &[(&str, &str, &str)],
    error: impl Fn(&Path) -> String,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let copy = dir.join(weights.file_name().unwrap());
    std::fs::copy(weights, &copy).unwrap();
    let config = std::fs::read_to_string(weights.with_file_name("config.json")).unwrap();
    for (from, to, needle) in edits {
        assert!(config.contains(from), "the fixture's config has {from}");
        std::fs::write(dir.join("config.json"), config.replace(from, to)).unwrap();
        let e = error(&copy);
        assert!(e.contains("config.json") && e.contains(needle), "{e}");
    }
    copy
}

/// The one-line error of a build that must fail, having checked that it wrote nothing at its
/// output.
pub fn one_line_error(o: &mlc::compiler::BuildOptions) -> String {
    let e = match mlc::compiler::build(o) {
        Ok(_) => panic!("the build must fail"),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "not one line: {e}");
    assert!(
        !o.output.as_ref().unwrap().exists(),
        "a failed build wrote {}",
        o.output.as_ref().unwrap().display()
    );
    e
}
