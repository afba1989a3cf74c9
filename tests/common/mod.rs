//! Shared test helpers: paths to ../shared, fixtures, synthetic weights and the coremltools oracle.
#![allow(dead_code)]

use mlc::kernels::Array;
use mlc::tensor::Tensor;
use mlc::weights::Weights;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
pub fn out_dir(test: &str) -> PathBuf {
    let d = repo().join("tests/out").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
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

/// Runs the mlc binary in `cwd`.
pub fn mlc(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// Writes f32 tensors to a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) {
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
    safetensors::serialize_to_file(views, None, path).unwrap();
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
