use super::*;

// ---------------------------------------------------------------------------------------------
// Item 2: only regular files are read, and nothing outside a package.

/// Runs the binary, killing it (and failing the test) if it has not finished in `secs`.
pub(crate) fn mlc_deadline(args: &[&str], dir: &Path, env: &[(&str, &str)], secs: u64) -> Output {
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
pub(crate) fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

pub(crate) const CT_PACKAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/ct_conv_relu.mlpackage"
);
pub(crate) const MODEL_REL: &str = "Data/com.apple.CoreML/model.mlmodel";
pub(crate) const WEIGHTS_REL: &str = "Data/com.apple.CoreML/weights/weight.bin";

/// A copy of the coremltools package at `dir/name`.
pub(crate) fn ct_copy(dir: &Path, name: &str) -> PathBuf {
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

/// A `config.json` beside the weights is read like any input: a FIFO there fails at once (VAE
/// and CLIP alike) instead of blocking the build.
#[cfg(unix)]
#[test]
fn fifo_as_config_json_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (model, weights) in [
        (
            "sd-vae",
            "fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors",
        ),
        ("clip-l", "fixtures/clip/clip_l/model.safetensors"),
    ] {
        let w = dir.join(format!("{model}.safetensors"));
        std::fs::copy(common::shared(weights), &w).unwrap();
        mkfifo(&dir.join("config.json"));
        let w = w.display().to_string();
        let args = ["build", model, "--weights", &w, "-o", "o.mlpackage"];
        let o = mlc_deadline(&args, dir, &[], 20);
        let e = one_line_error(&o);
        assert!(
            e.contains("config.json") && e.contains("FIFO"),
            "{model}: {e}"
        );
        assert!(!dir.join("o.mlpackage").exists());
        std::fs::remove_file(dir.join("config.json")).unwrap();
    }
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
