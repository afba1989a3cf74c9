//! Loading weights: the real TAEF2 files in `../shared/weights` and hand-made broken or unusual
//! files written to temporary directories, read by the generic store ([`Weights::load`]) and
//! through the TAESD family's key layouts ([`load_weights`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use mlc::models::taesd::keys::KeyStyle;
use mlc::models::taesd::load_weights;
use mlc::models::ModelError;
use mlc::tensor::{DType, Tensor, TensorData};
use mlc::weights::{WeightError, WeightFormat, Weights};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use sha2::{Digest, Sha256};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/weights/");

fn shared(name: &str) -> PathBuf {
    Path::new(SHARED).join(name)
}

fn f32s(t: &Tensor) -> &[f32] {
    match &t.data {
        TensorData::F32(v) => v,
        other => panic!("expected f32 data, got {other:?}"),
    }
}

/// TAESD weights under upstream keys, and the key style of the file.
fn taesd(path: &Path) -> Result<(Weights, KeyStyle), ModelError> {
    load_weights(&*mlc::weights::open(path)?, mlc::models::Part::DECODER)
}

/// The weight-file error inside a model error.
fn weight_error(e: ModelError) -> WeightError {
    match e {
        ModelError::Weights(w) => w,
        other => panic!("expected a weight-file error, got {other:?}"),
    }
}

/// Writes a safetensors file of `(key, dtype, shape, little-endian bytes)`.
fn write_st<K: AsRef<str>>(path: &Path, tensors: &[(K, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, dt, shape, bytes)| {
            (
                k.as_ref().to_string(),
                TensorView::new(*dt, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn le32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Rewrites a zip archive entry by entry, letting `edit` change an entry's bytes.
fn rezip(original: &[u8], edit: impl Fn(&str, Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    let mut src = zip::ZipArchive::new(std::io::Cursor::new(original)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..src.len() {
        let mut f = src.by_index(i).unwrap();
        let name = f.name().to_string();
        let mut data = Vec::new();
        f.read_to_end(&mut data).unwrap();
        out.start_file(name.as_str(), opts).unwrap();
        out.write_all(&edit(&name, data)).unwrap();
    }
    out.finish().unwrap().into_inner()
}

#[test]
fn the_three_real_files_agree() {
    let (st, st_style) = taesd(&shared("taef2_decoder.safetensors")).unwrap();
    let (pth, pth_style) = taesd(&shared("taef2_decoder.pth")).unwrap();
    let (diff, diff_style) = taesd(&shared("taef2_diffusers_style.safetensors")).unwrap();

    assert_eq!(
        (st.format, st_style),
        (WeightFormat::Safetensors, KeyStyle::Upstream)
    );
    assert_eq!(
        (pth.format, pth_style),
        (WeightFormat::Pth, KeyStyle::Upstream)
    );
    assert_eq!(
        (diff.format, diff_style),
        (WeightFormat::Safetensors, KeyStyle::Diffusers)
    );
    // Each in the dtype its file stores: the checkpoint holds fp16, the safetensors fp32.
    assert!(st.tensors.values().all(|t| t.dtype() == DType::F32));
    assert!(pth.tensors.values().all(|t| t.dtype() == DType::F16));

    for w in [&st, &pth, &diff] {
        assert_eq!(w.tensors.len(), 79, "{}", w.file_name());
        let params: usize = w.tensors.values().map(|t| t.len()).sum();
        assert_eq!(params, 1_338_499, "{}", w.file_name());
        assert!(w.tensors.keys().eq(st.tensors.keys()), "{}", w.file_name());
        for (key, t) in &st.tensors {
            let other = &w.tensors[key];
            assert_eq!(other.shape, t.shape, "{}: {key}", w.file_name());
            let same_bits = other
                .to_f32()
                .iter()
                .zip(f32s(t))
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same_bits, "{}: {key} differs", w.file_name());
        }
    }
    let digest = st.content_sha256().unwrap();
    assert_eq!(pth.content_sha256().unwrap(), digest);
    assert_eq!(diff.content_sha256().unwrap(), digest);

    // Upstream layout facts the model builder relies on.
    assert!(st.get("1.weight", &[64, 32, 3, 3]).is_ok());
    assert!(st.get("3.pool.1.weight", &[256]).is_ok());
    assert!(st.get("19.bias", &[3]).is_ok());
    assert!(st.has("3.pool.0.weight") && !st.has("7.bias") && !st.has("0.weight"));
    assert_eq!(pth.file_name(), "taef2_decoder.pth");
}

#[test]
fn get_names_file_key_and_shapes() {
    let path = shared("taef2_decoder.safetensors");
    let w = Weights::load(&path).unwrap();
    // The generic store: every tensor, under the file's own names.
    assert_eq!(w.tensors.len(), 79);
    let (diff, _) = taesd(&shared("taef2_diffusers_style.safetensors")).unwrap();
    let raw = Weights::load(&shared("taef2_diffusers_style.safetensors")).unwrap();
    assert!(raw.has("decoder.layers.0.weight") && !raw.has("1.weight"));
    assert!(diff.has("1.weight") && !diff.has("decoder.layers.0.weight"));
    let e = w.get("3.conv.0.weight", &[64, 32, 3, 3]).unwrap_err();
    assert!(matches!(e, WeightError::ShapeMismatch { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor \"3.conv.0.weight\" has shape [64, 64, 3, 3], expected [64, 32, 3, 3]",
            path.display()
        )
    );
    let e = w.get("7.bias", &[64]).unwrap_err();
    assert!(matches!(e, WeightError::MissingKey { .. }));
    assert_eq!(
        e.to_string(),
        format!("{}: missing tensor \"7.bias\"", path.display())
    );
}

#[test]
fn content_digest_is_the_documented_canonical_form() {
    let mut tensors = BTreeMap::new();
    tensors.insert("b".to_string(), Tensor::f32(vec![2], vec![1.0, -2.5]));
    tensors.insert(
        "a".to_string(),
        Tensor::f16(vec![], vec![half::f16::from_f32(0.5)]),
    );
    let w = Weights::from_tensors(PathBuf::from("syn.safetensors"), tensors.clone());
    assert_eq!(w.format, WeightFormat::Safetensors);
    assert_eq!(w.tensors["a"].dtype(), DType::F16, "f16 is kept");

    // A tree: one SHA-256 per tensor (f16 when the values fit it exactly), then one of those.
    let leaf = |key: &[u8], dims: &[u64], values: &[u8]| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(key);
        h.update([0]);
        h.update((dims.len() as u64).to_le_bytes());
        dims.iter().for_each(|d| h.update(d.to_le_bytes()));
        h.update(values);
        h.finalize().into()
    };
    let f16s = |v: &[f32]| -> Vec<u8> {
        let mut out = vec![16];
        v.iter()
            .for_each(|&x| out.extend(half::f16::from_f32(x).to_le_bytes()));
        out
    };
    let root = |leaves: &[[u8; 32]]| -> String {
        let mut h = Sha256::new();
        leaves.iter().for_each(|l| h.update(l));
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    };
    let expected = root(&[
        leaf(b"a", &[], &f16s(&[0.5])),
        leaf(b"b", &[2], &f16s(&[1.0, -2.5])),
    ]);
    assert_eq!(w.content_sha256().unwrap(), expected);
    // The digest is over the values, whatever the stored dtype.
    let mut widened = tensors.clone();
    widened.insert("a".into(), Tensor::f32(vec![], vec![0.5]));
    assert_eq!(
        Weights::from_tensors("x".into(), widened)
            .content_sha256()
            .unwrap(),
        expected
    );
    // Values f16 cannot hold exactly are hashed as f32.
    let mut wide = tensors.clone();
    wide.insert("b".into(), Tensor::f32(vec![2], vec![1.0, 0.1]));
    let mut f32s = vec![32];
    f32s.extend(1.0f32.to_le_bytes());
    f32s.extend(0.1f32.to_le_bytes());
    assert_eq!(
        Weights::from_tensors("x".into(), wide)
            .content_sha256()
            .unwrap(),
        root(&[leaf(b"a", &[], &f16s(&[0.5])), leaf(b"b", &[2], &f32s)])
    );
    // Infinities and NaN (rejected later by the build, but hashed first) agree across dtypes.
    let odd = [f32::INFINITY, f32::NAN, -0.0, 65504.0];
    let as_f16 = Tensor::f16(vec![4], odd.map(half::f16::from_f32).to_vec());
    let as_f32 = Tensor::f32(vec![4], as_f16.to_f32());
    let digest = |t: Tensor| {
        Weights::from_tensors("x".into(), BTreeMap::from([("o".to_string(), t)]))
            .content_sha256()
            .unwrap()
    };
    assert_eq!(digest(as_f16), digest(as_f32));

    // Any change of value, shape or key changes it.
    let mut changed = tensors.clone();
    changed.insert("b".into(), Tensor::f32(vec![2], vec![1.0, -2.5000002]));
    assert_ne!(
        Weights::from_tensors("x".into(), changed)
            .content_sha256()
            .unwrap(),
        expected
    );
    let mut changed = tensors.clone();
    changed.insert("b".into(), Tensor::f32(vec![1, 2], vec![1.0, -2.5]));
    assert_ne!(
        Weights::from_tensors("x".into(), changed)
            .content_sha256()
            .unwrap(),
        expected
    );
    let mut changed = tensors;
    let b = changed.remove("b").unwrap();
    changed.insert("c".into(), b);
    assert_ne!(
        Weights::from_tensors("x".into(), changed)
            .content_sha256()
            .unwrap(),
        expected
    );
}

#[test]
fn missing_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.safetensors");
    let e = Weights::load(&missing).unwrap_err();
    assert!(matches!(e, WeightError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.safetensors"), "{e}");

    let empty = dir.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    let e = Weights::load(&empty).unwrap_err();
    assert!(matches!(e, WeightError::Corrupt { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: corrupt or unsupported weight file: file is empty",
            empty.display()
        )
    );

    let e = Weights::load(dir.path()).unwrap_err();
    assert!(matches!(e, WeightError::Io { .. }), "{e:?}");
}

#[test]
fn truncated_safetensors_are_corrupt() {
    let original = std::fs::read(shared("taef2_decoder.safetensors")).unwrap();
    let header = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.safetensors");
    for cut in [
        1,
        7,
        8,
        9,
        100,
        header + 7,
        header + 8,
        header + 9,
        original.len() / 2,
        original.len() - 1,
    ] {
        std::fs::write(&path, &original[..cut]).unwrap();
        let e = Weights::load(&path).unwrap_err();
        assert!(matches!(e, WeightError::Corrupt { .. }), "cut {cut}: {e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
        let hint = if cut < header + 8 {
            "header length runs past"
        } else {
            "truncated"
        };
        assert!(msg.contains(hint), "cut {cut}: {msg}");
    }
    // Trailing garbage is as wrong as a missing tail.
    let mut long = original.clone();
    long.extend(b"junk");
    std::fs::write(&path, &long).unwrap();
    assert!(matches!(
        Weights::load(&path),
        Err(WeightError::Corrupt { .. })
    ));
}

#[test]
fn corrupt_header_json_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    write_st(&path, &[("1.bias", Dtype::F32, vec![2], le32(&[1.0, 2.0]))]);
    let mut bytes = std::fs::read(&path).unwrap();
    let colon = bytes.iter().position(|&b| b == b':').unwrap();
    bytes[colon] = b'}';
    std::fs::write(&path, &bytes).unwrap();
    let msg = Weights::load(&path).unwrap_err().to_string();
    assert!(
        msg.starts_with(&path.display().to_string()) && msg.contains("invalid JSON in header"),
        "{msg}"
    );
}

#[test]
fn truncated_pth_zip_is_corrupt() {
    let original = std::fs::read(shared("taef2_decoder.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pth");
    for cut in [
        4,
        30,
        2000,
        20_000,
        original.len() / 2,
        original.len() - 30,
        original.len() - 1,
    ] {
        std::fs::write(&path, &original[..cut]).unwrap();
        let e = Weights::load(&path).unwrap_err();
        assert!(matches!(e, WeightError::Corrupt { .. }), "cut {cut}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{}: ", path.display())) && msg.contains("zip"),
            "{msg}"
        );
    }
}

#[test]
fn pth_with_pickle_cut_short_is_corrupt() {
    let original = std::fs::read(shared("taef2_decoder.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short_pickle.pth");

    // Control: the rewritten archive itself loads, so the failures below are the pickle's.
    std::fs::write(&path, rezip(&original, |_, d| d)).unwrap();
    let reference = Weights::load(&shared("taef2_decoder.safetensors")).unwrap();
    assert_eq!(
        Weights::load(&path).unwrap().content_sha256().unwrap(),
        reference.content_sha256().unwrap()
    );

    for keep in [0, 2, 100, 5000, 11_115] {
        let bytes = rezip(&original, |name, d| {
            if name.ends_with("/data.pkl") {
                d[..keep.min(d.len())].to_vec()
            } else {
                d
            }
        });
        std::fs::write(&path, bytes).unwrap();
        let msg = Weights::load(&path).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
        assert!(
            msg.contains("taef2_decoder/data.pkl: pickle ends"),
            "keep {keep}: {msg}"
        );
    }
}

/// Integer tensors are left out of a generic load, but a model that needs one (here TAESD, whose
/// conv weights cannot be integers) names it.
#[test]
fn unsupported_dtype_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ints.safetensors");
    write_st(
        &path,
        &[
            ("1.bias", Dtype::F32, vec![2], le32(&[1.0, 2.0])),
            (
                "3.conv.0.weight",
                Dtype::I64,
                vec![2],
                [7i64, 8].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        ],
    );
    let w = Weights::load(&path).unwrap();
    assert_eq!(w.tensors.keys().collect::<Vec<_>>(), ["1.bias"]);
    let e = weight_error(taesd(&path).unwrap_err());
    assert!(matches!(e, WeightError::UnsupportedDtype { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor \"3.conv.0.weight\" has unsupported dtype I64 (supported: F32, F16, BF16)",
            path.display()
        )
    );
    // Float types the IR cannot hold fail a generic load too.
    write_st(
        &path,
        &[("1.bias", Dtype::F64, vec![1], 1f64.to_le_bytes().to_vec())],
    );
    let e = Weights::load(&path).unwrap_err().to_string();
    assert!(e.contains("\"1.bias\" has unsupported dtype F64"), "{e}");
}

#[test]
fn mixed_and_unknown_key_styles_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.safetensors");
    let one = || le32(&[1.0]);
    write_st(
        &path,
        &[
            ("1.weight", Dtype::F32, vec![1], one()),
            ("decoder.layers.2.conv.0.bias", Dtype::F32, vec![1], one()),
        ],
    );
    let msg = taesd(&path).unwrap_err().to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    assert!(msg.contains("mix naming styles"), "{msg}");
    assert!(
        msg.contains("\"1.weight\"") && msg.contains("\"decoder.layers.2.conv.0.bias\""),
        "{msg}"
    );

    let path = dir.path().join("unknown.safetensors");
    write_st(
        &path,
        &[
            ("1.weight", Dtype::F32, vec![1], one()),
            ("model.diffusion_model.x", Dtype::F32, vec![1], one()),
        ],
    );
    let e = taesd(&path).unwrap_err().to_string();
    assert!(
        e.contains("unrecognised tensor keys (\"model.diffusion_model.x\")"),
        "{e}"
    );

    let path = dir.path().join("encoder_only.safetensors");
    write_st(
        &path,
        &[("encoder.layers.0.weight", Dtype::F32, vec![1], one())],
    );
    let e = taesd(&path).unwrap_err().to_string();
    assert_eq!(e, format!("{}: no decoder tensors in file", path.display()));
}

/// f16 is kept as stored; bf16, which the IR has no type for, is widened exactly.
#[test]
fn fp16_kept_and_bf16_widened_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Exactly representable in the stored type, with signs, subnormals and extremes.
    let h: Vec<half::f16> = [0.0, -0.0, 1.5, -65504.0, 6e-8, 0.333]
        .iter()
        .map(|&v| half::f16::from_f32(v))
        .collect();
    let b: Vec<half::bf16> = [1.0078125, -3.0e38, 1e-40, 0.1]
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    let path = dir.path().join("half.safetensors");
    write_st(
        &path,
        &[
            (
                "decoder.layers.0.bias",
                Dtype::F16,
                vec![2, 3],
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                "decoder.layers.18.weight",
                Dtype::BF16,
                vec![4],
                b.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        ],
    );
    let (w, style) = taesd(&path).unwrap();
    assert_eq!(style, KeyStyle::Diffusers);
    let want_b: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
    let got_h = w.get("1.bias", &[2, 3]).unwrap();
    let got_b = w.get("19.weight", &[4]).unwrap();
    assert_eq!(got_h.data, TensorData::F16(h.clone()), "{got_h:?}");
    assert!(
        f32s(got_b)
            .iter()
            .zip(&want_b)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{got_b:?}"
    );
    assert_eq!(f32s(got_b)[0], 1.0078125, "bf16 is not read as f16");
}

#[test]
fn format_comes_from_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("really_a_pth.safetensors");
    std::fs::copy(shared("taef2_decoder.pth"), &path).unwrap();
    let w = Weights::load(&path).unwrap();
    assert_eq!(w.format, WeightFormat::Pth);

    let path = dir.path().join("really_safetensors.pth");
    write_st(&path, &[("1.bias", Dtype::F32, vec![1], le32(&[3.0]))]);
    assert_eq!(
        Weights::load(&path).unwrap().format,
        WeightFormat::Safetensors
    );
}

/// The published HF `taef2.safetensors` holds encoder and decoder; upstream full-model state
/// dicts may say `decoder.1.weight`. Both reduce to the same decoder.
#[test]
fn autoencoder_files_keep_only_the_decoder() {
    let (reference, _) = taesd(&shared("taef2_decoder.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let enc = ((), Dtype::F32, vec![2usize], le32(&[9.0, 9.0]));

    let owned = |prefix: &dyn Fn(&str) -> String| -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
        reference
            .tensors
            .iter()
            .map(|(k, t)| (prefix(k), Dtype::F32, t.shape.clone(), le32(f32s(t))))
            .collect()
    };
    let diffusers = owned(&|k| {
        let (i, rest) = k.split_once('.').unwrap();
        format!("decoder.layers.{}.{rest}", i.parse::<usize>().unwrap() - 1)
    });
    let prefixed = owned(&|k| format!("decoder.{k}"));
    let with_encoder = |named: &[(String, Dtype, Vec<usize>, Vec<u8>)], enc_key: &str| {
        let mut v = named.to_vec();
        v.push((enc_key.to_string(), enc.1, enc.2.clone(), enc.3.clone()));
        v
    };

    let path = dir.path().join("taef2.safetensors");
    write_st(&path, &with_encoder(&diffusers, "encoder.layers.0.weight"));
    let (w, style) = taesd(&path).unwrap();
    assert_eq!((style, w.tensors.len()), (KeyStyle::Diffusers, 79));
    assert_eq!(
        w.content_sha256().unwrap(),
        reference.content_sha256().unwrap()
    );

    let path = dir.path().join("taesd_full.safetensors");
    write_st(&path, &with_encoder(&prefixed, "encoder.0.weight"));
    let (w, style) = taesd(&path).unwrap();
    assert_eq!((style, w.tensors.len()), (KeyStyle::Upstream, 79));
    assert_eq!(
        w.content_sha256().unwrap(),
        reference.content_sha256().unwrap()
    );
}
