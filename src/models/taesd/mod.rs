//! The TAESD family (taesd, taesdxl, taesd3, taef1, taef2): tiny autoencoders whose decoder and
//! encoder are `nn.Sequential`s of 64-channel blocks.
//!
//! Node names follow the upstream `nn.Sequential` indices, so a name in the printed graph leads
//! straight to the weight key (`l3_conv2` ↔ `3.conv.2.weight`). Decoder:
//!
//! ```text
//! 0 clamp tanh(x/3)*3   1 conv Cl→64 (+bias)   2 relu   3-5 Block
//! 6 upsample x2   7 conv (no bias)   8-10 Block
//! 11 upsample x2  12 conv (no bias)  13-15 Block
//! 16 upsample x2  17 conv (no bias)  18 Block   19 conv 64→3 (+bias)
//! ```
//! Encoder (image in [0, 1]):
//!
//! ```text
//! 0 conv 3→64 (+bias)   1 Block
//! 2 conv stride 2 (no bias)   3-5 Block
//! 6 conv stride 2 (no bias)   7-9 Block
//! 10 conv stride 2 (no bias)  11-13 Block   14 conv 64→Cl (+bias)
//! ```
//! `Block(x) = relu(conv4(relu(conv2(relu(conv0(x))))) + x)`; with the mid-block group-norm pool
//! (taef2: the decoder's blocks 3-5, the encoder's 11-13), a block first does
//! `x = x + conv1x1(relu(group_norm4(conv1x1(x, 4C))), C)`. The variant is read off the weights
//! (latent channels, the pool branch) and checked against the model asked for.
//!
//! Files name the tensors by upstream index or as diffusers does; [`keys`] maps both onto the
//! upstream keys the builder reads.

pub mod keys;

use super::nn::{self, ConvSpec, Params, Scope};
use super::{
    Description, Feature, FeatureDtype, ImageSpec, Interface, Model, ModelError, ModelOption,
    ModelOptions, OptionSet, Part, Role,
};
use crate::hub::Source;
use crate::ir::{Binary, Dim, Graph, Op, TensorType, Unary, ValueId};
use crate::passes::specialize_shapes::Bindings;
use crate::tensor::{DType, Tensor};
use crate::weights::{TensorSource, Weights};
use keys::KeyStyle;

const CH: usize = 64;

/// A TAESD-family source's tensors of `part` under upstream keys (`1.weight`,
/// `3.conv.0.weight`), each in its stored dtype, and the key style the source used. The other
/// half's tensors of a full-autoencoder file are not read.
pub fn load_weights(
    source: &dyn TensorSource,
    part: Part,
) -> Result<(Weights, KeyStyle), ModelError> {
    let names: Vec<String> = source.tensors().keys().cloned().collect();
    let (style, kept) = keys::normalise(source.path(), &names, part)?;
    let wanted = kept
        .into_iter()
        .map(|(i, upstream)| (upstream, names[i].clone()));
    Ok((source.read_as(wanted)?, style))
}

/// One TAESD-family model: its names and the architecture its published weights have.
pub struct Taesd {
    name: &'static str,
    aliases: &'static [&'static str],
    /// What it decodes, for descriptions.
    pipeline: &'static str,
    latent_channels: usize,
    /// Mid-block group-norm pool branch (TAEF2).
    pool: bool,
}

pub static TAESD: Taesd = Taesd {
    name: "taesd",
    aliases: &[],
    pipeline: "SD 1.x / 2.x",
    latent_channels: 4,
    pool: false,
};
pub static TAESDXL: Taesd = Taesd {
    name: "taesdxl",
    aliases: &[],
    pipeline: "SDXL",
    latent_channels: 4,
    pool: false,
};
pub static TAESD3: Taesd = Taesd {
    name: "taesd3",
    aliases: &[],
    pipeline: "SD3",
    latent_channels: 16,
    pool: false,
};
pub static TAEF1: Taesd = Taesd {
    name: "taef1",
    aliases: &["flux1"],
    pipeline: "FLUX.1",
    latent_channels: 16,
    pool: false,
};
pub static TAEF2: Taesd = Taesd {
    name: "taef2",
    aliases: &["flux2"],
    pipeline: "FLUX.2",
    latent_channels: 32,
    pool: true,
};

impl Model for Taesd {
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

    fn options(&self, part: Part) -> OptionSet {
        match part {
            Part::DECODER => OptionSet::SPATIAL.with(&[ModelOption::OutputImage]),
            _ => OptionSet::SPATIAL.with(&[ModelOption::InputImage]),
        }
    }

    fn interface(&self, part: Part, _options: &ModelOptions) -> Interface {
        let (h, w) = (Dim::sym("H"), Dim::sym("W"));
        let c = self.latent_channels;
        let latent_desc = format!("Diffusion latent, {c} channels, NCHW");
        match part {
            Part::DECODER => Interface {
                inputs: vec![feature(
                    "latent",
                    Role::Latent,
                    c,
                    [h.clone(), w.clone()],
                    latent_desc,
                )],
                outputs: vec![feature(
                    "image",
                    Role::Image,
                    3,
                    [h.scaled(8), w.scaled(8)],
                    "RGB image, NCHW, values in about [0, 1] (not clamped)".into(),
                )],
                default_size: size(96, 96),
            },
            _ => Interface {
                inputs: vec![feature(
                    "image",
                    Role::Image,
                    3,
                    [h.clone(), w.clone()],
                    "RGB image, NCHW, values in [0, 1]".into(),
                )],
                outputs: vec![feature(
                    "latent",
                    Role::Latent,
                    c,
                    [eighth(&h), eighth(&w)],
                    latent_desc,
                )],
                default_size: size(768, 768),
            },
        }
    }

    fn load(
        &self,
        part: Part,
        source: &dyn TensorSource,
        _options: &ModelOptions,
    ) -> Result<Weights, ModelError> {
        Ok(load_weights(source, part)?.0)
    }

    fn build(
        &self,
        part: Part,
        weights: &Weights,
        fixed: &Bindings,
        options: &ModelOptions,
    ) -> Result<Graph, ModelError> {
        self.check(part, weights)?;
        let params = Params::new(weights);
        let iface = self.interface(part, options);
        let mut g = Graph::new(format!("{}_{part}", self.name));
        let input = &iface.inputs[0];
        let x = g.input(
            &input.name,
            TensorType::new(DType::F32, super::bind_shape(&input.shape, fixed)?),
        );
        let top = params.scope("");
        let y = match part {
            Part::DECODER => self.decoder(&mut g, &top, x)?,
            _ => self.encoder(&mut g, &top, x)?,
        };
        g.set_output(&iface.outputs[0].name, y);
        params.finish()?;
        Ok(g)
    }

    fn published(&self, part: Part) -> Option<&'static Source> {
        match part {
            Part::DECODER => crate::hub::source(self.name),
            _ => None,
        }
    }

    fn description(&self, part: Part, sizes: &str) -> Description {
        let c = self.latent_channels;
        let what = match part {
            Part::DECODER => format!("{c}-channel latents to RGB images"),
            _ => format!("RGB images to {c}-channel latents"),
        };
        Description {
            short: format!(
                "{} {part} (Tiny AutoEncoder, {}): {what} ({sizes})",
                self.name.to_uppercase(),
                self.pipeline
            ),
            author: format!("mlc ({part} weights: madebyollin/taesd, MIT)"),
            license: "MIT".into(),
        }
    }
}

pub(crate) fn feature(
    name: &str,
    role: Role,
    c: usize,
    [h, w]: [Dim; 2],
    description: String,
) -> Feature {
    Feature {
        name: name.into(),
        role,
        dtype: FeatureDtype::Float,
        shape: vec![Dim::Known(1), Dim::Known(c), h, w],
        description,
        // TAESD images are in [0, 1]; families in another range override it.
        image: (role == Role::Image).then_some(ImageSpec::range(0.0, 1.0)),
    }
}

fn eighth(d: &Dim) -> Dim {
    d.divided(8).expect("8 > 0")
}

fn size(h: usize, w: usize) -> Bindings {
    Bindings::from([("H".to_string(), h), ("W".to_string(), w)])
}

impl Taesd {
    /// The variant the weights hold: latent channels and whether blocks have the pool branch.
    fn detect(&self, part: Part, w: &Weights) -> Result<(usize, bool), ModelError> {
        let key = first_conv_key(part);
        let pool_key = match part {
            Part::DECODER => "3.pool.0.weight",
            _ => "11.pool.0.weight",
        };
        let wrong = |reason: String| ModelError::WrongModel {
            file: w.path.display().to_string(),
            reason,
        };
        let Some(t) = w.tensors.get(key) else {
            // The other part's weights are the likely mistake: say so, and what to do.
            let other = other(part);
            let other_key = first_conv_key(other);
            if w.has(other_key) {
                return Err(ModelError::OtherPart {
                    file: w.path.display().to_string(),
                    family: "TAESD-family",
                    part: part.name(),
                    other: other.name(),
                    key,
                    other_key,
                });
            }
            return Err(wrong(format!(
                "not TAESD-family {part} weights: no tensor \"{key}\""
            )));
        };
        let c = match (part, &t.shape[..]) {
            (Part::DECODER, [CH, c, 3, 3]) => *c,
            (Part::ENCODER, [c, CH, 3, 3]) => *c,
            (_, s) => {
                return Err(wrong(format!(
                    "tensor \"{key}\" has shape {s:?}, not a TAESD-family {part}'s"
                )))
            }
        };
        Ok((c, w.has(pool_key)))
    }

    fn check(&self, part: Part, w: &Weights) -> Result<(), ModelError> {
        let (c, pool) = self.detect(part, w)?;
        if (c, pool) != (self.latent_channels, self.pool) {
            let pool_text = |p: bool| if p { ", group-norm pool" } else { "" };
            let family = match (c, pool) {
                (4, false) => "taesd/taesdxl",
                (16, false) => "taesd3/taef1",
                (32, true) => "taef2",
                _ => "TAESD-style",
            };
            return Err(ModelError::WrongModel {
                file: w.path.display().to_string(),
                reason: format!(
                    "these weights are a {family} {part} ({c} latent channels{}), not {} ({} latent channels{})",
                    pool_text(pool),
                    self.name,
                    self.latent_channels,
                    pool_text(self.pool)
                ),
            });
        }
        Ok(())
    }

    fn decoder(&self, g: &mut Graph, p: &Scope, x: ValueId) -> Result<ValueId, ModelError> {
        let three = g.constant("l0_three", Tensor::scalar(3.0));
        let x = g.add(Op::Binary(Binary::Div), &[x, three], "l0_div")?;
        let x = g.add(Op::Unary(Unary::Tanh), &[x], "l0_tanh")?;
        let x = g.add(Op::Binary(Binary::Mul), &[x, three], "l0_clamp")?;
        let mut x = conv(
            g,
            p,
            1,
            x,
            ConvSpec::same(self.latent_channels, CH, 3, true),
        )?;
        x = g.add(Op::Unary(Unary::Relu), &[x], "l2_relu")?;
        for i in 3..=5 {
            x = block(g, p, i, x, self.pool)?;
        }
        for (up, c, blocks) in [(6, 7, 8..=10), (11, 12, 13..=15), (16, 17, 18..=18)] {
            x = nn::upsample(g, &format!("l{up}_upsample"), x, 2)?;
            x = conv(g, p, c, x, ConvSpec::same(CH, CH, 3, false))?;
            for i in blocks {
                x = block(g, p, i, x, false)?;
            }
        }
        conv(g, p, 19, x, ConvSpec::same(CH, 3, 3, true))
    }

    fn encoder(&self, g: &mut Graph, p: &Scope, x: ValueId) -> Result<ValueId, ModelError> {
        let mut x = conv(g, p, 0, x, ConvSpec::same(3, CH, 3, true))?;
        x = block(g, p, 1, x, false)?;
        for (down, blocks, pool) in [
            (2, 3..=5, false),
            (6, 7..=9, false),
            (10, 11..=13, self.pool),
        ] {
            let spec = ConvSpec::same(CH, CH, 3, false).strided(2, [1, 1, 1, 1]);
            x = conv(g, p, down, x, spec)?;
            for i in blocks {
                x = block(g, p, i, x, pool)?;
            }
        }
        conv(
            g,
            p,
            14,
            x,
            ConvSpec::same(CH, self.latent_channels, 3, true),
        )
    }
}

/// The key a part's weights are recognised by: its conv next to the latent.
fn first_conv_key(part: Part) -> &'static str {
    match part {
        Part::DECODER => "1.weight",
        _ => "14.weight",
    }
}

fn other(part: Part) -> Part {
    match part {
        Part::DECODER => Part::ENCODER,
        _ => Part::DECODER,
    }
}

/// The conv at sequential index `i`, its nodes named `l{i}_…`.
fn conv(
    g: &mut Graph,
    p: &Scope,
    i: usize,
    x: ValueId,
    spec: ConvSpec,
) -> Result<ValueId, ModelError> {
    nn::conv2d(g, &named(p, i, ""), x, &spec)
}

/// A scope for key `{i}.{path}` whose nodes are named `l{i}{suffix}_…`.
fn named<'p, 'w>(p: &Scope<'p, 'w>, i: usize, path: &str) -> Scope<'p, 'w> {
    let key = if path.is_empty() {
        i.to_string()
    } else {
        format!("{i}.{path}")
    };
    p.child(key)
        .renamed_nodes(format!("l{i}{}", node_suffix(path)))
}

/// `conv.2` → `_conv2`, `pool.0` → `_pool0`: the node names the decoder has always had.
fn node_suffix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("_{}", path.replace('.', ""))
    }
}

fn block(
    g: &mut Graph,
    p: &Scope,
    i: usize,
    mut x: ValueId,
    pool: bool,
) -> Result<ValueId, ModelError> {
    let n = format!("l{i}");
    if pool {
        let c4 = CH * 4;
        let y = nn::conv2d(
            g,
            &named(p, i, "pool.0"),
            x,
            &ConvSpec::same(CH, c4, 1, false),
        )?;
        let gn = named(p, i, "pool.1");
        let gamma = gn.constant_named(g, "weight", &[c4], &format!("{n}_pool1_gamma"))?;
        let beta = gn.constant_named(g, "bias", &[c4], &format!("{n}_pool1_beta"))?;
        let y = g.add(
            Op::GroupNorm {
                groups: 4,
                epsilon: 1e-5,
            },
            &[y, gamma, beta],
            format!("{n}_pool1_gn"),
        )?;
        let y = g.add(Op::Unary(Unary::Relu), &[y], format!("{n}_pool2_relu"))?;
        let y = nn::conv2d(
            g,
            &named(p, i, "pool.3"),
            y,
            &ConvSpec::same(c4, CH, 1, false),
        )?;
        x = g.add(Op::Binary(Binary::Add), &[x, y], format!("{n}_pool_add"))?;
    }
    let mut y = x;
    for j in [0, 2, 4] {
        y = nn::conv2d(
            g,
            &named(p, i, &format!("conv.{j}")),
            y,
            &ConvSpec::same(CH, CH, 3, true),
        )?;
        if j < 4 {
            y = g.add(Op::Unary(Unary::Relu), &[y], format!("{n}_relu{}", j + 1))?;
        }
    }
    let sum = g.add(Op::Binary(Binary::Add), &[y, x], format!("{n}_skip_add"))?;
    Ok(g.add(Op::Unary(Unary::Relu), &[sum], format!("{n}_fuse_relu"))?)
}
