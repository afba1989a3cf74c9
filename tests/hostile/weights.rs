use super::*;
use mlc::fuzzing::torch;

// ---------------------------------------------------------------------------------------------
// Item 1: memory bombs in .pth checkpoints.

/// One tensor of a hand-written checkpoint: key, storage key, storage numel, offset, size,
/// stride (all float32 storages).
struct Entry<'a> {
    key: String,
    storage: &'a str,
    numel: u32,
    offset: u32,
    size: Vec<u32>,
    stride: Vec<u32>,
}

/// A protocol-2 pickle shaped like `torch.save(state_dict)` output.
fn state_dict_pickle(entries: &[Entry]) -> Vec<u8> {
    let tuples: Vec<torch::Entry> = entries
        .iter()
        .map(|e| {
            let (size, stride) = (&e.size[..], &e.stride[..]);
            (
                e.key.as_str(),
                "FloatStorage",
                e.storage,
                e.numel,
                e.offset,
                size,
                stride,
            )
        })
        .collect();
    torch::state_dict_pickle(&tuples)
}

fn write_pth(dir: &Path, name: &str, pickle: &[u8], storages: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, torch::archive("ckpt", pickle, storages, true)).unwrap();
    path
}

/// A checkpoint pickle whose one tensor, "1.weight", views the single float of storage "0" with
/// `size` and `stride`: stride 0 makes it as large as `size` says.
fn one_float_pickle(size: Vec<u32>, stride: Vec<u32>) -> Vec<u8> {
    state_dict_pickle(&[Entry {
        key: "1.weight".into(),
        storage: "0",
        numel: 1,
        offset: 0,
        size,
        stride,
    }])
}

/// Writes `bomb.pth` to `dir`, one float viewed as `size` (strides 0), and returns the taesd
/// build of it.
fn bomb_build(dir: &Path, size: Vec<u32>) -> [&'static str; 6] {
    let pickle = one_float_pickle(size, vec![0, 0]);
    write_pth(dir, "bomb.pth", &pickle, &[("0", &[0u8; 4])]);
    [
        "build",
        "taesd",
        "--weights",
        "bomb.pth",
        "-o",
        "o.mlpackage",
    ]
}

/// The one-line error of `args` run in `dir` (where only bomb.pth may stay) with the weight
/// budget `budget`.
fn fails_within(dir: &Path, args: &[&str], budget: &str) -> String {
    fails(
        dir,
        &["bomb.pth"],
        args,
        &[("MLC_MAX_WEIGHT_BYTES", budget)],
    )
}

fn load_err(path: &Path) -> String {
    let t = Instant::now();
    let e = Weights::load(path).unwrap_err().to_string();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(!e.contains('\n'), "{e}");
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    e
}

/// One stored float repeated 2^26 times by a stride-0 view: 256 MiB from a 4-byte storage.
#[test]
fn pth_stride_zero_expansion_hits_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb = one_float_pickle;
    let one = 1.5f32.to_le_bytes();
    let p = write_pth(
        tmp.path(),
        "s0.pth",
        &bomb(vec![1 << 13, 1 << 13], vec![0, 0]),
        &[("0", &one)],
    );
    let e = load_err(&p);
    assert!(
        e.contains("tensor \"1.weight\" of size [8192, 8192] needs 268435456 more bytes")
            && e.contains("MLC_MAX_WEIGHT_BYTES"),
        "{e}"
    );

    // A size whose element count overflows u64 is refused the same way, not wrapped.
    let p = write_pth(
        tmp.path(),
        "ovf.pth",
        &bomb(vec![u32::MAX >> 1; 3], vec![0; 3]),
        &[("0", &one)],
    );
    let e = load_err(&p);
    assert!(e.contains("\"1.weight\"") && e.contains("budget"), "{e}");

    // Small stride-0 views are legitimate (torch saves expanded tensors this way) and load.
    let p = write_pth(
        tmp.path(),
        "ok.pth",
        &bomb(vec![4, 8], vec![0, 0]),
        &[("0", &one)],
    );
    let w = Weights::load(&p).unwrap();
    assert_eq!(w.tensors["1.weight"].to_f32(), vec![1.5; 32]);
}

/// 300 keys that each view the whole of one 4 MiB storage: 1.2 GB of decoded tensors.
#[test]
fn pth_many_keys_over_one_storage_hit_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let numel = 1u32 << 20;
    let entries: Vec<Entry> = (1..=300)
        .map(|i| Entry {
            key: format!("{i}.weight"),
            storage: "0",
            numel,
            offset: 0,
            size: vec![numel],
            stride: vec![1],
        })
        .collect();
    let data = vec![0u8; 4 * numel as usize];
    let p = write_pth(
        tmp.path(),
        "shared.pth",
        &state_dict_pickle(&entries),
        &[("0", &data)],
    );
    let e = load_err(&p);
    assert!(e.contains("memory budget of 67108864 bytes"), "{e}");
    // The budget runs out at the 16th tensor (4 MiB storage + 15 x 4 MiB fit in 64 MiB).
    assert!(e.contains(".weight\" of size [1048576]"), "{e}");
}

/// Pickles that allocate far more than their length: millions of EMPTY_LIST on the stack,
/// millions of lists appended to one (constant stack), a million distinct memo entries.
#[test]
fn pth_pickle_bombs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, body: &[u8]| {
        let mut p = vec![0x80, 2];
        p.extend(body);
        p.push(b'.');
        load_err(&write_pth(tmp.path(), name, &p, &[]))
    };

    // Each EMPTY_LIST costs an object and a stack slot: the budget runs out first.
    let e = run("lists.pth", &vec![b']'; 8_000_000]);
    assert!(e.contains("memory budget") && e.contains("data.pkl"), "{e}");

    // NONE costs only a stack slot: the stack limit is reached first.
    let e = run("nones.pth", &vec![b'N'; 8_000_000]);
    assert!(
        e.contains("pickle stack deeper than 1048576 entries"),
        "{e}"
    );

    let mut appends = vec![b']'];
    for _ in 0..4_000_000 {
        appends.extend(b"]a");
    }
    let e = run("appends.pth", &appends);
    assert!(e.contains("memory budget") && e.contains("data.pkl"), "{e}");

    let mut memo = vec![b']'];
    for i in 0..1_100_000u32 {
        memo.push(b'r');
        memo.extend(i.to_le_bytes());
    }
    let e = run("memo.pth", &memo);
    assert!(e.contains("pickle memo larger than"), "{e}");

    let e = run("marks.pth", &vec![b'('; 8_000_000]);
    assert!(e.contains("pickle stack deeper than"), "{e}");
}

/// Through the binary: the bomb is a one-line error naming the tensor, nothing is written, and
/// the environment variable raises the budget (the same file then fails on the tensor's shape).
#[test]
fn cli_budget_error_and_override() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let args = bomb_build(dir, vec![1 << 12, 1 << 12]);
    let e = fails_within(dir, &args, "32M");
    assert!(
        e.contains("bomb.pth") && e.contains("tensor \"1.weight\"") && e.contains("budget"),
        "{e}"
    );
    let e = fails_within(dir, &args, "1G");
    assert!(!e.contains("budget") && e.contains("\"1.weight\""), "{e}");
    let e = fails_within(dir, &args, "lots");
    assert!(e.contains("MLC_MAX_WEIGHT_BYTES=\"lots\""), "{e}");

    // Real weights within a budget too small for them.
    let real = common::shared("weights/taef2_decoder.pth");
    let real = real.to_str().unwrap();
    let args = ["build", "flux2", "--weights", real, "-o", "o.mlpackage"];
    // The file (2.7 MB of fp16) fits, its f32 tensors (5.4 MB) do not.
    let e = fails_within(dir, &args, "4M");
    assert!(
        e.contains("taef2_decoder.pth") && e.contains("tensor \"") && e.contains("budget"),
        "{e}"
    );
    // Below the file's own size, the file is not even read.
    let e = fails_within(dir, &args, "100000");
    assert!(
        e.ends_with(
            "file is 2704756 bytes, more than the 100000 allowed (set MLC_MAX_WEIGHT_BYTES to \
             allow more)"
        ),
        "{e}"
    );
}

/// A checkpoint whose one tensor would take 20 GiB (one stored element, stride 0), through the
/// binary in its 2 GiB address space: refused by the default budget, and with the budget raised
/// past it, by the failed allocation; one line either way, never an abort.
#[cfg(target_os = "linux")]
#[test]
fn twenty_gib_bomb_fails_cleanly_in_a_bounded_address_space() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let args = bomb_build(dir, vec![5 << 10, 1 << 20]);
    let e = fails(dir, &["bomb.pth"], &args, &[]);
    assert!(e.contains("\"1.weight\"") && e.contains("budget"), "{e}");
    let e = fails_within(dir, &args, "32G");
    assert!(
        e.contains("\"1.weight\"") && e.contains("cannot allocate 21474836480 bytes"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 7: a duplicate key in a safetensors header is named.

#[test]
fn duplicate_safetensors_key_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let header = br#"{"1.bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"3.conv.0.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"1.bias":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header);
    bytes.extend([0u8; 12]);
    let path = tmp.path().join("dup.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let e = Weights::load(&path).unwrap_err().to_string();
    assert!(
        e.ends_with("tensor key \"1.bias\" appears twice in the header"),
        "{e}"
    );
    assert!(!e.contains("3.conv.0.weight"), "{e}");
}

/// Sparse files of a terabyte as weights: refused by size, not read.
#[cfg(unix)]
#[test]
fn huge_sparse_weight_files_are_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let f = std::fs::File::create(dir.join("big.safetensors")).unwrap();
    f.set_len(1 << 40).unwrap();
    let args = ["build", "taesd", "--weights", "big.safetensors"];
    let o = mlc_deadline(&args, dir, &[], 20);
    let e = one_line_error(&o);
    assert!(
        e.contains("big.safetensors")
            && e.contains("1099511627776 bytes, more than the 68719476736"),
        "{e}"
    );

    let pkg = ct_copy(dir, "p.mlpackage");
    let f = std::fs::File::create(pkg.join(WEIGHTS_REL)).unwrap();
    f.set_len(1 << 40).unwrap();
    let o = mlc_deadline(&["inspect", "p.mlpackage"], dir, &[], 20);
    let e = one_line_error(&o);
    assert!(e.contains("weight.bin: file is 1099511627776 bytes"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Item 7: weights a package cannot hold, and compression of tiny tensors.

/// Synthetic weights with element 5 of `3.conv.2.weight` set to `v`.
pub(crate) fn weights_with(v: f32) -> Weights {
    let mut w = common::synthetic_taesd(4, false);
    let t = w.tensors.get_mut("3.conv.2.weight").unwrap();
    let mlc::tensor::TensorData::F32(data) = &mut t.data else {
        panic!("synthetic weights are f32")
    };
    data[5] = v;
    w
}

pub(crate) fn small_options(precision: mlc::compiler::Precision) -> mlc::compiler::BuildOptions {
    let mut o = mlc::compiler::BuildOptions::new("taesd", "synthetic.safetensors");
    o.sizes = mlc::compiler::Sizes::Latent(vec![[4, 4]]);
    o.precision = precision;
    o
}

#[test]
fn non_finite_and_fp16_overflowing_weights_are_named() {
    use mlc::compiler::Precision::{Fp16, Fp32};
    let palettize = Some(mlc::passes::Compression::Palettize {
        bits: 4,
        group_size: None,
        min_elements: 16,
    });
    let quantize = Some(mlc::passes::Compression::Quantize {
        mode: mlc::passes::quantize::Mode::Int8,
        block_size: None,
        min_elements: 16,
    });
    let cases = [
        (
            f32::NAN,
            Fp32,
            "holds 1 NaN and 0 infinite value(s) of 36864",
        ),
        (
            f32::NAN,
            Fp16,
            "holds 1 NaN and 0 infinite value(s) of 36864",
        ),
        (f32::INFINITY, Fp16, "holds 0 NaN and 1 infinite value(s)"),
        (
            f32::NEG_INFINITY,
            Fp32,
            "holds 0 NaN and 1 infinite value(s)",
        ),
        (
            70000.0,
            Fp16,
            "holds 70000 (1 value(s) beyond fp16's largest, 65504); build with fp32 precision",
        ),
        (
            -1e30,
            Fp16,
            "holds 1000000000000000000000000000000 (1 value(s)",
        ),
    ];
    for (v, precision, expect) in cases {
        for compression in [None, palettize.clone(), quantize.clone()] {
            let mut o = small_options(precision);
            o.compression = compression.clone();
            let e = mlc::compiler::build_program_from_weights(&o, &weights_with(v), |_, _| {})
                .err()
                .unwrap_or_else(|| panic!("{v} at {precision:?} with {compression:?} built"))
                .to_string();
            assert!(
                e.starts_with("synthetic.safetensors: weight \"3.conv.2.weight\" ")
                    && e.contains(expect),
                "{v} at {precision:?}: {e}"
            );
            assert_eq!(e.lines().count(), 1);
        }
    }
    // Large but finite values are fine at fp32, compressed or not.
    for compression in [None, palettize, quantize] {
        let mut o = small_options(Fp32);
        o.compression = compression;
        mlc::compiler::build_program_from_weights(&o, &weights_with(70000.0), |_, _| {}).unwrap();
    }
}

#[test]
fn cli_build_with_fp16_overflowing_weights_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    common::write_safetensors(&dir.join("w.safetensors"), &weights_with(70000.0).tensors);
    let e = fails(dir, &["w.safetensors"], &BUILD, &[]);
    assert!(
        e.contains("\"3.conv.2.weight\"")
            && e.contains("70000")
            && e.ends_with("build with fp32 precision (--precision fp32)"),
        "{e}"
    );
    let mut fp32 = BUILD.to_vec();
    fp32.extend(["--precision", "fp32"]);
    let o = mlc_env(&fp32, dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `--min-elements 0` or `1` makes every constant a candidate: scalars and tensors smaller
/// than the table stay dense instead of panicking.
#[test]
fn compression_of_tiny_constants_is_skipped() {
    for min_elements in [0, 1] {
        for compression in [
            mlc::passes::Compression::Palettize {
                bits: 8,
                group_size: None,
                min_elements,
            },
            mlc::passes::Compression::Quantize {
                mode: mlc::passes::quantize::Mode::Uint8,
                block_size: None,
                min_elements,
            },
        ] {
            let mut o = small_options(mlc::compiler::Precision::Fp16);
            o.compression = Some(compression.clone());
            let c = mlc::compiler::build_program_from_weights(
                &o,
                &common::synthetic_taesd(4, false),
                |_, _| {},
            )
            .unwrap_or_else(|e| panic!("{compression:?}: {e}"));
            // The big weights were still compressed.
            let text = mlc::mil::print::print_model(&c.lowered.model);
            assert!(text.contains("constexpr_"), "{compression:?}");
        }
    }
    // Through the binary as well.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    let mut args = BUILD.to_vec();
    args.extend(["--palettize", "4", "--min-elements", "0"]);
    let o = mlc_env(&args, dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------
// Sharded weights: the index names files outside its folder, or disagrees with its shards.

#[test]
fn cli_build_from_a_hostile_shard_index_fails_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(common::taef2_weights(), dir.path().join("a.safetensors")).unwrap();
    let index = "m.safetensors.index.json";
    for (map, want) in [
        (r#"{"1.weight": "../a.safetensors"}"#, "not a file name"),
        (r#"{"1.weight": "/etc/passwd"}"#, "not a file name"),
        (r#"{"1.weight": "b.safetensors"}"#, "not found"),
        (r#"{"1.weight": "a.safetensors"}"#, "does not list"),
    ] {
        let json = format!(r#"{{"metadata": {{}}, "weight_map": {map}}}"#);
        std::fs::write(dir.path().join(index), json).unwrap();
        let args = ["build", "taef2", "--weights", index, "-o", "o.mlpackage"];
        let e = fails(dir.path(), &["a.safetensors", index], &args, &[]);
        assert!(e.contains(index) && e.contains(want), "{map}: {e}");
    }
}
