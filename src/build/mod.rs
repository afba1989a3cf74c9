//! The library entry point: build options in, package path and report out. The CLI and build
//! scripts both call [`build`]; nothing here prints.
//!
//! [`options`] says what is asked, [`plan`] resolves it once (model, part, interface, sizes) and
//! [`validate`] refuses what cannot be built; [`driver`] declares, passes and lowers the graph,
//! with [`calibration`] where asked and [`metadata`] for the package; [`write`] writes it and
//! [`report`] says what was built. [`error`] names what went wrong.

pub mod calibration;
pub mod driver;
pub mod error;
pub mod lora;
pub mod metadata;
pub mod options;
pub mod plan;
pub mod report;
pub mod validate;
pub mod write;

pub use crate::progress::{Observer, Progress, Stage};
pub use calibration::{activation_ranges, load_calibration, Ranges};
pub use driver::{
    build_program, build_program_from_weights, declare, declare_owned, pipeline_options, Compiled,
};
pub use error::{BuildError, BuildOption, Remedy};
pub use metadata::function_name;
pub use options::{
    ActivationRanges, ArrayLayout, BuildOptions, CalibrationSource, Compression, InputType,
    OutputType, Precision, QuantMode, Sizes, MAX_IMAGE_SIDE, MAX_SIZES,
};
pub use plan::Plan;
pub use report::{count_ops, largest_intermediate, BuildReport, Intermediate, KeptFloat};
pub use write::build;
