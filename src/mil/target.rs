//! Deployment targets: which Core ML specification version and MIL opset a package declares.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Ios16,
    Ios17,
    Ios18,
}

/// Accepted spellings, with the macOS release that ships the same Core ML.
const NAMES: &[(&str, Target)] = &[
    ("ios16", Target::Ios16),
    ("macos13", Target::Ios16),
    ("ios17", Target::Ios17),
    ("macos14", Target::Ios17),
    ("ios18", Target::Ios18),
    ("macos15", Target::Ios18),
];

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let lower = s.to_ascii_lowercase();
        NAMES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                format!(
                    "unknown target {s:?}; expected one of {}",
                    NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// `Model.specificationVersion`.
    pub fn spec_version(self) -> i32 {
        match self {
            Target::Ios16 => 7,
            Target::Ios17 => 8,
            Target::Ios18 => 9,
        }
    }

    /// The MIL opset the function must declare for this specification version.
    pub fn opset(self) -> &'static str {
        match self {
            Target::Ios16 => "CoreML6",
            Target::Ios17 => "CoreML7",
            Target::Ios18 => "CoreML8",
        }
    }

    pub fn from_spec_version(v: i32) -> Option<Target> {
        [Target::Ios16, Target::Ios17, Target::Ios18]
            .into_iter()
            .find(|t| t.spec_version() == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Ios16 => "ios16",
            Target::Ios17 => "ios17",
            Target::Ios18 => "ios18",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
