//! Stable Diffusion UNets (`UNet2DConditionModel`): SD 1.x, SD 2.x, inpainting, SDXL base and
//! refiner.

pub mod config;
pub mod keys;
pub mod read;
pub mod tensors;
