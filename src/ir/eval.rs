//! The reference evaluator: runs a graph on the CPU in f32.
//!
//! Values stored as fp16 (constants after the fp16 pass) are widened exactly, and `cast` to fp16
//! rounds, so the evaluator sees precisely the numbers a package holds while computing in f32.
//! Intermediates are dropped after their last use: a decoder at 1024x1024 would otherwise hold
//! tens of gigabytes.

use super::{Dim, Graph, IrError, Op, ValueId};
use crate::kernels::Array;
use crate::tensor::DType;
use half::f16;
use std::collections::BTreeMap;

/// Evaluates `g` on named inputs, returning its named outputs.
pub fn evaluate(
    g: &Graph,
    inputs: &BTreeMap<String, Array>,
) -> Result<BTreeMap<String, Array>, IrError> {
    evaluate_inner(g, inputs, None)
}

/// [`evaluate`] that shows `observe` every value the graph computes (inputs and ops, not
/// constants) as soon as it exists, before it is dropped: statistics over activations without
/// keeping them (calibration).
pub fn evaluate_observed(
    g: &Graph,
    inputs: &BTreeMap<String, Array>,
    observe: Observer,
) -> Result<BTreeMap<String, Array>, IrError> {
    evaluate_inner(g, inputs, Some(observe))
}

/// What [`evaluate_observed`] calls with each value it computes.
pub type Observer<'a> = &'a mut dyn FnMut(ValueId, &Array);

fn evaluate_inner(
    g: &Graph,
    inputs: &BTreeMap<String, Array>,
    mut observe: Option<Observer>,
) -> Result<BTreeMap<String, Array>, IrError> {
    let mut uses = g.use_counts();
    let mut values: Vec<Option<Array>> = vec![None; g.len()];
    let mut symbols: BTreeMap<String, usize> = BTreeMap::new();
    for (id, node) in g.nodes() {
        let err = |reason: String| IrError::Eval {
            node: node.name.clone(),
            reason,
        };
        let out = {
            let args: Vec<&Array> = node
                .inputs
                .iter()
                .map(|v| {
                    values[v.index()]
                        .as_ref()
                        .ok_or_else(|| err(format!("input {v} has no value")))
                })
                .collect::<Result<_, _>>()?;
            match &node.op {
                Op::Input { name } => {
                    let a = inputs
                        .get(name)
                        .ok_or_else(|| err(format!("no value given for input {name:?}")))?;
                    bind_shape(&node.ty.shape, &a.shape, &mut symbols).map_err(err)?;
                    let mut a = a.clone();
                    if node.ty.dtype == DType::F16 {
                        round_f16(&mut a);
                    }
                    a
                }
                op => eval_op_at(op, &args, &symbols).map_err(err)?,
            }
        };
        if let Some(f) = observe.as_mut() {
            if !matches!(node.op, Op::Const(_)) {
                f(id, &out);
            }
        }
        values[id.index()] = Some(out);
        for v in &node.inputs {
            release(&mut uses, &mut values, *v);
        }
    }
    g.outputs()
        .iter()
        .map(|(name, v)| {
            Ok((
                name.clone(),
                values[v.index()].clone().expect("outputs are kept alive"),
            ))
        })
        .collect()
}

fn release(uses: &mut [usize], values: &mut [Option<Array>], v: ValueId) {
    uses[v.index()] -= 1;
    if uses[v.index()] == 0 {
        values[v.index()] = None;
    }
}

/// Checks a given shape against a declared one, binding symbols on first sight (dimensions are
/// taken in order, so `H` binds before `H*W` needs it).
fn bind_shape(
    declared: &[Dim],
    given: &[usize],
    symbols: &mut BTreeMap<String, usize>,
) -> Result<(), String> {
    let bad = || {
        let declared: Vec<String> = declared.iter().map(|d| d.to_string()).collect();
        format!(
            "given shape {given:?} does not fit declared [{}]",
            declared.join(", ")
        )
    };
    if declared.len() != given.len() {
        return Err(bad());
    }
    for (d, &n) in declared.iter().zip(given) {
        if let Some((sym, v)) = d.solve(n, symbols) {
            symbols.insert(sym, v);
        }
        if d.resolve(&|s| symbols.get(s).copied()) != Some(n) {
            return Err(bad());
        }
    }
    Ok(())
}

/// Rounds every value to the nearest fp16, as a cast to fp16 does.
pub(crate) fn round_f16(a: &mut Array) {
    for x in &mut a.data {
        *x = f16::from_f32(*x).to_f32();
    }
}

/// One op on f32 arrays: the semantics every lowering must preserve.
pub fn eval_op(op: &Op, args: &[&Array]) -> Result<Array, String> {
    eval_op_at(op, args, &BTreeMap::new())
}

/// [`eval_op`] with the model's sizes bound (symbolic reshape targets need them).
pub fn eval_op_at(
    op: &Op,
    args: &[&Array],
    sizes: &BTreeMap<String, usize>,
) -> Result<Array, String> {
    op.eval(args, sizes)
}
