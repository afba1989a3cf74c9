//! The layer library the model families share, over a parameter [`Scope`] that records which
//! weight keys were read, so that missing keys fail where they are asked for and unused keys are
//! one error at the end ([`Params::finish`]).
//!
//! Layers add IR ops and name their nodes after the weight keys they read (`mid.attn.q` reads
//! `mid.attn.q.weight`), so a node in a dump leads straight to its tensor. Each kind of layer has
//! its file: [`conv`], [`norm`] (group norm, layer norm over either axis), [`linear`] (in both
//! transformer layouts), [`resnet`] (with an optional time embedding), [`attention`] (self and
//! cross, heads, a mask; the VAE's spatial attention), [`feed_forward`] (GEGLU, quick GELU) and
//! [`ane`] (the Neural Engine's `[B, C, 1, S]` states: per-head attention, query chunks, table
//! and state rearrangements). This file holds the parameter scope and the one-op helpers.
//!
//! Weights arrive in their stored dtype and stay in it: an f16 tensor becomes an fp32 constant
//! stored as f16 ([`crate::ir::ConstData::Half`]), so an f16 file in an fp16 build is never
//! widened, and elsewhere each constant is widened only where its values are needed.

pub mod ane;
pub mod attention;
pub mod conv;
pub mod feed_forward;
pub mod linear;
pub mod norm;
pub mod resnet;
#[cfg(test)]
mod testing;

pub use attention::{
    attention, attention_layer, spatial_attention, AttentionSpec, Projections, SpatialAttention,
};
pub use conv::{conv2d, ConvSpec};
pub use feed_forward::{feed_forward, quick_gelu, FeedForward};
pub use linear::{linear, linear_as_conv, Linear};
pub use norm::{group_norm, layer_norm, GroupNorm, LayerNorm, NormAxis};
pub use resnet::{norm_silu, resnet, Resnet, TimeEmbedding};

use super::ModelError;
use crate::ir::{Binary, Dim, Graph, Op, Unary, ValueId};
use crate::tensor::Tensor;
use crate::weights::{WeightError, Weights};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// The weights of one model being built, and the keys read so far.
pub struct Params<'w> {
    store: Store<'w>,
    /// How a model's key (`decoder.conv_in.weight`) is found in the file, when the file uses
    /// another layout than the one the model is written against.
    rename: Box<dyn Fn(&str) -> String + 'w>,
    used: RefCell<BTreeSet<String>>,
}

/// Where the tensors come from: borrowed weights are copied into the graph, owned ones are moved
/// into it (so that a large model is never in memory twice).
enum Store<'w> {
    Borrowed(&'w Weights),
    Owned(RefCell<Weights>),
}

impl<'w> Params<'w> {
    pub fn new(weights: &'w Weights) -> Params<'w> {
        Params {
            store: Store::Borrowed(weights),
            rename: Box::new(|k| k.to_string()),
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// Params that hand each tensor over to the graph instead of copying it; each key can then
    /// be read once.
    pub fn owned(weights: Weights) -> Params<'static> {
        Params {
            store: Store::Owned(RefCell::new(weights)),
            rename: Box::new(|k| k.to_string()),
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// Params whose keys are looked up in the file under `rename(key)`.
    pub fn renamed(weights: &'w Weights, rename: impl Fn(&str) -> String + 'w) -> Params<'w> {
        Params {
            rename: Box::new(rename),
            ..Params::new(weights)
        }
    }

    /// The scope of keys under `prefix` (empty for the top level).
    pub fn scope(&self, prefix: &str) -> Scope<'_, 'w> {
        Scope {
            params: self,
            prefix: prefix.to_string(),
            node_base: None,
        }
    }

    /// The tensor under the model's `key` in its stored dtype (f32 or f16), checked against the
    /// shape the model expects: a copy of borrowed weights, or the tensor itself out of owned
    /// ones.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let file_key = (self.rename)(key);
        let t = match &self.store {
            Store::Borrowed(w) => w.read(&file_key, shape)?,
            Store::Owned(w) if w.borrow().spilled.contains_key(&file_key) => {
                w.borrow().read(&file_key, shape)?
            }
            Store::Owned(w) => {
                let mut w = w.borrow_mut();
                if self.used.borrow().contains(&file_key) {
                    // A builder bug, not a file problem: owned tensors are moved out once.
                    return Err(ModelError::WrongModel {
                        file: w.path.display().to_string(),
                        reason: format!("tensor \"{file_key}\" is read twice (a model bug)"),
                    });
                }
                w.get(&file_key, shape)?;
                w.tensors.remove(&file_key).expect("just found")
            }
        };
        self.used.borrow_mut().insert(file_key);
        Ok(t)
    }

    /// The handle of the model's `key` if it is spilled (checked against the shape the model
    /// expects), so the graph takes the handle and not the values.
    pub fn spilled(
        &self,
        key: &str,
        shape: &[usize],
    ) -> Result<Option<crate::weights::Spilled>, ModelError> {
        let file_key = (self.rename)(key);
        let found = match &self.store {
            Store::Borrowed(w) => w
                .spilled
                .get(&file_key)
                .map(|s| (s.data.clone(), w.path.clone())),
            Store::Owned(w) => {
                let w = w.borrow();
                w.spilled
                    .get(&file_key)
                    .map(|s| (s.data.clone(), w.path.clone()))
            }
        };
        let Some((data, path)) = found else {
            return Ok(None);
        };
        if data.shape != shape {
            return Err(WeightError::ShapeMismatch {
                path,
                key: file_key,
                expected: shape.to_vec(),
                found: data.shape.clone(),
            }
            .into());
        }
        self.used.borrow_mut().insert(file_key);
        Ok(Some(data))
    }

    /// The file the weights came from, for messages.
    pub fn path(&self) -> std::path::PathBuf {
        match &self.store {
            Store::Borrowed(w) => w.path.clone(),
            Store::Owned(w) => w.borrow().path.clone(),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        let file_key = (self.rename)(key);
        match &self.store {
            Store::Borrowed(w) => w.has(&file_key),
            Store::Owned(w) => w.borrow().has(&file_key) || self.used.borrow().contains(&file_key),
        }
    }

    /// Errors with the keys of the file that the model never read.
    pub fn finish(self) -> Result<(), ModelError> {
        let used = self.used.into_inner();
        let (path, unused): (_, Vec<String>) = match &self.store {
            Store::Borrowed(w) => (w.path.clone(), unread(w, &used)),
            Store::Owned(w) => {
                let w = w.borrow();
                (w.path.clone(), unread(&w, &used))
            }
        };
        if unused.is_empty() {
            Ok(())
        } else {
            Err(WeightError::UnexpectedKeys { path, keys: unused }.into())
        }
    }
}

/// A few of the keys of `w` not in `used`.
fn unread(w: &Weights, used: &BTreeSet<String>) -> Vec<String> {
    w.entries()
        .map(|(k, _)| k)
        .filter(|k| !used.contains(*k))
        .take(5)
        .cloned()
        .collect()
}

/// A key prefix (`3.conv`, `decoder.mid_block.attentions.0`) within a model's parameters.
#[derive(Clone)]
pub struct Scope<'p, 'w> {
    params: &'p Params<'w>,
    prefix: String,
    /// Node names start with this instead of the key (families with established node names).
    node_base: Option<String>,
}

impl<'p, 'w> Scope<'p, 'w> {
    /// The scope of keys under `self.prefix + "." + name`.
    pub fn child(&self, name: impl std::fmt::Display) -> Scope<'p, 'w> {
        Scope {
            params: self.params,
            prefix: self.key(&name.to_string()),
            node_base: None,
        }
    }

    /// This scope with its nodes named `{base}_…`.
    pub fn renamed_nodes(mut self, base: impl Into<String>) -> Scope<'p, 'w> {
        self.node_base = Some(base.into());
        self
    }

    /// The full key of `name` in this scope.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// A node name for this scope: the key with dots as underscores, plus a suffix.
    pub fn node(&self, suffix: &str) -> String {
        let base = match &self.node_base {
            Some(b) => b.clone(),
            None => self.prefix.replace('.', "_"),
        };
        match (base.is_empty(), suffix.is_empty()) {
            (true, _) => suffix.to_string(),
            (false, true) => base,
            (false, false) => format!("{base}_{suffix}"),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.params.has(&self.key(name))
    }

    /// The tensor `name` of this scope, with the shape the model expects, in its stored dtype
    /// (f32 or f16; [`Graph::weight`] makes either a constant).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.params.get(&self.key(name), shape)
    }

    /// The tensor `name` as a constant node named after its key.
    pub fn constant(
        &self,
        g: &mut Graph,
        name: &str,
        shape: &[usize],
    ) -> Result<ValueId, ModelError> {
        self.constant_named(g, name, shape, &self.node(name))
    }

    /// [`Scope::constant`] with its node named `node`.
    pub fn constant_named(
        &self,
        g: &mut Graph,
        name: &str,
        shape: &[usize],
        node: &str,
    ) -> Result<ValueId, ModelError> {
        self.constant_as(g, name, shape, shape, node)
    }

    /// The tensor `name` (of the `shape` the model expects) as a constant of the same values
    /// under another shape `as_shape` (a linear layer's `[cout, cin]` as a 1x1 convolution's
    /// `[cout, cin, 1, 1]`), named `node`.
    pub fn constant_as(
        &self,
        g: &mut Graph,
        name: &str,
        shape: &[usize],
        as_shape: &[usize],
        node: &str,
    ) -> Result<ValueId, ModelError> {
        let key = self.key(name);
        if let Some(s) = self.params.spilled(&key, shape)? {
            // As `into_reshaped` below: a view of another element count is a model bug.
            let s = s
                .reshaped(as_shape.to_vec())
                .unwrap_or_else(|| panic!("{key}: {shape:?} viewed as {as_shape:?}"));
            return Ok(g.spilled_weight(node, s));
        }
        let t = self.tensor(name, shape)?.into_reshaped(as_shape.to_vec());
        Ok(g.weight(node, t))
    }
}

/// A unary op named `{scope}_{what}`.
pub fn unary(
    g: &mut Graph,
    p: &Scope,
    op: Unary,
    x: ValueId,
    what: &str,
) -> Result<ValueId, ModelError> {
    Ok(g.add(Op::Unary(op), &[x], p.node(what))?)
}

/// A binary op named `{scope}_{what}`.
pub fn binary(
    g: &mut Graph,
    p: &Scope,
    op: Binary,
    x: ValueId,
    y: ValueId,
    what: &str,
) -> Result<ValueId, ModelError> {
    Ok(g.add(Op::Binary(op), &[x, y], p.node(what))?)
}

/// Nearest-neighbour upsampling by `scale`.
pub fn upsample(
    g: &mut Graph,
    name: &str,
    x: ValueId,
    scale: usize,
) -> Result<ValueId, ModelError> {
    Ok(g.add(Op::Upsample { scale }, &[x], name)?)
}

/// `x` reshaped to the known `shape`.
pub fn reshape(
    g: &mut Graph,
    x: ValueId,
    shape: &[usize],
    name: String,
) -> Result<ValueId, ModelError> {
    reshape_to(g, x, shape.iter().map(|&n| Dim::Known(n)).collect(), name)
}

/// `x` reshaped to `shape`, whose sizes may be symbolic (`H*W` positions).
pub fn reshape_to(
    g: &mut Graph,
    x: ValueId,
    shape: Vec<Dim>,
    name: String,
) -> Result<ValueId, ModelError> {
    Ok(g.add(Op::Reshape { shape }, &[x], name)?)
}

/// `x` with its axes in the order `perm`.
pub fn transpose(
    g: &mut Graph,
    x: ValueId,
    perm: &[usize],
    name: String,
) -> Result<ValueId, ModelError> {
    Ok(g.add(
        Op::Transpose {
            perm: perm.to_vec(),
        },
        &[x],
        name,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Dim, TensorType};
    use crate::tensor::DType;
    use std::collections::BTreeMap;

    fn weights() -> Weights {
        let t = |shape: Vec<usize>| Tensor::f32(shape.clone(), vec![0.5; shape.iter().product()]);
        Weights::from_tensors(
            "w.safetensors".into(),
            BTreeMap::from([
                ("a.conv.weight".to_string(), t(vec![4, 2, 3, 3])),
                ("a.conv.bias".to_string(), t(vec![4])),
                ("extra".to_string(), t(vec![1])),
            ]),
        )
    }

    fn input(g: &mut Graph) -> ValueId {
        g.input(
            "x",
            TensorType::new(
                DType::F32,
                vec![Dim::Known(1), Dim::Known(2), Dim::sym("H"), Dim::sym("W")],
            ),
        )
    }

    #[test]
    fn scopes_name_keys_and_nodes() {
        let w = weights();
        let params = Params::new(&w);
        let s = params.scope("a").child("conv");
        assert_eq!(s.key("weight"), "a.conv.weight");
        assert_eq!(s.node("conv"), "a_conv_conv");
        assert_eq!(params.scope("").child(3).key("bias"), "3.bias");
    }

    #[test]
    fn unused_keys_are_one_error_naming_them() {
        let w = weights();
        let params = Params::new(&w);
        let mut g = Graph::new("t");
        let x = input(&mut g);
        conv2d(
            &mut g,
            &params.scope("a.conv"),
            x,
            &ConvSpec::same(2, 4, 3, true),
        )
        .unwrap();
        let e = params.finish().unwrap_err().to_string();
        assert!(e.contains("\"extra\"") && !e.contains("a.conv"), "{e}");
    }

    #[test]
    fn missing_keys_and_wrong_shapes_name_the_key() {
        let w = weights();
        let params = Params::new(&w);
        let mut g = Graph::new("t");
        let x = input(&mut g);
        let e = conv2d(
            &mut g,
            &params.scope("b"),
            x,
            &ConvSpec::same(2, 4, 3, true),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing tensor \"b.weight\""), "{e}");
        let e = conv2d(
            &mut g,
            &params.scope("a.conv"),
            x,
            &ConvSpec::same(2, 8, 3, true),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"a.conv.weight\"") && e.contains("[8, 2, 3, 3]"),
            "{e}"
        );
    }

    #[test]
    fn renamed_params_read_the_files_layout() {
        let w = weights();
        let params = Params::renamed(&w, |k| format!("a.{k}"));
        let mut g = Graph::new("t");
        let x = input(&mut g);
        conv2d(
            &mut g,
            &params.scope("conv"),
            x,
            &ConvSpec::same(2, 4, 3, true),
        )
        .unwrap();
        let e = params.finish().unwrap_err().to_string();
        assert!(e.contains("\"extra\""), "{e}");
    }
}
