//! Progress: the library reports a build's stages to an observer, in order, with counts that
//! only grow; observing changes no byte; the command line draws a bar only on a terminal, after
//! its delay, and clears it so the output reads as without.

mod common;

use common::*;
use mlc::compiler::{
    build, BuildOptions, CalibrationSource, Compression, Observer, Progress, QuantMode, Sizes,
    Stage,
};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq)]
enum Event {
    Begin(Stage),
    Total(u64),
    Advance(u64),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Progress for Recorder {
    fn begin(&self, stage: Stage) {
        self.0.lock().unwrap().push(Event::Begin(stage));
    }
    fn total(&self, total: u64) {
        self.0.lock().unwrap().push(Event::Total(total));
    }
    fn advance(&self, done: u64) {
        self.0.lock().unwrap().push(Event::Advance(done));
    }
}

/// A stage as the recorder saw it: its total if stated, and every count.
#[derive(Debug)]
struct Seen {
    stage: Stage,
    total: Option<u64>,
    counts: Vec<u64>,
}

fn stages(events: &[Event]) -> Vec<Seen> {
    let mut out: Vec<Seen> = Vec::new();
    for e in events {
        match (e, out.last_mut()) {
            (Event::Begin(stage), _) => out.push(Seen {
                stage: *stage,
                total: None,
                counts: Vec::new(),
            }),
            (Event::Total(t), Some(s)) => {
                assert!(s.total.is_none() && s.counts.is_empty(), "{s:?}: total {t}");
                s.total = Some(*t);
            }
            (Event::Advance(n), Some(s)) => s.counts.push(*n),
            (e, None) => panic!("{e:?} before any stage"),
        }
    }
    out
}

fn options(dir: &Path, name: &str, compression: Option<Compression>) -> BuildOptions {
    let mut o = BuildOptions::new("flux2", taef2_weights());
    o.output = Some(dir.join(name));
    o.sizes = Sizes::Latent(vec![[16, 16]]);
    o.compression = compression;
    o
}

/// Builds with a recorder; the stages it saw, and the package's files.
fn observed(dir: &Path, compression: Option<Compression>) -> (Vec<Seen>, Vec<(String, Vec<u8>)>) {
    let recorder = Arc::new(Recorder::default());
    let mut o = options(dir, "observed.mlpackage", compression);
    o.progress = Observer::new(recorder.clone());
    let report = build(&o).unwrap();
    let events = recorder.0.lock().unwrap().clone();
    (stages(&events), files(&report.package))
}

fn assert_monotone(s: &Seen) {
    assert!(s.counts.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
    if let (Some(t), Some(last)) = (s.total, s.counts.last()) {
        assert!(*last <= t, "{s:?}");
    }
}

#[test]
fn stages_in_order_with_growing_counts() {
    let dir = out_dir("progress_stages");
    let palettize = Compression::Palettize {
        bits: 4,
        group_size: None,
        min_elements: 2048,
    };
    let (seen, observed_files) = observed(&dir, Some(palettize.clone()));
    let names: Vec<Stage> = seen.iter().map(|s| s.stage).collect();
    assert_eq!(
        names[..3],
        [Stage::ReadWeights, Stage::HashWeights, Stage::Declare],
        "{names:?}"
    );
    assert_eq!(
        names[names.len() - 2..],
        [Stage::WriteWeights, Stage::Package],
        "{names:?}"
    );
    let passes: Vec<&str> = names
        .iter()
        .filter_map(|s| match s {
            Stage::Pass(p) => Some(*p),
            _ => None,
        })
        .collect();
    let expected = [
        "lower_group_norm",
        "fold_constants",
        "cast_fp16",
        "palettize",
        "dce",
    ];
    let positions: Vec<usize> = expected
        .iter()
        .map(|p| {
            passes
                .iter()
                .position(|q| q == p)
                .unwrap_or_else(|| panic!("{p} not in {passes:?}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{passes:?}");
    assert_eq!(names.len(), 3 + passes.len() + 2, "{names:?}");
    seen.iter().for_each(assert_monotone);

    // Every float tensor of the decoder file is read, so the count ends at the file's total.
    let read = &seen[0];
    let total = read.total.expect("reading states its total");
    let file = std::fs::metadata(taef2_weights()).unwrap().len();
    assert!(
        total > file / 2 && total <= file,
        "{total} of a {file}-byte file"
    );
    assert_eq!(read.counts.last(), Some(&total));

    // Every weight of at least 2048 elements is a tensor palettized, each counted once.
    let p = seen
        .iter()
        .find(|s| s.stage == Stage::Pass("palettize"))
        .unwrap();
    let tensors = p.total.expect("palettize states its tensor count");
    assert!(tensors >= 30, "{tensors} tensors");
    assert_eq!(p.counts.last(), Some(&tensors));

    // The weight.bin count is the file as it ends.
    let w = seen
        .iter()
        .find(|s| s.stage == Stage::WriteWeights)
        .unwrap();
    let bin = observed_files
        .iter()
        .find(|(f, _)| f.ends_with("weight.bin"))
        .map(|(_, b)| b.len() as u64);
    assert_eq!(w.counts.last().copied(), bin);

    // Observing changes no byte.
    let report = build(&options(&dir, "plain.mlpackage", Some(palettize))).unwrap();
    assert!(
        files(&report.package) == observed_files,
        "observed build differs"
    );
}

#[test]
fn quantize_counts_its_tensors() {
    let dir = out_dir("progress_quantize");
    let (seen, _) = observed(
        &dir,
        Some(Compression::Quantize {
            mode: QuantMode::Int8,
            block_size: None,
            min_elements: 2048,
        }),
    );
    let q = seen
        .iter()
        .find(|s| s.stage == Stage::Pass("quantize"))
        .unwrap();
    let total = q.total.expect("quantize states its tensor count");
    assert!(total >= 30, "{total}");
    assert_eq!(q.counts, (1..=total).collect::<Vec<_>>());
}

#[test]
fn calibration_counts_samples() {
    let dir = out_dir("progress_calibration");
    let recorder = Arc::new(Recorder::default());
    let mut o = options(
        &dir,
        "calibrated.mlpackage",
        Some(Compression::Palettize {
            bits: 4,
            group_size: None,
            min_elements: 2048,
        }),
    );
    o.sizes = Sizes::Image(vec![[128, 128]]);
    o.calibration = Some(CalibrationSource {
        path: shared("calibration"),
        encoder_weights: Some(shared("weights/taef2_encoder.safetensors")),
        upscale: false,
    });
    o.progress = Observer::new(recorder.clone());
    build(&o).unwrap();
    let seen = stages(&recorder.0.lock().unwrap());
    seen.iter().for_each(assert_monotone);
    let names: Vec<Stage> = seen.iter().map(|s| s.stage).collect();
    let at = |stage: Stage| names.iter().position(|&s| s == stage).unwrap();
    // Loaded after declaring, evaluated for the weights' statistics before palettizing.
    let calibrations: Vec<usize> = (0..names.len())
        .filter(|&i| names[i] == Stage::Calibrate)
        .collect();
    assert_eq!(calibrations.len(), 2, "{names:?}");
    assert_eq!(calibrations[0], at(Stage::Declare) + 1, "{names:?}");
    assert!(calibrations[1] < at(Stage::Pass("palettize")), "{names:?}");
    let photos = std::fs::read_dir(shared("calibration"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count() as u64;
    let stats = &seen[calibrations[1]];
    assert_eq!(stats.total, Some(photos), "{stats:?}");
    assert_eq!(stats.counts.last(), Some(&photos), "{stats:?}");
}

/// Runs `mlc args` in `dir` with stderr a pipe: (stdout, stderr).
fn piped(dir: &Path, args: &[&str], delay_ms: &str) -> (String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_mlc"))
        .args(args)
        .current_dir(dir)
        .env("MLC_PROGRESS_DELAY_MS", delay_ms)
        .output()
        .unwrap();
    (String::from_utf8_lossy(&o.stdout).into_owned(), stderr(&o))
}

#[test]
fn no_bar_when_stderr_is_not_a_terminal() {
    let dir = out_dir("progress_piped");
    let w = taef2_arg();
    let (out, err) = piped(
        &dir,
        &taef2_build(&w, "16", &["--palettize", "4", "-o", "a.mlpackage"]),
        "0",
    );
    assert!(out.starts_with("wrote a.mlpackage ("), "{out}");
    assert_eq!(err, "");
    let (out, err) = piped(&dir, &taef2_build("missing.safetensors", "16", &[]), "0");
    assert_eq!(out, "");
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err:?}"
    );
    assert!(!err.contains('\r') && !err.contains('\x1b'), "{err:?}");
}

/// `mlc args` on a pseudo-terminal (util-linux `script`), with `env`: what the terminal shows
/// (stdout and stderr together), or `None` without `script`.
fn on_terminal(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Option<String> {
    let script = Command::new("script").arg("--version").output();
    if !script.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: no util-linux `script` to run mlc on a pseudo-terminal");
        return None;
    }
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_mlc"))
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let o = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .current_dir(dir)
        .env("TERM", "xterm")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{text}");
    Some(text)
}

#[test]
fn bar_on_a_terminal_then_cleared() {
    let dir = out_dir("progress_terminal");
    let w = taef2_arg();
    let args = taef2_build(&w, "16", &["--palettize", "4", "-o", "a.mlpackage"]);
    let Some(shown) = on_terminal(&dir, &args, &[("MLC_PROGRESS_DELAY_MS", "0")]) else {
        return;
    };
    // The bar is erased before the summary line, which ends the output as before. Its first
    // stage is drawn for sure; later ones as the redraw rate allows.
    let (bar, summary) = shown.rsplit_once("\r\x1b[2K").expect("bar cleared");
    assert!(bar.contains("reading weights"), "{bar:?}");
    assert!(
        summary.starts_with("wrote a.mlpackage (") && summary.ends_with(")\r\n"),
        "{summary:?}"
    );

    // Before its delay, a bar is never drawn: the terminal shows what it showed before.
    let quiet = on_terminal(&dir, &args, &[("MLC_PROGRESS_DELAY_MS", "60000")]).unwrap();
    assert!(
        quiet.starts_with("wrote a.mlpackage (") && quiet.lines().count() == 1,
        "{quiet:?}"
    );
    // Nor with --json or on a terminal that cannot redraw a line.
    let mut json = args.clone();
    json.push("--json");
    let j = on_terminal(&dir, &json, &[("MLC_PROGRESS_DELAY_MS", "0")]).unwrap();
    assert!(j.starts_with('{') && !j.contains('\x1b'), "{j:?}");
    let dumb = on_terminal(
        &dir,
        &args,
        &[("MLC_PROGRESS_DELAY_MS", "0"), ("TERM", "dumb")],
    );
    let dumb = dumb.unwrap();
    assert!(
        dumb.starts_with("wrote a.mlpackage (") && !dumb.contains('\x1b'),
        "{dumb:?}"
    );
}

#[test]
fn compile_spins_on_a_terminal() {
    let dir = out_dir("progress_compile");
    let w = taef2_arg();
    let (_, err) = piped(&dir, &taef2_build(&w, "16", &["-o", "a.mlpackage"]), "0");
    assert_eq!(err, "");
    let args = ["compile", "a.mlpackage", "-o", "a.mlmodelc"];
    let Some(shown) = on_terminal(&dir, &args, &[("MLC_PROGRESS_DELAY_MS", "0")]) else {
        return;
    };
    assert!(shown.contains("compiling a.mlmodelc"), "{shown:?}");
    let (_, summary) = shown.rsplit_once("\r\x1b[2K").expect("spinner cleared");
    assert_eq!(summary, "compiled a.mlmodelc\r\n");
}
