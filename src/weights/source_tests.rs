//! Tests of the sources over files: prefix views, overlays, and shards with their index (every
//! hostile index and shard case gives a one-line error naming the file and the key).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::*;

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/weights/");

/// Writes a safetensors file of f32 (`Dtype::F32`) or f16 tensors.
fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dt, _, v)| match dt {
            Dtype::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, dt, s, _), b)| (k.to_string(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, ::safetensors::serialize(views, None).unwrap()).unwrap();
}

fn f32_tensor(k: &str, v: &[f32]) -> (&'static str, Dtype, Vec<usize>, Vec<f32>) {
    (k.to_string().leak(), Dtype::F32, vec![v.len()], v.to_vec())
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_f32()
}

/// An error's message, checked to be one line.
fn message(e: WeightError) -> String {
    let m = e.to_string();
    assert!(!m.contains('\n'), "error spans lines: {m}");
    m
}

#[test]
fn a_view_lists_and_reads_only_its_keys_with_the_prefix_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd.safetensors");
    write(
        &path,
        &[
            f32_tensor("first_stage_model.decoder.w", &[1.0, 2.0]),
            f32_tensor("first_stage_model.encoder.w", &[3.0]),
            f32_tensor("first_stage_model_x.w", &[4.0]),
            f32_tensor("model.diffusion_model.w", &[5.0]),
        ],
    );
    let file = WeightFile::open(&path).unwrap();
    let file: &dyn TensorSource = &file;
    let vae = file.under("first_stage_model.");
    let keys: Vec<&str> = vae.tensors().keys().map(String::as_str).collect();
    assert_eq!(keys, ["decoder.w", "encoder.w"]);
    assert_eq!(vae.tensors()["decoder.w"].shape, [2]);
    assert_eq!(values(&vae.read("decoder.w").unwrap()), [1.0, 2.0]);
    assert_eq!(vae.path(), path);
    // A view of a view reads through both prefixes.
    let vae: &dyn TensorSource = &vae;
    let dec = vae.under("decoder.");
    assert_eq!(dec.tensors().len(), 1);
    assert_eq!(values(&dec.read("w").unwrap()), [1.0, 2.0]);
    // A key outside the view is an error naming the full key and the file.
    let e = message(dec.read("x").unwrap_err());
    assert!(
        e.contains("\"first_stage_model.decoder.x\"") && e.contains("sd.safetensors"),
        "{e}"
    );
    // The whole file under no prefix.
    assert_eq!(file.under("").tensors().len(), 4);
    assert_eq!(file.read_all().unwrap().tensors.len(), 4);
}

/// Adds `value` to the tensor `key` (and fails on `bad`).
struct AddTo {
    key: &'static str,
    value: f32,
}

impl Overlay for AddTo {
    fn name(&self) -> String {
        "add.test".into()
    }
    fn patches(&self, key: &str) -> bool {
        key == self.key || key == "bad"
    }
    fn patch(&self, key: &str, _shape: &[usize], values: &mut [f32]) -> Result<(), String> {
        if key == "bad" {
            return Err("this overlay\nrefuses".into());
        }
        // Two steps: rounding to f16 after each would differ from rounding once.
        values.iter_mut().for_each(|v| *v = *v * 3.0 + self.value);
        Ok(())
    }
}

#[test]
fn an_overlay_patches_its_tensors_once_in_f32_and_passes_others_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    // f16 values whose two-step f16 arithmetic rounds differently from one rounding.
    let halves: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 * 0.0137).collect();
    write(
        &path,
        &[
            ("h", Dtype::F16, vec![64], halves.clone()),
            ("u", Dtype::F16, vec![64], halves.clone()),
            f32_tensor("f", &[0.25, -1.0]),
            f32_tensor("bad", &[0.0]),
        ],
    );
    let file = WeightFile::open(&path).unwrap();
    let overlay = std::sync::Arc::new(AddTo {
        key: "h",
        value: 0.1,
    });
    let patched = Patched::new(&file, overlay.clone());
    assert_eq!(patched.tensors(), file.tensors());
    let h = patched.read("h").unwrap();
    assert_eq!(h.dtype(), crate::tensor::DType::F16, "stays f16");
    let TensorData::F16(got) = &h.data else {
        unreachable!()
    };
    let once: Vec<half::f16> = halves
        .iter()
        .map(|&x| half::f16::from_f32(half::f16::from_f32(x).to_f32() * 3.0 + 0.1))
        .collect();
    assert_eq!(got, &once);
    let stepwise: Vec<half::f16> = halves
        .iter()
        .map(|&x| {
            let x = half::f16::from_f32(x);
            half::f16::from_f32(half::f16::from_f32(x.to_f32() * 3.0).to_f32() + 0.1)
        })
        .collect();
    assert_ne!(got, &stepwise, "the test values must tell the two apart");
    // Widened (an fp32 build): the patched values unrounded, as f32.
    let wide = Patched::new(&file, overlay.clone())
        .widened()
        .read("h")
        .unwrap();
    assert_eq!(wide.dtype(), crate::tensor::DType::F32);
    let exact: Vec<f32> = halves
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32() * 3.0 + 0.1)
        .collect();
    assert_eq!(values(&wide), exact);
    // Untouched tensors are the file's, bit for bit.
    assert_eq!(patched.read("u").unwrap(), file.read("u").unwrap());
    assert_eq!(patched.read("f").unwrap(), file.read("f").unwrap());
    let f32_overlay = AddTo {
        key: "f",
        value: 1.0,
    };
    let patched_f = Patched::new(&file, std::sync::Arc::new(f32_overlay));
    assert_eq!(values(&patched_f.read("f").unwrap()), [1.75, -2.0]);
    let e = message(patched.read("bad").unwrap_err());
    assert!(
        e.starts_with("add.test: ") && e.contains("\"bad\"") && e.contains("w.safetensors"),
        "{e}"
    );
}

#[test]
fn an_overlay_changes_the_built_graphs_constant_and_no_other() {
    use crate::models::{lookup, ModelOptions, Part};
    // The .pth stores f16: the patched bias stays f16 in the graph.
    let file = WeightFile::open(&Path::new(SHARED).join("taef2_decoder.pth")).unwrap();
    let overlay = AddTo {
        key: "1.bias",
        value: 0.5,
    };
    let model = lookup("taef2").unwrap();
    let none = ModelOptions::default();
    let consts = |source: &dyn TensorSource| -> BTreeMap<String, crate::ir::ConstData> {
        let w = model.load(Part::DECODER, source, &none).unwrap();
        let g = model
            .build(Part::DECODER, &w, &Default::default(), &none)
            .unwrap();
        g.nodes()
            .filter_map(|(_, n)| match &n.op {
                crate::ir::Op::Const(t) => Some((n.name.clone(), t.clone())),
                _ => None,
            })
            .collect()
    };
    let plain = consts(&file);
    let patched = consts(&Patched::new(&file, std::sync::Arc::new(overlay)));
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        patched.keys().collect::<Vec<_>>()
    );
    let changed: Vec<&String> = plain.keys().filter(|k| plain[*k] != patched[*k]).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    // An f16 weight is a `Half` constant, before and after.
    let (crate::ir::ConstData::Half(before), crate::ir::ConstData::Half(after)) =
        (&plain[changed[0]], &patched[changed[0]])
    else {
        panic!("{} is not an f16 constant", changed[0]);
    };
    let want: Vec<f32> = before
        .to_f32()
        .iter()
        .map(|&x| half::f16::from_f32(x * 3.0 + 0.5).to_f32())
        .collect();
    assert_eq!(after.to_f32(), want);
}

/// A folder with shards `a.safetensors` (`x`, `y`) and `b.safetensors` (`z`), and the index
/// `m.safetensors.index.json` over them as `map` says (the right map when `None`).
fn shards(map: Option<serde_json::Value>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("a.safetensors"),
        &[f32_tensor("x", &[1.0]), f32_tensor("y", &[2.0, 3.0])],
    );
    write(
        &dir.path().join("b.safetensors"),
        &[f32_tensor("z", &[4.0])],
    );
    let map = map.unwrap_or_else(
        || serde_json::json!({"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}),
    );
    let index = dir.path().join("m.safetensors.index.json");
    let json = serde_json::json!({"metadata": {"total_size": 16}, "weight_map": map});
    std::fs::write(&index, json.to_string()).unwrap();
    (dir, index)
}

#[test]
fn shards_open_as_one_source() {
    let (dir, index) = shards(None);
    let s = open(&index).unwrap();
    let keys: Vec<&str> = s.tensors().keys().map(String::as_str).collect();
    assert_eq!(keys, ["x", "y", "z"]);
    assert_eq!(values(&s.read("y").unwrap()), [2.0, 3.0]);
    assert_eq!(values(&s.read("z").unwrap()), [4.0]);
    assert_eq!((s.path(), s.format()), (&*index, WeightFormat::Safetensors));
    let e = message(s.read("w").unwrap_err());
    assert!(
        e.contains("m.safetensors.index.json") && e.contains("\"w\""),
        "{e}"
    );
    // The file the index stands for, absent, opens the index beside it.
    let s = open(&dir.path().join("m.safetensors")).unwrap();
    assert_eq!(s.path(), index);
    assert_eq!(Weights::load(&index).unwrap().tensors.len(), 3);
    assert_eq!(stem(&index).as_deref(), Some("m"));
    assert_eq!(stem(Path::new("d/m.safetensors")).as_deref(), Some("m"));
    // A view of the shards reads across them.
    let s: &dyn TensorSource = &*s;
    assert_eq!(s.under("y").tensors().len(), 1);
}

#[test]
fn hostile_indexes_and_shards_are_refused_naming_the_file_and_key() {
    use serde_json::json;
    let cases: Vec<(serde_json::Value, &[&str])> = vec![
        (
            json!({"x": "../a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}),
            &["\"x\"", "../a.safetensors", "not a file name"],
        ),
        (
            json!({"x": "/tmp/a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}),
            &["\"x\"", "not a file name"],
        ),
        (
            json!({"x": "sub/a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}),
            &["\"x\"", "not a file name"],
        ),
        (
            json!({"x": "..", "y": "a.safetensors", "z": "b.safetensors"}),
            &["\"x\"", "not a file name"],
        ),
        (
            json!({"x": "a\\b", "y": "a.safetensors", "z": "b.safetensors"}),
            &["\"x\"", "not a file name"],
        ),
        (
            json!({"x": "", "y": "a.safetensors", "z": "b.safetensors"}),
            &["\"x\"", "not a file name"],
        ),
        // A missing shard.
        (
            json!({"x": "a.safetensors", "y": "a.safetensors", "z": "c.safetensors"}),
            &["\"c.safetensors\"", "\"z\"", "not found"],
        ),
        // A key the index maps to a shard that lacks it.
        (
            json!({"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors",
                   "w": "b.safetensors"}),
            &["\"w\"", "\"b.safetensors\"", "no such tensor"],
        ),
        // A key in a shard the index does not list.
        (
            json!({"x": "a.safetensors", "z": "b.safetensors"}),
            &["\"y\"", "\"a.safetensors\"", "does not list"],
        ),
        // A key present in two shards (the index names the other).
        (
            json!({"x": "b.safetensors", "y": "a.safetensors", "z": "b.safetensors"}),
            &["\"x\"", "\"a.safetensors\"", "\"b.safetensors\""],
        ),
        (json!({}), &["lists no tensors"]),
        (json!(["x"]), &["not a shard index"]),
        (json!({"x": 3}), &["not a shard index"]),
    ];
    for (map, wants) in cases {
        let (_dir, index) = shards(Some(map.clone()));
        let e = message(open(&index).map(|_| ()).unwrap_err());
        assert!(e.contains("m.safetensors.index.json"), "{map}: {e}");
        for w in wants {
            assert!(e.contains(w), "{map}: {e} lacks {w}");
        }
    }
    // Two shards holding one key, both listed: the second listing of the key in the index.
    let (dir, index) = shards(None);
    std::fs::write(
        &index,
        r#"{"weight_map": {"x": "a.safetensors", "x": "b.safetensors"}}"#,
    )
    .unwrap();
    let e = message(open(&index).map(|_| ()).unwrap_err());
    assert!(e.contains("\"x\" is listed twice"), "{e}");
    // Not JSON, no weight_map, a damaged shard.
    for (text, want) in [
        ("{\"weight_map\": ", "not a shard index"),
        ("{\"metadata\": {}}", "weight_map"),
        ("", "not a shard index"),
    ] {
        std::fs::write(&index, text).unwrap();
        let e = message(open(&index).map(|_| ()).unwrap_err());
        assert!(e.contains(want), "{text}: {e}");
    }
    std::fs::write(
        &index,
        r#"{"weight_map": {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.safetensors"),
        b"\x08\0\0\0\0\0\0\0{\"z\":1}",
    )
    .unwrap();
    let e = message(open(&index).map(|_| ()).unwrap_err());
    assert!(
        e.contains("\"b.safetensors\"") && e.contains("\"z\""),
        "{e}"
    );
    // An index larger than any index is refused before it is parsed.
    let big = vec![b' '; (16 << 20) + 1];
    std::fs::write(&index, big).unwrap();
    let e = message(open(&index).map(|_| ()).unwrap_err());
    assert!(e.contains("more than"), "{e}");
    // A missing index.
    let e = message(
        open(&dir.path().join("none.safetensors.index.json"))
            .map(|_| ())
            .unwrap_err(),
    );
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn spilling_keeps_handles_whose_hash_check_and_values_are_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let big: Vec<f32> = (0..64).map(|i| i as f32 * 0.25 - 3.0).collect();
    write(
        &path,
        &[
            ("a.big", Dtype::F16, vec![8, 8], big.clone()),
            ("b.big32", Dtype::F32, vec![64], big.clone()),
            ("c.small", Dtype::F32, vec![2], vec![1.0, 2.0]),
            (
                "d.bad",
                Dtype::F32,
                vec![16],
                [[f32::NAN; 4], [7e4; 4]].concat().repeat(2),
            ),
        ],
    );
    let wanted =
        || ["a.big", "b.big32", "c.small", "d.bad"].map(|k| (k.to_string(), k.to_string()));
    let file = WeightFile::open(&path).unwrap();
    let in_file: &dyn TensorSource = &file;
    // The same bytes in memory have no file to point into: they go to a spill file.
    let memory = WeightFile::from_bytes(&path, std::fs::read(&path).unwrap()).unwrap();
    let copied: &dyn TensorSource = &memory;
    let whole = in_file.read_as(wanted()).unwrap();
    for source in [in_file, copied] {
        let w = source.read_spilling_from(wanted(), 64).unwrap();
        assert_eq!(w.tensors.keys().collect::<Vec<_>>(), ["c.small"]);
        assert_eq!(w.spilled.len(), 3);
        assert!(w.has("a.big") && w.has("c.small") && !w.has("e"));
        assert_eq!(w.content_sha256().unwrap(), whole.content_sha256().unwrap());
        assert_eq!(w.read("a.big", &[8, 8]).unwrap(), whole.tensors["a.big"]);
        assert!(matches!(
            w.read("a.big", &[64]),
            Err(WeightError::ShapeMismatch { .. })
        ));
        for fp16 in [false, true] {
            assert_eq!(
                check::check_weights(&w, fp16).unwrap_err().to_string(),
                check::check_weights(&whole, fp16).unwrap_err().to_string()
            );
        }
        // By bytes: NaN is not equal to itself.
        let bytes = |m: &BTreeMap<String, Tensor>| -> Vec<(String, Vec<u8>)> {
            m.iter()
                .map(|(k, t)| (k.clone(), t.to_le_bytes()))
                .collect()
        };
        let back = w.clone().into_memory().unwrap();
        assert_eq!(bytes(&back.tensors), bytes(&whole.tensors));
    }
    // Only the file's handles point into it: a file-backed one is read at its offset.
    let handle = in_file.in_place("b.big32").unwrap();
    assert_eq!(handle.read().unwrap(), whole.tensors["b.big32"]);
    assert!(copied.in_place("b.big32").is_none());
}

/// A patched tensor of a file is a deferred handle: not read by `read_spilling`, and read back
/// as `Patched::read` gives it (f16 rounded once, or widened), its hash leaf and value check
/// those of the patched values; a failing patch is the same one-line error either way.
#[test]
fn patched_tensors_are_patched_as_their_handles_are_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let halves: Vec<f32> = (0..64).map(|i| 1.0 + i as f32 * 0.0137).collect();
    write(
        &path,
        &[
            ("h", Dtype::F16, vec![8, 8], halves.clone()),
            ("u", Dtype::F16, vec![64], halves.clone()),
            ("bad", Dtype::F32, vec![64], halves.clone()),
        ],
    );
    let file = WeightFile::open(&path).unwrap();
    let overlay = std::sync::Arc::new(AddTo {
        key: "h",
        value: 0.1,
    });
    let wanted = |keys: &[&str]| -> Vec<(String, String)> {
        keys.iter()
            .map(|k| (format!("m.{k}"), k.to_string()))
            .collect()
    };
    for widen in [false, true] {
        let patched = match widen {
            false => Patched::new(&file, overlay.clone()),
            true => Patched::new(&file, overlay.clone()).widened(),
        };
        let source: &dyn TensorSource = &patched;
        let handle = source.in_place("h").unwrap();
        assert!(handle.is_deferred() && !source.in_place("u").unwrap().is_deferred());
        let whole = source.read_as(wanted(&["h", "u"])).unwrap();
        let w = source.read_spilling_from(wanted(&["h", "u"]), 0).unwrap();
        assert!(w.spilled["m.h"].data.is_deferred());
        // Nothing of the patched tensor is known before it is read back.
        assert!(w.spilled["m.h"].data.summary_taken().is_none());
        let digest = w.digest();
        assert_eq!(digest.sha256().unwrap(), whole.content_sha256().unwrap());
        assert!(w.spilled["m.h"].data.summary_taken().is_some());
        let back = w.read("m.h", &[8, 8]).unwrap();
        assert_eq!(back, whole.tensors["m.h"], "widen: {widen}");
        assert_eq!(
            back.dtype(),
            match widen {
                false => crate::tensor::DType::F16,
                true => crate::tensor::DType::F32,
            }
        );
        let view = w.spilled["m.h"].data.reshaped(vec![64]).unwrap();
        assert_eq!(
            view.read().unwrap(),
            whole.tensors["m.h"].clone().into_reshaped(vec![64])
        );
        assert_ne!(
            view,
            source.in_place("h").unwrap().reshaped(vec![64]).unwrap()
        );
    }
    // The patch of "bad" fails: at read time through `read`, at read-back time through a handle.
    let patched = Patched::new(&file, overlay.clone());
    let source: &dyn TensorSource = &patched;
    let now = message(source.read("bad").unwrap_err());
    let w = source
        .read_spilling_from(wanted(&["bad"]), 0)
        .expect("a deferred tensor is not read while loading");
    let later = w.digest().sha256().unwrap_err().to_string();
    assert_eq!(later, now);
    assert!(
        now.contains("this overlay refuses") && now.contains("\"bad\""),
        "{now}"
    );
}

/// A prefetcher computes handles ahead of a reader in its order; a reader that reads in another
/// order, or stops early, still reads every value right and is never left waiting.
#[test]
fn a_prefetcher_computes_ahead_without_changing_what_is_read() {
    use super::deferred::Prefetch;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let keys: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<f32>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let v = (0..32).map(|j| (i * 32 + j) as f32 * 0.01).collect();
            (k.as_str(), Dtype::F16, vec![32], v)
        })
        .collect();
    write(&path, &tensors);
    let file = WeightFile::open(&path).unwrap();
    struct All;
    impl Overlay for All {
        fn name(&self) -> String {
            "all".into()
        }
        fn patches(&self, _key: &str) -> bool {
            true
        }
        fn patch(&self, _key: &str, _shape: &[usize], v: &mut [f32]) -> Result<(), String> {
            v.iter_mut().for_each(|x| *x = *x * 2.0 + 1.0);
            Ok(())
        }
    }
    let patched = Patched::new(&file, std::sync::Arc::new(All));
    let source: &dyn TensorSource = &patched;
    let expected: Vec<Tensor> = keys.iter().map(|k| source.read(k).unwrap()).collect();
    let handles =
        || -> Vec<super::Spilled> { keys.iter().map(|k| source.in_place(k).unwrap()).collect() };
    // In order; in reverse (the prefetcher waits for reads that come last); a reader that
    // stops after two, dropping the prefetcher while it waits.
    for order in [vec![0, 1, 2, 3, 4, 5], vec![5, 4, 3, 2, 1, 0], vec![0, 1]] {
        let h = handles();
        let prefetch = Prefetch::start(h.clone(), 2);
        for &i in &order {
            assert_eq!(h[i].read().unwrap(), expected[i], "{order:?}: {i}");
            // Read twice: computed again, the same.
            assert_eq!(h[i].read().unwrap(), expected[i]);
        }
        drop(prefetch);
        for (i, h) in h.iter().enumerate() {
            assert_eq!(h.read().unwrap(), expected[i], "after the prefetcher: {i}");
        }
    }
}
