//! The TAESD decoder family (taesd, taesdxl, taesd3, taef1, taef2) as an IR graph.
//!
//! Upstream `Decoder` is an `nn.Sequential`; node names follow its indices so that a name in the
//! printed graph leads straight to the weight key (`l3_conv2` ↔ `3.conv.2.weight`):
//!
//! ```text
//! 0 clamp tanh(x/3)*3   1 conv Cl→64 (+bias)   2 relu   3-5 Block
//! 6 upsample x2   7 conv (no bias)   8-10 Block
//! 11 upsample x2  12 conv (no bias)  13-15 Block
//! 16 upsample x2  17 conv (no bias)  18 Block   19 conv 64→3 (+bias)
//! ```
//! `Block(x) = relu(conv4(relu(conv2(relu(conv0(x))))) + x)`; with the mid-block group-norm pool
//! (taef2), blocks 3-5 first do `x = x + conv1x1(relu(group_norm4(conv1x1(x, 4C))), C)`.
//! The variant is read off the weights: latent channels from `1.weight`, the pool branch from
//! `3.pool.0.weight`.

use super::ModelError;
use crate::ir::{Conv2d, Dim, Graph, Op, TensorType, ValueId};
use crate::tensor::{DType, Tensor};
use crate::weights::{WeightError, Weights};
use std::collections::BTreeSet;

const CH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    Taesd,
    Taesdxl,
    Taesd3,
    Taef1,
    Taef2,
}

/// Names accepted on the command line, with the model each picks.
const NAMES: &[(&str, ModelKind)] = &[
    ("taesd", ModelKind::Taesd),
    ("taesdxl", ModelKind::Taesdxl),
    ("taesd3", ModelKind::Taesd3),
    ("taef1", ModelKind::Taef1),
    ("flux1", ModelKind::Taef1),
    ("taef2", ModelKind::Taef2),
    ("flux2", ModelKind::Taef2),
];

impl ModelKind {
    pub fn parse(name: &str) -> Result<ModelKind, ModelError> {
        let lower = name.to_ascii_lowercase();
        NAMES
            .iter()
            .find(|(n, _)| *n == lower)
            .map(|(_, k)| *k)
            .ok_or_else(|| ModelError::UnknownModel {
                name: name.to_string(),
                known: NAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Taesd => "taesd",
            ModelKind::Taesdxl => "taesdxl",
            ModelKind::Taesd3 => "taesd3",
            ModelKind::Taef1 => "taef1",
            ModelKind::Taef2 => "taef2",
        }
    }

    /// The decoder configuration this model's published weights have.
    pub fn config(self) -> DecoderConfig {
        match self {
            ModelKind::Taesd | ModelKind::Taesdxl => DecoderConfig {
                latent_channels: 4,
                pool: false,
            },
            ModelKind::Taesd3 | ModelKind::Taef1 => DecoderConfig {
                latent_channels: 16,
                pool: false,
            },
            ModelKind::Taef2 => DecoderConfig {
                latent_channels: 32,
                pool: true,
            },
        }
    }
}

/// What the weights say about the architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    pub latent_channels: usize,
    /// Mid-block group-norm pool branch in blocks 3-5 (TAEF2).
    pub pool: bool,
}

impl DecoderConfig {
    fn family(self) -> &'static str {
        match (self.latent_channels, self.pool) {
            (4, false) => "taesd/taesdxl",
            (16, false) => "taesd3/taef1",
            (32, true) => "taef2",
            _ => "TAESD-style",
        }
    }
}

/// Reads the variant off the weights.
pub fn detect(w: &Weights) -> Result<DecoderConfig, ModelError> {
    let first = w
        .tensors
        .get("1.weight")
        .ok_or_else(|| WeightError::MissingKey {
            path: w.path.clone(),
            key: "1.weight".into(),
        })?;
    let latent_channels = match first.shape[..] {
        [CH, c, 3, 3] => c,
        _ => {
            return Err(WeightError::ShapeMismatch {
                path: w.path.clone(),
                key: "1.weight".into(),
                expected: vec![CH, 0, 3, 3],
                found: first.shape.clone(),
            }
            .into())
        }
    };
    Ok(DecoderConfig {
        latent_channels,
        pool: w.has("3.pool.0.weight"),
    })
}

/// Builds the decoder of `kind` from `w` for latents of spatial size `latent_hw` (known or
/// symbolic), with fp32 input `latent` and output `image`.
pub fn build_decoder(
    kind: ModelKind,
    w: &Weights,
    latent_hw: [Dim; 2],
) -> Result<Graph, ModelError> {
    let cfg = detect(w)?;
    let expected = kind.config();
    if cfg != expected {
        let pool = |p: bool| if p { ", group-norm pool" } else { "" };
        return Err(ModelError::WrongVariant {
            file: w.path.display().to_string(),
            model: kind.name(),
            found: cfg.family(),
            channels: cfg.latent_channels,
            pool: pool(cfg.pool),
            expected: expected.latent_channels,
            expected_pool: pool(expected.pool),
        });
    }
    let mut b = Builder {
        g: Graph::new(format!("{}_decoder", kind.name())),
        w,
        used: BTreeSet::new(),
    };
    let [h, wd] = latent_hw;
    let x = b.g.input(
        "latent",
        TensorType::new(
            DType::F32,
            vec![Dim::Known(1), Dim::Known(cfg.latent_channels), h, wd],
        ),
    );

    let three = b.g.constant("l0_three", Tensor::scalar(3.0));
    let x = b.g.add(Op::Div, &[x, three], "l0_div")?;
    let x = b.g.add(Op::Tanh, &[x], "l0_tanh")?;
    let x = b.g.add(Op::Mul, &[x, three], "l0_clamp")?;

    let mut x = b.conv("l1", "1", x, cfg.latent_channels, CH, 3, true)?;
    x = b.g.add(Op::Relu, &[x], "l2_relu")?;
    for i in 3..=5 {
        x = b.block(i, x, cfg.pool)?;
    }
    for (up, conv, blocks) in [(6, 7, 8..=10), (11, 12, 13..=15), (16, 17, 18..=18)] {
        x =
            b.g.add(Op::Upsample { scale: 2 }, &[x], format!("l{up}_upsample"))?;
        x = b.conv(&format!("l{conv}"), &conv.to_string(), x, CH, CH, 3, false)?;
        for i in blocks {
            x = b.block(i, x, false)?;
        }
    }
    let image = b.conv("l19", "19", x, CH, 3, 3, true)?;
    b.g.set_output("image", image);

    let unused: Vec<String> = w
        .tensors
        .keys()
        .filter(|k| !b.used.contains(*k))
        .cloned()
        .collect();
    if !unused.is_empty() {
        return Err(WeightError::UnexpectedKeys {
            path: w.path.clone(),
            keys: unused,
        }
        .into());
    }
    Ok(b.g)
}

struct Builder<'w> {
    g: Graph,
    w: &'w Weights,
    used: BTreeSet<String>,
}

impl Builder<'_> {
    fn weight(&mut self, key: &str, shape: &[usize], name: String) -> Result<ValueId, ModelError> {
        let t = self.w.get(key, shape)?;
        self.used.insert(key.to_string());
        Ok(self.g.constant(name, t.clone()))
    }

    /// A same-padded conv named `{name}` with weights under `{key}.weight` / `{key}.bias`.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        key: &str,
        x: ValueId,
        cin: usize,
        cout: usize,
        k: usize,
        bias: bool,
    ) -> Result<ValueId, ModelError> {
        let mut args = vec![
            x,
            self.weight(
                &format!("{key}.weight"),
                &[cout, cin, k, k],
                format!("{name}_weight"),
            )?,
        ];
        if bias {
            args.push(self.weight(&format!("{key}.bias"), &[cout], format!("{name}_bias"))?);
        }
        Ok(self
            .g
            .add(Op::Conv2d(Conv2d::same(k)), &args, format!("{name}_conv"))?)
    }

    fn block(&mut self, i: usize, mut x: ValueId, pool: bool) -> Result<ValueId, ModelError> {
        let (n, k) = (format!("l{i}"), i.to_string());
        if pool {
            let c4 = CH * 4;
            let p = self.conv(
                &format!("{n}_pool0"),
                &format!("{k}.pool.0"),
                x,
                CH,
                c4,
                1,
                false,
            )?;
            let gamma = self.weight(
                &format!("{k}.pool.1.weight"),
                &[c4],
                format!("{n}_pool1_gamma"),
            )?;
            let beta = self.weight(
                &format!("{k}.pool.1.bias"),
                &[c4],
                format!("{n}_pool1_beta"),
            )?;
            let p = self.g.add(
                Op::GroupNorm {
                    groups: 4,
                    epsilon: 1e-5,
                },
                &[p, gamma, beta],
                format!("{n}_pool1_gn"),
            )?;
            let p = self.g.add(Op::Relu, &[p], format!("{n}_pool2_relu"))?;
            let p = self.conv(
                &format!("{n}_pool3"),
                &format!("{k}.pool.3"),
                p,
                c4,
                CH,
                1,
                false,
            )?;
            x = self.g.add(Op::Add, &[x, p], format!("{n}_pool_add"))?;
        }
        let mut y = x;
        for j in [0, 2, 4] {
            y = self.conv(
                &format!("{n}_conv{j}"),
                &format!("{k}.conv.{j}"),
                y,
                CH,
                CH,
                3,
                true,
            )?;
            if j < 4 {
                y = self.g.add(Op::Relu, &[y], format!("{n}_relu{}", j + 1))?;
            }
        }
        let sum = self.g.add(Op::Add, &[y, x], format!("{n}_skip_add"))?;
        Ok(self.g.add(Op::Relu, &[sum], format!("{n}_fuse_relu"))?)
    }
}
