//! `FILE[:WEIGHT]`: a LoRA as the command line names it.

use std::path::PathBuf;

/// A LoRA file and the weight its delta is added with (1.0 unless given; negative allowed).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub weight: f32,
}

impl LoraSpec {
    /// `FILE` or `FILE:WEIGHT`. The weight is what follows the last `:` when that parses as a
    /// finite number, so a path with colons (`C:\x.safetensors`) still reads as a path.
    pub fn parse(s: &str) -> Result<LoraSpec, String> {
        if let Some((path, w)) = s.rsplit_once(':') {
            if let Ok(weight) = w.trim().parse::<f32>() {
                if !weight.is_finite() {
                    return Err(format!("{s}: the weight after ':' must be a finite number"));
                }
                if path.is_empty() {
                    return Err(format!("{s}: no file before ':'"));
                }
                return Ok(LoraSpec {
                    path: path.into(),
                    weight,
                });
            }
        }
        if s.is_empty() {
            return Err("empty LoRA path".into());
        }
        Ok(LoraSpec {
            path: s.into(),
            weight: 1.0,
        })
    }
}

/// `NAME=FILE[:WEIGHT]`: a switchable adapter, a function of its own in the package.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    pub name: String,
    pub lora: LoraSpec,
}

impl AdapterSpec {
    /// The name must be a function name Core ML takes (letters, digits, `_`, not starting with
    /// a digit) other than `main`, the base model's.
    pub fn parse(s: &str) -> Result<AdapterSpec, String> {
        let Some((name, file)) = s.split_once('=') else {
            return Err(format!("{s}: expected NAME=FILE[:WEIGHT]"));
        };
        let ok = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.len() <= 64;
        if !ok {
            return Err(format!(
                "{s}: the adapter name \"{name}\" must be letters, digits and _ (not starting with a digit, at most 64)"
            ));
        }
        if name == BASE_FUNCTION {
            return Err(format!(
                "{s}: \"{BASE_FUNCTION}\" is the base model's function"
            ));
        }
        Ok(AdapterSpec {
            name: name.to_string(),
            lora: LoraSpec::parse(file)?,
        })
    }
}

/// The function of an adapter package that runs the model without any adapter.
pub const BASE_FUNCTION: &str = "main";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_the_last_colon() {
        let p = |s| LoraSpec::parse(s).unwrap();
        assert_eq!(p("a.safetensors").weight, 1.0);
        assert_eq!(p("a.safetensors:0.6").weight, 0.6);
        assert_eq!(p("a.safetensors:-0.5").weight, -0.5);
        assert_eq!(
            p("C:\\x\\a.safetensors").path,
            PathBuf::from("C:\\x\\a.safetensors")
        );
        assert_eq!(
            p("C:\\a.safetensors:2").path,
            PathBuf::from("C:\\a.safetensors")
        );
        assert!(LoraSpec::parse("a:inf").unwrap_err().contains("finite"));
        assert!(LoraSpec::parse(":1").is_err());
        assert!(LoraSpec::parse("").is_err());
    }

    #[test]
    fn adapters_are_named_functions() {
        let a = AdapterSpec::parse("style=a.safetensors:0.8").unwrap();
        assert_eq!((a.name.as_str(), a.lora.weight), ("style", 0.8));
        assert!(AdapterSpec::parse("a.safetensors")
            .unwrap_err()
            .contains("NAME=FILE"));
        assert!(AdapterSpec::parse("9x=a").unwrap_err().contains("letters"));
        assert!(AdapterSpec::parse("a-b=a").unwrap_err().contains("letters"));
        assert!(AdapterSpec::parse("main=a")
            .unwrap_err()
            .contains("base model"));
    }
}
