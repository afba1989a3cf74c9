//! `--activation-min-psnr`: which quantization sites keep float activations so that the
//! model's output on the calibration set stays above a PSNR, with as many int8 as possible.
//!
//! Greedy by measured sensitivity, as the Stable Diffusion reference pipeline chooses W8A8 or
//! W8A16 per layer: each site is quantized alone and the error it causes in the output is
//! measured (one evaluation per site and sample); sites are then taken from the least to the
//! most harmful, and the longest prefix that keeps the PSNR is found by bisection (the error
//! grows with the prefix, so a few more evaluations suffice). The reference is the same graph
//! without activation quantization; the PSNR's peak is the reference outputs' range
//! (max - min over the set), so an image in [0, 1] reads as usual.

use super::{Calibration, CalibrationError};
use crate::ir::{eval, Graph, ValueId};
use crate::kernels::Array;
use crate::passes::quantize_activations::{sites, QuantizeActivations};
use crate::passes::Pass;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What the search chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Sites (convs and adds, by value) whose inputs stay float.
    pub keep_float: BTreeSet<ValueId>,
    /// Output PSNR on the calibration set with the other sites quantized.
    pub psnr: f64,
    /// Sites that could be quantized (they have ranges).
    pub sites: usize,
}

/// The smallest set of sites to keep float so that quantizing the rest keeps the output of `g`
/// on `cal` at `min_psnr` dB or above (all sites float if even the least harmful one breaks
/// it).
pub fn keep_float_for(
    g: &Graph,
    ranges: &HashMap<ValueId, f32>,
    cal: &Calibration,
    min_psnr: f64,
) -> Result<Choice, CalibrationError> {
    let eval_err = |sample: &str, e: String| CalibrationError::Eval {
        sample: sample.into(),
        reason: e,
    };
    let reference: Vec<BTreeMap<String, Array>> = (0..cal.len())
        .map(|i| {
            eval::evaluate(g, &cal.sample(i)).map_err(|e| eval_err(cal.source(i), e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let peak = peak(&reference);
    let candidates: Vec<ValueId> = sites(g)
        .into_iter()
        .filter(|(_, inputs)| inputs.iter().all(|v| ranges.contains_key(v)))
        .map(|(site, _)| site)
        .collect();
    let all: BTreeSet<ValueId> = candidates.iter().copied().collect();
    // PSNR with exactly `quantized` quantized.
    let psnr_of = |quantized: &BTreeSet<ValueId>| -> Result<f64, CalibrationError> {
        let pass = QuantizeActivations {
            ranges: ranges.clone(),
            keep_float: all.difference(quantized).copied().collect(),
        };
        let q = pass
            .run(g.clone())
            .map_err(|e| CalibrationError::Model(e.to_string()))?;
        let (mut sq, mut n) = (0f64, 0usize);
        for (i, want) in reference.iter().enumerate() {
            let got = eval::evaluate(&q, &cal.sample(i))
                .map_err(|e| eval_err(cal.source(i), e.to_string()))?;
            for (name, w) in want {
                for (a, b) in got[name].data.iter().zip(&w.data) {
                    let d = f64::from(a - b);
                    sq += d * d;
                }
                n += w.data.len();
            }
        }
        let mse = sq / n.max(1) as f64;
        Ok(if mse == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (peak * peak / mse).log10()
        })
    };
    let mut sensitivity = Vec::with_capacity(candidates.len());
    for &s in &candidates {
        sensitivity.push((psnr_of(&[s].into())?, s));
    }
    // Least harmful (highest PSNR alone) first; ties in graph order.
    sensitivity.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let order: Vec<ValueId> = sensitivity.iter().map(|&(_, s)| s).collect();
    let prefix = |k: usize| order[..k].iter().copied().collect::<BTreeSet<_>>();
    // The longest prefix that keeps the PSNR: lo always does, hi never does.
    let (mut lo, mut hi) = (0usize, order.len() + 1);
    let mut best = f64::INFINITY;
    let whole = psnr_of(&all)?;
    if whole >= min_psnr {
        lo = order.len();
        best = whole;
    } else {
        hi = order.len();
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        let p = psnr_of(&prefix(mid))?;
        if p >= min_psnr {
            lo = mid;
            best = p;
        } else {
            hi = mid;
        }
    }
    Ok(Choice {
        keep_float: order[lo..].iter().copied().collect(),
        psnr: best,
        sites: order.len(),
    })
}

/// The range (max - min) of every reference output over the set; 1 for a constant output.
fn peak(reference: &[BTreeMap<String, Array>]) -> f64 {
    let (lo, hi) = reference
        .iter()
        .flat_map(|r| r.values())
        .flat_map(|a| &a.data)
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    match f64::from(hi - lo) {
        r if r.is_finite() && r > 0.0 => r,
        _ => 1.0,
    }
}
