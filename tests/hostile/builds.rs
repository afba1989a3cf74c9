use super::*;

// ---------------------------------------------------------------------------------------------
// Item 4: interrupted and concurrent builds.

/// Synthetic taesd decoder weights (4 latent channels) as an f32 safetensors file.
pub(crate) fn synthetic_weights(path: &Path) {
    common::write_safetensors(path, &common::synthetic_taesd(4, false).tensors);
}

pub(crate) const BUILD: [&str; 8] = [
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
pub(crate) fn latent_file(path: &Path) {
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
