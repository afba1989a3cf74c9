//! OpenCLIP's own layout of a text tower, as Stable Diffusion single files store it (SD 2.x under
//! `cond_stage_model.model.`, SDXL's second encoder under `conditioner.embedders.1.model.`, the
//! refiner's under `conditioner.embedders.0.model.`) and open_clip saves it (bare, beside
//! `visual.*`). [`OpenClip`] presents it as a source under the builder's (transformers') names,
//! so the rest of the family reads it as it reads a transformers save:
//!
//! ```text
//! token_embedding.weight                      embeddings.token_embedding.weight
//! positional_embedding            [S, D]      embeddings.position_embedding.weight
//! transformer.resblocks.N.ln_1 / ln_2         encoder.layers.N.layer_norm1 / layer_norm2
//!   attn.in_proj_weight / _bias   [3D, D]     self_attn.{q,k,v}_proj.weight / .bias (thirds)
//!   attn.out_proj                             self_attn.out_proj
//!   mlp.c_fc / mlp.c_proj                     mlp.fc1 / mlp.fc2
//! ln_final                                    final_layer_norm
//! text_projection                 [D, P]      text_projection.weight [P, D] (transposed)
//! logit_scale, attn_mask, visual.*            not read
//! ```
//!
//! SD 2.x conditions its UNet on the penultimate block's output through `ln_final`, and
//! diffusers' single-file conversion gets there by dropping the last block (its
//! `SD_2_TEXT_ENCODER_KEYS_TO_IGNORE`: `resblocks.23` of 24), so under SD 2.x's prefix the last
//! block is left out and `last_hidden_state` is what SD 2.x's UNet reads. The projection is kept
//! (diffusers drops it only because its SD 2.x encoder is a `CLIPTextModel`), so `clip-h` still has
//! its `text_embeds`.

use super::keys::{POSITION_EMBEDDING, PROJECTION, TOKEN_EMBEDDING};
use crate::tensor::{Tensor, TensorData};
use crate::weights::{
    KeyPlacement, PrefixError, TensorInfo, TensorSource, Under, WeightError, WeightFormat,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

/// The key whose suffix locates an OpenCLIP text tower (the transformers layout's ends in
/// `embeddings.token_embedding.weight`, which is told apart).
const ANCHOR: &str = "token_embedding.weight";

/// SD 2.x's prefix: the tower without its last block.
pub const SD2_ROOT: &str = "cond_stage_model.model.";

/// OpenCLIP's projection key (a bare parameter, no `.weight`).
pub const OPEN_PROJECTION: &str = "text_projection";

/// The tower's tensors outside the blocks, and the builder's names for them.
const TOP: [(&str, &str); 4] = [
    (ANCHOR, TOKEN_EMBEDDING),
    ("positional_embedding", POSITION_EMBEDDING),
    ("ln_final.weight", "final_layer_norm.weight"),
    ("ln_final.bias", "final_layer_norm.bias"),
];

/// A block's tensors read whole, and the builder's names for them under `encoder.layers.N.`.
const BLOCK: [(&str, &str); 10] = [
    ("ln_1.weight", "layer_norm1.weight"),
    ("ln_1.bias", "layer_norm1.bias"),
    ("ln_2.weight", "layer_norm2.weight"),
    ("ln_2.bias", "layer_norm2.bias"),
    ("attn.out_proj.weight", "self_attn.out_proj.weight"),
    ("attn.out_proj.bias", "self_attn.out_proj.bias"),
    ("mlp.c_fc.weight", "mlp.fc1.weight"),
    ("mlp.c_fc.bias", "mlp.fc1.bias"),
    ("mlp.c_proj.weight", "mlp.fc2.weight"),
    ("mlp.c_proj.bias", "mlp.fc2.bias"),
];

/// A block's q, k and v stacked on the first axis, and the suffix of the builder's names.
const STACKED: [(&str, &str); 2] = [
    ("attn.in_proj_weight", "weight"),
    ("attn.in_proj_bias", "bias"),
];
const THIRDS: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

/// Keys of the file's tower the text model does not read.
fn ignored(k: &str) -> bool {
    k == "logit_scale" || k == "attn_mask" || k.starts_with("visual.")
}

/// How a builder tensor comes from a file tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    Whole,
    /// The i-th of three equal parts along the first axis.
    Third(usize),
    Transposed,
}

/// An OpenCLIP text tower under the builder's names. Each stacked q/k/v tensor is read once:
/// it is kept from its first third's read until its third third's.
pub struct OpenClip<'a> {
    inner: Under<'a>,
    tensors: BTreeMap<String, TensorInfo>,
    /// Builder key: the key under the root it comes from, and how.
    from: BTreeMap<String, (String, Piece)>,
    stacked: RefCell<BTreeMap<String, (Tensor, [bool; 3])>>,
}

impl<'a> OpenClip<'a> {
    /// The one OpenCLIP text tower among `source`'s keys, if any, checked for every tensor the
    /// builder reads and for the shapes the renaming relies on.
    pub fn find(source: &'a dyn TensorSource) -> Result<Option<OpenClip<'a>>, String> {
        let keys = source.tensors().keys().map(String::as_str);
        let placement = KeyPlacement {
            anchors: &[ANCHOR],
            prefixes: &[],
        };
        match placement.find(keys.filter(|k| !k.ends_with(TOKEN_EMBEDDING))) {
            Ok(root) => OpenClip::new(source, &root).map(Some),
            Err(PrefixError::Absent) => Ok(None),
            Err(e) => Err(format!(
                "several OpenCLIP text encoders here (under {}); give a file with one",
                e.prefixes()
            )),
        }
    }

    /// The tower under `root`.
    fn new(source: &'a dyn TensorSource, root: &str) -> Result<OpenClip<'a>, String> {
        let inner = source.under(root);
        let (tensors, from) = rename(root, inner.tensors())?;
        Ok(OpenClip {
            inner,
            tensors,
            from,
            stacked: RefCell::new(BTreeMap::new()),
        })
    }

    /// The prefix the tower sits under in the file.
    pub fn root(&self) -> &str {
        self.inner.prefix()
    }

    /// Whether the tower has its projection (`text_projection`).
    pub fn has_projection(&self) -> bool {
        self.tensors.contains_key(PROJECTION)
    }

    /// The third `t` of the stacked tensor `key`, read once for all three.
    fn third(&self, key: &str, t: usize) -> Result<Tensor, WeightError> {
        use std::collections::btree_map::Entry;
        let mut stacked = self.stacked.borrow_mut();
        let (whole, taken) = match stacked.entry(key.to_string()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert((self.inner.read(key)?, [false; 3])),
        };
        taken[t] = true;
        let done = taken.iter().all(|&t| t);
        let part = third_of(whole, t).ok_or_else(|| WeightError::Corrupt {
            path: self.path().to_path_buf(),
            reason: format!(
                "\"{}{key}\" read as {:?}, not three stacked parts",
                self.root(),
                whole.shape
            ),
        })?;
        if done {
            stacked.remove(key);
        }
        Ok(part)
    }
}

impl TensorSource for OpenClip<'_> {
    fn path(&self) -> &Path {
        self.inner.path()
    }

    fn format(&self) -> WeightFormat {
        self.inner.format()
    }

    fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// A whole tensor, or a third of a stacked one (a block of its rows), lies in the file as
    /// read; a transposed one does not.
    fn in_place(&self, key: &str) -> Option<crate::weights::Spilled> {
        let (file, piece) = self.from.get(key)?;
        match piece {
            Piece::Whole => self.inner.in_place(file),
            Piece::Third(t) => self.inner.in_place(file)?.third(*t),
            Piece::Transposed => None,
        }
    }

    fn read(&self, key: &str) -> Result<Tensor, WeightError> {
        let Some((file, piece)) = self.from.get(key) else {
            return Err(WeightError::MissingKey {
                path: self.path().to_path_buf(),
                key: key.to_string(),
            });
        };
        match piece {
            Piece::Whole => self.inner.read(file),
            Piece::Third(t) => self.third(file, *t),
            Piece::Transposed => {
                let t = self.inner.read(file)?;
                t.transposed().ok_or_else(|| WeightError::Corrupt {
                    path: self.path().to_path_buf(),
                    reason: format!(
                        "\"{}{file}\" read as {:?}, not a matrix",
                        self.root(),
                        t.shape
                    ),
                })
            }
        }
    }
}

/// Builder key to tensor info, and to the key under the root it comes from and how: the
/// renaming of the tower under `root` whose keys (under the root) are `all`.
#[allow(clippy::type_complexity)]
fn rename(
    root: &str,
    all: &BTreeMap<String, TensorInfo>,
) -> Result<
    (
        BTreeMap<String, TensorInfo>,
        BTreeMap<String, (String, Piece)>,
    ),
    String,
> {
    let info = |k: &str| {
        all.get(k)
            .ok_or_else(|| format!("missing tensor \"{root}{k}\" (OpenCLIP text tower)"))
    };
    let hidden = match info(ANCHOR)?.shape[..] {
        [_, d] => d,
        ref s => {
            return Err(format!(
                "\"{root}{ANCHOR}\" has shape {s:?}, expected [vocabulary, hidden]"
            ))
        }
    };
    let blocks = block_count(root, all)?;
    // SD 2.x reads the penultimate block through ln_final: its last block goes unread.
    let kept = if root == SD2_ROOT {
        blocks.checked_sub(1).filter(|&n| n > 0).ok_or_else(|| {
            format!(
                "only one block under \"{root}transformer.resblocks.\"; SD 2.x's encoder leaves \
                 out the last, which leaves none"
            )
        })?
    } else {
        blocks
    };
    let mut tensors = BTreeMap::new();
    let mut from = BTreeMap::new();
    let mut add = |model: String, file: &str, piece: Piece, info: TensorInfo| {
        tensors.insert(model.clone(), info);
        from.insert(model, (file.to_string(), piece));
    };
    for (file, model) in TOP {
        add(model.to_string(), file, Piece::Whole, info(file)?.clone());
    }
    for n in 0..kept {
        let block = format!("transformer.resblocks.{n}.");
        let layer = format!("encoder.layers.{n}.");
        for (file, model) in BLOCK {
            let file = format!("{block}{file}");
            add(
                format!("{layer}{model}"),
                &file,
                Piece::Whole,
                info(&file)?.clone(),
            );
        }
        for (file, suffix) in STACKED {
            let file = format!("{block}{file}");
            let i = info(&file)?;
            let weight = suffix == "weight";
            let third = thirds_of(&i.shape, hidden, weight).ok_or_else(|| {
                format!(
                    "\"{root}{file}\" has shape {:?}; OpenCLIP stacks q, k and v on the first \
                     axis: expected {:?} for hidden size {hidden}",
                    i.shape,
                    stacked_shape(hidden, weight)
                )
            })?;
            for (t, proj) in THIRDS.iter().enumerate() {
                let info = TensorInfo {
                    dtype: i.dtype.clone(),
                    shape: third.clone(),
                };
                add(
                    format!("{layer}self_attn.{proj}.{suffix}"),
                    &file,
                    Piece::Third(t),
                    info,
                );
            }
        }
    }
    if let Some(i) = all.get(OPEN_PROJECTION) {
        let [d, p] = i.shape[..] else {
            return Err(format!(
                "\"{root}{OPEN_PROJECTION}\" has shape {:?}, expected [hidden, projection]",
                i.shape
            ));
        };
        if d != hidden {
            return Err(format!(
                "\"{root}{OPEN_PROJECTION}\" is [{d}, {p}] but the token embedding has {hidden} \
                 channels (OpenCLIP stores it [hidden, projection])"
            ));
        }
        let info = TensorInfo {
            dtype: i.dtype.clone(),
            shape: vec![p, d],
        };
        add(
            PROJECTION.to_string(),
            OPEN_PROJECTION,
            Piece::Transposed,
            info,
        );
    }
    // What is neither read nor known to be unread is a tensor the renaming does not know:
    // refused rather than silently left out of the model.
    let read: std::collections::BTreeSet<&str> = from.values().map(|(k, _)| k.as_str()).collect();
    let dropped = format!("transformer.resblocks.{kept}.");
    let unread = |k: &str| ignored(k) || (kept < blocks && k.starts_with(&dropped));
    if let Some(k) = all
        .keys()
        .find(|k| !read.contains(k.as_str()) && !unread(k))
    {
        return Err(format!(
            "\"{root}{k}\" is not a tensor of OpenCLIP's text tower"
        ));
    }
    Ok((tensors, from))
}

/// How many blocks `transformer.resblocks.N.*` numbers (the highest N plus one; each block
/// below it is then required whole).
fn block_count(root: &str, all: &BTreeMap<String, TensorInfo>) -> Result<usize, String> {
    let mut blocks = 0;
    for k in all.keys() {
        let Some(rest) = k.strip_prefix("transformer.resblocks.") else {
            continue;
        };
        let n = rest
            .split_once('.')
            .and_then(|(n, _)| n.parse::<usize>().ok())
            .ok_or_else(|| format!("\"{root}{k}\" is not a tensor of OpenCLIP's text tower"))?;
        blocks = blocks.max(n.checked_add(1).ok_or("block number out of range")?);
    }
    if blocks == 0 {
        return Err(format!("no \"{root}transformer.resblocks.0.*\" tensors"));
    }
    Ok(blocks)
}

/// A stacked weight's shape ([3D, D]) or bias's ([3D]) for hidden size `d`.
fn stacked_shape(d: usize, weight: bool) -> Vec<usize> {
    let rows = d.saturating_mul(3);
    if weight {
        vec![rows, d]
    } else {
        vec![rows]
    }
}

/// The shape of one third of a stacked tensor of shape `shape`, if it is the stacked shape.
fn thirds_of(shape: &[usize], d: usize, weight: bool) -> Option<Vec<usize>> {
    let rows = d.checked_mul(3)?;
    let expected = if weight { vec![rows, d] } else { vec![rows] };
    (shape == expected).then(|| {
        let mut s = expected;
        s[0] = d;
        s
    })
}

/// The `t`-th of three equal parts of `whole` along its first axis.
fn third_of(whole: &Tensor, t: usize) -> Option<Tensor> {
    let (&rows, rest) = whole.shape.split_first()?;
    if rows % 3 != 0 || t >= 3 {
        return None;
    }
    let mut shape = vec![rows / 3];
    shape.extend_from_slice(rest);
    let n = whole.len() / 3;
    let range = t * n..(t + 1) * n;
    match &whole.data {
        TensorData::F32(v) => Some(Tensor::f32(shape, v.get(range)?.to_vec())),
        TensorData::F16(v) => Some(Tensor::f16(shape, v.get(range)?.to_vec())),
        TensorData::I32(_) | TensorData::Bool(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::StoredDtype;

    /// A source of f32 tensors held in memory.
    struct Mem {
        tensors: BTreeMap<String, TensorInfo>,
        data: BTreeMap<String, Tensor>,
        reads: RefCell<Vec<String>>,
    }

    impl Mem {
        fn new(data: BTreeMap<String, Tensor>) -> Mem {
            let tensors = data
                .iter()
                .map(|(k, t)| {
                    let i = TensorInfo {
                        dtype: StoredDtype::F32,
                        shape: t.shape.clone(),
                    };
                    (k.clone(), i)
                })
                .collect();
            Mem {
                tensors,
                data,
                reads: RefCell::new(Vec::new()),
            }
        }
    }

    impl TensorSource for Mem {
        fn path(&self) -> &Path {
            Path::new("mem.safetensors")
        }
        fn format(&self) -> WeightFormat {
            WeightFormat::Safetensors
        }
        fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
            &self.tensors
        }
        fn read(&self, key: &str) -> Result<Tensor, WeightError> {
            self.reads.borrow_mut().push(key.to_string());
            self.data
                .get(key)
                .cloned()
                .ok_or_else(|| WeightError::MissingKey {
                    path: self.path().to_path_buf(),
                    key: key.to_string(),
                })
        }
    }

    /// An OpenCLIP tower of hidden size 2 and `blocks` blocks under `root`, each tensor's values
    /// counting up from a distinct start.
    fn tower(root: &str, blocks: usize) -> BTreeMap<String, Tensor> {
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("token_embedding.weight".into(), vec![5, 2]),
            ("positional_embedding".into(), vec![3, 2]),
            ("ln_final.weight".into(), vec![2]),
            ("ln_final.bias".into(), vec![2]),
            ("text_projection".into(), vec![2, 4]),
            ("logit_scale".into(), vec![]),
            ("visual.proj".into(), vec![2, 2]),
        ];
        for n in 0..blocks {
            let b = format!("transformer.resblocks.{n}.");
            shapes.push((format!("{b}attn.in_proj_weight"), vec![6, 2]));
            shapes.push((format!("{b}attn.in_proj_bias"), vec![6]));
            for (k, _) in BLOCK {
                let s = if k.ends_with("weight") && !k.starts_with("ln") {
                    vec![2, 2]
                } else {
                    vec![2]
                };
                shapes.push((format!("{b}{k}"), s));
            }
        }
        shapes
            .into_iter()
            .enumerate()
            .map(|(i, (k, s))| {
                let n: usize = s.iter().product();
                let v = (0..n).map(|j| (100 * i + j) as f32).collect();
                (format!("{root}{k}"), Tensor::f32(s, v))
            })
            .collect()
    }

    #[test]
    fn stacked_tensors_split_and_the_projection_transposes() {
        let mem = Mem::new(tower("conditioner.embedders.1.model.", 2));
        let view = OpenClip::find(&mem).unwrap().unwrap();
        assert_eq!(view.root(), "conditioner.embedders.1.model.");
        assert!(view.has_projection());
        let stacked = mem.data
            ["conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight"]
            .to_f32();
        for (t, proj) in THIRDS.iter().enumerate() {
            let w = view
                .read(&format!("encoder.layers.1.self_attn.{proj}.weight"))
                .unwrap();
            assert_eq!(w.shape, [2, 2]);
            assert_eq!(w.to_f32(), stacked[4 * t..4 * (t + 1)]);
        }
        // Read once for its three thirds, and let go of after.
        let reads = mem.reads.borrow().clone();
        assert_eq!(
            reads
                .iter()
                .filter(|k| k.ends_with("in_proj_weight"))
                .count(),
            1
        );
        assert!(view.stacked.borrow().is_empty());
        let b = view.read("encoder.layers.0.self_attn.v_proj.bias").unwrap();
        let stacked = mem.data
            ["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_bias"]
            .to_f32();
        assert_eq!(b.to_f32(), stacked[4..6]);
        let p = view.read(PROJECTION).unwrap();
        let file = &mem.data["conditioner.embedders.1.model.text_projection"];
        assert_eq!(p.shape, [4, 2]);
        assert_eq!(p, file.transposed().unwrap());
        assert_eq!(view.tensors()[PROJECTION].shape, [4, 2]);
        let ln = view.read("encoder.layers.1.layer_norm2.bias").unwrap();
        let file = &mem.data["conditioner.embedders.1.model.transformer.resblocks.1.ln_2.bias"];
        assert_eq!(&ln, file);
        // Every builder key of two layers, nothing of logit_scale or visual.*.
        assert_eq!(view.tensors().len(), 4 + 1 + 2 * 16);
        assert!(view
            .tensors()
            .keys()
            .all(|k| !k.contains("visual") && !k.contains("logit")));
    }

    #[test]
    fn sd2_leaves_out_the_last_block() {
        let mem = Mem::new(tower(SD2_ROOT, 3));
        let view = OpenClip::find(&mem).unwrap().unwrap();
        assert!(view
            .tensors()
            .contains_key("encoder.layers.1.mlp.fc2.weight"));
        assert!(!view
            .tensors()
            .keys()
            .any(|k| k.starts_with("encoder.layers.2.")));
        assert!(view.tensors().contains_key("final_layer_norm.weight"));
        // Elsewhere every block is read.
        let mem = Mem::new(tower("conditioner.embedders.0.model.", 3));
        let view = OpenClip::find(&mem).unwrap().unwrap();
        assert!(view
            .tensors()
            .contains_key("encoder.layers.2.mlp.fc2.weight"));
        // One block: nothing left.
        let mem = Mem::new(tower(SD2_ROOT, 1));
        let e = OpenClip::find(&mem).err().unwrap();
        assert!(e.contains("only one block") && e.contains(SD2_ROOT), "{e}");
    }

    #[test]
    fn bad_towers_are_refused_naming_the_key() {
        let root = "conditioner.embedders.1.model.";
        let refused = |edit: &dyn Fn(&mut BTreeMap<String, Tensor>)| {
            let mut t = tower(root, 2);
            edit(&mut t);
            OpenClip::find(&Mem::new(t)).err().unwrap()
        };
        let key = format!("{root}transformer.resblocks.1.attn.in_proj_weight");
        let e = refused(&|t| {
            t.insert(key.clone(), Tensor::f32(vec![4, 2], vec![0.0; 8]));
        });
        assert!(e.contains(&key) && e.contains("[6, 2]"), "{e}");
        let e = refused(&|t| {
            t.remove(&format!("{root}ln_final.weight"));
        });
        assert!(e.contains(&format!("\"{root}ln_final.weight\"")), "{e}");
        let e = refused(&|t| {
            t.remove(&format!("{root}transformer.resblocks.0.mlp.c_fc.bias"));
        });
        assert!(e.contains("resblocks.0.mlp.c_fc.bias"), "{e}");
        let e = refused(&|t| {
            t.insert(
                format!("{root}transformer.resblocks.0.attn.extra"),
                Tensor::scalar(0.0),
            );
        });
        assert!(
            e.contains("resblocks.0.attn.extra") && e.contains("not a tensor"),
            "{e}"
        );
        let e = refused(&|t| {
            t.insert(
                format!("{root}text_projection"),
                Tensor::f32(vec![3, 4], vec![0.0; 12]),
            );
        });
        assert!(e.contains("text_projection") && e.contains("[3, 4]"), "{e}");
        // Two towers.
        let mut t = tower(root, 1);
        t.extend(tower("conditioner.embedders.2.model.", 1));
        let e = OpenClip::find(&Mem::new(t)).err().unwrap();
        assert!(e.contains("several") && e.contains("embedders.2"), "{e}");
        // A transformers save is not OpenCLIP's.
        let hf = BTreeMap::from([(
            format!("text_model.{TOKEN_EMBEDDING}"),
            Tensor::f32(vec![5, 2], vec![0.0; 10]),
        )]);
        assert!(OpenClip::find(&Mem::new(hf)).unwrap().is_none());
    }
}
