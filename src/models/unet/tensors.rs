//! Every tensor a UNet of a given [`UnetConfig`] has, under diffusers' names, with its shape:
//! what a file's tensors are checked against (missing, extra or misshapen ones named) before any
//! of them is read.

use super::config::UnetConfig;
use std::collections::BTreeMap;
use std::fmt;

/// How a file's tensors differ from the ones its config needs; keys are diffusers names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The first (in key order) tensor the UNet needs that is not there.
    Missing(String),
    /// A tensor whose shape does not fit the widths the others give.
    Shape {
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// Tensors no part of the UNet reads: the first few, and how many there are.
    Extra { keys: Vec<String>, count: usize },
    /// A size the config gives that overflows.
    Overflow(String),
}

/// How many extra keys a message lists.
const LISTED: usize = 5;

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing(k) => write!(f, "missing tensor \"{k}\""),
            Mismatch::Shape {
                key,
                found,
                expected,
            } => write!(
                f,
                "tensor \"{key}\" has shape {found:?}, expected {expected:?} (from the widths \
                 of the other tensors)"
            ),
            Mismatch::Overflow(reason) => f.write_str(reason),
            Mismatch::Extra { keys, count } => {
                let more = count.saturating_sub(keys.len());
                let more = match more {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                write!(
                    f,
                    "{count} tensor(s) no part of the UNet reads: {}{more}",
                    crate::weights::quoted(keys)
                )
            }
        }
    }
}

/// Checks `shapes` (diffusers names) against the tensors `cfg` needs: each there with its
/// shape, and nothing else.
pub fn check(cfg: &UnetConfig, shapes: &BTreeMap<String, Vec<usize>>) -> Result<(), Mismatch> {
    let want = expected(cfg).map_err(Mismatch::Overflow)?;
    for (key, expected) in &want {
        match shapes.get(key) {
            None => return Err(Mismatch::Missing(key.clone())),
            Some(found) if found != expected => {
                return Err(Mismatch::Shape {
                    key: key.clone(),
                    found: found.clone(),
                    expected: expected.clone(),
                })
            }
            Some(_) => {}
        }
    }
    let extra: Vec<&String> = shapes.keys().filter(|k| !want.contains_key(*k)).collect();
    if !extra.is_empty() {
        return Err(Mismatch::Extra {
            keys: extra.iter().take(LISTED).map(|k| k.to_string()).collect(),
            count: extra.len(),
        });
    }
    Ok(())
}

/// Builds the key → shape list; sizes multiply with overflow checks.
struct Expected {
    shapes: BTreeMap<String, Vec<usize>>,
    time: usize,
    cross: usize,
    linear: bool,
}

fn times(a: usize, b: usize) -> Result<usize, String> {
    a.checked_mul(b)
        .ok_or_else(|| format!("{a} x {b} channels overflow"))
}

fn plus(a: usize, b: usize) -> Result<usize, String> {
    a.checked_add(b)
        .ok_or_else(|| format!("{a} + {b} channels overflow"))
}

impl Expected {
    fn put(&mut self, key: String, shape: &[usize]) {
        self.shapes.insert(key, shape.to_vec());
    }

    /// `{p}.weight` of `shape` and `{p}.bias` of its first dimension.
    fn affine(&mut self, p: &str, shape: &[usize]) {
        self.put(format!("{p}.weight"), shape);
        self.put(format!("{p}.bias"), &shape[..1]);
    }

    fn resnet(&mut self, p: &str, inputs: usize, c: usize) {
        self.affine(&format!("{p}.norm1"), &[inputs]);
        self.affine(&format!("{p}.conv1"), &[c, inputs, 3, 3]);
        self.affine(&format!("{p}.time_emb_proj"), &[c, self.time]);
        self.affine(&format!("{p}.norm2"), &[c]);
        self.affine(&format!("{p}.conv2"), &[c, c, 3, 3]);
        if inputs != c {
            self.affine(&format!("{p}.conv_shortcut"), &[c, inputs, 1, 1]);
        }
    }

    /// A `Transformer2DModel` of `depth` blocks over `c` channels.
    fn transformer(&mut self, p: &str, c: usize, depth: usize) -> Result<(), String> {
        let proj: &[usize] = if self.linear { &[c, c] } else { &[c, c, 1, 1] };
        self.affine(&format!("{p}.norm"), &[c]);
        self.affine(&format!("{p}.proj_in"), proj);
        self.affine(&format!("{p}.proj_out"), proj);
        // GEGLU: the first projection gives the gate and the value, 4C each.
        let inner = times(c, 4)?;
        let geglu = times(inner, 2)?;
        for k in 0..depth {
            let b = format!("{p}.transformer_blocks.{k}");
            for norm in ["norm1", "norm2", "norm3"] {
                self.affine(&format!("{b}.{norm}"), &[c]);
            }
            for (attn, kv) in [("attn1", c), ("attn2", self.cross)] {
                self.put(format!("{b}.{attn}.to_q.weight"), &[c, c]);
                self.put(format!("{b}.{attn}.to_k.weight"), &[c, kv]);
                self.put(format!("{b}.{attn}.to_v.weight"), &[c, kv]);
                self.affine(&format!("{b}.{attn}.to_out.0"), &[c, c]);
            }
            self.affine(&format!("{b}.ff.net.0.proj"), &[geglu, c]);
            self.affine(&format!("{b}.ff.net.2"), &[c, inner]);
        }
        Ok(())
    }
}

/// Every tensor a UNet of `cfg` has, by diffusers name, with its shape. The error names the
/// size that overflows.
pub fn expected(cfg: &UnetConfig) -> Result<BTreeMap<String, Vec<usize>>, String> {
    let mut e = Expected {
        shapes: BTreeMap::new(),
        time: cfg.time_embed_dim,
        cross: cfg.cross_attention_dim,
        linear: cfg.linear_projection,
    };
    let c = &cfg.block_out_channels;
    let (n, layers, t) = (cfg.levels(), cfg.layers_per_block, cfg.time_embed_dim);
    let Some(&last) = c.last() else {
        return Err("a UNet has at least one level".into());
    };
    if cfg.transformer_depth.len() != n {
        return Err(format!(
            "{} transformer depths for {n} levels",
            cfg.transformer_depth.len()
        ));
    }
    e.affine("conv_in", &[c[0], cfg.in_channels, 3, 3]);
    e.affine("time_embedding.linear_1", &[t, c[0]]);
    e.affine("time_embedding.linear_2", &[t, t]);
    if let Some(a) = &cfg.added {
        let inputs = plus(a.text_embeds, times(a.time_ids, a.time_id_channels)?)?;
        e.affine("add_embedding.linear_1", &[t, inputs]);
        e.affine("add_embedding.linear_2", &[t, t]);
    }
    let mut inputs = c[0];
    for (i, (&ci, &depth)) in c.iter().zip(&cfg.transformer_depth).enumerate() {
        let p = format!("down_blocks.{i}");
        for j in 0..layers {
            e.resnet(&format!("{p}.resnets.{j}"), inputs, ci);
            inputs = ci;
            if depth > 0 {
                e.transformer(&format!("{p}.attentions.{j}"), ci, depth)?;
            }
        }
        if i + 1 < n {
            e.affine(&format!("{p}.downsamplers.0.conv"), &[ci, ci, 3, 3]);
        }
    }
    e.resnet("mid_block.resnets.0", last, last);
    e.transformer("mid_block.attentions.0", last, cfg.mid_transformer_depth)?;
    e.resnet("mid_block.resnets.1", last, last);
    // Up level u runs down level n-1-u backwards: each resnet takes the previous output
    // concatenated with one skip, the last skip coming from the level above (diffusers'
    // `get_up_block` channel arithmetic).
    let mut previous = last;
    for u in 0..n {
        let level = n - 1 - u;
        let out = c[level];
        let above = c[level.saturating_sub(1)];
        let p = format!("up_blocks.{u}");
        for j in 0..=layers {
            let skip = if j == layers { above } else { out };
            let own = if j == 0 { previous } else { out };
            e.resnet(&format!("{p}.resnets.{j}"), plus(own, skip)?, out);
            if cfg.transformer_depth[level] > 0 {
                e.transformer(
                    &format!("{p}.attentions.{j}"),
                    out,
                    cfg.transformer_depth[level],
                )?;
            }
        }
        if u + 1 < n {
            e.affine(&format!("{p}.upsamplers.0.conv"), &[out, out, 3, 3]);
        }
        previous = out;
    }
    e.affine("conv_norm_out", &[c[0]]);
    e.affine("conv_out", &[cfg.out_channels, c[0], 3, 3]);
    Ok(e.shapes)
}
