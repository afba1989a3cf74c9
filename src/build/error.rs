//! What can stop a build, and what gets it past: errors name the option at fault for a front end
//! to turn into its flag.

use crate::mil;
use crate::models::ModelError;
use crate::package::PackageError;
use crate::passes::PassError;
use crate::weights::check::WeightCheckError;

/// A build option, as errors name it (the CLI maps each to its flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildOption {
    Weights,
    Sizes,
    Multifunction,
    /// Palettization with this many bits.
    Palettize(u32),
    Granularity,
    BlockSize,
    OutputType,
    InputType,
    QuantizeActivations,
    Calibration,
    /// Compiling the package with mlc's own compiler.
    Compile,
    /// Switchable adapters.
    Adapter,
    /// Feature edits ([`super::BuildOptions::features`]).
    Features,
}

impl std::fmt::Display for BuildOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildOption::Weights => f.write_str("weights"),
            BuildOption::Sizes => f.write_str("sizes"),
            BuildOption::Multifunction => f.write_str("multifunction"),
            BuildOption::Palettize(b) => write!(f, "palettization to {b} bits"),
            BuildOption::Granularity => f.write_str("per-grouped-channel palettes"),
            BuildOption::BlockSize => f.write_str("blockwise quantization"),
            BuildOption::OutputType => f.write_str("image output"),
            BuildOption::InputType => f.write_str("image input"),
            BuildOption::QuantizeActivations => f.write_str("int8 activations"),
            BuildOption::Calibration => f.write_str("calibration"),
            BuildOption::Compile => f.write_str("compiling with mlc"),
            BuildOption::Adapter => f.write_str("switchable adapters"),
            BuildOption::Features => f.write_str("features"),
        }
    }
}

pub(crate) fn option_error<T>(
    option: BuildOption,
    reason: impl Into<String>,
) -> Result<T, BuildError> {
    Err(BuildError::Option {
        option,
        reason: reason.into(),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Pass(#[from] PassError),
    #[error(transparent)]
    Lower(#[from] mil::LowerError),
    #[error(transparent)]
    Package(#[from] PackageError),
    /// An option (combination) that cannot be built; the CLI names the flag.
    #[error("{option}: {reason}")]
    Option { option: BuildOption, reason: String },
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    #[error("dumping passes: {0}")]
    Dump(std::io::Error),
    /// A weight the package cannot hold (non-finite, or beyond the precision's range).
    #[error(transparent)]
    Weight(#[from] WeightCheckError),
    /// A LoRA that cannot be fused (`--lora`).
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),
    /// A weight fused as it was written that could not be read back or fused.
    #[error(transparent)]
    Digest(#[from] crate::weights::DigestError),
}

/// What gets a build past an error, for a front end to name in its own terms (the CLI as a
/// flag); the message says it in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// A weights file on disk instead of a download.
    WeightsFile,
    /// fp32 precision.
    Fp32,
    /// Building this part of the model instead (its name, what `--part` takes).
    Part(&'static str),
}

impl BuildError {
    pub fn remedy(&self) -> Option<Remedy> {
        match self {
            BuildError::Hub(h) if h.local_file_helps() => Some(Remedy::WeightsFile),
            BuildError::Weight(WeightCheckError::Fp16Range { .. }) => Some(Remedy::Fp32),
            BuildError::Model(ModelError::OtherPart { other, .. }) => Some(Remedy::Part(other)),
            _ => None,
        }
    }
}
