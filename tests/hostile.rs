//! Hostile input (issue 9): memory bombs, special files, symlinks out of a package, endless or
//! slow downloads, interrupted and concurrent builds. Each must end in a one-line error (or
//! succeed), quickly, in bounded memory, and leave nothing behind.
//!
//! The binary runs with its address space limited to [`ADDRESS_SPACE`] (on Linux), so a bomb
//! that slips past the budgets makes its test fail at once (an allocation failure aborts the
//! process) instead of taking the machine's memory.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mlc::weights::Weights;

/// Address space the binary may map. Measured under `prlimit --as`: building TAEF2 from its
/// 2.7 MB checkpoint needs under 64 MiB, and running that decoder on a 32x32 latent (larger
/// than anything run here) under 256 MiB; 2 GiB leaves room for thread stacks and allocator
/// arenas on bigger machines while still stopping a bomb long before the machine's memory.
const ADDRESS_SPACE: u64 = 2 << 30;

/// The mlc binary, to be run under the [`ADDRESS_SPACE`] limit.
fn mlc_command() -> Command {
    #[allow(unused_mut)]
    let mut c = Command::new(env!("CARGO_BIN_EXE_mlc"));
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let limit = libc::rlimit {
            rlim_cur: ADDRESS_SPACE,
            rlim_max: ADDRESS_SPACE,
        };
        // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe, on a
        // value copied into the closure.
        unsafe {
            c.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the binary in `dir` with extra environment variables.
fn mlc_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = mlc_command();
    c.args(args).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Names in `dir` other than `inputs`: what a failed command left behind.
fn leftovers(dir: &Path, inputs: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !inputs.contains(&n.as_str()))
        .collect();
    v.sort();
    v
}

/// Asserts `o` failed with exit code 1 and a single `error:` line; returns that line.
fn one_line_error(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    err.trim_end().to_string()
}

/// Runs a command that must fail in `dir` (holding only `inputs`), checks the error is one
/// line and that nothing was left behind; returns the error line.
fn fails(dir: &Path, inputs: &[&str], args: &[&str], env: &[(&str, &str)]) -> String {
    let o = mlc_env(args, dir, env);
    let err = one_line_error(&o);
    assert_eq!(
        leftovers(dir, inputs),
        Vec::<String>::new(),
        "{args:?} left files behind"
    );
    err
}

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
    fn s(p: &mut Vec<u8>, v: &str) {
        p.push(b'X');
        p.extend((v.len() as u32).to_le_bytes());
        p.extend(v.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: u32) {
        p.push(b'J');
        p.extend(v.to_le_bytes());
    }
    let mut p = vec![0x80, 2];
    p.extend(b"ccollections\nOrderedDict\n)R(");
    for e in entries {
        s(&mut p, &e.key);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        s(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        s(&mut p, e.storage);
        s(&mut p, "cpu");
        int(&mut p, e.numel);
        p.extend(b"tQ");
        int(&mut p, e.offset);
        for dims in [&e.size, &e.stride] {
            p.push(b'(');
            for &d in dims {
                int(&mut p, d);
            }
            p.push(b't');
        }
        p.push(0x89);
        p.extend(b"ccollections\nOrderedDict\n)RtR");
    }
    p.extend(b"u.");
    p
}

fn zip_archive(files: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(false);
    for (name, data) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn write_pth(dir: &Path, name: &str, pickle: &[u8], storages: &[(&str, &[u8])]) -> PathBuf {
    let mut files: Vec<(String, &[u8])> = vec![("ckpt/data.pkl".into(), pickle)];
    for (k, d) in storages {
        files.push((format!("ckpt/data/{k}"), d));
    }
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    let path = dir.join(name);
    std::fs::write(&path, zip_archive(&refs, true)).unwrap();
    path
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
    let bomb = |size: Vec<u32>, stride: Vec<u32>| {
        state_dict_pickle(&[Entry {
            key: "1.weight".into(),
            storage: "0",
            numel: 1,
            offset: 0,
            size,
            stride,
        }])
    };
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
    let pickle = state_dict_pickle(&[Entry {
        key: "1.weight".into(),
        storage: "0",
        numel: 1,
        offset: 0,
        size: vec![1 << 12, 1 << 12],
        stride: vec![0, 0],
    }]);
    write_pth(dir, "bomb.pth", &pickle, &[("0", &[0u8; 4])]);
    let args = [
        "build",
        "taesd",
        "--weights",
        "bomb.pth",
        "-o",
        "o.mlpackage",
    ];
    let e = fails(
        dir,
        &["bomb.pth"],
        &args,
        &[("MLC_MAX_WEIGHT_BYTES", "32M")],
    );
    assert!(
        e.contains("bomb.pth") && e.contains("tensor \"1.weight\"") && e.contains("budget"),
        "{e}"
    );
    let e = fails(dir, &["bomb.pth"], &args, &[("MLC_MAX_WEIGHT_BYTES", "1G")]);
    assert!(!e.contains("budget") && e.contains("\"1.weight\""), "{e}");
    let e = fails(
        dir,
        &["bomb.pth"],
        &args,
        &[("MLC_MAX_WEIGHT_BYTES", "lots")],
    );
    assert!(e.contains("MLC_MAX_WEIGHT_BYTES=\"lots\""), "{e}");

    // Real weights within a budget too small for them.
    let real = common::shared("weights/taef2_decoder.pth");
    let real = real.to_str().unwrap();
    let args = ["build", "flux2", "--weights", real, "-o", "o.mlpackage"];
    // The file (2.7 MB of fp16) fits, its f32 tensors (5.4 MB) do not.
    let e = fails(dir, &["bomb.pth"], &args, &[("MLC_MAX_WEIGHT_BYTES", "4M")]);
    assert!(
        e.contains("taef2_decoder.pth") && e.contains("tensor \"") && e.contains("budget"),
        "{e}"
    );
    // Below the file's own size, the file is not even read.
    let e = fails(
        dir,
        &["bomb.pth"],
        &args,
        &[("MLC_MAX_WEIGHT_BYTES", "100000")],
    );
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
    let pickle = state_dict_pickle(&[Entry {
        key: "1.weight".into(),
        storage: "0",
        numel: 1,
        offset: 0,
        size: vec![5 << 10, 1 << 20],
        stride: vec![0, 0],
    }]);
    write_pth(dir, "bomb.pth", &pickle, &[("0", &[0u8; 4])]);
    let args = [
        "build",
        "taesd",
        "--weights",
        "bomb.pth",
        "-o",
        "o.mlpackage",
    ];
    let e = fails(dir, &["bomb.pth"], &args, &[]);
    assert!(e.contains("\"1.weight\"") && e.contains("budget"), "{e}");
    let e = fails(
        dir,
        &["bomb.pth"],
        &args,
        &[("MLC_MAX_WEIGHT_BYTES", "32G")],
    );
    assert!(
        e.contains("\"1.weight\"") && e.contains("cannot allocate 21474836480 bytes"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 2: only regular files are read, and nothing outside a package.

/// Runs the binary, killing it (and failing the test) if it has not finished in `secs`.
fn mlc_deadline(args: &[&str], dir: &Path, env: &[(&str, &str)], secs: u64) -> Output {
    let mut c = mlc_command();
    c.args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("{args:?} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

const CT_PACKAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/ct_conv_relu.mlpackage"
);
const MODEL_REL: &str = "Data/com.apple.CoreML/model.mlmodel";
const WEIGHTS_REL: &str = "Data/com.apple.CoreML/weights/weight.bin";

/// A copy of the coremltools package at `dir/name`.
fn ct_copy(dir: &Path, name: &str) -> PathBuf {
    let dst = dir.join(name);
    for rel in ["Manifest.json", MODEL_REL, WEIGHTS_REL] {
        let to = dst.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(CT_PACKAGE).join(rel), to).unwrap();
    }
    dst
}

#[cfg(unix)]
#[test]
fn fifo_as_weights_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    mkfifo(&tmp.path().join("w.fifo"));
    let args = ["build", "taesd", "--weights", "w.fifo", "-o", "o.mlpackage"];
    let o = mlc_deadline(&args, tmp.path(), &[], 20);
    let e = one_line_error(&o);
    assert_eq!(
        e,
        "error: w.fifo: cannot read weight file: is a FIFO, not a regular file"
    );
    assert_eq!(leftovers(tmp.path(), &["w.fifo"]), Vec::<String>::new());

    // A directory and a device are refused the same way.
    let o = mlc_deadline(
        &["build", "taesd", "--weights", "/dev/zero"],
        tmp.path(),
        &[],
        20,
    );
    assert!(one_line_error(&o).contains("is a device"));
    let o = mlc_deadline(&["build", "taesd", "--weights", "."], tmp.path(), &[], 20);
    assert!(one_line_error(&o).contains("is a directory"));

    // So is a FIFO as `mlc run --input`.
    let pkg = ct_copy(tmp.path(), "p.mlpackage");
    let args = [
        "run",
        pkg.to_str().unwrap(),
        "--input",
        "w.fifo",
        "--output",
        "x.safetensors",
    ];
    let o = mlc_deadline(&args, tmp.path(), &[], 20);
    assert!(one_line_error(&o).contains("FIFO"));
    assert!(!tmp.path().join("x.safetensors").exists());
}

#[cfg(unix)]
#[test]
fn special_files_and_escaping_symlinks_in_packages_are_refused() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let inspect = |pkg: &Path| {
        let o = mlc_deadline(&["inspect", pkg.to_str().unwrap()], dir, &[], 20);
        one_line_error(&o)
    };
    let pristine = ct_copy(dir, "ok.mlpackage");
    assert!(mlc::package::read_package(&pristine).is_ok());

    // A FIFO in place of each file.
    for (i, rel) in ["Manifest.json", MODEL_REL, WEIGHTS_REL].iter().enumerate() {
        let pkg = ct_copy(dir, &format!("fifo{i}.mlpackage"));
        std::fs::remove_file(pkg.join(rel)).unwrap();
        mkfifo(&pkg.join(rel));
        let e = inspect(&pkg);
        assert!(
            e.contains(&format!(
                "{}: is a FIFO, not a regular file",
                pkg.join(rel).display()
            )),
            "{e}"
        );
    }

    // weight.bin and Manifest.json as symlinks to /dev/zero: outside the package.
    for rel in [WEIGHTS_REL, "Manifest.json"] {
        let pkg = ct_copy(dir, "zero.mlpackage");
        std::fs::remove_file(pkg.join(rel)).unwrap();
        symlink("/dev/zero", pkg.join(rel)).unwrap();
        let e = inspect(&pkg);
        assert!(
            e.contains("resolves to /dev/zero, outside the package"),
            "{e}"
        );
        std::fs::remove_dir_all(&pkg).unwrap();
    }

    // Data/ symlinked to a copy elsewhere.
    let elsewhere = ct_copy(dir, "elsewhere.mlpackage");
    let pkg = ct_copy(dir, "data_link.mlpackage");
    std::fs::remove_dir_all(pkg.join("Data")).unwrap();
    symlink(elsewhere.join("Data"), pkg.join("Data")).unwrap();
    let e = inspect(&pkg);
    assert!(
        e.contains("model.mlmodel: resolves to") && e.contains("outside the package"),
        "{e}"
    );

    // A symlink that stays inside the package is fine.
    let pkg = ct_copy(dir, "inner_link.mlpackage");
    std::fs::rename(pkg.join(WEIGHTS_REL), pkg.join("weights.copy")).unwrap();
    symlink("../../../weights.copy", pkg.join(WEIGHTS_REL)).unwrap();
    let p = mlc::package::read_package(&pkg).unwrap();
    assert!(p.weights.is_some());

    // A huge Manifest.json is refused without reading it all.
    let pkg = ct_copy(dir, "big.mlpackage");
    let f = std::fs::File::create(pkg.join("Manifest.json")).unwrap();
    f.set_len(3 << 30).unwrap();
    let e = inspect(&pkg);
    assert!(
        e.contains("Manifest.json: file is 3221225472 bytes, more than the 1048576 allowed"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 4: interrupted and concurrent builds.

/// Synthetic taesd decoder weights (4 latent channels) as an f32 safetensors file.
fn synthetic_weights(path: &Path) {
    common::write_safetensors(path, &common::synthetic_taesd(4, false).tensors);
}

const BUILD: [&str; 8] = [
    "build",
    "taesd",
    "--weights",
    "w.safetensors",
    "--latent-size",
    "4",
    "-o",
    "m.mlpackage",
];

/// Six builds of one output at once, over several rounds: each succeeds or says another
/// process is writing; the package left is always complete, and no temporary remains.
#[test]
fn concurrent_builds_of_one_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    let mut ok = 0;
    for round in 0..4 {
        let children: Vec<_> = (0..6)
            .map(|_| {
                mlc_command()
                    .args(BUILD)
                    .current_dir(dir)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            if o.status.success() {
                ok += 1;
            } else {
                let e = one_line_error(&o);
                assert!(
                    e.contains("is being written by another mlc process"),
                    "round {round}: {e}"
                );
            }
        }
        let p = mlc::package::read_package(&dir.join("m.mlpackage")).unwrap();
        assert!(p.blobs().unwrap().is_some());
        assert_eq!(
            leftovers(dir, &["w.safetensors", "m.mlpackage"]),
            Vec::<String>::new(),
            "round {round}"
        );
    }
    assert!(ok > 0);
}

/// A build killed mid-write leaves hidden temporaries; the next build of the same output
/// removes those whose process is gone (and only those).
#[cfg(target_os = "linux")]
#[test]
fn next_build_removes_leftovers_of_a_killed_build() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    let dead = ".m.mlpackage.tmp-999999-0";
    std::fs::create_dir_all(dir.join(dead).join("Data")).unwrap();
    std::fs::write(dir.join(dead).join("Manifest.json"), b"{").unwrap();
    std::fs::create_dir(dir.join(".m.mlpackage.old-999998-2")).unwrap();
    // Pid 1 is alive: its temporary may still be in use.
    std::fs::create_dir(dir.join(".m.mlpackage.tmp-1-0")).unwrap();
    let o = mlc_env(&BUILD, dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        leftovers(dir, &["w.safetensors", "m.mlpackage"]),
        [".m.mlpackage.tmp-1-0"]
    );

    // A real SIGKILL mid-build, then a normal build: nothing but the package remains.
    std::fs::remove_dir(dir.join(".m.mlpackage.tmp-1-0")).unwrap();
    let mut child = mlc_command()
        .args(BUILD)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(150));
    child.kill().unwrap();
    child.wait().unwrap();
    let o = mlc_env(&BUILD, dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        leftovers(dir, &["w.safetensors", "m.mlpackage"]),
        Vec::<String>::new()
    );
}

/// `-o x/../y.mlpackage` with no `x/`: refused, and no `x/` appears.
#[test]
fn output_through_a_missing_directory_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    let mut args = BUILD;
    args[7] = "x/../y.mlpackage";
    let e = fails(dir, &["w.safetensors"], &args, &[]);
    assert!(e.contains("x/..") && e.contains("does not exist"), "{e}");
    // Missing plain parents are created.
    args[7] = "new/sub/y.mlpackage";
    let o = mlc_env(&args, dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("new/sub/y.mlpackage/Manifest.json").is_file());
}

// ---------------------------------------------------------------------------------------------
// Item 5: outputs of `run` and `--compile-to`, and causes given once.

/// A latent `[1, 4, 4, 4]` under the model input's name.
fn latent_file(path: &Path) {
    let data: Vec<u8> = (0..64)
        .flat_map(|i| (i as f32 / 64.0).to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 4, 4, 4], &data)
            .unwrap();
    safetensors::serialize_to_file([("latent", view)], None, path).unwrap();
}

#[test]
fn run_refuses_to_overwrite_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    latent_file(&dir.join("in.safetensors"));
    let o = mlc_env(&BUILD, dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(dir.join("img.png"), b"precious").unwrap();
    let run = [
        "run",
        "m.mlpackage",
        "--input",
        "in.safetensors",
        "--output",
        "img.png",
    ];
    let inputs = ["w.safetensors", "in.safetensors", "m.mlpackage", "img.png"];
    let e = fails(dir, &inputs, &run, &[]);
    assert_eq!(
        e,
        "error: img.png: already exists; pass --force to overwrite it"
    );
    assert_eq!(std::fs::read(dir.join("img.png")).unwrap(), b"precious");

    let mut forced = run.to_vec();
    forced.push("--force");
    let o = mlc_env(&forced, dir, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(dir.join("img.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));

    // A directory in the way, even with --force: one cause, given once.
    std::fs::create_dir(dir.join("d.png")).unwrap();
    let mut into_dir = forced.clone();
    into_dir[5] = "d.png";
    let inputs = [
        "w.safetensors",
        "in.safetensors",
        "m.mlpackage",
        "img.png",
        "d.png",
    ];
    let e = fails(dir, &inputs, &into_dir, &[]);
    assert!(
        e.contains("d.png") && e.matches("os error").count() == 1,
        "{e}"
    );
}

/// An io::Error that is both in an error's message and its source was printed twice.
#[test]
fn causes_are_not_repeated() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("file"), b"x").unwrap();
    let e = fails(tmp.path(), &["file"], &["inspect", "file/x.mlpackage"], &[]);
    assert_eq!(e.matches("os error").count(), 1, "{e}");
    let e = fails(
        tmp.path(),
        &["file"],
        &["build", "taesd", "--weights", "file/w.safetensors"],
        &[],
    );
    assert_eq!(e.matches("os error").count(), 1, "{e}");
}

/// Without Apple's tools, `--compile-to DIR` fails clearly and does not leave DIR behind (the
/// package itself is written, as the message says).
#[test]
fn compile_to_without_xcrun_creates_no_directory() {
    let has_xcrun = Command::new("xcrun").arg("--version").output().is_ok();
    if has_xcrun {
        eprintln!("xcrun present; nothing to check");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    let mut args = BUILD.to_vec();
    args.extend(["--compile-to", "out/compiled", "--compiler", "xcrun"]);
    let o = mlc_env(&args, dir, &[]);
    let e = one_line_error(&o);
    assert!(e.contains("cannot run xcrun"), "{e}");
    assert_eq!(leftovers(dir, &["w.safetensors"]), ["m.mlpackage"]);
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
            && e.contains("1099511627776 bytes, more than the 4294967296"),
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
// Item 6: hostile packages in the evaluator (`mlc run`) and `mlc inspect`.

use mlc::mil::values as mv;
use mlc::proto::mil_spec as pb;
use mlc::proto::specification as spec;

/// A small real package (taesd decoder, 4x4 latent) built in `dir` as `m.mlpackage`.
fn small_package(dir: &Path) -> mlc::package::Package {
    synthetic_weights(&dir.join("w.safetensors"));
    let mut o = mlc::compiler::BuildOptions::new("taesd", dir.join("w.safetensors"));
    o.sizes = mlc::compiler::Sizes::Latent(vec![[4, 4]]);
    o.output = Some(dir.join("m.mlpackage"));
    mlc::compiler::build(&o).unwrap();
    mlc::package::read_package(&dir.join("m.mlpackage")).unwrap()
}

fn main_ops(model: &mut spec::Model) -> &mut Vec<pb::Operation> {
    let Some(spec::model::Type::MlProgram(p)) = &mut model.r#type else {
        panic!("not a program")
    };
    let f = p.functions.get_mut("main").unwrap();
    let opset = f.opset.clone();
    &mut f.block_specializations.get_mut(&opset).unwrap().operations
}

fn konst(name: &str, v: pb::Value) -> pb::Operation {
    let ty = v.r#type.clone().unwrap();
    pb::Operation {
        r#type: "const".into(),
        outputs: vec![mv::named(name, ty)],
        attributes: [("val".to_string(), v), mv::name_attr(name)].into(),
        ..Default::default()
    }
}

/// An op of `kind` named `out` (no declared type) with `inputs` bound by name.
fn op(kind: &str, out: &str, inputs: &[(&str, &str)]) -> pb::Operation {
    pb::Operation {
        r#type: kind.into(),
        inputs: inputs
            .iter()
            .map(|(k, v)| (k.to_string(), mv::arg(v)))
            .collect(),
        outputs: vec![pb::NamedValueType {
            name: out.into(),
            r#type: None,
        }],
        attributes: [mv::name_attr(out)].into(),
        ..Default::default()
    }
}

fn scalar(v: f32) -> pb::Value {
    mv::floats_value(&[], vec![v])
}

fn empty() -> pb::Value {
    mv::floats_value(&[0], vec![])
}

/// Hostile ops put first in the program (they run before anything else).
fn hostile_cases() -> Vec<(&'static str, Vec<pb::Operation>, &'static str)> {
    let w4 = || mv::floats_value(&[4, 4, 1, 1], vec![0.5; 16]);
    vec![
        (
            "constexpr op without outputs",
            vec![pb::Operation {
                r#type: "constexpr_lut_to_dense".into(),
                ..Default::default()
            }],
            "op #0 (constexpr_lut_to_dense): has no outputs",
        ),
        (
            "clip with an empty alpha",
            vec![
                konst("lo", empty()),
                konst("hi", scalar(1.0)),
                op("clip", "c", &[("x", "latent"), ("alpha", "lo"), ("beta", "hi")]),
            ],
            "op c (clip): alpha must hold one value, got 0",
        ),
        (
            "rsqrt with an empty epsilon",
            vec![
                konst("eps", empty()),
                op("rsqrt", "r", &[("x", "latent"), ("epsilon", "eps")]),
            ],
            "op r (rsqrt): epsilon must hold one value, got 0",
        ),
        (
            "conv with an empty bias",
            vec![
                konst("w", w4()),
                konst("b", empty()),
                op("conv", "cv", &[("x", "latent"), ("weight", "w"), ("bias", "b")]),
            ],
            "op cv (conv): x [1, 4, 4, 4], weight [4, 4, 1, 1], bias",
        ),
        (
            "conv with empty groups",
            vec![
                konst("w", w4()),
                konst("g", empty()),
                op("conv", "cv", &[("x", "latent"), ("weight", "w"), ("groups", "g")]),
            ],
            "op cv (conv): groups must hold one value, got 0",
        ),
        (
            "dequantize with an empty scale",
            vec![
                konst("q", mv::raw_bytes_value(pb::DataType::Uint8, &[2, 2], vec![1; 4])),
                konst("zp", empty()),
                konst("s", empty()),
                konst("ax", scalar(0.0)),
                op(
                    "constexpr_affine_dequantize",
                    "dq",
                    &[
                        ("quantized_data", "q"),
                        ("zero_point", "zp"),
                        ("scale", "s"),
                        ("axis", "ax"),
                    ],
                ),
            ],
            "op dq (constexpr_affine_dequantize): scale [0] / zero_point [0] do not fit",
        ),
        (
            "dequantize with an empty axis",
            vec![
                konst("q", mv::raw_bytes_value(pb::DataType::Uint8, &[2, 2], vec![1; 4])),
                konst("zp", scalar(0.0)),
                konst("s", scalar(1.0)),
                konst("ax", empty()),
                op(
                    "constexpr_affine_dequantize",
                    "dq",
                    &[
                        ("quantized_data", "q"),
                        ("zero_point", "zp"),
                        ("scale", "s"),
                        ("axis", "ax"),
                    ],
                ),
            ],
            "op dq (constexpr_affine_dequantize): axis must hold one value, got 0",
        ),
        (
            "lut indexed past its end",
            vec![
                konst("i", mv::floats_value(&[2, 2], vec![0.0, 1.0, 2.0, 7.0])),
                konst("t", mv::floats_value(&[1, 1, 2, 1], vec![0.25, 0.5])),
                op("constexpr_lut_to_dense", "l", &[("indices", "i"), ("lut", "t")]),
            ],
            "op l (constexpr_lut_to_dense): index 2 is past the end of a 2-entry lut",
        ),
        (
            "lut with an absurd shape",
            vec![
                konst("i", mv::raw_bytes_value(pb::DataType::Uint8, &[1], vec![0])),
                konst("t", mv::floats_value(&[2], vec![0.25, 0.5])),
                konst("sh", mv::floats_value(&[2], vec![4e9, 4e9])),
                op(
                    "constexpr_lut_to_dense",
                    "l",
                    &[("indices", "i"), ("lut", "t"), ("shape", "sh")],
                ),
            ],
            "op l (constexpr_lut_to_dense): a result of shape [4000000000, 4000000000] would exceed",
        ),
        (
            "uint4 const of 2^62+1 elements",
            vec![konst(
                "u4",
                mv::raw_bytes_value(pb::DataType::Uint4, &[(1 << 62) + 1], vec![0; 8]),
            )],
            "op u4 (const): a result of shape [4611686018427387905] would exceed",
        ),
        (
            "upsample by 1e9",
            vec![
                konst("s", scalar(1e9)),
                op(
                    "upsample_nearest_neighbor",
                    "up",
                    &[("x", "latent"), ("scale_factor_height", "s"), ("scale_factor_width", "s")],
                ),
            ],
            "op up (upsample_nearest_neighbor): a result of shape [1, 4, 4000000000, 4000000000] would exceed",
        ),
        (
            "tile by 2^20",
            vec![
                konst("reps", mv::ints_value(&[4], vec![1, 1, 1 << 20, 1 << 20])),
                op("tile", "t", &[("x", "latent"), ("reps", "reps")]),
            ],
            "op t (tile): a result of shape [1, 4, 4194304, 4194304] would exceed",
        ),
        (
            "conv padded by 100000",
            vec![
                konst("w", w4()),
                konst("pt", mv::string_value("custom")),
                konst("pad", mv::ints_value(&[4], vec![100000; 4])),
                op(
                    "conv",
                    "cv",
                    &[("x", "latent"), ("weight", "w"), ("pad_type", "pt"), ("pad", "pad")],
                ),
            ],
            "op cv (conv): a result of shape [1, 4, 200004, 200004] would exceed",
        ),
        (
            "broadcast to 1.6e9 elements",
            vec![
                konst("a", mv::floats_value(&[40000, 1], vec![1.0; 40000])),
                konst("b", mv::floats_value(&[1, 40000], vec![1.0; 40000])),
                op("add", "s", &[("x", "a"), ("y", "b")]),
            ],
            "op s (add): a result of shape [40000, 40000] would exceed",
        ),
        (
            "matmul to 1.6e9 elements",
            vec![
                konst("a", mv::floats_value(&[40000, 1], vec![1.0; 40000])),
                konst("b", mv::floats_value(&[1, 40000], vec![1.0; 40000])),
                op("matmul", "mm", &[("x", "a"), ("y", "b")]),
            ],
            "op mm (matmul): a result of shape [40000, 40000] would exceed",
        ),
    ]
}

/// Each hostile op makes `run` fail with an error naming it, and `inspect` still describes
/// the package.
#[test]
fn hostile_packages_fail_evaluation_by_op() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = small_package(tmp.path());
    let latent = mlc::kernels::Array::new(vec![1, 4, 4, 4], vec![0.1; 64]);
    let inputs = std::collections::BTreeMap::from([("latent".to_string(), latent)]);
    // The untouched package runs.
    mlc::run::run(&pkg, "main", &inputs).unwrap();
    for (what, ops, expect) in hostile_cases() {
        let mut bad = mlc::package::Package {
            path: pkg.path.clone(),
            model: pkg.model.clone(),
            weights: pkg.weights.clone(),
        };
        main_ops(&mut bad.model).splice(0..0, ops);
        let e = mlc::run::run(&bad, "main", &inputs)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(expect), "{what}: {e}");
        assert_eq!(e.lines().count(), 1, "{what}: {e}");
        mlc::inspect::describe(&bad).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// Through the binary: a tile bomb and an output-less op fail `run` with one line and write
/// nothing; `inspect` describes both.
#[test]
fn cli_run_and_inspect_of_hostile_packages() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pkg = small_package(dir);
    latent_file(&dir.join("in.safetensors"));
    let cases = hostile_cases();
    for (what, ops, expect) in cases.into_iter().filter(|c| {
        c.0.starts_with("tile") || c.0.starts_with("constexpr op") || c.0.starts_with("uint4")
    }) {
        let mut model = pkg.model.clone();
        main_ops(&mut model).splice(0..0, ops);
        mlc::package::write_package(&dir.join("bad.mlpackage"), &model, pkg.weights.as_deref())
            .unwrap();
        let inputs = [
            "w.safetensors",
            "m.mlpackage",
            "in.safetensors",
            "bad.mlpackage",
        ];
        let args = [
            "run",
            "bad.mlpackage",
            "--input",
            "in.safetensors",
            "--output",
            "o.png",
        ];
        let e = fails(dir, &inputs, &args, &[]);
        assert!(e.contains(expect), "{what}: {e}");
        let o = mlc_env(&["inspect", "bad.mlpackage"], dir, &[]);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
    }
}

// ---------------------------------------------------------------------------------------------
// Item 7: weights a package cannot hold, and compression of tiny tensors.

/// Synthetic weights with element 5 of `3.conv.2.weight` set to `v`.
fn weights_with(v: f32) -> Weights {
    let mut w = common::synthetic_taesd(4, false);
    let t = w.tensors.get_mut("3.conv.2.weight").unwrap();
    let mlc::tensor::TensorData::F32(data) = &mut t.data else {
        panic!("synthetic weights are f32")
    };
    data[5] = v;
    w
}

fn small_options(precision: mlc::compiler::Precision) -> mlc::compiler::BuildOptions {
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
            let e = mlc::compiler::compile_weights(&o, &weights_with(v), |_, _| {})
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
        mlc::compiler::compile_weights(&o, &weights_with(70000.0), |_, _| {}).unwrap();
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
            let c =
                mlc::compiler::compile_weights(&o, &common::synthetic_taesd(4, false), |_, _| {})
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
// Item 8: absurd sizes, and enumerated sizes enforced by `run`.

#[test]
fn absurd_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    for (flag, size, expect) in [
        (
            "--image-size",
            "18446744073709551608",
            "is over the limit of 16384 per side",
        ),
        (
            "--latent-size",
            "4294967296",
            "is over the limit of 16384 per side",
        ),
        (
            "--latent-size",
            "4x4294967296",
            "is over the limit of 16384 per side",
        ),
        (
            "--latent-size",
            "2049",
            "gives 16392x16392 images, over the limit of 16384 pixels",
        ),
        (
            "--image-size",
            "16392",
            "is over the limit of 16384 per side",
        ),
    ] {
        let args = [
            "build",
            "taesd",
            "--weights",
            "w.safetensors",
            flag,
            size,
            "-o",
            "m.mlpackage",
        ];
        let e = fails(dir, &["w.safetensors"], &args, &[]);
        assert!(e.contains(flag) && e.contains(expect), "{flag} {size}: {e}");
    }
    // The library says the same, and the largest sizes are accepted.
    let mut o = small_options(mlc::compiler::Precision::Fp16);
    o.sizes = mlc::compiler::Sizes::Latent(vec![[4, 4], [3000, 4]]);
    let e = o.size_bindings().unwrap_err().to_string();
    assert!(
        e.ends_with(
            "latent size 3000x4 gives 24000x32 images, over the limit of 16384 pixels per side"
        ),
        "{e}"
    );
    o.sizes = mlc::compiler::Sizes::Latent(vec![[2048, 2048]]);
    o.size_bindings().unwrap();
    o.sizes = mlc::compiler::Sizes::Image(vec![[16384, 8]]);
    o.size_bindings().unwrap();
}

#[test]
fn run_enforces_enumerated_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    synthetic_weights(&dir.join("w.safetensors"));
    let mut o = mlc::compiler::BuildOptions::new("taesd", dir.join("w.safetensors"));
    o.sizes = mlc::compiler::Sizes::Latent(vec![[4, 4], [2, 6]]);
    o.output = Some(dir.join("m.mlpackage"));
    mlc::compiler::build(&o).unwrap();
    let pkg = mlc::package::read_package(&dir.join("m.mlpackage")).unwrap();
    let run = |h: usize, w: usize| {
        let latent = mlc::kernels::Array::new(vec![1, 4, h, w], vec![0.1; 4 * h * w]);
        let inputs = std::collections::BTreeMap::from([("latent".to_string(), latent)]);
        mlc::run::run(&pkg, "main", &inputs).map(|o| o.len())
    };
    assert_eq!(run(4, 4).unwrap(), 1);
    assert_eq!(run(2, 6).unwrap(), 1);
    for (h, w) in [(6, 2), (3, 3), (8, 8)] {
        let e = run(h, w).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "input \"latent\": shape 1x4x{h}x{w} is not one of the enumerated shapes: 1x4x4x4, 1x4x2x6"
            )
        );
    }
    // Through the binary: one line, no output written.
    let data: Vec<u8> = (0..36).flat_map(|_| 0.5f32.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 4, 3, 3], &data)
            .unwrap();
    safetensors::serialize_to_file([("latent", view)], None, &dir.join("in.safetensors")).unwrap();
    let inputs = ["w.safetensors", "m.mlpackage", "in.safetensors"];
    let args = [
        "run",
        "m.mlpackage",
        "--input",
        "in.safetensors",
        "--output",
        "o.safetensors",
    ];
    let e = fails(dir, &inputs, &args, &[]);
    assert!(
        e.contains("1x4x3x3 is not one of the enumerated shapes"),
        "{e}"
    );
}
