//! The parts of a Resources folder, per family: which registry model builds each, from which
//! component of the checkpoint, with which options and feature edits, so that the package has
//! the interface Apple's Swift code reads ([`super::swift`]). This list is the pipeline's only
//! model knowledge: the models themselves know nothing of Swift.

use super::checkpoint::{Checkpoint, Component, Family, Layout};
use super::swift;
use super::vae_check::{Check, Probe};
use crate::models::{ModelOptions, TransformerLayout};
use crate::passes::edit_features::FeatureEdits;

/// What sizes a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizing {
    /// Nothing (77 tokens).
    None,
    /// The latent (`--latent-size`): the UNet.
    Latent,
    /// The image (`--image-size`): the VAE.
    Image,
}

/// One model of the folder.
#[derive(Clone, Debug, PartialEq)]
pub struct PartSpec {
    pub swift: swift::Part,
    /// The registry name of the model that builds it, and its part.
    pub model: &'static str,
    pub part: &'static str,
    pub component: Component,
    pub options: ModelOptions,
    pub features: FeatureEdits,
    pub sizing: Sizing,
    /// Takes `--palettize`/`--quantize` (text encoders and UNets; the VAE stays float, as
    /// Apple's converter keeps it).
    pub compressible: bool,
    /// The VAE, whose precision `--vae-precision` sets.
    pub vae: bool,
    /// Built in fp16, it is first evaluated on a probe with fp16 activations and refused if
    /// they overflow ([`super::vae_check`]): the VAE, whose activations are the large ones.
    pub fp16_check: Option<Check>,
    /// Read from the refiner's checkpoint (`--refiner`), not the base's.
    pub refiner: bool,
}

impl PartSpec {
    /// The bundle's file name in the folder (`Unet.mlmodelc`).
    pub fn file_name(&self) -> &'static str {
        self.swift.file_name()
    }

    /// The name without the extension (`Unet`), for packages and messages.
    pub fn name(&self) -> &'static str {
        self.swift.name()
    }
}

fn edits(outputs: &[(&str, &str)], rename_inputs: &[(&str, &str)], ids: bool) -> FeatureEdits {
    FeatureEdits {
        rename: rename_inputs
            .iter()
            .chain(outputs)
            .filter(|(from, to)| from != to)
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect(),
        outputs: Some(outputs.iter().map(|(f, _)| f.to_string()).collect()),
        float_inputs: match ids {
            true => vec!["input_ids".into()],
            false => vec![],
        },
    }
}

/// A text encoder as `TextEncoder.swift` / `TextEncoderXL.swift` read it: Float32 ids in,
/// `outputs` (model name, Swift name) out.
fn text(
    swift: swift::Part,
    model: &'static str,
    component: Component,
    hidden_layer: Option<usize>,
    outputs: &[(&str, &str)],
) -> PartSpec {
    PartSpec {
        swift,
        model,
        part: "encoder",
        component,
        options: ModelOptions {
            hidden_layer,
            ..Default::default()
        },
        features: edits(outputs, &[], true),
        sizing: Sizing::None,
        compressible: true,
        vae: false,
        fp16_check: None,
        refiner: false,
    }
}

/// The parts `checkpoint` gives, in build order (the UNets first), with the UNet in `layout`;
/// with `refiner`, an SDXL base's parts and the refiner's UNet.
pub fn parts(checkpoint: &Checkpoint, layout: TransformerLayout, refiner: bool) -> Vec<PartSpec> {
    let single = matches!(checkpoint.layout, Layout::SingleFile(_));
    let family = checkpoint.family;
    let (unet, vae, vae_model) = match family {
        Family::Sd1 | Family::Sd2 => ("sd-unet", "sd-vae", &crate::models::vae::SD_VAE),
        Family::Sdxl | Family::SdxlRefiner => {
            ("sdxl-unet", "sdxl-vae", &crate::models::vae::SDXL_VAE)
        }
    };
    let mut list = match family {
        // The single file's OpenCLIP tower (the last block dropped, as diffusers converts it)
        // carries its projection: its unprojected pooled state is what Apple's converter
        // returns. Diffusers' own SD 2.x save is a CLIPTextModel without one, built as SD
        // 1.x's (its config.json gives width, heads and activation).
        Family::Sd2 if single => {
            let mut t = text(
                swift::Part::TextEncoder,
                "clip-h",
                Component::TextEncoder,
                None,
                &[
                    ("last_hidden_state", "last_hidden_state"),
                    ("pooled", "pooled_outputs"),
                ],
            );
            t.options.pooled_output = true;
            vec![t]
        }
        Family::Sd1 | Family::Sd2 => vec![text(
            swift::Part::TextEncoder,
            "clip-l",
            Component::TextEncoder,
            None,
            &[
                ("last_hidden_state", "last_hidden_state"),
                ("pooled", "pooled_outputs"),
            ],
        )],
        // A refiner alone is no folder: `write` refuses it before the parts are listed.
        Family::SdxlRefiner => vec![],
        Family::Sdxl => vec![
            text(
                swift::Part::TextEncoder,
                "clip-l",
                Component::TextEncoder,
                Some(2),
                &[
                    ("hidden_state", "hidden_embeds"),
                    ("pooled", "pooled_outputs"),
                ],
            ),
            text(
                swift::Part::TextEncoder2,
                "clip-bigg",
                Component::TextEncoder2,
                Some(2),
                &[
                    ("hidden_state", "hidden_embeds"),
                    ("text_embeds", "pooled_outputs"),
                ],
            ),
        ],
    };
    // The UNet first: its large bundle is hashed while the smaller parts build.
    list.insert(
        0,
        PartSpec {
            swift: swift::Part::Unet,
            model: unet,
            part: "unet",
            component: Component::Unet,
            options: ModelOptions {
                layout,
                ..Default::default()
            },
            features: FeatureEdits::default(),
            sizing: Sizing::Latent,
            compressible: true,
            vae: false,
            fp16_check: None,
            refiner: false,
        },
    );
    if refiner {
        // Beside the base's UNet, read from the refiner's file; Apple's pipeline uses the
        // base's text encoders for both.
        list.insert(
            1,
            PartSpec {
                swift: swift::Part::UnetRefiner,
                refiner: true,
                ..list[0].clone()
            },
        );
    }
    list.push(PartSpec {
        swift: swift::Part::VaeDecoder,
        model: vae,
        part: "decoder",
        component: Component::Vae,
        options: ModelOptions::default(),
        features: edits(&[("image", "image")], &[("latent", "z")], false),
        sizing: Sizing::Image,
        compressible: false,
        vae: true,
        fp16_check: Some(Check {
            probe: Probe::Latent {
                // Both families' VAEs scale their latents (SD 0.18215, SDXL 0.13025).
                scaling: vae_model.scaling_factor().unwrap_or(1.0),
            },
            by_default: true,
        }),
        refiner: false,
    });
    list.push(PartSpec {
        swift: swift::Part::VaeEncoder,
        model: vae,
        part: "encoder",
        component: Component::Vae,
        options: ModelOptions {
            moments_output: true,
            ..Default::default()
        },
        features: edits(&[("latent", "latent")], &[("image", "x")], false),
        sizing: Sizing::Image,
        compressible: false,
        vae: true,
        // Its activations are smaller; checked when fp16 is asked for, where the check's
        // second is small beside SDXL's build.
        fp16_check: Some(Check {
            probe: Probe::Image,
            by_default: false,
        }),
        refiner: false,
    });
    list
}

/// Which Swift pipeline reads the family's folder.
pub fn swift_pipeline(family: Family) -> swift::Pipeline {
    match family {
        Family::Sd1 | Family::Sd2 => swift::Pipeline::Sd,
        Family::Sdxl | Family::SdxlRefiner => swift::Pipeline::Sdxl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{lookup, FeatureDtype};
    use std::path::PathBuf;

    /// The VAE parts, and only they, get the fp16 check: the decoder also when fp16 is the
    /// family's default, fed latents at its family's scale.
    #[test]
    fn the_vae_parts_get_the_fp16_check() {
        for (family, scaling) in [
            (Family::Sd1, 0.18215),
            (Family::Sd2, 0.18215),
            (Family::Sdxl, 0.13025),
        ] {
            let c = Checkpoint {
                layout: Layout::SingleFile(PathBuf::from("a.safetensors")),
                family,
            };
            for spec in parts(&c, TransformerLayout::Ane, family == Family::Sdxl) {
                let want = match spec.swift {
                    swift::Part::VaeDecoder => Some(Check {
                        probe: Probe::Latent { scaling },
                        by_default: true,
                    }),
                    swift::Part::VaeEncoder => Some(Check {
                        probe: Probe::Image,
                        by_default: false,
                    }),
                    _ => None,
                };
                assert_eq!(spec.fp16_check, want, "{family:?} {}", spec.name());
            }
        }
    }

    /// Every part of every family resolves to a registry model and part, takes the options the
    /// table gives it, and, edited, has exactly the features the Swift code reads, with
    /// Float32 token ids.
    #[test]
    fn every_part_has_the_swift_interface() {
        for family in [Family::Sd1, Family::Sd2, Family::Sdxl] {
            for layout in [
                Layout::SingleFile(PathBuf::from("a.safetensors")),
                Layout::Diffusers(PathBuf::from("d")),
            ] {
                let c = Checkpoint { layout, family };
                let pipeline = swift_pipeline(family);
                let specs = parts(&c, TransformerLayout::Ane, family == Family::Sdxl);
                let swift_parts: Vec<_> = specs.iter().map(|s| s.swift).collect();
                if family == Family::Sdxl {
                    assert!(swift_parts.contains(&swift::Part::UnetRefiner));
                }
                for need in swift::files(pipeline) {
                    if need.need == swift::Need::Required {
                        assert!(
                            need.part.is_none_or(|p| swift_parts.contains(&p)),
                            "{family:?}: {} missing",
                            need.name
                        );
                    }
                }
                for spec in &specs {
                    let model = lookup(spec.model).unwrap();
                    let part = *model
                        .parts()
                        .iter()
                        .find(|p| p.name() == spec.part)
                        .unwrap();
                    let mut o = crate::build::BuildOptions::new(spec.model, "w.safetensors");
                    o.part = Some(spec.part.into());
                    o.model_options = spec.options.clone();
                    crate::build::validate::declared(&o, model, part).unwrap();
                    let edited = spec
                        .features
                        .interface(&model.interface(part, &spec.options))
                        .unwrap();
                    let want = swift::interface(pipeline, spec.swift);
                    let names = |fs: &[crate::models::Feature]| {
                        fs.iter().map(|f| f.name.clone()).collect::<Vec<_>>()
                    };
                    let mut have_in = names(&edited.inputs);
                    let mut want_in: Vec<String> =
                        want.inputs.iter().map(|f| f.name.to_string()).collect();
                    have_in.sort();
                    want_in.sort();
                    assert_eq!(have_in, want_in, "{family:?} {}", spec.name());
                    let mut have_out = names(&edited.outputs);
                    let mut want_out: Vec<String> =
                        want.outputs.iter().map(|f| f.name.to_string()).collect();
                    have_out.sort();
                    want_out.sort();
                    assert_eq!(have_out, want_out, "{family:?} {}", spec.name());
                    assert!(edited.inputs.iter().all(|f| f.dtype == FeatureDtype::Float));
                }
            }
        }
    }
}
