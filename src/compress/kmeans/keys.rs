//! Order-preserving integer keys of float values, and the radix sort over them.

use half::f16;

/// Order-preserving 16-bit key of every value if all are fp16-exact (`-0.0` as `0.0`): the fp16
/// bit pattern with the sign handled like [`f32_key`].
pub(super) fn f16_keys(values: &[f32]) -> Option<Vec<u16>> {
    let mut keys = Vec::with_capacity(values.len());
    let mut exact = true;
    for &v in values {
        let (key, ok) = f16_key(v);
        exact &= ok;
        keys.push(key);
    }
    exact.then_some(keys)
}

/// `(key, exact)`: the order-preserving fp16 key of `x`, valid if `exact` (`x` is fp16-exact).
#[inline]
pub(super) fn f16_key(x: f32) -> (u16, bool) {
    let b = (x + 0.0).to_bits();
    let a = b & 0x7fff_ffff;
    let exp = a >> 23;
    let (h, exact) = if a == 0 {
        (0, true)
    } else if (113..=142).contains(&exp) {
        // Normal fp16: rebias the exponent, drop 13 mantissa bits.
        ((a - (112 << 23)) >> 13, a & 0x1fff == 0)
    } else if (103..=112).contains(&exp) {
        // Subnormal fp16: the significand with its implicit bit, shifted to units of 2^-24.
        let m = 0x80_0000 | (a & 0x7f_ffff);
        let shift = 126 - exp;
        (m >> shift, m & ((1 << shift) - 1) == 0)
    } else {
        (0, false)
    };
    let h = h as u16;
    let key = if b & 0x8000_0000 != 0 {
        !(h | 0x8000)
    } else {
        h | 0x8000
    };
    (key, exact)
}

/// The value of an order-preserving fp16 key.
pub(super) fn f16_key_to_f32(key: u16) -> f32 {
    let h = if key & 0x8000 != 0 {
        key & 0x7fff
    } else {
        !key
    };
    f16::from_bits(h).to_f32()
}

/// Order-preserving map of a finite f32 (with -0.0 folded into 0.0) to u32.
fn f32_key(x: f32) -> u32 {
    // Adding +0.0 turns -0.0 into +0.0 and leaves every other value unchanged.
    let b = (x + 0.0).to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

pub(super) fn key_to_f32(k: u32) -> f32 {
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// `(key << 32) | original index` for every value, sorted by key (then index). LSD radix sort
/// on the key: an order of magnitude faster than a comparison sort at these sizes.
pub(super) fn sort_with_index(values: &[f32]) -> Vec<u64> {
    assert!(values.len() <= u32::MAX as usize, "tensor too large");
    let mut a: Vec<u64> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (u64::from(f32_key(v)) << 32) | i as u64)
        .collect();
    const DIGITS: [(u32, usize); 3] = [(32, 11), (43, 11), (54, 10)];
    let mut hist = [[0usize; 1 << 11]; 3];
    for &e in &a {
        for (h, &(shift, bits)) in hist.iter_mut().zip(&DIGITS) {
            h[((e >> shift) & ((1 << bits) - 1)) as usize] += 1;
        }
    }
    let mut b = vec![0u64; a.len()];
    for (h, &(shift, bits)) in hist.iter_mut().zip(&DIGITS) {
        // A digit shared by every element (common for the exponent bits) needs no pass.
        if h.contains(&a.len()) {
            continue;
        }
        let mut sum = 0;
        for c in h.iter_mut() {
            let t = *c;
            *c = sum;
            sum += t;
        }
        for &e in &a {
            let d = ((e >> shift) & ((1 << bits) - 1)) as usize;
            b[h[d]] = e;
            h[d] += 1;
        }
        std::mem::swap(&mut a, &mut b);
    }
    a
}

/// Each element's index from its distinct value's: `sorted` is [`sort_with_index`]'s output
/// (key in the high half, element position in the low), `of_unique[u]` the index of the `u`-th
/// distinct key in sorted order.
pub(super) fn scatter_by_unique(sorted: &[u64], of_unique: &[u16], len: usize) -> Vec<u16> {
    let mut indices = vec![0u16; len];
    let mut u = usize::MAX;
    let mut prev_key = None;
    for &e in sorted {
        let key = (e >> 32) as u32;
        if prev_key != Some(key) {
            u = u.wrapping_add(1);
            prev_key = Some(key);
        }
        indices[(e & 0xffff_ffff) as usize] = of_unique[u];
    }
    indices
}
