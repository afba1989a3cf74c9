//! The fuzz targets' inputs, replayed on stable Rust: every file under
//! `tests/fuzz/regressions/<target>/` (minimised corpora and every crash the fuzzers found) runs
//! through [`mlc::fuzzing::InputFormat::run`], the function the `cargo fuzz` targets call, and must
//! return in time without panicking. The seed inputs, generated here from the library's own
//! writers, must be accepted, so a reader that refuses everything fails this test.
//!
//! `cargo test --release --test fuzz_replay -- --ignored write_seed_corpora` writes the seeds to
//! `tests/fuzz/corpus/<target>/`, where `cargo fuzz run` starts from them.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mlc::fuzzing::{eval_input, InputFormat};
use mlc::ir::{Binary, Conv2d, Dim, Graph, Op, TensorType, Unary};
use mlc::mil::lower::{lower, FeatureTypes, ModelInfo};
use mlc::mil::Target;
use mlc::passes::{quantize::Mode, Compression, PipelineOptions};
use mlc::tensor::{DType, Tensor};
use prost::Message;

/// Longest any one input may take (in a release build; the slowest regression input takes
/// milliseconds, so this only catches a hang).
const BOUND: Duration = Duration::from_secs(2);

fn regressions(t: InputFormat) -> Vec<PathBuf> {
    let dir = common::repo().join("tests/fuzz/regressions").join(t.name());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `bytes` through `t`, naming `what` if it panics or takes longer than [`BOUND`].
fn replay(t: InputFormat, what: &str, bytes: &[u8]) -> Result<(), String> {
    let start = Instant::now();
    let result = std::panic::catch_unwind(|| t.run(bytes))
        .unwrap_or_else(|_| panic!("{} panicked on {what}", t.name()));
    let took = start.elapsed();
    assert!(took < BOUND, "{} took {took:?} on {what}", t.name());
    result
}

#[test]
fn regression_inputs_replay_without_panics_or_hangs() {
    let mut summary = Vec::new();
    for t in InputFormat::ALL {
        let files = regressions(t);
        let (mut accepted, mut rejected) = (0, 0);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            match replay(t, &f.display().to_string(), &bytes) {
                Ok(()) => accepted += 1,
                Err(_) => rejected += 1,
            }
        }
        println!("{}: {accepted} accepted, {rejected} rejected", t.name());
        summary.push((t.name(), accepted, rejected));
        // A minimised corpus keeps inputs that reach the end of the reader as well as ones
        // that stop at each check on the way.
        assert!(
            accepted > 0 && rejected > 0,
            "{}: {accepted} accepted, {rejected} rejected of {} files",
            t.name(),
            files.len()
        );
    }
    assert_eq!(summary.len(), InputFormat::ALL.len());
}

#[test]
fn seeds_are_accepted_and_damage_is_refused() {
    let seeds = seeds();
    for t in InputFormat::ALL {
        let mine: Vec<_> = seeds.iter().filter(|s| s.0 == t).collect();
        assert!(mine.len() >= 2, "{}: {} seeds", t.name(), mine.len());
        for (_, name, bytes) in &mine {
            let what = format!("seed {name}");
            if let Err(e) = replay(t, &what, bytes) {
                panic!("{} refuses {what}: {e}", t.name());
            }
            // Cut in half, every format is missing something its reader checks.
            let e = replay(t, &format!("half of {what}"), &bytes[..bytes.len() / 2]);
            assert!(e.is_err(), "{} accepts half of {what}", t.name());
        }
    }
}

/// Writes the seeds as `tests/fuzz/corpus/<target>/seed-<name>` for `cargo fuzz run`.
#[test]
#[ignore = "writes the fuzz corpora; run by hand before fuzzing"]
fn write_seed_corpora() {
    for (t, name, bytes) in seeds() {
        let dir = common::repo().join("tests/fuzz/corpus").join(t.name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds: small valid inputs of every format, written by the library or by hand to spec.

fn seeds() -> Vec<(InputFormat, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in safetensors_seeds() {
        out.push((InputFormat::Safetensors, name, bytes));
    }
    for (name, bytes) in pth_seeds() {
        out.push((InputFormat::Pth, name, bytes));
    }
    let ct = common::repo().join("tests/data/ct_conv_relu.mlpackage");
    let read = |rel: &str| std::fs::read(ct.join(rel)).unwrap();
    out.push((InputFormat::Manifest, "ct".into(), read("Manifest.json")));
    let ct_model = read("Data/com.apple.CoreML/model.mlmodel");
    let ct_weights = read("Data/com.apple.CoreML/weights/weight.bin");
    out.push((InputFormat::Mlmodel, "ct".into(), ct_model.clone()));
    out.push((InputFormat::Blob, "ct".into(), ct_weights.clone()));
    out.push((
        InputFormat::Eval,
        "ct".into(),
        eval_input(&ct_model, Some(&ct_weights)),
    ));

    for (name, model, weights) in packages() {
        let model = model.encode_to_vec();
        out.push((InputFormat::Mlmodel, name.clone(), model.clone()));
        if let Some(w) = &weights {
            out.push((InputFormat::Blob, name.clone(), w.clone()));
        }
        out.push((
            InputFormat::Eval,
            name,
            eval_input(&model, weights.as_deref()),
        ));
    }
    // The manifest mlc writes, as written.
    let tmp = tempfile::tempdir().unwrap();
    let (_, model, weights) = packages().remove(0);
    let pkg = tmp.path().join("m.mlpackage");
    mlc::package::write_package(&pkg, &model, weights.as_deref()).unwrap();
    out.push((
        InputFormat::Manifest,
        "mlc".into(),
        std::fs::read(pkg.join("Manifest.json")).unwrap(),
    ));
    out
}

fn safetensors_bytes(tensors: &[(&str, safetensors::Dtype, Vec<usize>)]) -> Vec<u8> {
    let datas: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dt, shape)| {
            let n: usize = shape.iter().product();
            (0..n * dt.bitsize() / 8)
                .map(|i| (i * 7 % 61) as u8)
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&datas)
        .map(|((name, dt, shape), d)| {
            let v = safetensors::tensor::TensorView::new(*dt, shape.clone(), d).unwrap();
            (name.to_string(), v)
        })
        .collect();
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    safetensors::tensor::serialize(views, meta).unwrap()
}

fn safetensors_seeds() -> Vec<(String, Vec<u8>)> {
    use safetensors::Dtype::{BF16, F16, F32};
    vec![
        (
            "upstream-f32".into(),
            safetensors_bytes(&[
                ("1.weight", F32, vec![4, 2, 3, 3]),
                ("1.bias", F32, vec![4]),
                ("3.conv.0.weight", F32, vec![4, 4, 1, 1]),
            ]),
        ),
        (
            "upstream-f16-bf16".into(),
            safetensors_bytes(&[
                ("1.weight", F16, vec![2, 2, 1, 1]),
                ("1.bias", BF16, vec![2]),
            ]),
        ),
        (
            "diffusers".into(),
            safetensors_bytes(&[
                ("decoder.layers.0.weight", F16, vec![2, 2, 1, 1]),
                ("decoder.layers.0.bias", F32, vec![2]),
                ("encoder.layers.0.weight", F32, vec![1, 1, 1, 1]),
            ]),
        ),
        (
            "empty-tensor".into(),
            safetensors_bytes(&[
                ("1.weight", F32, vec![1, 0, 3, 3]),
                ("1.bias", F32, vec![1]),
            ]),
        ),
    ]
}

/// One tensor of a synthetic checkpoint: key, storage class, storage key, storage numel,
/// offset, size, stride.
type PthEntry<'a> = (&'a str, &'a str, &'a str, u32, u32, &'a [u32], &'a [u32]);

/// A protocol-2 pickle laid out as `torch.save(state_dict)` writes one: memoised globals and
/// strings reused through BINGET, small tuples and ints in their short opcodes, and the
/// `_metadata` attribute set by BUILD.
fn torch_pickle(entries: &[PthEntry]) -> Vec<u8> {
    struct P {
        b: Vec<u8>,
        memo: u8,
    }
    impl P {
        fn put(&mut self) {
            self.b.extend([b'q', self.memo]);
            self.memo += 1;
        }
        fn s(&mut self, v: &str) {
            self.b.push(b'X');
            self.b.extend((v.len() as u32).to_le_bytes());
            self.b.extend(v.as_bytes());
            self.put();
        }
        fn int(&mut self, v: u32) {
            match v {
                0..=0xff => self.b.extend([b'K', v as u8]),
                0x100..=0xffff => {
                    self.b.push(b'M');
                    self.b.extend((v as u16).to_le_bytes());
                }
                _ => {
                    self.b.push(b'J');
                    self.b.extend(v.to_le_bytes());
                }
            }
        }
        fn tuple(&mut self, v: &[u32]) {
            if v.is_empty() || v.len() > 3 {
                self.b.push(b'(');
                v.iter().for_each(|&d| self.int(d));
                self.b.push(b't');
            } else {
                v.iter().for_each(|&d| self.int(d));
                self.b.push(0x84 + v.len() as u8);
            }
            self.put();
        }
    }
    let mut p = P {
        b: vec![0x80, 2],
        memo: 0,
    };
    p.b.extend(b"ccollections\nOrderedDict\n");
    p.put(); // memo 0: OrderedDict
    p.b.extend(b")R");
    p.put();
    p.b.push(b'(');
    for &(key, class, skey, numel, offset, size, stride) in entries {
        p.s(key);
        p.b.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
        p.put();
        p.b.extend(b"((");
        p.s("storage");
        p.b.extend(format!("ctorch\n{class}\n").as_bytes());
        p.put();
        p.s(skey);
        p.s("cpu");
        p.int(numel);
        p.b.push(b't');
        p.put();
        p.b.push(b'Q');
        p.int(offset);
        p.tuple(size);
        p.tuple(stride);
        p.b.push(0x89);
        p.b.extend([b'h', 0]);
        p.b.extend(b")R");
        p.put();
        p.b.push(b't');
        p.put();
        p.b.push(b'R');
        p.put();
    }
    p.b.push(b'u');
    p.b.push(b'}');
    p.put();
    p.s("_metadata");
    p.b.extend([b'h', 0]);
    p.b.extend(b")R");
    p.put();
    p.b.push(b'(');
    p.s("");
    p.b.push(b'}');
    p.put();
    p.s("version");
    p.int(1);
    p.b.extend(b"su");
    p.b.extend(b"sb.");
    p.b
}

fn zip_archive(files: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn pth_seeds() -> Vec<(String, Vec<u8>)> {
    let f16 = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| half::f16::from_f32(i as f32 / 8.0).to_le_bytes())
            .collect()
    };
    let f32s = |n: usize| -> Vec<u8> { (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect() };
    let decoder = torch_pickle(&[
        (
            "1.weight",
            "HalfStorage",
            "0",
            36,
            0,
            &[2, 2, 3, 3],
            &[18, 9, 3, 1],
        ),
        ("1.bias", "FloatStorage", "1", 2, 0, &[2], &[1]),
        (
            "3.conv.0.weight",
            "HalfStorage",
            "0",
            36,
            4,
            &[2, 2, 1, 1],
            &[2, 1, 1, 1],
        ),
        ("3.conv.0.bias", "BFloat16Storage", "2", 4, 1, &[2], &[2]),
    ]);
    let storages = |p: &[u8]| -> Vec<(String, Vec<u8>)> {
        vec![
            ("archive/data.pkl".into(), p.to_vec()),
            ("archive/byteorder".into(), b"little".to_vec()),
            ("archive/data/0".into(), f16(36)),
            ("archive/data/1".into(), f32s(2)),
            ("archive/data/2".into(), f16(4)),
            ("archive/version".into(), b"3\n".to_vec()),
        ]
    };
    let files = storages(&decoder);
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let diffusers = torch_pickle(&[(
        "decoder.layers.0.weight",
        "FloatStorage",
        "0",
        4,
        0,
        &[1, 4, 1, 1],
        &[4, 1, 1, 1],
    )]);
    vec![
        ("stored".into(), zip_archive(&refs, false)),
        ("deflated".into(), zip_archive(&refs, true)),
        (
            "diffusers-no-byteorder".into(),
            zip_archive(&[("m/data.pkl", &diffusers), ("m/data/0", &f32s(4))], false),
        ),
    ]
}

/// Small programs covering the ops, targets and weight forms mlc emits: a decoder-like graph
/// with enumerated sizes (dense fp32/fp16, palettized, quantized, for iOS16 and iOS18) and a
/// static attention graph (lowered to matmuls at iOS16, fused at iOS18).
fn packages() -> Vec<(String, mlc::proto::specification::Model, Option<Vec<u8>>)> {
    let palettize = |bits, group_size| Compression::Palettize {
        bits,
        group_size,
        min_elements: 16,
    };
    let quantize = |mode, block_size| Compression::Quantize {
        mode,
        block_size,
        min_elements: 16,
    };
    let sizes = vec![
        BTreeMap::from([("H".to_string(), 4), ("W".to_string(), 4)]),
        BTreeMap::from([("H".to_string(), 2), ("W".to_string(), 6)]),
    ];
    let variants: Vec<(&str, Target, bool, Option<Compression>)> = vec![
        ("decoder-fp32", Target::Ios16, false, None),
        ("decoder-fp16", Target::Ios16, true, None),
        (
            "decoder-lut2",
            Target::Ios16,
            true,
            Some(palettize(2, None)),
        ),
        (
            "decoder-lut4-grouped",
            Target::Ios18,
            true,
            Some(palettize(4, Some(1))),
        ),
        (
            "decoder-int8",
            Target::Ios16,
            false,
            Some(quantize(Mode::Int8, None)),
        ),
        (
            "decoder-uint8",
            Target::Ios17,
            true,
            Some(quantize(Mode::Uint8, None)),
        ),
        (
            "decoder-int8-blocks",
            Target::Ios18,
            true,
            Some(quantize(Mode::Int8, Some(2))),
        ),
    ];
    let mut out = Vec::new();
    for (name, target, fp16, compression) in variants {
        let opts = PipelineOptions {
            fp16,
            sizes: sizes.clone(),
            compression,
            ..Default::default()
        };
        out.push(lowered(name, decoder_graph(), &opts, target, sizes.clone()));
    }
    for (name, target, fused) in [
        ("attention-ios16", Target::Ios16, false),
        ("attention-ios18", Target::Ios18, true),
    ] {
        let opts = PipelineOptions {
            fp16: fused,
            fused_attention: fused,
            lower_attention: true,
            ..Default::default()
        };
        out.push(lowered(name, attention_graph(), &opts, target, vec![]));
    }
    // A multi-output op (one MIL split shared by two Split nodes) over an enumerated size.
    let sizes: Vec<_> = [2, 5]
        .map(|l| BTreeMap::from([("L".to_string(), l)]))
        .to_vec();
    out.push(lowered(
        "split-enumerated",
        split_graph(),
        &PipelineOptions {
            sizes: sizes.clone(),
            ..Default::default()
        },
        Target::Ios16,
        sizes,
    ));
    out
}

/// `[1, 2*L, 4]` split into halves along the symbolic axis, multiplied and joined again.
fn split_graph() -> Graph {
    let mut g = Graph::new("split");
    let x = g.input(
        "x",
        TensorType::new(
            DType::F32,
            vec![Dim::Known(1), Dim::sym("L").scaled(2), Dim::Known(4)],
        ),
    );
    let half = |g: &mut Graph, index| {
        g.add(
            Op::Split {
                axis: 1,
                parts: 2,
                index,
            },
            &[x],
            format!("half{index}"),
        )
        .unwrap()
    };
    let (a, b) = (half(&mut g, 0), half(&mut g, 1));
    let m = g.add(Op::Binary(Binary::Mul), &[a, b], "m").unwrap();
    let y = g.add(Op::Concat { axis: 1 }, &[m, a], "y").unwrap();
    g.set_output("y", y);
    g
}

fn lowered(
    name: &str,
    g: Graph,
    opts: &PipelineOptions,
    target: Target,
    sizes: Vec<mlc::passes::specialize_shapes::Bindings>,
) -> (String, mlc::proto::specification::Model, Option<Vec<u8>>) {
    let g = mlc::passes::run(g, &mlc::passes::pipeline(opts), |_, _| {})
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let iface = FeatureTypes {
        sizes,
        image_outputs: vec![],
        image_inputs: vec![],
    };
    let l =
        lower(&g, target, &ModelInfo::default(), &iface).unwrap_or_else(|e| panic!("{name}: {e}"));
    (name.to_string(), l.model, l.weight_bin)
}

fn constant(g: &mut Graph, name: &str, shape: &[usize], seed: u64) -> mlc::ir::ValueId {
    let n = shape.iter().product();
    g.constant(
        name,
        Tensor::f32(shape.to_vec(), common::random(n, seed, 0.5)),
    )
}

/// conv 3x3 + ReLU + group norm + upsample + conv 1x1 + tanh + clip over `[1, 4, H, W]`.
fn decoder_graph() -> Graph {
    let mut g = Graph::new("decoder");
    let x = g.input(
        "latent",
        TensorType::new(
            DType::F32,
            vec![Dim::Known(1), Dim::Known(4), Dim::sym("H"), Dim::sym("W")],
        ),
    );
    let w1 = constant(&mut g, "w1", &[8, 4, 3, 3], 1);
    let b1 = constant(&mut g, "b1", &[8], 2);
    let gamma = constant(&mut g, "gamma", &[8], 3);
    let beta = constant(&mut g, "beta", &[8], 4);
    let w2 = constant(&mut g, "w2", &[3, 8, 1, 1], 5);
    let c1 = g
        .add(Op::Conv2d(Conv2d::same(3)), &[x, w1, b1], "c1")
        .unwrap();
    let r = g.add(Op::Unary(Unary::Relu), &[c1], "r").unwrap();
    let gn = g
        .add(
            Op::GroupNorm {
                groups: 2,
                epsilon: 1e-5,
            },
            &[r, gamma, beta],
            "gn",
        )
        .unwrap();
    let up = g.add(Op::Upsample { scale: 2 }, &[gn], "up").unwrap();
    let c2 = g.add(Op::Conv2d(Conv2d::same(1)), &[up, w2], "c2").unwrap();
    let t = g.add(Op::Unary(Unary::Tanh), &[c2], "t").unwrap();
    let y = g
        .add(
            Op::Clip {
                min: -0.9,
                max: 0.9,
            },
            &[t],
            "clip",
        )
        .unwrap();
    g.set_output("image", y);
    g
}

/// Attention over `[1, 8, 16]`, then the shape ops: softmax, transpose, reshape, pixel
/// shuffle, slice, concat, reduce_mean, tile and the elementwise table.
fn attention_graph() -> Graph {
    let mut g = Graph::new("attention");
    let x = g.input("x", TensorType::known(DType::F32, &[1, 8, 16]));
    let wq = constant(&mut g, "wq", &[1, 16, 16], 6);
    let mm = |transpose_y| Op::MatMul {
        transpose_x: false,
        transpose_y,
    };
    let q = g.add(mm(false), &[x, wq], "q").unwrap();
    let a = g
        .add(Op::Attention { scale: 0.25 }, &[q, x, x], "a")
        .unwrap();
    let s = g.add(Op::Softmax { axis: 2 }, &[a], "s").unwrap();
    let tr = g
        .add(
            Op::Transpose {
                perm: vec![0, 2, 1],
            },
            &[s],
            "tr",
        )
        .unwrap();
    let rs = g
        .add(
            Op::Reshape {
                shape: [1, 16, 2, 4].map(Dim::Known).to_vec(),
            },
            &[tr],
            "rs",
        )
        .unwrap();
    let ps = g.add(Op::PixelShuffle { factor: 2 }, &[rs], "ps").unwrap();
    let sl = g
        .add(
            Op::Slice {
                axis: 3,
                begin: 0,
                end: 4,
            },
            &[ps],
            "sl",
        )
        .unwrap();
    let cat = g.add(Op::Concat { axis: 1 }, &[sl, sl], "cat").unwrap();
    let rm = g
        .add(
            Op::ReduceMean {
                axes: vec![1],
                keep_dims: true,
            },
            &[cat],
            "rm",
        )
        .unwrap();
    let ti = g
        .add(
            Op::Tile {
                reps: vec![1, 2, 1, 1],
            },
            &[rm],
            "ti",
        )
        .unwrap();
    let mut v = ti;
    for (i, u) in Unary::ALL.iter().enumerate() {
        v = g.add(Op::Unary(*u), &[v], format!("u{i}")).unwrap();
    }
    for (i, b) in Binary::ALL.iter().enumerate() {
        v = g.add(Op::Binary(*b), &[v, ti], format!("b{i}")).unwrap();
    }
    let r = g.add(Op::Rsqrt { epsilon: 1e-3 }, &[v], "rsq").unwrap();
    g.set_output("y", r);
    g
}
