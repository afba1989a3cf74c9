//! Issue 5 tooling: --dump-passes, --timings, --json, --compile (with a stand-in xcrun) and
//! inspect --dot, through the real binary.

mod common;

use common::*;
use std::path::Path;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn dump_passes_writes_every_stage_in_order() {
    let dir = out_dir("tooling_dump");
    let w = taef2_arg();
    let o = mlc(
        &taef2_build(&w, "8", &["--dump-passes", "dumps", "-o", "m.mlpackage"]),
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut names: Vec<String> = std::fs::read_dir(dir.join("dumps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expect = [
        "00_declare.dot",
        "00_declare.ir.txt",
        "01_lower_group_norm.dot",
        "01_lower_group_norm.ir.txt",
        "01_lower_group_norm.mil.txt",
        "01_lower_group_norm.mlpackage",
        "02_lower_attention.dot",
        "02_lower_attention.ir.txt",
        "02_lower_attention.mil.txt",
        "02_lower_attention.mlpackage",
        "03_fold_constants.dot",
        "03_fold_constants.ir.txt",
        "03_fold_constants.mil.txt",
        "03_fold_constants.mlpackage",
        "04_cast_fp16.dot",
        "04_cast_fp16.ir.txt",
        "04_cast_fp16.mil.txt",
        "04_cast_fp16.mlpackage",
        "05_dce.dot",
        "05_dce.ir.txt",
        "05_dce.mil.txt",
        "05_dce.mlpackage",
    ];
    assert_eq!(names, expect);
    let ir = |n: &str| std::fs::read_to_string(dir.join("dumps").join(n)).unwrap();
    assert_eq!(ir("00_declare.ir.txt").matches("= group_norm(").count(), 3);
    assert_eq!(
        ir("01_lower_group_norm.ir.txt")
            .matches("= group_norm(")
            .count(),
        0
    );
    assert!(ir("00_declare.ir.txt").contains("= div(%latent, %l0_three)"));
    assert!(ir("03_fold_constants.ir.txt").contains("= mul(%latent, %l0_div_recip)"));
    assert!(ir("04_cast_fp16.mil.txt").contains("fp16"));
    assert!(ir("05_dce.dot").starts_with("digraph"));
    // The last dump is the shipped program.
    let shipped = mlc::mil::print::print_program(
        match &mlc::package::read_package(&dir.join("m.mlpackage"))
            .unwrap()
            .model
            .r#type
        {
            Some(mlc::proto::specification::model::Type::MlProgram(p)) => p,
            _ => panic!(),
        },
    );
    assert!(
        ir("05_dce.mil.txt").contains(&shipped),
        "the dce dump differs from the package"
    );
    oracle(&dir);
}

#[test]
fn timings_and_json_reports() {
    let dir = out_dir("tooling_reports");
    let w = taef2_arg();
    let o = mlc(
        &taef2_build(&w, "8", &["--timings", "--json", "-o", "m.mlpackage"]),
        &dir,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    for stage in [
        "load weights",
        "declare",
        "lower_group_norm",
        "fold_constants",
        "cast_fp16",
        "dce",
        "lower",
        "write",
        "total",
    ] {
        assert!(
            err.lines()
                .any(|l| l.trim_end().ends_with(&format!("ms  {stage}"))),
            "no timing for {stage}: {err}"
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["model"], "taef2");
    assert_eq!(v["inputs"][0]["name"], "latent");
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 32, 8, 8]));
    assert_eq!(v["outputs"][0]["dtype"], "float16");
    assert_eq!(v["ops"]["by_type"]["conv"], 41);
    assert_eq!(v["ane"]["fits"], true);
    assert!(v["sizes"]["weight_bin_bytes"].as_u64().unwrap() > 2_600_000);
    assert!(v["timings_ms"].as_array().unwrap().len() >= 8);
}

#[test]
fn compile_runs_xcrun_coremlc_and_fails_clearly_without_it() {
    let dir = out_dir("tooling_compile");
    let w = taef2_arg();
    // A stand-in xcrun: records its arguments and makes the .mlmodelc coremlc would.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("xcrun");
    std::fs::write(&script, "#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/args\"\nmkdir -p \"$4/$(basename \"$3\" .mlpackage).mlmodelc\"\necho 'coremlc: compiled'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let o = mlc_with_path(
        &taef2_build(
            &w,
            "8",
            &[
                "-o",
                "m.mlpackage",
                "--compile-to",
                "compiled",
                "--compiler",
                "xcrun",
            ],
        ),
        &dir,
        Some(Path::new(&path)),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(bin.join("args")).unwrap().trim(),
        "coremlc compile m.mlpackage compiled"
    );
    assert!(dir.join("compiled/m.mlmodelc").is_dir());
    assert!(
        text(&o.stdout).contains("compiled compiled/m.mlmodelc"),
        "{}",
        text(&o.stdout)
    );
    assert!(text(&o.stderr).contains("coremlc: compiled"));

    // No xcrun at all: a clear error; the package is still there.
    std::fs::remove_dir_all(dir.join("m.mlpackage")).unwrap();
    let o = mlc_with_path(
        &taef2_build(
            &w,
            "8",
            &["-o", "m.mlpackage", "--compile", "--compiler", "xcrun"],
        ),
        &dir,
        Some(Path::new("/nonexistent")),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("needs macOS with Xcode"),
        "{}",
        text(&o.stderr)
    );
    assert!(dir.join("m.mlpackage/Manifest.json").is_file());
}

#[test]
fn inspect_dot_draws_the_program() {
    let dir = out_dir("tooling_dot");
    let w = taef2_arg();
    assert!(mlc(&taef2_build(&w, "8", &["-o", "m.mlpackage"]), &dir)
        .status
        .success());
    let o = mlc(&["inspect", "m.mlpackage", "--dot"], &dir);
    let dot = text(&o.stdout);
    assert!(dot.starts_with("digraph {"), "{dot}");
    assert_eq!(dot.matches(": conv\"").count(), 41);
    assert!(dot.contains("main: input latent"));
}
