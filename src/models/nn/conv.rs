//! Convolutions: `conv2d` over a [`ConvSpec`] (the VAE's and TAESD's 3x3 and 1x1 layers, CLIP's
//! patch embedding, strided downsamplers).

use super::Scope;
use crate::ir::{Conv2d, Graph, Op, ValueId};
use crate::models::ModelError;

/// `conv2d` with `weight` [cout, cin/groups, k, k] and, when `bias`, `bias` [cout]; named after
/// the scope.
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kernel: usize,
    pub bias: bool,
    pub attrs: Conv2d,
}

impl ConvSpec {
    /// Stride 1, `kernel/2` zero padding: the size-keeping convolution.
    pub fn same(cin: usize, cout: usize, kernel: usize, bias: bool) -> ConvSpec {
        ConvSpec {
            cin,
            cout,
            kernel,
            bias,
            attrs: Conv2d::same(kernel),
        }
    }

    /// With these strides and `[top, bottom, left, right]` padding.
    pub fn strided(mut self, stride: usize, pads: [usize; 4]) -> ConvSpec {
        self.attrs.strides = [stride, stride];
        self.attrs.pads = pads;
        self
    }
}

pub fn conv2d(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    spec: &ConvSpec,
) -> Result<ValueId, ModelError> {
    let groups = spec.attrs.groups.max(1);
    let k = spec.kernel;
    let mut args = vec![
        x,
        p.constant(g, "weight", &[spec.cout, spec.cin / groups, k, k])?,
    ];
    if spec.bias {
        args.push(p.constant(g, "bias", &[spec.cout])?);
    }
    Ok(g.add(Op::Conv2d(spec.attrs.clone()), &args, p.node("conv"))?)
}
