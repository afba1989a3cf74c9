//! Pass filetests: each `tests/passes/*.txt` holds a header, an input graph, a `---` line and the
//! graph the passes must print. The harness parses the input, runs the passes (verifying after
//! each), prints the result and compares it with the expected text. It also runs both graphs
//! through the IR evaluator on the same random inputs: a pass must not change what a graph
//! computes.
//!
//! With `MLC_BLESS=1` the expected part is rewritten from what the passes print instead (the
//! verifier and the equivalence check still have to pass).
//!
//! Header lines, before the `graph` line:
//!
//! ```text
//! # free text
//! pass: NAME [key=value ...]     one or more, run in order
//! eval: H=4 W=6                  sizes for the random inputs of a symbolic graph
//! tolerance: 5e-3                largest |difference| / (1 + |value|) allowed (default 1e-5)
//! ```

use mlc::ir::eval::evaluate;
use mlc::ir::parse::{parse, random_values};
use mlc::ir::print::print;
use mlc::ir::verify::verify;
use mlc::ir::Graph;
use mlc::kernels::{transpose, Array};
use mlc::passes::{self, Pass};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct FileTest {
    /// Everything before the `---` line, kept verbatim for blessing.
    head: String,
    input: String,
    expected: String,
    passes: Vec<(String, BTreeMap<String, String>)>,
    eval_sizes: BTreeMap<String, usize>,
    tolerance: f64,
}

fn split(text: &str) -> Result<FileTest, String> {
    let (head, expected) = match text.split_once("\n---\n") {
        Some((h, e)) => (format!("{h}\n"), e.to_string()),
        None => return Err("no `---` line between the input and the expected graph".into()),
    };
    let mut passes = Vec::new();
    let mut eval_sizes = BTreeMap::new();
    let mut tolerance = 1e-5;
    let mut input = String::new();
    for (i, line) in head.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}", i + 1);
        if !input.is_empty() || line.starts_with("graph ") {
            input.push_str(line);
            input.push('\n');
        } else if let Some(p) = line.strip_prefix("pass:") {
            let mut words = p.split_whitespace();
            let name = words
                .next()
                .ok_or_else(|| at("`pass:` without a name".into()))?;
            let opts = words
                .map(|w| {
                    w.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| at(format!("option {w:?} is not key=value")))
                })
                .collect::<Result<_, _>>()?;
            passes.push((name.to_string(), opts));
        } else if let Some(s) = line.strip_prefix("eval:") {
            for w in s.split_whitespace() {
                let (k, v) = w
                    .split_once('=')
                    .and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                    .ok_or_else(|| at(format!("size {w:?} is not NAME=N")))?;
                eval_sizes.insert(k, v);
            }
        } else if let Some(t) = line.strip_prefix("tolerance:") {
            tolerance = t
                .trim()
                .parse()
                .map_err(|_| at(format!("tolerance {t:?}")))?;
        } else if !(line.starts_with('#') || line.trim().is_empty()) {
            return Err(at(format!("unknown header line {line:?}")));
        }
    }
    if passes.is_empty() {
        return Err("no `pass:` line".into());
    }
    Ok(FileTest {
        head,
        input,
        expected,
        passes,
        eval_sizes,
        tolerance,
    })
}

/// Reads a pass's options, refusing any it does not have.
struct Opts<'a> {
    map: &'a BTreeMap<String, String>,
    used: Vec<&'static str>,
}

impl Opts<'_> {
    fn get<T: std::str::FromStr>(&mut self, k: &'static str, default: T) -> Result<T, String> {
        self.used.push(k);
        match self.map.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("option {k}={v} is not valid")),
        }
    }

    fn done(self, pass: &str) -> Result<(), String> {
        match self.map.keys().find(|k| !self.used.contains(&k.as_str())) {
            Some(k) => Err(format!("pass {pass} has no option {k}")),
            None => Ok(()),
        }
    }
}

/// `sizes=L:8,W:2;L:12,W:2`: enumerated sizes, `;` between sizes, `,` between symbols.
fn enumerated(text: &str) -> Result<Vec<BTreeMap<String, usize>>, String> {
    text.split(';')
        .filter(|s| !s.is_empty())
        .map(|size| {
            size.split(',')
                .map(|b| {
                    let (k, v) = b.split_once(':').ok_or(format!("size {b} is not SYM:N"))?;
                    Ok((k.to_string(), v.parse().map_err(|_| format!("size {b}"))?))
                })
                .collect()
        })
        .collect()
}

/// The value named `name` in `g` (filetests name values, passes take handles).
fn value(g: &Graph, name: &str) -> Result<mlc::ir::ValueId, String> {
    g.nodes()
        .find(|(_, n)| n.name == name)
        .map(|(v, _)| v)
        .ok_or_else(|| format!("no value named {name}"))
}

fn make_pass(
    name: &str,
    map: &BTreeMap<String, String>,
    g: &Graph,
) -> Result<Box<dyn Pass>, String> {
    use passes::*;
    let mut o = Opts { map, used: vec![] };
    let pass: Box<dyn Pass> = match name {
        "lower_group_norm" => Box::new(lower_group_norm::LowerGroupNorm),
        "lower_attention" => Box::new(lower_attention::LowerAttention {
            fused: o.get("fused", false)?,
            max_bytes: o.get("max_bytes", lower_attention::MAX_SCORE_BYTES)?,
            element_bytes: o.get("element_bytes", 4)?,
            sizes: enumerated(&o.get("sizes", String::new())?)?,
        }),
        "fold_constants" => Box::new(fold_constants::FoldConstants),
        "cast_fp16" => Box::new(cast_fp16::CastFp16 {
            fp16_inputs: o.get("fp16_inputs", false)?,
            fp16_outputs: o.get("fp16_outputs", false)?,
        }),
        "dce" => Box::new(dce::Dce),
        // `ranges=x:1.5,r:4` (value:clip), `keep_float=c,s` (convs and adds by name).
        "quantize_activations" => {
            let ranges = o.get("ranges", String::new())?;
            let keep = o.get("keep_float", String::new())?;
            Box::new(quantize_activations::QuantizeActivations {
                ranges: ranges
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|r| {
                        let (n, c) = r
                            .split_once(':')
                            .ok_or(format!("range {r} is not NAME:CLIP"))?;
                        Ok((value(g, n)?, c.parse().map_err(|_| format!("range {r}"))?))
                    })
                    .collect::<Result<_, String>>()?,
                keep_float: keep
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|n| value(g, n))
                    .collect::<Result<_, String>>()?,
            })
        }
        "cancel_transposes" => Box::new(cancel_transposes::CancelTransposes),
        "canonicalize_layout" => Box::new(canonicalize_layout::CanonicalizeLayout {
            input_nhwc: o.get("input_nhwc", false)?,
            output_nhwc: o.get("output_nhwc", false)?,
        }),
        "specialize_shapes" => {
            // Every option is a symbol binding.
            let sizes = map
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.parse().map_err(|_| format!("{k}={v}"))?)))
                .collect::<Result<_, String>>()?;
            return Ok(Box::new(specialize_shapes::Specialize {
                sizes,
                function: "main".into(),
            }));
        }
        other => return Err(format!("unknown pass {other:?}")),
    };
    o.done(name)?;
    Ok(pass)
}

/// How the passes change the model's interface, so equal computations can be compared.
#[derive(Default)]
struct Interface {
    input_nhwc: bool,
    output_nhwc: bool,
}

fn interface(t: &FileTest) -> Interface {
    let mut i = Interface::default();
    for (name, opts) in &t.passes {
        if name == "canonicalize_layout" {
            i.input_nhwc |= opts.get("input_nhwc").is_some_and(|v| v == "true");
            i.output_nhwc |= opts.get("output_nhwc").is_some_and(|v| v == "true");
        }
    }
    i
}

/// Runs one filetest; `Ok(Some(text))` when blessing rewrote the expected part.
fn run(t: &FileTest, bless: bool) -> Result<Option<String>, String> {
    let before = parse(&t.input).map_err(|e| format!("input graph: {e}"))?;
    verify(&before).map_err(|e| format!("input graph does not verify: {e}"))?;
    let mut g = before.clone();
    let mut sizes = t.eval_sizes.clone();
    for (name, opts) in &t.passes {
        let pass = make_pass(name, opts, &g)?;
        if name == "specialize_shapes" {
            for (k, v) in opts {
                sizes.insert(k.clone(), v.parse().expect("checked by make_pass"));
            }
        }
        g = pass.run(g).map_err(|e| format!("pass {name}: {e}"))?;
        verify(&g).map_err(|e| format!("after pass {name}: {e}"))?;
    }
    let printed = print(&g);
    equivalent(&before, &g, &sizes, &interface(t), t.tolerance)?;
    // The expected text is itself a graph: unless it summarises a constant, it must read back
    // as written (the parser and printer agree on every form the passes produce).
    if !t.expected.is_empty() && !t.expected.contains("const(dense,") {
        let reread = parse(&t.expected).map_err(|e| format!("expected graph: {e}"))?;
        if print(&reread) != t.expected {
            return Err("the expected graph does not print back as written".into());
        }
    }
    if printed == t.expected {
        return Ok(None);
    }
    if bless {
        return Ok(Some(format!("{}---\n{printed}", t.head)));
    }
    Err(format!(
        "printed graph differs from the expected one (MLC_BLESS=1 rewrites it)\n{}",
        diff(&t.expected, &printed)
    ))
}

/// The expected and printed lines that differ, position by position.
fn diff(expected: &str, got: &str) -> String {
    let (e, g): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), got.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(g.len()) {
        let (a, b) = (e.get(i).copied(), g.get(i).copied());
        if a != b {
            out += &format!(
                "  line {}:\n    expected: {}\n    got:      {}\n",
                i + 1,
                a.unwrap_or("<none>"),
                b.unwrap_or("<none>")
            );
        }
    }
    out
}

/// Both graphs on the same random inputs (transposed for an NHWC interface) give the same
/// outputs.
fn equivalent(
    before: &Graph,
    after: &Graph,
    sizes: &BTreeMap<String, usize>,
    iface: &Interface,
    tolerance: f64,
) -> Result<(), String> {
    let mut inputs = BTreeMap::new();
    for (i, &v) in before.inputs().iter().enumerate() {
        let node = before.node(v);
        let mlc::ir::Op::Input { name } = &node.op else {
            unreachable!("inputs are input nodes")
        };
        let shape: Vec<usize> = node
            .ty
            .shape
            .iter()
            .map(|d| d.resolve(&|s| sizes.get(s).copied()))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("input {name} is {}: give its sizes with `eval:`", node.ty))?;
        let n = shape.iter().product();
        inputs.insert(
            name.clone(),
            Array::new(shape, random_values(n, 100 + i as u64, 2.0)),
        );
    }
    let nhwc = |a: &Array, perm: &[usize]| {
        if a.shape.len() == 4 {
            transpose(a, perm)
        } else {
            a.clone()
        }
    };
    let after_inputs: BTreeMap<String, Array> = inputs
        .iter()
        .map(|(k, a)| {
            let a = if iface.input_nhwc {
                nhwc(a, &[0, 2, 3, 1])
            } else {
                a.clone()
            };
            (k.clone(), a)
        })
        .collect();
    let want = evaluate(before, &inputs).map_err(|e| format!("evaluating the input: {e}"))?;
    let got = evaluate(after, &after_inputs).map_err(|e| format!("evaluating the output: {e}"))?;
    if want.keys().ne(got.keys()) {
        return Err(format!(
            "outputs {:?} became {:?}",
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>()
        ));
    }
    for (k, w) in &want {
        let g = if iface.output_nhwc {
            nhwc(&got[k], &[0, 3, 1, 2])
        } else {
            got[k].clone()
        };
        if g.shape != w.shape {
            return Err(format!(
                "output {k}: shape {:?} became {:?}",
                w.shape, g.shape
            ));
        }
        let worst = w
            .data
            .iter()
            .zip(&g.data)
            .map(|(&a, &b)| {
                let e = (a as f64 - b as f64).abs() / (1.0 + (a as f64).abs());
                if e.is_nan() {
                    f64::INFINITY
                } else {
                    e
                }
            })
            .fold(0.0, f64::max);
        if worst > tolerance {
            return Err(format!(
                "output {k} changed: error {worst:.3e} > tolerance {tolerance:.0e}"
            ));
        }
    }
    Ok(())
}

fn files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/passes");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    v.sort();
    v
}

#[test]
fn pass_filetests() {
    let bless = std::env::var("MLC_BLESS").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    let files = files();
    assert!(!files.is_empty(), "no filetests in tests/passes");
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        match split(&text).and_then(|t| run(&t, bless)) {
            Ok(None) => {}
            Ok(Some(blessed)) => std::fs::write(path, blessed).unwrap(),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} filetests failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

/// Every pass the pipeline can run has a filetest.
#[test]
fn the_required_passes_have_filetests() {
    let mut covered = std::collections::BTreeSet::new();
    for path in files() {
        let t = split(&std::fs::read_to_string(&path).unwrap()).unwrap();
        covered.extend(t.passes.into_iter().map(|(n, _)| n));
    }
    for pass in [
        "lower_group_norm",
        "lower_attention",
        "fold_constants",
        "cast_fp16",
        "dce",
        "cancel_transposes",
        "canonicalize_layout",
        "specialize_shapes",
    ] {
        assert!(covered.contains(pass), "{pass} has no filetest");
    }
}

const SMALL: &str = "pass: fold_constants
graph t {
  %x: fp32[2] = input(\"x\")
  %three: fp32[] = const(3.0)
  %d: fp32[2] = div(%x, %three)
  return y=%d
}
---
graph t {
  %x: fp32[2] = input(\"x\")
  %three: fp32[] = const(3.0)
  %d_recip: fp32[] = const(0.33333334)
  %d: fp32[2] = mul(%x, %d_recip)
  return y=%d
}
";

/// The harness can fail: a wrong expectation is a mismatch, and blessing replaces it.
#[test]
fn a_wrong_expectation_fails_and_bless_fixes_it() {
    run(&split(SMALL).unwrap(), false).unwrap();
    let wrong = SMALL.replace("const(0.33333334)", "const(0.3)");
    let e = run(&split(&wrong).unwrap(), false).unwrap_err();
    assert!(e.contains("line 4") && e.contains("0.3)"), "{e}");
    let blessed = run(&split(&wrong).unwrap(), true).unwrap().unwrap();
    assert_eq!(blessed, SMALL);
}

/// A pass that changed the numbers would be caught even with a blessed text.
#[test]
fn a_changed_result_fails_the_equivalence_check() {
    let a = parse(
        "graph t {\n  %x: fp32[2] = input(\"x\")\n  %y: fp32[2] = relu(%x)\n  return y=%y\n}\n",
    )
    .unwrap();
    let b = parse(
        "graph t {\n  %x: fp32[2] = input(\"x\")\n  %y: fp32[2] = tanh(%x)\n  return y=%y\n}\n",
    )
    .unwrap();
    let e = equivalent(&a, &b, &BTreeMap::new(), &Interface::default(), 1e-5).unwrap_err();
    assert!(e.contains("output y changed"), "{e}");
}
