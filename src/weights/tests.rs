//! Tests that need crate internals: synthetic `.pth` archives written byte by byte, and the
//! robustness sweep over damaged copies of the real files (in memory, through
//! `Weights::load_bytes`, which is `Weights::load` reading from memory instead of the file).

use crate::rng::SplitMix64 as Rng;
use std::path::Path;

use super::*;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/weights/");

use crate::fuzzing::torch::{checkpoint_pickle, state_dict_pickle, Entry};

fn zip_archive(files: &[(&str, &[u8])]) -> Vec<u8> {
    crate::fuzzing::torch::zip(files, false)
}

fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect()
}

#[test]
fn pth_honours_offset_and_strides() {
    let storage: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let pickle = state_dict_pickle(&[
        // A [2, 3] transpose of a row-major [3, 2] that starts at element 2.
        ("1.weight", "HalfStorage", "0", 8, 2, &[2, 3], &[1, 2]),
        // Contiguous slice [2..5) of the same storage.
        ("1.bias", "HalfStorage", "0", 8, 2, &[3], &[1]),
        // Size-1 dims may carry any stride.
        ("2.bias", "HalfStorage", "0", 8, 7, &[1, 1], &[5, 9]),
    ]);
    let data = f16_bytes(&storage);
    let bytes = zip_archive(&[
        ("ckpt/data.pkl", &pickle),
        ("ckpt/byteorder", b"little"),
        ("ckpt/data/0", &data),
    ]);
    let w = Weights::load_bytes(Path::new("synthetic.pth"), &bytes).unwrap();
    assert_eq!(w.format, WeightFormat::Pth);
    // Gathered in the storage's dtype: half storage gives f16 tensors.
    let f16s = |v: &[f32]| v.iter().map(|&x| half::f16::from_f32(x)).collect();
    assert_eq!(
        w.tensors["1.weight"],
        Tensor::f16(vec![2, 3], f16s(&[2., 4., 6., 3., 5., 7.]))
    );
    assert_eq!(
        w.tensors["1.bias"],
        Tensor::f16(vec![3], f16s(&[2., 3., 4.]))
    );
    assert_eq!(w.tensors["2.bias"], Tensor::f16(vec![1, 1], f16s(&[7.])));
}

/// The tensor list comes from the index alone; a tensor's data is read when it is asked for, so
/// a damaged or missing storage fails that tensor's read, naming it, and no other.
#[test]
fn pth_lists_at_open_and_reads_on_demand() {
    let pickle = state_dict_pickle(&[
        ("a", "FloatStorage", "0", 2, 0, &[2], &[1]),
        ("b", "HalfStorage", "1", 3, 0, &[3], &[1]),
        ("c", "BFloat16Storage", "2", 1, 0, &[1], &[1]),
        ("n", "LongStorage", "3", 1, 0, &[], &[]),
    ]);
    let a: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let c = half::bf16::from_f32(1.0078125).to_le_bytes();
    let bytes = zip_archive(&[
        ("c/data.pkl", &pickle),
        ("c/data/0", &a),
        ("c/data/2", &c),
        ("c/data/3", &7i64.to_le_bytes()),
    ]);
    let f = WeightFile::from_bytes(Path::new("od.pth"), bytes).unwrap();
    assert_eq!(f.format(), WeightFormat::Pth);
    let listed: Vec<(&str, &StoredDtype, &[usize])> = f
        .tensors()
        .iter()
        .map(|(k, i)| (k.as_str(), &i.dtype, &i.shape[..]))
        .collect();
    assert_eq!(
        listed,
        [
            ("a", &StoredDtype::F32, &[2][..]),
            ("b", &StoredDtype::F16, &[3][..]),
            ("c", &StoredDtype::BF16, &[1][..]),
            ("n", &StoredDtype::Int("torch.LongStorage".into()), &[][..]),
        ]
    );
    assert_eq!(f.read("a").unwrap(), Tensor::f32(vec![2], vec![1.5, -2.0]));
    // bf16 has no IR type: widened exactly.
    assert_eq!(f.read("c").unwrap(), Tensor::f32(vec![1], vec![1.0078125]));
    let e = f.read("b").unwrap_err().to_string();
    assert!(e.starts_with("od.pth: ") && e.contains("c/data/1"), "{e}");
    let e = f.read("n").unwrap_err().to_string();
    assert_eq!(
        e,
        "od.pth: tensor \"n\" has unsupported dtype torch.LongStorage (supported: F32, F16, BF16)"
    );
    // Reads do not disturb each other.
    assert_eq!(f.read("a").unwrap(), Tensor::f32(vec![2], vec![1.5, -2.0]));
}

/// A training checkpoint (`.ckpt`) keeps the state_dict under "state_dict", beside counters;
/// only that dict is read, and only one level deep.
#[test]
fn ckpt_state_dict_under_a_key_is_read() {
    let entries = [("w", "FloatStorage", "0", 1, 0, &[1][..], &[1][..])];
    let wrap = |key: &str| checkpoint_pickle(key, &entries);
    let data = 2.5f32.to_le_bytes();
    let open = |pickle: &[u8]| {
        let bytes = zip_archive(&[("m/data.pkl", pickle), ("m/data/0", &data)]);
        WeightFile::from_bytes(Path::new("m.ckpt"), bytes)
    };
    let f = open(&wrap("state_dict")).unwrap();
    assert_eq!(f.tensors().keys().collect::<Vec<_>>(), ["w"]);
    assert_eq!(f.read("w").unwrap(), Tensor::f32(vec![1], vec![2.5]));
    // Under another key the dict is not a state_dict: the counter is named.
    let e = open(&wrap("weights")).err().unwrap().to_string();
    assert!(e.contains("\"global_step\" is not a tensor"), "{e}");
}

/// safetensors keep their stored dtype too, and integer tensors are listed but not loaded.
#[test]
fn safetensors_keep_stored_dtype_and_skip_integers() {
    use ::safetensors::tensor::TensorView;
    use ::safetensors::Dtype;
    let h = f16_bytes(&[0.5, -65504.0]);
    let b = half::bf16::from_f32(-3.0e38).to_le_bytes();
    let i = 3i64.to_le_bytes();
    let views = vec![
        ("h", TensorView::new(Dtype::F16, vec![2], &h).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![1], &b).unwrap()),
        ("steps", TensorView::new(Dtype::I64, vec![1], &i).unwrap()),
    ];
    let bytes = ::safetensors::serialize(views, None).unwrap();
    let w = Weights::load_bytes(Path::new("s.safetensors"), &bytes).unwrap();
    assert_eq!(w.tensors.keys().collect::<Vec<_>>(), ["b", "h"]);
    assert_eq!(
        w.tensors["h"],
        Tensor::f16(vec![2], vec![half::f16::from_f32(0.5), half::f16::MIN])
    );
    assert_eq!(
        w.tensors["b"],
        Tensor::f32(vec![1], vec![half::bf16::from_f32(-3.0e38).to_f32()])
    );
    let f = WeightFile::from_bytes(Path::new("s.safetensors"), bytes).unwrap();
    assert_eq!(f.tensors()["steps"].dtype, StoredDtype::Int("I64".into()));
}

#[test]
fn pth_rejects_views_outside_storage_and_bad_storage_sizes() {
    let data = f16_bytes(&[0.0; 4]);
    let cases: [(Entry, &str); 3] = [
        (
            ("1.weight", "HalfStorage", "0", 4, 1, &[4], &[1]),
            "reaches element 4",
        ),
        (
            ("1.weight", "HalfStorage", "0", 4, 0, &[2, 2], &[1, 3]),
            "reaches element 4",
        ),
        (
            ("1.weight", "HalfStorage", "0", 5, 0, &[4], &[1]),
            "holds 8 bytes, expected 10",
        ),
    ];
    for (entry, want) in cases {
        let pickle = state_dict_pickle(&[entry]);
        let bytes = zip_archive(&[("c/data.pkl", &pickle), ("c/data/0", &data)]);
        let e = Weights::load_bytes(Path::new("v.pth"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("v.pth: ") && e.contains(want), "{e}");
    }

    // Two tensors over one storage that disagree about its length.
    let pickle = state_dict_pickle(&[
        ("1.bias", "HalfStorage", "0", 4, 0, &[4], &[1]),
        ("1.weight", "HalfStorage", "0", 8, 4, &[4], &[1]),
    ]);
    let bytes = zip_archive(&[("c/data.pkl", &pickle), ("c/data/0", &data)]);
    let e = Weights::load_bytes(Path::new("v.pth"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"1.weight\": c/data/0 holds 8 bytes, expected 16"),
        "{e}"
    );
}

#[test]
fn pth_unsupported_storage_names_key_and_type() {
    let pickle = state_dict_pickle(&[("3.conv.0.weight", "DoubleStorage", "0", 1, 0, &[1], &[1])]);
    let bytes = zip_archive(&[("c/data.pkl", &pickle), ("c/data/0", &[0u8; 8])]);
    let e = Weights::load_bytes(Path::new("d.pth"), &bytes).unwrap_err();
    assert!(matches!(e, WeightError::UnsupportedDtype { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("d.pth")
            && e.contains("\"3.conv.0.weight\"")
            && e.contains("torch.DoubleStorage"),
        "{e}"
    );
}

#[test]
fn pth_refuses_unknown_globals_and_opcodes() {
    let evil = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.".to_vec();
    let bytes = zip_archive(&[("c/data.pkl", &evil)]);
    let e = Weights::load_bytes(Path::new("e.pth"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("e.pth") && e.contains("unsupported pickle global os.system"),
        "{e}"
    );

    // STACK_GLOBAL (protocol 4) is one of the opcodes the VM deliberately lacks.
    let p4 = b"\x80\x04\x8c\x02os\x8c\x06system\x93.".to_vec();
    let bytes = zip_archive(&[("c/data.pkl", &p4)]);
    let e = Weights::load_bytes(Path::new("e.pth"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unsupported pickle opcode STACK_GLOBAL (0x93) at byte 14"),
        "{e}"
    );
}

#[test]
fn pth_without_pickle_or_with_big_endian_data_is_rejected() {
    let bytes = zip_archive(&[("c/readme.txt", b"hi")]);
    let e = Weights::load_bytes(Path::new("n.pth"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(e.contains("n.pth") && e.contains("no data.pkl"), "{e}");

    let pickle = state_dict_pickle(&[("1.bias", "FloatStorage", "0", 1, 0, &[1], &[1])]);
    let bytes = zip_archive(&[
        ("c/data.pkl", &pickle),
        ("c/byteorder", b"big"),
        ("c/data/0", &[0; 4]),
    ]);
    let e = Weights::load_bytes(Path::new("b.pth"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(e.contains("byteorder is \"big\""), "{e}");
}

/// Damaged copies of `original`: truncations and 1–4 byte flips, mostly aimed at the `hot`
/// structural byte ranges (headers, pickle, zip directory) where a parser has most to get wrong,
/// the rest anywhere (which, for safetensors, lands in tensor data nobody validates and loads).
fn variants(
    original: &[u8],
    hot: Vec<std::ops::Range<usize>>,
    n: usize,
    seed: u64,
) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut rng = Rng(seed);
    let len = original.len();
    let pick = move |rng: &mut Rng| {
        if rng.below(10) == 0 {
            return rng.below(len);
        }
        let r = &hot[rng.below(hot.len())];
        r.start + rng.below(r.len())
    };
    (0..n).map(move |i| {
        if i % 4 == 0 {
            original[..pick(&mut rng)].to_vec()
        } else {
            let mut v = original.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = pick(&mut rng);
                v[at] ^= 1 + rng.below(255) as u8;
            }
            v
        }
    })
}

/// Never a panic, whatever the damage. For `.pth` also: the zip CRCs cover every entry, so a
/// damaged archive that still loads must give exactly the original tensors.
#[test]
fn damaged_files_never_panic() {
    let mut tried = 0;
    for (file, n, seed) in [
        ("taef2_decoder.pth", 2000, 1),
        ("taef2_decoder.safetensors", 1000, 2),
        ("taef2_diffusers_style.safetensors", 500, 3),
    ] {
        let path = Path::new(SHARED).join(file);
        let original = std::fs::read(&path).unwrap();
        let reference = Weights::load_bytes(&path, &original).unwrap();
        let len = original.len();
        let checksummed = reference.format == WeightFormat::Pth;
        let hot = if checksummed {
            // data.pkl is the first entry; the central directory is at the end.
            vec![0..12 * 1024, len - 12 * 1024..len]
        } else {
            let header = u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
            // The length prefix gets as many hits as the whole JSON header.
            vec![0..8, 8..8 + header]
        };
        let (mut ok, mut err) = (0, 0);
        for v in variants(&original, hot, n, seed) {
            match Weights::load_bytes(&path, &v) {
                Ok(w) => {
                    ok += 1;
                    if checksummed {
                        assert!(
                            w.tensors == reference.tensors,
                            "{file}: damage went unnoticed"
                        );
                    }
                }
                Err(e) => {
                    err += 1;
                    let msg = e.to_string();
                    let named = msg.starts_with(&path.display().to_string());
                    assert!(named && !msg.contains('\n'), "{msg}");
                }
            }
        }
        tried += n;
        eprintln!("{file}: {n} damaged variants, {ok} loaded, {err} rejected");
    }
    eprintln!("robustness: {tried} inputs, no panic");
}
