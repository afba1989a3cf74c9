//! The three checks of a case: inference, the IR evaluator, and the MIL lowering run by the MIL
//! evaluator.

use crate::prelude::*;

/// The one-op graph and its inputs; the op's result is output `y` (an input case returns `x`).
pub(crate) fn build(c: &Case) -> (Graph, BTreeMap<String, Array>) {
    let mut g = Graph::new("conformance");
    let mut inputs = BTreeMap::new();
    match &c.op {
        Op::Input { name } => {
            let v = g.input(name, c.operands[0].ty.clone());
            g.set_output(name, v);
            inputs.insert(name.clone(), c.operands[0].value.clone());
        }
        Op::Const(ConstData::Dense(t)) => {
            let v = g.constant("y", t.clone());
            g.set_output("y", v);
        }
        op => {
            // The evaluator binds symbols in input order, so an input shaped `H*W` must come
            // after the one that binds H and W (reshape_like's reference is its second operand).
            let compound = |o: &Operand| {
                o.ty.shape
                    .iter()
                    .any(|d| matches!(d, Dim::Sym(s) if s.symbols().count() > 1))
            };
            let mut order: Vec<usize> = (0..c.operands.len()).collect();
            order.sort_by_key(|&i| compound(&c.operands[i]));
            let mut ids = vec![None; c.operands.len()];
            for i in order {
                let o = &c.operands[i];
                ids[i] = Some(if o.constant {
                    let t = Tensor::f32(o.value.shape.clone(), o.value.data.clone());
                    g.constant(format!("c{i}"), t.cast(o.ty.dtype))
                } else {
                    let name = format!("x{i}");
                    inputs.insert(name.clone(), o.value.clone());
                    g.input(&name, o.ty.clone())
                });
            }
            let ids: Vec<_> = ids.into_iter().map(|v| v.expect("every operand")).collect();
            let y = g.add(op.clone(), &ids, "op").expect("the case's op infers");
            g.set_output("y", y);
        }
    }
    (g, inputs)
}

pub(crate) fn compare(what: &str, c: &Case, got: &Array) -> Result<(), String> {
    if got.shape != c.want_shape {
        return Err(format!(
            "{what}: shape {:?}, reference {:?}",
            got.shape, c.want_shape
        ));
    }
    let error = |g: f32, w: f64| {
        let e = (g as f64 - w).abs() / (1.0 + w.abs());
        // Equal infinities compare equal; any NaN is the worst error there is.
        if g as f64 == w {
            0.0
        } else if e.is_nan() {
            f64::INFINITY
        } else {
            e
        }
    };
    let worst = got
        .data
        .iter()
        .zip(&c.want)
        .enumerate()
        .map(|(i, (&g, &w))| (i, error(g, w), g, w))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match worst {
        Some((i, err, g, w)) if err > c.tol => Err(format!(
            "{what}: element {i} (index {:?}) is {g}, reference {w} (error {err:.3e} > tol {:.0e})",
            unravel(i, &c.want_shape),
            c.tol
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_infer(c: &Case) -> Result<(), String> {
    let types: Vec<&TensorType> = c.operands.iter().map(|o| &o.ty).collect();
    let inferred = match &c.op {
        // An input's type is declared, never inferred: infer must refuse.
        Op::Input { .. } => {
            return match c.op.infer(&types) {
                Err(_) => Ok(()),
                Ok(t) => Err(format!("infer: an input inferred {t}")),
            }
        }
        op => op.infer(&types).map_err(|e| format!("infer: {e}"))?,
    };
    let shape: Option<Vec<usize>> = inferred
        .shape
        .iter()
        .map(|d| d.resolve(&|s| c.sizes.get(s).copied()))
        .collect();
    if shape.as_deref() != Some(&c.want_shape[..]) || inferred.dtype != c.want_dtype {
        return Err(format!(
            "infer: {inferred} (at {:?}), reference {}{:?}",
            c.sizes, c.want_dtype, c.want_shape
        ));
    }
    Ok(())
}

pub(crate) fn check_ir(
    c: &Case,
    g: &Graph,
    inputs: &BTreeMap<String, Array>,
) -> Result<(), String> {
    mlc::ir::verify::verify(g).map_err(|e| format!("verify: {e}"))?;
    let out = evaluate(g, inputs).map_err(|e| format!("IR eval: {e}"))?;
    let (_, y) = out.iter().next().expect("one output");
    compare("IR eval", c, y)
}

pub(crate) fn check_mil(
    c: &Case,
    g: &Graph,
    inputs: &BTreeMap<String, Array>,
) -> Result<(), String> {
    let (g, target) = match &c.lowering {
        Lowering::Direct(t) => (g.clone(), *t),
        Lowering::Pass(p, t) => {
            let lowered = p().run(g.clone()).map_err(|e| format!("pass: {e}"))?;
            mlc::ir::verify::verify(&lowered).map_err(|e| format!("pass output: {e}"))?;
            (lowered, *t)
        }
    };
    let iface = FeatureTypes {
        sizes: if c.sizes.is_empty() {
            vec![]
        } else {
            vec![c.sizes.clone()]
        },
        image_outputs: vec![],
        image_inputs: vec![],
    };
    let lowered =
        lower(&g, target, &ModelInfo::default(), &iface).map_err(|e| format!("lower: {e}"))?;
    let Some(ModelType::MlProgram(program)) = &lowered.model.r#type else {
        return Err("lower: not an ML program".into());
    };
    let blobs = lowered
        .weight_bin
        .as_deref()
        .map(BlobReader::new)
        .transpose()
        .map_err(|e| format!("weight.bin: {e}"))?;
    let out = mlc::mil::eval::evaluate(program, "main", blobs.as_ref(), inputs)
        .map_err(|e| format!("MIL eval ({target}): {e}"))?;
    let (_, y) = out.iter().next().expect("one output");
    compare(&format!("MIL eval ({target})"), c, y)
}

pub(crate) fn run(c: &Case) -> Vec<String> {
    let (g, inputs) = build(c);
    [
        check_infer(c),
        check_ir(c, &g, &inputs),
        check_mil(c, &g, &inputs),
    ]
    .into_iter()
    .filter_map(Result::err)
    .map(|e| format!("{}: {e}", c.name))
    .collect()
}
