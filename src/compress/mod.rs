//! Weight compression numerics: the pure functions behind Core ML's palettized and linearly
//! quantized constants. Nothing here knows about the IR or Core ML's file formats; the passes
//! that emit `constexpr_*` ops call into this module.
//!
//! * [`kmeans`]: exact, optimal 1-D k-means (palettization) in memory linear in the tensor size.
//! * [`quantize`]: linear int8/uint8 quantization per output channel or per block, and the
//!   matching dequantization.
//! * [`pack`]: sub-byte packing of indices in Core ML's bit order.
//! * [`parallel`]: independent tensors or layers on every core.
//! * [`output_aware`]: with calibration statistics, the palette or codes that move a layer's
//!   output least: weighted k-means, [`feedback`] rounding (GPTQ), [`refit`] of the table by
//!   least squares, bias correction; [`cholesky`] solves their small dense systems.

pub mod cholesky;
pub mod feedback;
pub mod kmeans;
pub mod output_aware;
pub mod pack;
pub mod quantize;
pub mod refit;

pub use kmeans::{
    kmeans_1d, kmeans_1d_batch, kmeans_1d_weighted, kmeans_1d_weighted_batch, palettize_f16,
    palettize_grouped, palettize_grouped_weighted, try_palettize_f16, Palette,
};
pub use pack::{pack_bits, unpack_bits};
pub use quantize::{
    quantize_blockwise_i8, quantize_per_channel_i8, quantize_per_channel_u8, QuantData, Quantized,
    ScaleType,
};
