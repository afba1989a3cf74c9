//! Which cases each op kind has. The kinds come from the op list; no wildcard, so a new op
//! stops this test compiling until it has cases.

use crate::prelude::*;
use mlc::ir::OpKind;

/// The cases of `kind`, from a generator seeded by the kind's place in the list.
pub(crate) fn cases(kind: OpKind) -> Vec<Case> {
    let mut rng = Rng(kind as u64 + 1);
    let r = &mut rng;
    match kind {
        OpKind::Input => input_cases(r),
        OpKind::Const => const_cases(r),
        OpKind::Unary => unary_cases(r),
        OpKind::Binary => binary_cases(r),
        OpKind::Conv2d => conv_cases(r),
        OpKind::Rsqrt => rsqrt_cases(r),
        OpKind::Clip => clip_cases(r),
        OpKind::FakeQuantize => fake_quantize_cases(r),
        OpKind::Upsample => upsample_cases(r),
        OpKind::GroupNorm => group_norm_cases(r),
        OpKind::ReduceMean => reduce_mean_cases(r),
        OpKind::Reshape => reshape_cases(r),
        OpKind::Tile => tile_cases(r),
        OpKind::Transpose => transpose_cases(r),
        OpKind::Cast => cast_cases(r),
        OpKind::MatMul => matmul_cases(r),
        OpKind::Softmax => softmax_cases(r),
        OpKind::Attention => {
            let mut c = attention_cases(r);
            c.extend(masked_attention_cases(r));
            c
        }
        OpKind::Slice => slice_cases(r),
        OpKind::Split => split_cases(r),
        OpKind::ReshapeLike => reshape_like_cases(r),
        OpKind::Concat => concat_cases(r),
        OpKind::PixelShuffle => pixel_shuffle_cases(r),
        OpKind::LayerNorm => layer_norm_cases(r),
        OpKind::Gather => gather_cases(r),
        OpKind::ArgMax => argmax_cases(r),
        OpKind::Precision => precision_cases(r),
    }
}
