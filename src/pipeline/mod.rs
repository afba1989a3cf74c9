//! `mlc pipeline`: one checkpoint to the Resources folder Apple's Stable Diffusion Swift package
//! loads. [`checkpoint`] tells the family and finds each part's weights, [`parts`] lists the
//! models to build with their Swift names and options, [`write`] builds them with the ordinary
//! build and puts the folder in place; [`swift`] holds the Swift package's rules the folder is
//! checked against, [`tokenizer`] the CLIP tokenizer files, [`vae_check`] the fp16 check of a VAE
//! built in fp16.

pub mod checkpoint;
pub mod parts;
pub mod swift;
pub mod tokenizer;
pub mod vae_check;
pub mod write;

pub use write::{write, PipelineError, PipelineOptions, PipelineReport};
