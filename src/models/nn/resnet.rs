//! diffusers' `ResnetBlock2D`: the VAE's resnet, and with a time-embedding input the UNet's.
//!
//! ```text
//! h = conv1(silu(norm1(x)))                       3x3
//! h = h + time_emb_proj(silu(temb))[:, :, None, None]     with a time embedding
//! h = conv2(silu(norm2(h)))                       3x3
//! out = shortcut(x) + h                           shortcut: conv_shortcut (1x1) when cin ≠ cout
//! ```

use super::conv::{conv2d, ConvSpec};
use super::linear::{linear, Linear};
use super::norm::{group_norm, GroupNorm};
use super::{binary, reshape_to, unary, Scope};
use crate::ir::{Binary, Dim, Graph, Unary, ValueId};
use crate::models::{ModelError, TransformerLayout};

/// A resnet block from `cin` to `cout` channels; both norms have `groups` groups.
pub struct Resnet {
    pub cin: usize,
    pub cout: usize,
    pub groups: usize,
    pub epsilon: f32,
}

/// The time embedding a UNet's resnets add: `value` is `[B, channels]`, or `[B, channels, 1, 1]`
/// (then projected by a 1x1 conv, the Neural Engine's form).
#[derive(Clone, Copy)]
pub struct TimeEmbedding {
    pub value: ValueId,
    pub channels: usize,
}

/// Group norm then SiLU (`{scope}_gn`, `{scope}_silu`).
pub fn norm_silu(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    norm: &GroupNorm,
) -> Result<ValueId, ModelError> {
    let x = group_norm(g, p, x, norm)?;
    unary(g, p, Unary::Silu, x, "silu")
}

/// The block over `x` `[B, cin, H, W]`, adding `time` after the first conv when given.
pub fn resnet(
    g: &mut Graph,
    p: &Scope,
    x: ValueId,
    spec: &Resnet,
    time: Option<TimeEmbedding>,
) -> Result<ValueId, ModelError> {
    let (cin, cout) = (spec.cin, spec.cout);
    let norm = |channels| GroupNorm {
        channels,
        groups: spec.groups,
        epsilon: spec.epsilon,
    };
    let h = norm_silu(g, &p.child("norm1"), x, &norm(cin))?;
    let mut h = conv2d(g, &p.child("conv1"), h, &ConvSpec::same(cin, cout, 3, true))?;
    if let Some(t) = time {
        let proj = p.child("time_emb_proj");
        let e = unary(g, &proj, Unary::Silu, t.value, "silu")?;
        let spec = Linear::new(t.channels, cout);
        let e = if g.ty(e).rank() == 4 {
            linear(g, &proj, e, &spec, TransformerLayout::Ane)?
        } else {
            let e = linear(g, &proj, e, &spec, TransformerLayout::Standard)?;
            let b = g.ty(e).shape[0].clone();
            let one = Dim::Known(1);
            let shape = vec![b, Dim::Known(cout), one.clone(), one];
            reshape_to(g, e, shape, proj.node("map"))?
        };
        h = binary(g, p, Binary::Add, h, e, "time_add")?;
    }
    let h = norm_silu(g, &p.child("norm2"), h, &norm(cout))?;
    let h = conv2d(
        g,
        &p.child("conv2"),
        h,
        &ConvSpec::same(cout, cout, 3, true),
    )?;
    let skip = if cin != cout {
        let spec = ConvSpec::same(cin, cout, 1, true);
        conv2d(g, &p.child("conv_shortcut"), x, &spec)?
    } else {
        x
    };
    binary(g, p, Binary::Add, skip, h, "add")
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_close, input, random_weights, run, Lcg};
    use super::super::Params;
    use super::*;
    use crate::kernels::Array;

    /// `[C, H, W]` maps in f64, the reference's own arithmetic.
    struct Map {
        c: usize,
        h: usize,
        w: usize,
        v: Vec<f64>,
    }

    fn group_norm_silu(x: &Map, groups: usize, eps: f64, gamma: &[f32], beta: &[f32]) -> Map {
        let per = x.c / groups * x.h * x.w;
        let mut v = x.v.clone();
        for grp in v.chunks_mut(per) {
            let mean = grp.iter().sum::<f64>() / per as f64;
            let var = grp.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / per as f64;
            grp.iter_mut()
                .for_each(|a| *a = (*a - mean) / (var + eps).sqrt());
        }
        let hw = x.h * x.w;
        for (i, a) in v.iter_mut().enumerate() {
            let c = i / hw;
            let y = *a * gamma[c] as f64 + beta[c] as f64;
            *a = y / (1.0 + (-y).exp());
        }
        Map { v, ..*x }
    }

    /// Size-keeping convolution with a `k`x`k` kernel.
    fn conv(x: &Map, cout: usize, k: usize, w: &[f32], b: &[f32]) -> Map {
        let (c, h, wd) = (x.c, x.h as isize, x.w as isize);
        let r = (k / 2) as isize;
        let mut v = vec![0.0; cout * x.h * x.w];
        for o in 0..cout {
            for i in 0..h {
                for j in 0..wd {
                    let mut s = b[o] as f64;
                    for ci in 0..c {
                        for di in -r..=r {
                            for dj in -r..=r {
                                let (y, z) = (i + di, j + dj);
                                if y < 0 || z < 0 || y >= h || z >= wd {
                                    continue;
                                }
                                let kw = w
                                    [((o * c + ci) * k + (di + r) as usize) * k + (dj + r) as usize]
                                    as f64;
                                s += kw * x.v[(ci * x.h + y as usize) * x.w + z as usize];
                            }
                        }
                    }
                    v[(o * x.h + i as usize) * x.w + j as usize] = s;
                }
            }
        }
        Map { c: cout, v, ..*x }
    }

    /// A block from 4 to 6 channels (so with a shortcut conv) and a time embedding of 3, against
    /// diffusers' `ResnetBlock2D` computed by hand; the embedding as `[B, T]` and `[B, T, 1, 1]`.
    #[test]
    fn resnet_with_a_time_embedding_matches_the_reference() {
        let (cin, cout, hw, tc, groups, eps) = (4, 6, 3, 3, 2, 1e-5);
        let keys: Vec<(String, Vec<usize>)> = vec![
            ("r.norm1.weight".into(), vec![cin]),
            ("r.norm1.bias".into(), vec![cin]),
            ("r.conv1.weight".into(), vec![cout, cin, 3, 3]),
            ("r.conv1.bias".into(), vec![cout]),
            ("r.time_emb_proj.weight".into(), vec![cout, tc]),
            ("r.time_emb_proj.bias".into(), vec![cout]),
            ("r.norm2.weight".into(), vec![cout]),
            ("r.norm2.bias".into(), vec![cout]),
            ("r.conv2.weight".into(), vec![cout, cout, 3, 3]),
            ("r.conv2.bias".into(), vec![cout]),
            ("r.conv_shortcut.weight".into(), vec![cout, cin, 1, 1]),
            ("r.conv_shortcut.bias".into(), vec![cout]),
        ];
        let keys: Vec<(&str, &[usize])> = keys
            .iter()
            .map(|(k, s)| (k.as_str(), s.as_slice()))
            .collect();
        let w = random_weights(6, &keys);
        let t = |k: &str| w.tensors[&format!("r.{k}")].to_f32();
        let x = Array::new(vec![1, cin, hw, hw], Lcg(8).vec(cin * hw * hw));
        let temb = Lcg(9).vec(tc);

        let xm = Map {
            c: cin,
            h: hw,
            w: hw,
            v: x.data.iter().map(|&a| a as f64).collect(),
        };
        let h = group_norm_silu(&xm, groups, eps, &t("norm1.weight"), &t("norm1.bias"));
        let mut h = conv(&h, cout, 3, &t("conv1.weight"), &t("conv1.bias"));
        let (tw, tb) = (t("time_emb_proj.weight"), t("time_emb_proj.bias"));
        for o in 0..cout {
            let e: f64 = tb[o] as f64
                + (0..tc)
                    .map(|i| {
                        let a = temb[i] as f64;
                        tw[o * tc + i] as f64 * a / (1.0 + (-a).exp())
                    })
                    .sum::<f64>();
            h.v[o * hw * hw..(o + 1) * hw * hw]
                .iter_mut()
                .for_each(|a| *a += e);
        }
        let h = group_norm_silu(&h, groups, eps, &t("norm2.weight"), &t("norm2.bias"));
        let h = conv(&h, cout, 3, &t("conv2.weight"), &t("conv2.bias"));
        let skip = conv(
            &xm,
            cout,
            1,
            &t("conv_shortcut.weight"),
            &t("conv_shortcut.bias"),
        );
        let want: Vec<f32> =
            h.v.iter()
                .zip(&skip.v)
                .map(|(a, b)| (a + b) as f32)
                .collect();

        for temb_shape in [vec![1, tc], vec![1, tc, 1, 1]] {
            let params = Params::new(&w);
            let mut g = Graph::new("t");
            let xi = input(&mut g, "x", &[1, cin, hw, hw]);
            let ti = input(&mut g, "temb", &temb_shape);
            let spec = Resnet {
                cin,
                cout,
                groups,
                epsilon: eps as f32,
            };
            let time = TimeEmbedding {
                value: ti,
                channels: tc,
            };
            let y = resnet(&mut g, &params.scope("r"), xi, &spec, Some(time)).unwrap();
            g.set_output("y", y);
            let te = Array::new(temb_shape.clone(), temb.clone());
            let y = &run(&g, &[("x", x.clone()), ("temb", te)])["y"];
            assert_eq!(y.shape, vec![1, cout, hw, hw]);
            assert_close(&y.data, &want, 1e-4, &format!("temb {temb_shape:?}"));
            params.finish().unwrap();
        }
    }
}
