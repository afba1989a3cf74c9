//! What the palettize and quantize passes share when compression is calibrated: the layers'
//! input statistics with the steps to use them for, which weights they cover (convs' and
//! matmuls' by a constant, [`WeightedLayer`]), and bias correction (the mean output shift
//! compression leaves in a layer, [`crate::compress::output_aware::bias_shift`], folded into the
//! layer's bias so the next layer sees its inputs centred where the float model had them).

use crate::calibrate::layer_inputs::{LayerInput, LayerInputs};
use crate::compress::output_aware::Steps;
use crate::ir::weighted_layer::WeightedLayer;
use crate::ir::{ConstData, Node, Op};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::Arc;

/// Calibration statistics for a compression pass.
#[derive(Clone, Debug)]
pub struct Calibrated {
    /// Per layer weight, what its layer's input was on the calibration set.
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

    /// The weights of `nodes` (with their use counts) the statistics cover, by constant index:
    /// each with the layer reading it and what that layer's input was.
    pub fn fitted<'a>(&'a self, nodes: &[Node], uses: &[usize]) -> HashMap<usize, Fitted<'a>> {
        WeightedLayer::find(nodes, uses)
            .into_iter()
            .filter_map(|layer| {
                let input = self.layers.layers.get(&layer.weight)?;
                (input.dim == layer.dim).then(|| (layer.weight.index(), Fitted { layer, input }))
            })
            .collect()
    }
}

/// A weight the calibration covers.
pub struct Fitted<'a> {
    pub layer: WeightedLayer,
    pub input: &'a LayerInput,
}

/// Adds `shift` (one value per output channel) to the bias constant `bias`, in its own dtype;
/// false if the lengths differ or a shift is not finite (the bias is then left alone).
pub fn add_shift(nodes: &mut [Node], bias: usize, shift: &[f64]) -> bool {
    if super::read_back(&mut nodes[bias..=bias], |_| true).is_err() {
        return false;
    }
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
