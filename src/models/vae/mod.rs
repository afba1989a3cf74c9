//! Full VAEs (diffusers `AutoencoderKL`, `AutoencoderKLFlux2`): the decoders and encoders of SD,
//! SDXL, SD3, FLUX.1 and FLUX.2, read from diffusers files or original single files
//! ([`keys`] maps the latter; the graph is written against diffusers names).
//!
//! ```text
//! decoder: [post_quant_conv] conv_in  mid(resnet, attention, resnet)
//!          up_blocks[i]: resnets × (L+1), then upsample x2 + conv (all but the last)
//!          group_norm silu conv_out
//! encoder: conv_in  down_blocks[i]: resnets × L, then pad (0,1,0,1) + stride-2 conv (all but
//!          the last)  mid  group_norm silu conv_out → [mean | logvar]  [quant_conv]
//! resnet(x) = shortcut(x) + conv2(silu(gn2(conv1(silu(gn1(x))))))
//! attention(x) = x + out(attn(q(gn(x)), k(gn(x)), v(gn(x)))) over all H·W positions, one head
//! (both from the layer library: nn::resnet, nn::spatial_attention)
//! ```
//! The architecture (widths, resnets per level, quant convs, FLUX.2's batch norm) is read off the
//! tensors and checked against the model asked for and, when present, the `config.json` beside
//! the weights. Any [`crate::weights::TensorSource`] will do (safetensors, a `.pth` state dict, shards).

pub mod keys;

use super::nn::{self, ConvSpec, Params, Scope};
use super::taesd::feature;
use super::{
    Description, Interface, Model, ModelError, ModelOption, ModelOptions, OptionSet, Part, Role,
};
use crate::ir::{Binary, Dim, Graph, Op, TensorType, ValueId};
use crate::passes::specialize_shapes::Bindings;
use crate::tensor::{DType, Tensor};
use crate::weights::{PrefixError, StoredDtype, TensorSource, Weights};
use keys::VaeConfig;
use std::collections::BTreeMap;
use std::path::Path;

/// GroupNorm epsilon of every norm in the VAE (diffusers passes 1e-6 throughout).
const EPS: f32 = 1e-6;
/// FLUX.2's batch-norm epsilon (`batch_norm_eps` in its config).
const BN_EPS: f32 = 1e-4;

/// How a VAE's latents relate to the diffusion model's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scaling {
    /// `z_model = (z_vae - shift) * scaling`.
    Affine { scaling: f32, shift: f32 },
    /// FLUX.2: a batch norm over 2x2-patchified latents.
    BatchNorm,
}

pub struct Vae {
    name: &'static str,
    aliases: &'static [&'static str],
    pipeline: &'static str,
    latent_channels: usize,
    quant_conv: bool,
    scaling: Scaling,
    /// Image size of a build without sizes.
    default_image: usize,
}

pub static SD_VAE: Vae = Vae {
    name: "sd-vae",
    aliases: &["sd15-vae", "sd21-vae"],
    pipeline: "Stable Diffusion 1.x / 2.x",
    latent_channels: 4,
    quant_conv: true,
    scaling: Scaling::Affine {
        scaling: 0.18215,
        shift: 0.0,
    },
    default_image: 512,
};
pub static SDXL_VAE: Vae = Vae {
    name: "sdxl-vae",
    aliases: &[],
    pipeline: "SDXL",
    latent_channels: 4,
    quant_conv: true,
    scaling: Scaling::Affine {
        scaling: 0.13025,
        shift: 0.0,
    },
    default_image: 1024,
};
pub static SD3_VAE: Vae = Vae {
    name: "sd3-vae",
    aliases: &[],
    pipeline: "Stable Diffusion 3",
    latent_channels: 16,
    quant_conv: false,
    scaling: Scaling::Affine {
        scaling: 1.5305,
        shift: 0.0609,
    },
    default_image: 1024,
};
pub static FLUX1_VAE: Vae = Vae {
    name: "flux1-vae",
    aliases: &[],
    pipeline: "FLUX.1",
    latent_channels: 16,
    quant_conv: false,
    scaling: Scaling::Affine {
        scaling: 0.3611,
        shift: 0.1159,
    },
    default_image: 1024,
};
pub static FLUX2_VAE: Vae = Vae {
    name: "flux2-vae",
    aliases: &[],
    pipeline: "FLUX.2",
    latent_channels: 32,
    quant_conv: true,
    scaling: Scaling::BatchNorm,
    default_image: 1024,
};

/// Downsampling levels of every published AutoencoderKL: images are 8x the latents.
const LEVELS: usize = 4;
const FACTOR: usize = 8;

impl Model for Vae {
    fn name(&self) -> &'static str {
        self.name
    }

    fn aliases(&self) -> &'static [&'static str] {
        self.aliases
    }

    // The build only asks for a part listed here, so this file's matches read any part but the
    // decoder as the encoder.
    fn parts(&self) -> &'static [Part] {
        &[Part::DECODER, Part::ENCODER]
    }

    /// A VAE checkpoint holds the encoder beside the decoder.
    fn calibration_encoder(&self, part: Part) -> Option<super::EncoderWeights> {
        (part == Part::DECODER).then_some(super::EncoderWeights::SameFile)
    }

    fn interface(&self, part: Part, o: &ModelOptions) -> Interface {
        let (h, w) = (Dim::sym("H"), Dim::sym("W"));
        let c = self.latent_channels;
        let scaled = if o.latent_scaling {
            "scaled as the diffusion model uses it"
        } else {
            "as the VAE computes it (no scaling)"
        };
        let latent = |name: &str, role, hw: [Dim; 2]| {
            feature(
                name,
                role,
                c,
                hw,
                format!("Latent, {c} channels, NCHW, {scaled}"),
            )
        };
        let div = |d: &Dim, k: usize| d.divided(k).expect("k > 0");
        match part {
            Part::DECODER => {
                let input = if o.packed_input {
                    feature(
                        "latent",
                        Role::Latent,
                        4 * c,
                        [div(&h, 2), div(&w, 2)],
                        format!(
                            "Packed latent [1, {}, h/2, w/2] as the FLUX.2 transformer gives it",
                            4 * c
                        ),
                    )
                } else {
                    latent("latent", Role::Latent, [h.clone(), w.clone()])
                };
                Interface {
                    inputs: vec![input],
                    outputs: vec![image(
                        [h.scaled(FACTOR), w.scaled(FACTOR)],
                        "RGB image, NCHW, values in about [-1, 1] (not clamped)",
                    )],
                    default_size: size(self.default_image / FACTOR),
                }
            }
            _ => {
                let hw = [div(&h, FACTOR), div(&w, FACTOR)];
                let mut outputs = vec![match o.moments_output {
                    true => feature(
                        "latent",
                        Role::Latent,
                        2 * c,
                        hw.clone(),
                        format!(
                            "Posterior moments, NCHW: the mean (channels 0-{}) then the \
                             log-variance ({c}-{}, not clamped)",
                            c - 1,
                            2 * c - 1
                        ),
                    ),
                    false => latent("latent", Role::Latent, hw.clone()),
                }];
                if o.logvar_output {
                    outputs.push(feature(
                        "logvar",
                        Role::Latent,
                        c,
                        hw,
                        "Log-variance of the posterior, clamped to [-30, 20]".into(),
                    ));
                }
                Interface {
                    inputs: vec![image([h, w], "RGB image, NCHW, values in [-1, 1]")],
                    outputs,
                    default_size: size(self.default_image),
                }
            }
        }
    }

    fn options(&self, part: Part) -> OptionSet {
        use ModelOption::*;
        // FLUX.2's latent normalisation is defined on packed latents: it has packed input instead.
        match (part, self.scaling) {
            (Part::DECODER, Scaling::BatchNorm) => {
                OptionSet::SPATIAL.with(&[OutputImage, PackedInput])
            }
            (Part::DECODER, _) => OptionSet::SPATIAL.with(&[OutputImage, LatentScaling]),
            (_, Scaling::BatchNorm) => OptionSet::SPATIAL.with(&[InputImage, LogvarOutput]),
            _ => OptionSet::SPATIAL.with(&[InputImage, LatentScaling, LogvarOutput, Moments]),
        }
    }

    fn load(
        &self,
        part: Part,
        source: &dyn TensorSource,
        o: &ModelOptions,
    ) -> Result<Weights, ModelError> {
        // The index first: the architecture is checked on shapes alone, and only the part's
        // tensors are then read (the other half of the file never is). Integer tensors
        // (`bn.num_batches_tracked`) are training state no build needs.
        let path = source.path();
        let file = path.display().to_string();
        let wrong = |reason: String| ModelError::WrongModel {
            file: file.clone(),
            reason,
        };
        // A file with no VAE anchor is read bare, so the architecture check names what is
        // missing.
        let prefix = match keys::PLACEMENT.find(source.tensors().keys().map(String::as_str)) {
            Ok(p) => p,
            Err(PrefixError::Absent) => String::new(),
            Err(e) => {
                return Err(wrong(format!(
                    "a VAE under each of {}; give a file with one",
                    e.prefixes()
                )))
            }
        };
        let store = source.under(&prefix);
        let file_shapes: BTreeMap<String, Vec<usize>> = store
            .tensors()
            .iter()
            .filter(|(_, i)| !matches!(i.dtype, StoredDtype::Int(_)))
            .map(|(k, i)| (k.clone(), i.shape.clone()))
            .collect();
        let original = prefix == keys::FULL_CHECKPOINT_PREFIX
            || file_shapes.keys().any(|k| {
                k.starts_with("decoder.up.")
                    || k.starts_with("encoder.down.")
                    || k.starts_with("decoder.mid.")
                    || k.starts_with("encoder.mid.")
            });
        // Model key → (file key, squeeze a [o, i, 1, 1] weight to [o, i]).
        let mut sources: BTreeMap<String, (String, bool)> = BTreeMap::new();
        if original {
            let names: Vec<&str> = file_shapes.keys().map(String::as_str).collect();
            let mapped = keys::map_original_keys(&names, &prefix).map_err(wrong)?;
            for (k, m) in mapped {
                let s = &file_shapes[k];
                let squeeze = m.squeeze_1x1 && s.len() == 4 && s[2..] == [1, 1];
                sources.insert(m.key, (k.to_string(), squeeze));
            }
        } else {
            sources = file_shapes
                .keys()
                .map(|k| (k.clone(), (k.clone(), false)))
                .collect();
        }
        let shapes: BTreeMap<String, Vec<usize>> = sources
            .iter()
            .map(|(k, (f, squeeze))| {
                let s = &file_shapes[f];
                (
                    k.clone(),
                    if *squeeze { s[..2].to_vec() } else { s.clone() },
                )
            })
            .collect();
        let cfg = keys::detect(&shapes).map_err(wrong)?;
        let config = if original {
            None
        } else {
            super::config_beside(path)?
        };
        if let Some((config_json, json)) = config {
            keys::check_config(&cfg, &json).map_err(|reason| ModelError::WrongModel {
                file: config_json,
                reason: format!("disagrees with {}: {reason}", path.display()),
            })?;
        }
        self.check(part, &cfg, &file, true)?;
        // Only the part being built (and what its options fold in) is read.
        let keep = |k: &str| match part {
            Part::DECODER => {
                k.starts_with("decoder.")
                    || k.starts_with("post_quant_conv.")
                    || (o.packed_input && k.starts_with("bn."))
            }
            _ => k.starts_with("encoder.") || k.starts_with("quant_conv."),
        };
        let mut tensors = BTreeMap::new();
        for (k, (f, squeeze)) in sources.into_iter().filter(|(k, _)| keep(k)) {
            let mut t = store.read(&f)?;
            if squeeze {
                t.shape.truncate(2);
            }
            tensors.insert(k, t);
        }
        Ok(Weights::new(path, source.format(), tensors))
    }

    fn build(
        &self,
        part: Part,
        weights: &Weights,
        fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let cfg = self.part_config(part, weights)?;
        self.declare(part, &cfg, Params::new(weights), fixed, o)
    }

    fn build_owned(
        &self,
        part: Part,
        weights: Weights,
        fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let cfg = self.part_config(part, &weights)?;
        self.declare(part, &cfg, Params::owned(weights), fixed, o)
    }

    /// Diffusers names every VAE `diffusion_pytorch_model`, and the same tensors in an original
    /// single file must give the same package: the content hash alone identifies them.
    fn weights_source(&self, _path: &Path) -> Option<String> {
        None
    }

    fn description(&self, part: Part, sizes: &str) -> Description {
        let c = self.latent_channels;
        let what = match part {
            Part::DECODER => format!("{c}-channel latents to RGB images"),
            _ => format!("RGB images to {c}-channel latents"),
        };
        Description {
            short: format!("{} VAE {part}: {what} ({sizes})", self.pipeline),
            author: "mlc (weights: the model's publisher)".into(),
            license: "see the weights' license".into(),
        }
    }
}

/// A VAE's image: RGB in [-1, 1].
fn image(hw: [Dim; 2], description: &str) -> super::Feature {
    super::Feature {
        image: Some(super::ImageSpec::range(-1.0, 1.0)),
        ..feature("image", Role::Image, 3, hw, description.into())
    }
}

fn size(n: usize) -> Bindings {
    Bindings::from([("H".to_string(), n), ("W".to_string(), n)])
}

struct Builder<'c> {
    cfg: &'c VaeConfig,
    groups: usize,
}

impl Vae {
    /// The diffusion model's latent is the VAE's times this (`scaling_factor` in diffusers);
    /// None for FLUX.2's batch norm.
    pub fn scaling_factor(&self) -> Option<f32> {
        match self.scaling {
            Scaling::Affine { scaling, .. } => Some(scaling),
            Scaling::BatchNorm => None,
        }
    }

    /// The architecture of the part's tensors, checked against this model.
    fn part_config(&self, part: Part, weights: &Weights) -> Result<VaeConfig, ModelError> {
        let shapes: BTreeMap<String, Vec<usize>> = weights
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect();
        let file = weights.path.display().to_string();
        let cfg = keys::detect(&shapes).map_err(|reason| ModelError::WrongModel {
            file: file.clone(),
            reason,
        })?;
        self.check(part, &cfg, &file, false)?;
        Ok(cfg)
    }

    /// The part's graph over `params`.
    fn declare(
        &self,
        part: Part,
        cfg: &VaeConfig,
        params: Params,
        fixed: &Bindings,
        o: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        let iface = self.interface(part, o);
        let mut g = Graph::new(format!("{}_{part}", self.name));
        let input = &iface.inputs[0];
        let x = g.input(
            &input.name,
            TensorType::new(DType::F32, super::bind_shape(&input.shape, fixed)?),
        );
        let b = Builder {
            cfg,
            groups: cfg.norm_groups,
        };
        let top = params.scope("");
        match part {
            Part::DECODER => {
                let y = self.decoder(&mut g, &b, &top, x, o)?;
                g.set_output("image", y);
            }
            _ => {
                let (mean, logvar) = self.encoder(&mut g, &b, &top, x, o)?;
                g.set_output("latent", mean);
                if let Some(lv) = logvar {
                    g.set_output("logvar", lv);
                }
            }
        }
        params.finish()?;
        Ok(g)
    }

    /// The tensors' architecture against the model asked for. `whole_file`: `cfg` describes the
    /// whole file (at load), not just the part's tensors (at build), so the batch norm is there
    /// to check.
    fn check(
        &self,
        part: Part,
        cfg: &VaeConfig,
        file: &str,
        whole_file: bool,
    ) -> Result<(), ModelError> {
        let wrong = |reason: String| {
            Err(ModelError::WrongModel {
                file: file.to_string(),
                reason,
            })
        };
        let has = match part {
            Part::DECODER => cfg.has_decoder,
            _ => cfg.has_encoder,
        };
        if !has {
            return wrong(format!("no {part} tensors (no \"{part}.conv_in.weight\")"));
        }
        if cfg.latent_channels != self.latent_channels {
            return wrong(format!(
                "these weights have {} latent channels, {} has {}",
                cfg.latent_channels, self.name, self.latent_channels
            ));
        }
        if cfg.quant_conv != self.quant_conv {
            let (has, not) = if cfg.quant_conv {
                ("", "no ")
            } else {
                ("no ", "")
            };
            return wrong(format!(
                "these weights have {has}quant convs, {} has {not}quant convs",
                self.name
            ));
        }
        let bn = matches!(self.scaling, Scaling::BatchNorm);
        if whole_file && cfg.batch_norm.is_some() != bn {
            let say = if bn { "lack" } else { "have" };
            return wrong(format!(
                "these weights {say} FLUX.2's latent batch norm (\"bn.running_mean\"), so they are not {}",
                self.name
            ));
        }
        if cfg.block_out_channels.len() != LEVELS {
            return wrong(format!(
                "{} down/up levels; every supported VAE has {LEVELS}",
                cfg.block_out_channels.len()
            ));
        }
        Ok(())
    }

    fn decoder(
        &self,
        g: &mut Graph,
        b: &Builder,
        top: &Scope,
        mut x: ValueId,
        o: &ModelOptions,
    ) -> Result<ValueId, ModelError> {
        let c = self.latent_channels;
        if o.packed_input {
            x = unpack(g, &top.child("bn"), x, 4 * c)?;
        }
        if let (true, Scaling::Affine { scaling, shift }) = (o.latent_scaling, self.scaling) {
            let s = g.constant("latent_unscale", Tensor::scalar(1.0 / scaling));
            x = g.add(Op::Binary(Binary::Mul), &[x, s], "latent_unscaled")?;
            if shift != 0.0 {
                let t = g.constant("latent_shift", Tensor::scalar(shift));
                x = g.add(Op::Binary(Binary::Add), &[x, t], "latent_shifted")?;
            }
        }
        if self.quant_conv {
            x = nn::conv2d(
                g,
                &top.child("post_quant_conv"),
                x,
                &ConvSpec::same(c, c, 1, true),
            )?;
        }
        let p = top.child("decoder");
        let widths: Vec<usize> = b.cfg.block_out_channels.iter().rev().copied().collect();
        let mut ch = widths[0];
        x = nn::conv2d(g, &p.child("conv_in"), x, &ConvSpec::same(c, ch, 3, true))?;
        x = b.mid_block(g, &p.child("mid_block"), x, ch)?;
        for (i, &out) in widths.iter().enumerate() {
            let up = p.child("up_blocks").child(i);
            for j in 0..b.cfg.decoder_layers_per_block {
                x = b.resnet(g, &up.child("resnets").child(j), x, ch, out)?;
                ch = out;
            }
            if i + 1 < widths.len() {
                let u = up.child("upsamplers").child(0);
                x = nn::upsample(g, &u.node("upsample"), x, 2)?;
                x = nn::conv2d(g, &u.child("conv"), x, &ConvSpec::same(ch, ch, 3, true))?;
            }
        }
        x = b.norm_silu(g, &p.child("conv_norm_out"), x, ch)?;
        nn::conv2d(g, &p.child("conv_out"), x, &ConvSpec::same(ch, 3, 3, true))
    }

    fn encoder(
        &self,
        g: &mut Graph,
        b: &Builder,
        top: &Scope,
        x: ValueId,
        o: &ModelOptions,
    ) -> Result<(ValueId, Option<ValueId>), ModelError> {
        let c = self.latent_channels;
        let p = top.child("encoder");
        let widths = &b.cfg.block_out_channels;
        let mut ch = widths[0];
        let mut x = nn::conv2d(g, &p.child("conv_in"), x, &ConvSpec::same(3, ch, 3, true))?;
        for (i, &out) in widths.iter().enumerate() {
            let down = p.child("down_blocks").child(i);
            for j in 0..b.cfg.encoder_layers_per_block {
                x = b.resnet(g, &down.child("resnets").child(j), x, ch, out)?;
                ch = out;
            }
            if i + 1 < widths.len() {
                // diffusers pads (0, 1, 0, 1) and convolves with stride 2 and no padding.
                let spec = ConvSpec::same(ch, ch, 3, true).strided(2, [0, 1, 0, 1]);
                x = nn::conv2d(
                    g,
                    &down.child("downsamplers").child(0).child("conv"),
                    x,
                    &spec,
                )?;
            }
        }
        x = b.mid_block(g, &p.child("mid_block"), x, ch)?;
        x = b.norm_silu(g, &p.child("conv_norm_out"), x, ch)?;
        x = nn::conv2d(
            g,
            &p.child("conv_out"),
            x,
            &ConvSpec::same(ch, 2 * c, 3, true),
        )?;
        if self.quant_conv {
            let q = top.child("quant_conv");
            x = nn::conv2d(g, &q, x, &ConvSpec::same(2 * c, 2 * c, 1, true))?;
        }
        if o.moments_output {
            return Ok((x, None));
        }
        let slice = |g: &mut Graph, begin, end, name: &str| {
            g.add(
                Op::Slice {
                    axis: 1,
                    begin,
                    end,
                },
                &[x],
                name,
            )
        };
        let mut mean = slice(g, 0, c, "posterior_mean")?;
        if let (true, Scaling::Affine { scaling, shift }) = (o.latent_scaling, self.scaling) {
            if shift != 0.0 {
                let t = g.constant("latent_shift", Tensor::scalar(shift));
                mean = g.add(Op::Binary(Binary::Sub), &[mean, t], "latent_shifted")?;
            }
            let s = g.constant("latent_scale", Tensor::scalar(scaling));
            mean = g.add(Op::Binary(Binary::Mul), &[mean, s], "latent_scaled")?;
        }
        let logvar = if o.logvar_output {
            let lv = slice(g, c, 2 * c, "posterior_logvar")?;
            Some(g.add(
                Op::Clip {
                    min: -30.0,
                    max: 20.0,
                },
                &[lv],
                "logvar_clipped",
            )?)
        } else {
            None
        };
        Ok((mean, logvar))
    }
}

/// FLUX.2's packed latents back to the VAE's: `x * sqrt(var + eps) + mean` per packed channel,
/// then the 2x2 unpatchify (a pixel shuffle).
fn unpack(g: &mut Graph, bn: &Scope, x: ValueId, c4: usize) -> Result<ValueId, ModelError> {
    let mean = bn.tensor("running_mean", &[c4])?;
    let var = bn.tensor("running_var", &[c4])?;
    let std: Vec<f32> = var
        .to_f32()
        .iter()
        .map(|v| ((*v as f64 + BN_EPS as f64).sqrt()) as f32)
        .collect();
    let std = g.constant("bn_std", Tensor::f32(vec![1, c4, 1, 1], std));
    let mean = g.constant("bn_mean", Tensor::f32(vec![1, c4, 1, 1], mean.to_f32()));
    let x = g.add(Op::Binary(Binary::Mul), &[x, std], "bn_unscaled")?;
    let x = g.add(Op::Binary(Binary::Add), &[x, mean], "bn_unnormalised")?;
    Ok(g.add(Op::PixelShuffle { factor: 2 }, &[x], "unpatchify")?)
}

impl Builder<'_> {
    fn norm(&self, channels: usize) -> nn::GroupNorm {
        nn::GroupNorm {
            channels,
            groups: self.groups,
            epsilon: EPS,
        }
    }

    fn norm_silu(
        &self,
        g: &mut Graph,
        p: &Scope,
        x: ValueId,
        ch: usize,
    ) -> Result<ValueId, ModelError> {
        nn::norm_silu(g, p, x, &self.norm(ch))
    }

    fn resnet(
        &self,
        g: &mut Graph,
        p: &Scope,
        x: ValueId,
        cin: usize,
        cout: usize,
    ) -> Result<ValueId, ModelError> {
        let spec = nn::Resnet {
            cin,
            cout,
            groups: self.groups,
            epsilon: EPS,
        };
        nn::resnet(g, p, x, &spec, None)
    }

    fn mid_block(
        &self,
        g: &mut Graph,
        p: &Scope,
        x: ValueId,
        ch: usize,
    ) -> Result<ValueId, ModelError> {
        let x = self.resnet(g, &p.child("resnets").child(0), x, ch, ch)?;
        let spec = nn::SpatialAttention {
            channels: ch,
            groups: self.groups,
            epsilon: EPS,
        };
        let x = nn::spatial_attention(g, &p.child("attentions").child(0), x, &spec)?;
        self.resnet(g, &p.child("resnets").child(1), x, ch, ch)
    }
}
