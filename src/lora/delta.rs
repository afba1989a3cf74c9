//! What one adapted module adds to its weight: the low-rank product of kohya and PEFT files
//! (LoCon's 3x3 down and 1x1 up included), or LyCORIS's LoHa and LoKr, each times the file's own
//! scale (alpha / rank) and the user's weight, added in f32.

use super::formats::{Module, Role};
use super::lycoris::{Loha, Lokr};
use crate::tensor::{Tensor, TensorData};

/// The largest delta mlc forms (elements): far above any UNet weight (SDXL's largest has 13 M).
const MAX_ELEMENTS: usize = 1 << 31;

/// A module's change to its weight, before the user's weight.
pub enum Delta {
    /// `up @ down` times alpha / rank: down [r, in, (kh, kw)], up [out, r, (1, 1)].
    LowRank {
        down: Tensor,
        up: Tensor,
        alpha: Option<f32>,
    },
    Loha(Box<Loha>, Option<f32>),
    Lokr(Box<Lokr>, Option<f32>),
}

impl Delta {
    /// The module's delta from its tensors (`read` gives the tensor of a key, f32 or f16). A
    /// missing half, a Tucker middle (`lora_mid`) or DoRA's magnitude is refused by key.
    pub fn of(
        m: &Module,
        mut read: impl FnMut(&str) -> Result<Tensor, String>,
        file_alpha: Option<f32>,
    ) -> Result<Delta, String> {
        let t = &m.tensors;
        if let Some(k) = t.get(&Role::DoraScale) {
            return Err(format!(
                "tensor \"{k}\": DoRA (weight-decomposed LoRA) is not supported; fuse it with its trainer's tools first"
            ));
        }
        if let Some(k) = t.get(&Role::Mid) {
            return Err(format!(
                "tensor \"{k}\": LoCon's Tucker middle (lora_mid) is not supported"
            ));
        }
        let alpha = match t.get(&Role::Alpha) {
            Some(k) => Some(scalar(k, read(k)?)?),
            None => file_alpha,
        };
        let mut get = |role: Role| -> Result<Option<Tensor>, String> {
            t.get(&role).map(|k| finite(k, read(k)?)).transpose()
        };
        let lowrank = [Role::Down, Role::Up];
        let hada = [Role::HadaW1A, Role::HadaW1B, Role::HadaW2A, Role::HadaW2B];
        let has = |roles: &[Role]| roles.iter().any(|r| t.contains_key(r));
        let lokr = [
            Role::LokrW1,
            Role::LokrW1A,
            Role::LokrW1B,
            Role::LokrW2,
            Role::LokrW2A,
            Role::LokrW2B,
            Role::LokrT2,
        ];
        let forms = [has(&lowrank), has(&hada), has(&lokr)];
        if forms.iter().filter(|&&f| f).count() != 1 {
            return Err(format!(
                "module of tensor \"{}\": {}",
                m.key(),
                match forms.iter().any(|&f| f) {
                    true => "mixes LoRA, LoHa and LoKr tensors",
                    false => "has no lora_down/lora_up, hada_* or lokr_* tensors",
                }
            ));
        }
        let need = |role: Role, v: Option<Tensor>| {
            v.ok_or_else(|| {
                format!(
                    "module of tensor \"{}\": its {} tensor is missing",
                    m.key(),
                    role.suffix()
                )
            })
        };
        if forms[0] {
            let down = need(Role::Down, get(Role::Down)?)?;
            let up = need(Role::Up, get(Role::Up)?)?;
            return Ok(Delta::LowRank { down, up, alpha });
        }
        if forms[1] {
            let loha = Loha {
                w1_a: need(Role::HadaW1A, get(Role::HadaW1A)?)?,
                w1_b: need(Role::HadaW1B, get(Role::HadaW1B)?)?,
                w2_a: need(Role::HadaW2A, get(Role::HadaW2A)?)?,
                w2_b: need(Role::HadaW2B, get(Role::HadaW2B)?)?,
                t1: get(Role::HadaT1)?,
                t2: get(Role::HadaT2)?,
            };
            return Ok(Delta::Loha(Box::new(loha), alpha));
        }
        let lokr = Lokr {
            w1: get(Role::LokrW1)?,
            w1_a: get(Role::LokrW1A)?,
            w1_b: get(Role::LokrW1B)?,
            w2: get(Role::LokrW2)?,
            w2_a: get(Role::LokrW2A)?,
            w2_b: get(Role::LokrW2B)?,
            t2: get(Role::LokrT2)?,
        };
        Ok(Delta::Lokr(Box::new(lokr), alpha))
    }

    /// Checks that the delta fits a weight of shape `target` (before anything is read from
    /// the model): the low-rank pair's rank agrees, its output and input sizes are the
    /// weight's. LoHa and LoKr are checked when formed.
    pub fn check(&self, target: &[usize]) -> Result<(), String> {
        match self {
            Delta::LowRank { down, up, .. } => low_rank_sizes(down, up, target).map(|_| ()),
            Delta::Loha(..) | Delta::Lokr(..) => Ok(()),
        }
    }

    /// Adds `weight` times the delta to `values`, the weight of shape `target`, in place.
    pub fn add_to(&self, target: &[usize], weight: f32, values: &mut [f32]) -> Result<(), String> {
        let full = |d: Vec<f32>, values: &mut [f32]| {
            if d.len() != values.len() {
                return Err(format!(
                    "the adapter's delta has {} values, the weight {target:?} {}",
                    d.len(),
                    values.len()
                ));
            }
            values.iter_mut().zip(d).for_each(|(v, d)| *v += weight * d);
            Ok(())
        };
        match self {
            Delta::LowRank { down, up, alpha } => {
                low_rank_rows(down, up, *alpha, target, weight)?.add(0, values);
                Ok(())
            }
            Delta::Loha(l, alpha) => full(l.delta(*alpha, target)?, values),
            Delta::Lokr(l, alpha) => full(l.delta(*alpha, target)?, values),
        }
    }

    /// The low-rank pair as a switchable adapter's branch takes it: down [r, inner...] and up
    /// [out, r] times `weight` and the file's scale, both f32; None for LoHa and LoKr.
    pub fn low_rank(&self, weight: f32) -> Option<(Tensor, Tensor)> {
        let Delta::LowRank { down, up, alpha } = self else {
            return None;
        };
        let scale = file_scale(*alpha, *down.shape.first()?) * weight;
        let up_values = up.to_f32().into_iter().map(|v| v * scale).collect();
        Some((
            Tensor::f32(down.shape.clone(), down.to_f32()),
            Tensor::f32(up.shape.clone(), up_values),
        ))
    }

    /// A low-rank delta times `weight` as [`Rows`] for a weight of shape `target`; None for
    /// LoHa and LoKr, which are formed whole.
    pub fn rows(&self, target: &[usize], weight: f32) -> Option<Result<Rows, String>> {
        match self {
            Delta::LowRank { down, up, alpha } => {
                Some(low_rank_rows(down, up, *alpha, target, weight))
            }
            Delta::Loha(..) | Delta::Lokr(..) => None,
        }
    }
}

/// A low-rank term in f32, ready to add to any block of its weight's rows (the weight seen as
/// [out, inner]): `alpha · up[out, r] @ down[r, inner]`, alpha being the user's weight times
/// alpha / rank.
pub struct Rows {
    up: Vec<f32>,
    down: Vec<f32>,
    rank: usize,
    inner: usize,
    alpha: f32,
}

impl Rows {
    /// Values per row of the weight.
    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Adds rows `first..first + n` of the term to `values`, n whole rows of the weight
    /// ([n, inner]), in place. Each value is the same sum whichever block holds it.
    pub fn add(&self, first: usize, values: &mut [f32]) {
        self.add_tile(first, 0, self.inner, values);
    }

    /// Adds the tile of rows `first..first + n`, columns `col..col + width` of the term to
    /// `values` ([n, width]) in place. A tile starting on a multiple of the product kernel's
    /// rows and columns gets each value as the product over the whole weight computes it.
    pub fn add_tile(&self, first: usize, col: usize, width: usize, values: &mut [f32]) {
        // The product reads `down` up to (rank - 1) * inner + col + width.
        assert!(
            col + width <= self.inner,
            "tile beyond the weight's columns"
        );
        let n = values.len() / width.max(1);
        let up = &self.up[first * self.rank..(first + n) * self.rank];
        let down = &self.down[col..];
        // values += alpha * up[n, r] @ down[r, col..col + width], straight into the weight.
        unsafe {
            matrixmultiply::sgemm(
                n,
                self.rank,
                width,
                self.alpha,
                up.as_ptr(),
                self.rank as isize,
                1,
                down.as_ptr(),
                self.inner as isize,
                1,
                1.0,
                values.as_mut_ptr(),
                width as isize,
                1,
            );
        }
    }
}

/// kohya's and PEFT's scale of a low-rank pair: alpha / rank, 1 when alpha is absent or 0.
fn file_scale(alpha: Option<f32>, rank: usize) -> f32 {
    match alpha {
        Some(a) if a != 0.0 => a / rank as f32,
        _ => 1.0,
    }
}

fn low_rank_rows(
    down: &Tensor,
    up: &Tensor,
    alpha: Option<f32>,
    target: &[usize],
    weight: f32,
) -> Result<Rows, String> {
    let (rank, _, inner) = low_rank_sizes(down, up, target)?;
    let scale = file_scale(alpha, rank);
    Ok(Rows {
        up: widened(up),
        down: widened(down),
        rank,
        inner,
        alpha: weight * scale,
    })
}

/// (rank, out, inner) of a low-rank pair for a weight `target` [out, inner...].
fn low_rank_sizes(
    down: &Tensor,
    up: &Tensor,
    target: &[usize],
) -> Result<(usize, usize, usize), String> {
    let (Some(&rank), Some(&out)) = (down.shape.first(), up.shape.first()) else {
        return Err("lora_down/lora_up must have a rank axis".into());
    };
    if rank == 0 {
        return Err("rank 0".into());
    }
    let up_rank = up.shape.get(1).copied().unwrap_or(0);
    if up_rank != rank || up.shape[2..].iter().any(|&d| d != 1) {
        return Err(format!(
            "rank disagrees: lora_down {:?} has rank {rank}, lora_up is {:?} (expected [out, {rank}] or [out, {rank}, 1, 1])",
            down.shape, up.shape
        ));
    }
    let inner = down.len() / rank;
    let (want_out, want_inner) = match target.split_first() {
        Some((&o, rest)) => (o, rest.iter().try_fold(1usize, |a, &d| a.checked_mul(d))),
        None => (0, None),
    };
    if Some(inner) != want_inner || out != want_out || down.shape.len() < 2 {
        return Err(format!(
            "shape does not fit: lora_down {:?} and lora_up {:?} make a [{out}, {inner}] delta, the weight is {target:?}",
            down.shape, up.shape
        ));
    }
    if out.checked_mul(inner).is_none_or(|n| n > MAX_ELEMENTS) {
        return Err(format!("delta of {out}x{inner} is too large"));
    }
    Ok((rank, out, inner))
}

fn scalar(key: &str, t: Tensor) -> Result<f32, String> {
    match t.to_f32()[..] {
        [a] if a.is_finite() => Ok(a),
        [_] => Err(format!("tensor \"{key}\": alpha is not finite")),
        _ => Err(format!(
            "tensor \"{key}\": alpha should be one number, has shape {:?}",
            t.shape
        )),
    }
}

fn finite(key: &str, t: Tensor) -> Result<Tensor, String> {
    // A fold without early exit vectorises; the position is looked for only on failure.
    let bad = match &t.data {
        TensorData::F16(v) => v.iter().fold(false, |b, x| b | !x.is_finite()),
        TensorData::F32(v) => v.iter().fold(false, |b, x| b | !x.is_finite()),
        TensorData::I32(_) | TensorData::Bool(_) => false,
    };
    match bad
        .then(|| t.to_f32().iter().position(|v| !v.is_finite()))
        .flatten()
    {
        None => Ok(t),
        Some(i) => Err(format!(
            "tensor \"{key}\": value {i} is not finite (NaN or infinity)"
        )),
    }
}

/// `t`'s values in f32, an f16 tensor widened a vector at a time.
fn widened(t: &Tensor) -> Vec<f32> {
    match &t.data {
        TensorData::F16(h) => {
            let mut v = vec![0f32; h.len()];
            super::f16c::widen(h, &mut v);
            v
        }
        _ => t.to_f32(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::f32(shape.to_vec(), v.to_vec())
    }

    #[test]
    fn low_rank_adds_scaled_product() {
        // up [2, 1] = [1, 2], down [1, 3] = [1, 0, -1]; alpha 0.5, rank 1 → scale 0.5, weight 2.
        let d = Delta::LowRank {
            down: t(&[1, 3], &[1.0, 0.0, -1.0]),
            up: t(&[2, 1], &[1.0, 2.0]),
            alpha: Some(0.5),
        };
        let mut w = vec![10.0; 6];
        d.add_to(&[2, 3], 2.0, &mut w).unwrap();
        assert_eq!(w, vec![11.0, 10.0, 9.0, 12.0, 10.0, 8.0]);
        // alpha 0 or absent: scale 1.
        let d = Delta::LowRank {
            down: t(&[1, 1, 1, 1], &[3.0]),
            up: t(&[1, 1, 1, 1], &[2.0]),
            alpha: None,
        };
        let mut w = vec![1.0];
        d.add_to(&[1, 1, 1, 1], -0.5, &mut w).unwrap();
        assert_eq!(w, vec![-2.0]);
    }

    #[test]
    fn misfits_are_named() {
        let d = Delta::LowRank {
            down: t(&[2, 3], &[0.0; 6]),
            up: t(&[4, 1], &[0.0; 4]),
            alpha: None,
        };
        assert!(d.check(&[4, 3]).unwrap_err().contains("rank disagrees"));
        let d = Delta::LowRank {
            down: t(&[1, 3], &[0.0; 3]),
            up: t(&[4, 1], &[0.0; 4]),
            alpha: None,
        };
        let e = d.check(&[4, 5]).unwrap_err();
        assert!(e.contains("[4, 3] delta") && e.contains("[4, 5]"), "{e}");
        assert!(d.check(&[4, 3]).is_ok());
        assert!(d.check(&[4, 3, 1, 1]).is_ok());
    }
}
