//! What a UNet is: its sizes, read off the tensors (the file alone must be enough: single-file
//! checkpoints carry no config) and checked against a diffusers `config.json` when one is there.

/// The Stable Diffusion generation a UNet belongs to: what decides the conventions the tensors
/// cannot tell (heads, the added embedding's widths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x (1.4, 1.5, inpainting): 1x1-conv projections, 8 heads at every level.
    Sd1,
    /// SD 2.x (2.0, 2.1, 768-v): linear projections, 64 channels per head.
    Sd2,
    /// SDXL base and refiner: linear projections, 64 channels per head, `text_time` added
    /// embedding.
    Sdxl,
}

/// SDXL's added conditioning: `text_embeds` concatenated with a sinusoid of each time id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddedEmbedding {
    /// Width of `text_embeds` (bigG's projection: 1280).
    pub text_embeds: usize,
    /// Number of time ids: 6 (base: original size, crop, target size), 5 (refiner: original
    /// size, crop, aesthetic score).
    pub time_ids: usize,
    /// Channels of each time id's sinusoid (`addition_time_embed_dim`, 256).
    pub time_id_channels: usize,
}

/// A `UNet2DConditionModel`'s architecture, in diffusers' terms.
#[derive(Clone, Debug, PartialEq)]
pub struct UnetConfig {
    pub family: Family,
    /// Latent channels in: 4, or 9 for inpainting (latent, mask, masked-image latent).
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels per level, top (full resolution) first.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down level (an up level has one more).
    pub layers_per_block: usize,
    /// Transformer blocks per down level, top first; 0 for a level without attention
    /// (`DownBlock2D`). Up level `i` counted from the bottom has the depth of down level
    /// `levels - 1 - i` (diffusers' reversed list).
    pub transformer_depth: Vec<usize>,
    /// Transformer blocks in the mid block.
    pub mid_transformer_depth: usize,
    /// Attention heads per level, top first; the mid block has the last level's.
    pub heads: Vec<usize>,
    /// Width of `encoder_hidden_states` (the text encoder's hidden size).
    pub cross_attention_dim: usize,
    /// `proj_in`/`proj_out` are linear layers (`[C, C]`), not 1x1 convolutions.
    pub linear_projection: bool,
    /// Attention scores and softmax in fp32 (SD 2.1).
    pub upcast_attention: bool,
    /// The timestep sinusoid is `[cos, sin]` (true for every SD UNet).
    pub flip_sin_to_cos: bool,
    /// Subtracted from the sinusoid's frequency index denominator (0 for every SD UNet).
    pub freq_shift: f32,
    /// Width of the time embedding MLP's output (4 x `block_out_channels[0]`).
    pub time_embed_dim: usize,
    /// SDXL's `text_time` added embedding.
    pub added: Option<AddedEmbedding>,
    /// Groups of every GroupNorm (32).
    pub norm_groups: usize,
    /// Epsilon of the resnets' and `conv_norm_out`'s GroupNorms (1e-5).
    pub norm_eps: f32,
}

impl UnetConfig {
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }
}

/// Epsilon of the GroupNorm at the start of each `Transformer2DModel` (diffusers' fixed 1e-6).
pub const TRANSFORMER_NORM_EPS: f32 = 1e-6;
/// Epsilon of the LayerNorms inside each transformer block.
pub const LAYER_NORM_EPS: f32 = 1e-5;
