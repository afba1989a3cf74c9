//! What the palettize and quantize passes share when compression is calibrated: the convs'
//! input statistics with the steps to use them for, and bias correction (the mean output shift
//! compression leaves in a conv, [`crate::compress::output_aware::bias_shift`], folded into the
//! conv's bias so the next layer sees its inputs centred where the float model had them).

use crate::calibrate::layer_inputs::{LayerInput, LayerInputs};
use crate::compress::output_aware::Steps;
use crate::ir::{ConstData, Node, Op, ValueId};
use crate::tensor::Tensor;
use std::sync::Arc;

/// Calibration statistics for a compression pass.
#[derive(Clone, Debug)]
pub struct Calibrated {
    /// Per conv weight, what its conv's input was on the calibration set.
    pub layers: Arc<LayerInputs>,
    /// Which output-aware steps run (all, except to measure what each buys).
    pub steps: Steps,
}

impl Calibrated {
    /// All steps on `layers`.
    pub fn new(layers: Arc<LayerInputs>) -> Calibrated {
        Calibrated {
            layers,
            steps: Steps::DEFAULT,
        }
    }

    /// The statistics of constant `i`, if it is a conv weight they cover.
    pub fn layer(&self, i: usize) -> Option<&LayerInput> {
        self.layers.layers.get(&ValueId(i as u32))
    }
}

/// The conv reading constant `weight` and the index of its bias constant, when the bias is a
/// dense constant read by that conv alone.
pub fn bias_of(nodes: &[Node], uses: &[usize], weight: usize) -> Option<usize> {
    let conv = nodes.iter().find(|n| {
        matches!(n.op, Op::Conv2d(_)) && n.inputs.get(1) == Some(&ValueId(weight as u32))
    })?;
    let b = conv.inputs.get(2)?.index();
    let dense = matches!(
        nodes[b].op,
        Op::Const(ConstData::Dense(_) | ConstData::Half(_))
    );
    (dense && uses[b] == 1).then_some(b)
}

/// Adds `shift` (one value per output channel) to the bias constant `bias`, in its own dtype;
/// false if the lengths differ or a shift is not finite (the bias is then left alone).
pub fn add_shift(nodes: &mut [Node], bias: usize, shift: &[f64]) -> bool {
    let Op::Const(ConstData::Dense(t) | ConstData::Half(t)) = &mut nodes[bias].op else {
        return false;
    };
    if t.len() != shift.len() || !shift.iter().all(|s| s.is_finite()) {
        return false;
    }
    let values: Vec<f32> = t
        .to_f32()
        .iter()
        .zip(shift)
        .map(|(&b, &s)| (f64::from(b) + s) as f32)
        .collect();
    *t = Tensor::f32(t.shape.clone(), values).cast(t.dtype());
    true
}
