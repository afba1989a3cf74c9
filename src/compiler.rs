//! The library's build API under its historical path: everything lives in [`crate::build`].

pub use crate::build::*;
