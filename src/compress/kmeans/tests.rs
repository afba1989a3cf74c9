//! The solver against brute force and full-table references, and the palettes' invariants.

use half::f16;

use super::dp::{cluster_unique, constrained_starts, optimal_starts, Prefix};
use super::keys::{f16_key, f16_key_to_f32, f16_keys, key_to_f32, sort_with_index};
use super::lagrange;
use super::unweighted::COUNTING_MIN;
use super::weight::Weight;
use super::weighted::WEIGHT_FLOOR;
use super::*;

/// Deterministic xorshift generator: the tests must not depend on a random seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Weighted squared error of sorted unique `(x, w)` pairs split at `starts`.
fn partition_sse(xs: &[(f64, f64)], starts: &[usize]) -> f64 {
    let mut total = 0.0;
    for c in 0..starts.len() - 1 {
        let run = &xs[starts[c]..starts[c + 1]];
        let sw: f64 = run.iter().map(|p| p.1).sum();
        let mean = run.iter().map(|p| p.0 * p.1).sum::<f64>() / sw;
        total += run
            .iter()
            .map(|p| p.1 * (p.0 - mean) * (p.0 - mean))
            .sum::<f64>();
    }
    total
}

/// Sorted unique values with their counts, as the references see the data.
fn weighted_unique(values: &[f32]) -> Vec<(f64, f64)> {
    let mut u: Vec<f32> = values.to_vec();
    u.sort_by(f32::total_cmp);
    let mut xs: Vec<(f64, f64)> = Vec::new();
    for v in u {
        match xs.last_mut() {
            Some(last) if last.0 == f64::from(v) => last.1 += 1.0,
            _ => xs.push((f64::from(v), 1.0)),
        }
    }
    xs
}

/// Minimum over every split of the sorted unique values into exactly `k` runs.
fn brute_force(values: &[f32], k: usize) -> f64 {
    brute_force_pairs(&weighted_unique(values), k)
}

/// Minimum over every split of sorted unique `(x, w)` pairs into exactly `k` runs.
fn brute_force_pairs(xs: &[(f64, f64)], k: usize) -> f64 {
    let n = xs.len();
    if n <= k {
        return 0.0;
    }
    let mut best = f64::INFINITY;
    // Every (k-1)-subset of the n-1 gaps, as a bitmask.
    for mask in 0u32..1 << (n - 1) {
        if mask.count_ones() as usize != k - 1 {
            continue;
        }
        let mut starts = vec![0];
        starts.extend((0..n - 1).filter(|g| mask >> g & 1 == 1).map(|g| g + 1));
        starts.push(n);
        best = best.min(partition_sse(xs, &starts));
    }
    best
}

fn check_consistent(values: &[f32], p: &Palette, k: usize) {
    assert!(p.lut.len() <= k);
    assert!(
        p.lut.windows(2).all(|w| w[0] < w[1]),
        "LUT not strictly ascending: {:?}",
        p.lut
    );
    assert_eq!(p.indices.len(), values.len());
    let sse: f64 = values
        .iter()
        .zip(&p.indices)
        .map(|(&v, &i)| (f64::from(v) - f64::from(p.lut[usize::from(i)])).powi(2))
        .sum();
    assert!(
        (sse - p.sse).abs() <= 1e-12 * (1.0 + sse),
        "reported {} vs {}",
        p.sse,
        sse
    );
    // Clusters of an optimal 1-D partition are contiguous in value order.
    let mut pairs: Vec<(f32, u16)> = values
        .iter()
        .copied()
        .zip(p.indices.iter().copied())
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    assert!(
        pairs.windows(2).all(|w| w[0].1 <= w[1].1),
        "clusters interleave"
    );
}

#[test]
fn matches_brute_force_on_small_tensors() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..400 {
        let len = 1 + rng.below(40) as usize;
        // Few distinct levels so that values repeat and the weights matter.
        let levels = 1 + rng.below(14);
        let spread = [0.01f32, 1.0, 300.0][case % 3];
        let values: Vec<f32> = (0..len)
            .map(|_| (rng.below(levels) as f32 - 3.0) * spread + (rng.below(3) as f32) * 1e-3)
            .collect();
        for k in 1..=6 {
            let p = kmeans_1d(&values, k);
            check_consistent(&values, &p, k);
            let best = brute_force(&values, k);
            // p.sse uses the f32-rounded LUT, so it may exceed the exact optimum by the
            // rounding of the means, never by a worse partition.
            let tol =
                1e-9 * (1.0 + best) + 1e-12 * values.iter().map(|v| v * v).sum::<f32>() as f64;
            assert!(
                (p.sse - best).abs() <= tol,
                "case {case} k {k}: got {} want {best} for {values:?}",
                p.sse
            );
        }
    }
}

/// Exercises the recursion (k > CHECKPOINTS + 1) and the Knuth layers against an
/// independent full-table DP.
#[test]
fn matches_full_table_dp_with_many_clusters() {
    let mut rng = Rng(12345);
    // Sizes keep the O(k·n²) reference fast enough for unoptimised test builds.
    for &(len, k) in &[
        (900usize, 40usize),
        (1200, 9),
        (500, 200),
        (700, 100),
        (300, 17),
    ] {
        let values: Vec<f32> = (0..len)
            .map(|_| {
                // Heavy-tailed, fp16-exact, with many repeats near zero.
                let g = (rng.below(2001) as f32 - 1000.0) / 1000.0;
                f16::from_f32(g * g * g).to_f32()
            })
            .collect();
        let p = kmeans_1d(&values, k);
        check_consistent(&values, &p, k);
        let want = full_table_dp(&values, k);
        assert!(
            (p.sse - want).abs() <= 1e-9 * want + 1e-12,
            "len {len} k {k}: {} vs {want}",
            p.sse
        );
    }
}

/// O(k·n²) reference DP with a complete table and no monotonicity assumptions; the chosen
/// partition is re-scored exactly.
fn full_table_dp(values: &[f32], k: usize) -> f64 {
    let xs = weighted_unique(values);
    let n = xs.len();
    if n <= k {
        return 0.0;
    }
    let (mut w, mut s1, mut s2) = (vec![0.0], vec![0.0], vec![0.0]);
    for &(x, c) in &xs {
        w.push(w.last().unwrap() + c);
        s1.push(s1.last().unwrap() + c * x);
        s2.push(s2.last().unwrap() + c * x * x);
    }
    let cost = |i: usize, j: usize| {
        let d = s1[j] - s1[i];
        (s2[j] - s2[i]) - d * d / (w[j] - w[i])
    };
    partition_sse(&xs, &full_table_starts(n, k, cost))
}

/// Starts (then `n`) of the least-cost split of `n` positions into `k` runs, by the complete
/// `k × n` table.
fn full_table_starts(n: usize, k: usize, cost: impl Fn(usize, usize) -> f64) -> Vec<usize> {
    let mut d = vec![vec![f64::INFINITY; n + 1]; k + 1];
    let mut arg = vec![vec![0usize; n + 1]; k + 1];
    d[0][0] = 0.0;
    for m in 1..=k {
        for j in m..=n {
            for i in m - 1..j {
                let v = d[m - 1][i] + cost(i, j);
                if v < d[m][j] {
                    d[m][j] = v;
                    arg[m][j] = i;
                }
            }
        }
    }
    let mut starts = vec![n];
    let mut j = n;
    for m in (1..=k).rev() {
        j = arg[m][j];
        starts.push(j);
    }
    starts.reverse();
    starts
}

/// Total cost of a partition given by its starts (followed by `n`).
fn starts_cost<W: Weight>(p: &Prefix<W>, starts: &[usize]) -> f64 {
    starts.windows(2).map(|s| p.cost(s[0], s[1])).sum()
}

fn prefix_of(values: &[f32]) -> (Prefix<u32>, usize) {
    let mut u: Vec<f32> = values.iter().map(|&v| v + 0.0).collect();
    u.sort_by(f32::total_cmp);
    let (mut uniq, mut counts) = (Vec::new(), Vec::<u32>::new());
    for v in u {
        if uniq.last() == Some(&v) {
            *counts.last_mut().unwrap() += 1;
        } else {
            uniq.push(v);
            counts.push(1);
        }
    }
    let n = uniq.len();
    (Prefix::new(&uniq, &counts), n)
}

/// The Lagrangian search, whenever it answers, finds a partition as good as the
/// constrained DP's, on random, heavily repeated and equally spaced (tie-prone) values.
#[test]
fn lagrangian_matches_constrained_dp() {
    let mut rng = Rng(0x5eed);
    // Per kind of input: (answered by the Lagrangian search, instances).
    let mut answered = [(0usize, 0usize); 4];
    for case in 0..240 {
        let len = 2 + rng.below([60, 600, 4000][case % 3]) as usize;
        let values: Vec<f32> = match case % 4 {
            // Heavy-tailed, fp16-exact.
            0 => (0..len)
                .map(|_| {
                    let g = (rng.below(2001) as f32 - 1000.0) / 1000.0;
                    f16::from_f32(g * g * g).to_f32()
                })
                .collect(),
            // Few levels, many repeats.
            1 => {
                let levels = 2 + rng.below(40);
                (0..len).map(|_| rng.below(levels) as f32 * 0.25).collect()
            }
            // Equally spaced, equal counts: many exact ties between cluster counts.
            2 => (0..len).map(|i| (i % (1 + len / 3)) as f32).collect(),
            // Equally spaced, all distinct.
            _ => (0..len).map(|i| i as f32 * 0.5 - 7.0).collect(),
        };
        let (p, n) = prefix_of(&values);
        for _ in 0..4 {
            let k = 2 + rng.below(299) as usize;
            if k >= n {
                continue;
            }
            answered[case % 4].1 += 1;
            let want = starts_cost(&p, &constrained_starts(&p, n, k));
            if let Some(starts) = lagrange::Wqs::default().solve(&p, n, k) {
                answered[case % 4].0 += 1;
                assert_eq!(starts.len(), k + 1);
                assert_eq!((starts[0], starts[k]), (0, n));
                assert!(starts.windows(2).all(|s| s[0] < s[1]));
                let got = starts_cost(&p, &starts);
                assert!(
                    (got - want).abs() <= 1e-9 * want + 1e-12,
                    "case {case} n {n} k {k}: {got} vs {want}"
                );
            }
            let got = starts_cost(&p, &optimal_starts(&p, n, k));
            assert!(
                (got - want).abs() <= 1e-9 * want + 1e-12,
                "case {case} n {n} k {k}: {got} vs {want}"
            );
        }
    }
    println!("Lagrangian search answered (of): {answered:?}");
    // Generic data must take the fast path, or it is pointless; equally spaced values are
    // full of breakpoints and mostly fall back.
    assert!(answered[0].0 * 10 >= answered[0].1 * 9, "{answered:?}");
}

#[test]
fn deterministic() {
    let mut rng = Rng(7);
    let values: Vec<f32> = (0..20000)
        .map(|_| rng.below(5000) as f32 / 977.0 - 2.0)
        .collect();
    let a = kmeans_1d(&values, 16);
    for _ in 0..3 {
        assert_eq!(a, kmeans_1d(&values, 16));
    }
    let batch = kmeans_1d_batch(&[&values, &values[..7000], &values], 16);
    assert_eq!(batch[0], a);
    assert_eq!(batch[2], a);
    assert_eq!(batch[1], kmeans_1d(&values[..7000], 16));
}

#[test]
fn few_unique_values_are_the_lut() {
    let values = [0.5f32, -1.0, 0.5, 2.0, -0.0, 0.0, 2.0];
    let p = kmeans_1d(&values, 4);
    assert_eq!(p.lut, vec![-1.0, 0.0, 0.5, 2.0]);
    assert_eq!(p.indices, vec![2, 0, 2, 3, 1, 1, 3]);
    assert_eq!(p.sse, 0.0);
    assert_eq!(p.dequantize(), vec![0.5, -1.0, 0.5, 2.0, 0.0, 0.0, 2.0]);
    // More clusters than values: still only the unique values.
    let p = kmeans_1d(&values, 256);
    assert_eq!(p.lut.len(), 4);
    assert_eq!(p.sse, 0.0);
}

#[test]
fn constant_tensor() {
    let values = vec![0.25f32; 5000];
    for k in [1, 2, 16] {
        let p = kmeans_1d(&values, k);
        assert_eq!(p.lut, vec![0.25]);
        assert!(p.indices.iter().all(|&i| i == 0));
        assert_eq!(p.sse, 0.0);
    }
}

#[test]
fn one_cluster_is_the_mean() {
    let p = kmeans_1d(&[1.0, 2.0, 6.0], 1);
    assert_eq!(p.lut, vec![3.0]);
    assert_eq!(p.sse, 4.0 + 1.0 + 9.0);
    assert!(kmeans_1d(&[], 3).lut.is_empty());
}

#[test]
fn weights_pull_the_split() {
    // Three 0s and one 10 against 4 and 5: {0,0,0},{4,5,10} costs 2·(7-4)²/… ; brute force
    // decides, this only pins that counts (not just unique values) are used.
    let values = [0.0f32, 0.0, 0.0, 4.0, 5.0, 10.0, 10.0, 10.0, 10.0];
    let p = kmeans_1d(&values, 2);
    assert!((p.sse - brute_force(&values, 2)).abs() < 1e-12);
    assert_eq!(p.lut.len(), 2);
}

#[test]
fn f16_lut_is_fp16_exact_and_not_worse_than_plain_rounding() {
    let mut rng = Rng(99);
    let values: Vec<f32> = (0..4096)
        .map(|_| f16::from_f32(rng.below(100_000) as f32 / 7e5 - 0.07).to_f32())
        .collect();
    let p = kmeans_1d(&values, 16);
    let q = p.with_f16_lut(&values);
    assert!(q.lut.iter().all(|&c| f16::from_f32(c).to_f32() == c));
    let rounded_same_indices: f64 = values
        .iter()
        .zip(&p.indices)
        .map(|(&v, &i)| (f64::from(v) - f64::from(q.lut[usize::from(i)])).powi(2))
        .sum();
    assert!(q.sse <= rounded_same_indices);
    assert!(
        q.sse >= p.sse * 0.999,
        "fp16 rounding cannot beat the optimum by much"
    );
}

#[test]
fn grouped_palettes_cover_their_rows() {
    let mut rng = Rng(5);
    let shape = [8usize, 3, 2, 2];
    let values: Vec<f32> = (0..96).map(|_| rng.below(1000) as f32 / 100.0).collect();
    let ps = palettize_grouped(&values, &shape, 2, 4);
    assert_eq!(ps.len(), 4);
    for (g, p) in ps.iter().enumerate() {
        assert_eq!(p, &kmeans_1d(&values[g * 24..(g + 1) * 24], 4));
    }
}

#[test]
fn f16_keys_order_every_fp16_value() {
    let mut seen = Vec::new();
    for h in 0..=u16::MAX {
        let x = f16::from_bits(h).to_f32();
        if !x.is_finite() {
            continue;
        }
        let (key, exact) = f16_key(x);
        assert!(exact, "{x}");
        assert_eq!(f16_key_to_f32(key), x + 0.0, "{h:#x}");
        seen.push((x, key));
    }
    seen.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(seen
        .windows(2)
        .all(|w| (w[0].0 + 0.0 == w[1].0 + 0.0) == (w[0].1 == w[1].1)));
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
    for x in [
        1.0f32 + f32::EPSILON,
        1e-8,
        70000.0,
        3e-5 + 1e-9,
        f32::MIN_POSITIVE,
    ] {
        assert!(!f16_key(x).1, "{x}");
    }
}

/// The counting path (large fp16-exact tensors) and the sorting path agree.
#[test]
fn counting_path_matches_sorting_path() {
    let mut rng = Rng(31);
    let values: Vec<f32> = (0..3 * COUNTING_MIN)
        .map(|_| f16::from_f32((rng.below(40_000) as f32 - 20_000.0) * 3e-6).to_f32())
        .collect();
    assert!(f16_keys(&values).is_some());
    // One value that is not fp16-exact sends the whole tensor down the sorting path.
    let mut perturbed = values.clone();
    perturbed.push(1.0 + f32::EPSILON);
    assert!(f16_keys(&perturbed).is_none());
    for k in [1, 5, 16, 256] {
        check_consistent(&values, &kmeans_1d(&values, k), k);
        check_consistent(&perturbed, &kmeans_1d(&perturbed, k), k);
    }
    // The counting path's result equals the sorting path's on the same values.
    let sorted = sort_with_index(&values);
    let p = kmeans_1d(&values, 16);
    let mut uniq: Vec<f32> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    for &e in &sorted {
        let v = key_to_f32((e >> 32) as u32);
        if uniq.last() == Some(&v) {
            *counts.last_mut().unwrap() += 1;
        } else {
            uniq.push(v);
            counts.push(1);
        }
    }
    let (lut, cluster_of_unique, sse) = cluster_unique(&uniq, &counts, 16);
    assert_eq!((p.lut.clone(), p.sse), (lut, sse));
    for &e in &sorted {
        let v = key_to_f32((e >> 32) as u32);
        let u = uniq.partition_point(|&x| x < v);
        assert_eq!(p.indices[(e & 0xffff_ffff) as usize], cluster_of_unique[u]);
    }
}

#[test]
fn radix_sort_orders_like_total_order() {
    let mut rng = Rng(3);
    let mut values: Vec<f32> = (0..3000)
        .map(|_| f32::from_bits(rng.next() as u32 & 0xbfff_ffff))
        .collect();
    values.extend([
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-40,
    ]);
    let sorted = sort_with_index(&values);
    let keys: Vec<f32> = sorted
        .iter()
        .map(|&e| key_to_f32((e >> 32) as u32))
        .collect();
    let mut want: Vec<f32> = values.iter().map(|&v| v + 0.0).collect();
    want.sort_by(f32::total_cmp);
    assert_eq!(keys, want);
    for &e in &sorted {
        assert_eq!(
            values[(e & 0xffff_ffff) as usize] + 0.0,
            key_to_f32((e >> 32) as u32)
        );
    }
}

/// Sorted unique values with their summed weights.
fn weighted_unique_with(values: &[f32], weights: &[f32]) -> Vec<(f64, f64)> {
    let mut u: Vec<(f32, f32)> = values
        .iter()
        .map(|&v| v + 0.0)
        .zip(weights.iter().copied())
        .collect();
    u.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut xs: Vec<(f64, f64)> = Vec::new();
    for (v, w) in u {
        match xs.last_mut() {
            Some(last) if last.0 == f64::from(v) => last.1 += f64::from(w),
            _ => xs.push((f64::from(v), f64::from(w))),
        }
    }
    xs
}

/// Least weighted error over every split of the unique values into at most `k` runs.
fn brute_force_weighted(values: &[f32], weights: &[f32], k: usize) -> f64 {
    brute_force_pairs(&weighted_unique_with(values, weights), k)
}

/// Weighted error of `p` recomputed from its indices, and the structural checks of
/// [`check_consistent`].
fn check_weighted(values: &[f32], weights: &[f32], p: &Palette, k: usize) {
    assert!(p.lut.len() <= k);
    assert!(p.lut.iter().all(|c| c.is_finite()), "{:?}", p.lut);
    assert!(p.lut.windows(2).all(|w| w[0] < w[1]), "{:?}", p.lut);
    assert_eq!(p.indices.len(), values.len());
    let sse: f64 = values
        .iter()
        .zip(weights)
        .zip(&p.indices)
        .map(|((&v, &w), &i)| {
            f64::from(w) * (f64::from(v) - f64::from(p.lut[usize::from(i)])).powi(2)
        })
        .sum();
    assert!(
        (sse - p.sse).abs() <= 1e-12 * (1.0 + sse),
        "reported {} vs {sse}",
        p.sse
    );
    // Every element sits at its nearest entry.
    for (&v, &i) in values.iter().zip(&p.indices) {
        assert_eq!(usize::from(i), nearest(&p.lut, v), "{v} in {:?}", p.lut);
    }
}

/// Random weights spanning four orders of magnitude.
fn random_weights(rng: &mut Rng, len: usize) -> Vec<f32> {
    (0..len)
        .map(|_| 10f32.powf(rng.below(4001) as f32 / 1000.0 - 2.0))
        .collect()
}

#[test]
fn weighted_matches_brute_force_on_small_tensors() {
    let mut rng = Rng(0xdead_beef);
    for case in 0..300 {
        let len = 1 + rng.below(30) as usize;
        let levels = 1 + rng.below(14);
        let spread = [0.01f32, 1.0, 300.0][case % 3];
        let values: Vec<f32> = (0..len)
            .map(|_| (rng.below(levels) as f32 - 3.0) * spread + (rng.below(3) as f32) * 1e-3)
            .collect();
        let weights = random_weights(&mut rng, len);
        for k in 1..=6 {
            let p = kmeans_1d_weighted(&values, &weights, k);
            check_weighted(&values, &weights, &p, k);
            let best = brute_force_weighted(&values, &weights, k);
            let scale: f64 = values
                .iter()
                .zip(&weights)
                .map(|(&v, &w)| f64::from(w) * f64::from(v) * f64::from(v))
                .sum();
            let tol = 1e-9 * (1.0 + best) + 1e-12 * scale;
            assert!(
                (p.sse - best).abs() <= tol,
                "case {case} k {k}: got {} want {best} for {values:?} {weights:?}",
                p.sse
            );
        }
    }
}

/// Weight `c` behaves like `c` copies of the value: same LUT, same index per element.
#[test]
fn integer_weights_equal_repeated_values() {
    let mut rng = Rng(0xfeed);
    for case in 0..60 {
        let len = 2 + rng.below([20, 300, 1500][case % 3]) as usize;
        // Irregular values (no exact ties between partitions), some repeated.
        let values: Vec<f32> = (0..len)
            .map(|_| (rng.below(1 + len as u64 / 2) as f32).sqrt() * 0.37 - 1.1)
            .collect();
        let counts: Vec<u32> = (0..len).map(|_| 1 + rng.below(5) as u32).collect();
        let weights: Vec<f32> = counts.iter().map(|&c| c as f32).collect();
        let mut repeated = Vec::new();
        let mut first_copy = Vec::new();
        for (&v, &c) in values.iter().zip(&counts) {
            first_copy.push(repeated.len());
            repeated.extend(std::iter::repeat_n(v, c as usize));
        }
        for k in [2usize, 5, 16, 40] {
            let w = kmeans_1d_weighted(&values, &weights, k);
            let r = kmeans_1d(&repeated, k);
            assert_eq!(w.lut, r.lut, "case {case} k {k}");
            for (e, &f) in first_copy.iter().enumerate() {
                assert_eq!(w.indices[e], r.indices[f], "case {case} k {k} element {e}");
            }
            assert!((w.sse - r.sse).abs() <= 1e-12 * (1.0 + r.sse));
        }
    }
}

/// Prefix sums of random real weights over sorted unique values.
fn weighted_prefix_of(values: &[f32], weights: &[f32]) -> (Prefix<f64>, usize) {
    let xs = weighted_unique_with(values, weights);
    let uniq: Vec<f32> = xs.iter().map(|p| p.0 as f32).collect();
    let w: Vec<f64> = xs.iter().map(|p| p.1).collect();
    (Prefix::new(&uniq, &w), xs.len())
}

#[test]
fn weighted_lagrangian_matches_constrained_dp() {
    let mut rng = Rng(0xa11ce);
    let (mut answered, mut instances) = (0usize, 0usize);
    for case in 0..120 {
        let len = 2 + rng.below([60, 600, 3000][case % 3]) as usize;
        let values: Vec<f32> = match case % 2 {
            0 => (0..len)
                .map(|_| {
                    let g = (rng.below(2001) as f32 - 1000.0) / 1000.0;
                    f16::from_f32(g * g * g).to_f32()
                })
                .collect(),
            _ => (0..len).map(|i| i as f32 * 0.5 - 7.0).collect(),
        };
        let weights = random_weights(&mut rng, len);
        let (p, n) = weighted_prefix_of(&values, &weights);
        for _ in 0..4 {
            let k = 2 + rng.below(150) as usize;
            if k >= n {
                continue;
            }
            instances += 1;
            let want = starts_cost(&p, &constrained_starts(&p, n, k));
            if let Some(starts) = lagrange::Wqs::default().solve(&p, n, k) {
                answered += 1;
                assert_eq!(starts.len(), k + 1);
                assert_eq!((starts[0], starts[k]), (0, n));
                assert!(starts.windows(2).all(|s| s[0] < s[1]));
                let got = starts_cost(&p, &starts);
                assert!(
                    (got - want).abs() <= 1e-9 * want + 1e-12,
                    "case {case} n {n} k {k}: {got} vs {want}"
                );
            }
        }
    }
    println!("weighted Lagrangian search answered {answered} of {instances}");
    // Random weights break the ties of equally spaced values: most take the fast path.
    assert!(answered * 10 >= instances * 9, "{answered} of {instances}");
}

/// The constrained DP (with the recursion and Knuth layers) on real weights against the
/// O(k·n²) full-table reference.
#[test]
fn weighted_constrained_dp_matches_full_table() {
    let mut rng = Rng(777);
    for &(len, k) in &[(600usize, 40usize), (400, 9), (300, 120)] {
        let values: Vec<f32> = (0..len)
            .map(|_| (rng.below(100_000) as f32 / 1e5 - 0.5).powi(3))
            .collect();
        let weights = random_weights(&mut rng, len);
        let xs = weighted_unique_with(&values, &weights);
        let (p, n) = weighted_prefix_of(&values, &weights);
        let got = partition_sse(&xs, &constrained_starts(&p, n, k));
        let starts = full_table_starts(n, k, |i, j| p.cost(i, j));
        let want = partition_sse(&xs, &starts);
        assert!(
            (got - want).abs() <= 1e-9 * want + 1e-12,
            "len {len} k {k}: {got} vs {want}"
        );
    }
}

#[test]
fn weighted_is_deterministic() {
    let mut rng = Rng(8);
    let values: Vec<f32> = (0..20000)
        .map(|_| rng.below(5000) as f32 / 977.0 - 2.0)
        .collect();
    let weights = random_weights(&mut rng, values.len());
    let a = kmeans_1d_weighted(&values, &weights, 16);
    check_weighted(&values, &weights, &a, 16);
    for _ in 0..3 {
        assert_eq!(a, kmeans_1d_weighted(&values, &weights, 16));
    }
    let batch = kmeans_1d_weighted_batch(
        &[
            (&values, &weights),
            (&values[..7000], &weights[..7000]),
            (&values, &weights),
        ],
        16,
    );
    assert_eq!(batch[0], a);
    assert_eq!(batch[2], a);
    assert_eq!(
        batch[1],
        kmeans_1d_weighted(&values[..7000], &weights[..7000], 16)
    );
    // The weights matter: uniform weights give a different palette here.
    assert_ne!(a.lut, kmeans_1d(&values, 16).lut);
}

#[test]
fn zero_weights() {
    let values = [0.0f32, 1.0, 10.0, 11.0, 20.0, 21.0];
    // All zero: the unweighted palette, with no weighted error.
    let p = kmeans_1d_weighted(&values, &[0.0; 6], 3);
    let q = kmeans_1d(&values, 3);
    assert_eq!((&p.lut, &p.indices, p.sse), (&q.lut, &q.indices, 0.0));

    // A cluster of zero-weight values only: its entry is their plain mean, and the weighted
    // error is exactly that of the positive values, all represented exactly.
    let weights = [0.0f32, 0.0, 1.0, 2.0, 3.0, 4.0];
    let p = kmeans_1d_weighted(&values, &weights, 5);
    check_weighted(&values, &weights, &p, 5);
    assert_eq!(p.lut, vec![0.5, 10.0, 11.0, 20.0, 21.0]);
    assert_eq!(p.sse, 0.0);

    // Zero-weight elements anywhere: they still get their nearest entry, and the error is
    // the optimum of the positive elements alone (up to the floor's pull).
    let mut rng = Rng(21);
    for case in 0..100 {
        let len = 2 + rng.below(25) as usize;
        let values: Vec<f32> = (0..len).map(|_| rng.below(40) as f32 * 0.25).collect();
        let mut weights = random_weights(&mut rng, len);
        for w in weights.iter_mut() {
            if rng.below(3) == 0 {
                *w = 0.0;
            }
        }
        for k in 1..=5 {
            let p = kmeans_1d_weighted(&values, &weights, k);
            check_weighted(&values, &weights, &p, k);
            let (pv, pw): (Vec<f32>, Vec<f32>) =
                values.iter().zip(&weights).filter(|p| *p.1 > 0.0).unzip();
            let best = brute_force_weighted(&pv, &pw, k);
            let total: f64 = pw.iter().map(|&w| f64::from(w)).sum();
            // The floor's bound: floor · (raised values) · (value range)², with the floor at
            // most WEIGHT_FLOOR · total.
            let slack = WEIGHT_FLOOR * total * len as f64 * 100.0;
            assert!(
                p.sse >= best - 1e-9 * (1.0 + best) && p.sse <= best + slack + 1e-9,
                "case {case} k {k}: got {} want {best}",
                p.sse
            );
        }
    }
}

#[test]
fn weighted_grouped_and_f16_lut() {
    let mut rng = Rng(55);
    let shape = [8usize, 3, 2, 2];
    let values: Vec<f32> = (0..96).map(|_| rng.below(1000) as f32 / 100.0).collect();
    let weights = random_weights(&mut rng, 96);
    let ps = palettize_grouped_weighted(&values, &weights, &shape, 2, 4);
    assert_eq!(ps.len(), 4);
    for (g, p) in ps.iter().enumerate() {
        let r = g * 24..(g + 1) * 24;
        assert_eq!(p, &kmeans_1d_weighted(&values[r.clone()], &weights[r], 4));
    }

    let values: Vec<f32> = (0..4096)
        .map(|_| f16::from_f32(rng.below(100_000) as f32 / 7e5 - 0.07).to_f32())
        .collect();
    let weights = random_weights(&mut rng, values.len());
    let p = kmeans_1d_weighted(&values, &weights, 16);
    let q = p.with_f16_lut_weighted(&values, &weights);
    assert!(q.lut.iter().all(|&c| f16::from_f32(c).to_f32() == c));
    check_weighted(&values, &weights, &q, 16);
    let rounded_same_indices: f64 = values
        .iter()
        .zip(&weights)
        .zip(&p.indices)
        .map(|((&v, &w), &i)| {
            f64::from(w) * (f64::from(v) - f64::from(q.lut[usize::from(i)])).powi(2)
        })
        .sum();
    assert!(q.sse <= rounded_same_indices);
    assert!(q.sse >= p.sse * 0.999);
}

/// What `palettize_f16` must equal: the f32 path on the widened values.
fn f32_path(values: &[f16], k: usize) -> Palette {
    let v: Vec<f32> = values.iter().map(|x| x.to_f32()).collect();
    kmeans_1d(&v, k).with_f16_lut(&v)
}

/// `palettize_f16` against the f32 path: the same LUT and indices, and the same error up to
/// the order of summation.
fn check_f16(values: &[f16], k: usize, what: &str) {
    let want = f32_path(values, k);
    let got = palettize_f16(values, k);
    assert_eq!(got.lut, want.lut, "{what}, k = {k}");
    assert_eq!(got.indices, want.indices, "{what}, k = {k}");
    assert!(
        (got.sse - want.sse).abs() <= 1e-12 * (1.0 + want.sse),
        "{what}, k = {k}: {} vs {}",
        got.sse,
        want.sse
    );
}

/// Random fp16 tensors on both sides of `COUNTING_MIN`: gaussian-like (many distinct values),
/// a few distinct values, a spread over every finite fp16 (subnormals and both zeros
/// included), and equally spaced values (ties in the DP and in the rounding).
#[test]
fn f16_patterns_match_the_f32_path() {
    let mut rng = Rng(77);
    for seed in 0..12u64 {
        let len = match seed % 4 {
            0 => COUNTING_MIN - 1,
            1 => COUNTING_MIN,
            2 => 3 * COUNTING_MIN + 17,
            _ => 40_000,
        };
        let gaussian: Vec<f16> = (0..len)
            .map(|_| {
                let s: f64 = (0..4).map(|_| rng.below(1 << 20) as f64).sum();
                f16::from_f64((s / f64::from(1 << 20) - 2.0) * 0.03)
            })
            .collect();
        let few: Vec<f16> = (0..len)
            .map(|_| f16::from_f32(rng.below(9) as f32 * 0.125 - 0.5))
            .collect();
        let any: Vec<f16> = (0..len)
            .map(|_| loop {
                let h = f16::from_bits(rng.below(1 << 16) as u16);
                if h.is_finite() {
                    break h;
                }
            })
            .collect();
        let tiny: Vec<f16> = (0..len)
            .map(|_| {
                // Subnormals, both zeros and the smallest normals.
                let h = rng.below(0x0800) as u16;
                f16::from_bits(h | if rng.below(2) == 0 { 0x8000 } else { 0 })
            })
            .collect();
        let spaced: Vec<f16> = (0..len)
            .map(|i| f16::from_f32((i % 64) as f32 / 16.0 - 2.0))
            .collect();
        for bits in 1..=8 {
            let k = 1 << bits;
            check_f16(&gaussian, k, &format!("gaussian {seed}"));
            check_f16(&few, k, &format!("few {seed}"));
            check_f16(&any, k, &format!("any {seed}"));
            check_f16(&tiny, k, &format!("tiny {seed}"));
            check_f16(&spaced, k, &format!("spaced {seed}"));
        }
    }
}

/// Constant tensors, zeros of both signs (one value, `+0.0` in the LUT), tensors shorter than
/// their table, and the empty tensor.
#[test]
fn f16_patterns_edge_cases() {
    for len in [0, 1, 5, COUNTING_MIN, 10_000] {
        for x in [0.0f32, -0.0, 1.5, -65504.0, 6e-8] {
            let values = vec![f16::from_f32(x); len];
            for k in [1, 2, 16, 256] {
                check_f16(&values, k, &format!("{len} x {x}"));
            }
            let p = palettize_f16(&values, 16);
            if len > 0 {
                assert_eq!(p.lut, [f16::from_f32(x).to_f32() + 0.0], "{len} x {x}");
                assert_eq!(p.sse, 0.0);
            }
        }
        let zeros: Vec<f16> = (0..len)
            .map(|i| f16::from_f32(if i % 3 == 0 { -0.0 } else { 0.0 }))
            .collect();
        let p = palettize_f16(&zeros, 4);
        assert!(p.lut.iter().all(|c| c.to_bits() == 0), "{:?}", p.lut);
        check_f16(&zeros, 4, "zeros");
    }
}

/// Infinities and NaNs are refused on both sides of `COUNTING_MIN`, as by `kmeans_1d`, and a
/// refusal leaves the thread's pattern table clean for the next tensor.
#[test]
fn f16_patterns_refuse_non_finite_values() {
    for len in [10, COUNTING_MIN + 3] {
        for bad in [
            f16::INFINITY,
            f16::NEG_INFINITY,
            f16::NAN,
            f16::from_bits(0xfe01),
        ] {
            let mut values: Vec<f16> = (0..len).map(|i| f16::from_f32(i as f32 * 1e-3)).collect();
            values[len / 2] = bad;
            assert!(try_palettize_f16(&values, 16).is_none(), "{len}, {bad}");
            let caught = std::panic::catch_unwind(|| palettize_f16(&values, 16)).unwrap_err();
            let msg = caught
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| caught.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            assert!(msg.contains("k-means input must be finite"), "{msg}");
            let w: Vec<f32> = values.iter().map(|x| x.to_f32()).collect();
            assert!(std::panic::catch_unwind(|| kmeans_1d(&w, 16)).is_err());
            values[len / 2] = f16::ZERO;
            check_f16(&values, 16, "after a refusal");
        }
    }
}

/// Counts past `RECIP_TABLE_MAX` divide without the reciprocal table, to the same bits as with
/// it: the same LUT, clusters and error, from the Lagrangian search and from the constrained
/// DP, on spread-out and on equally spaced values (ties).
#[test]
fn large_counts_match_the_reciprocal_table() {
    use super::dp::{cluster_counts, RECIP_TABLE_MAX};
    use super::weight::LargeCount;
    let mut rng = Rng(5);
    for (n, per, spaced) in [(3000, 200, false), (20_000, 40, false), (600, 1000, true)] {
        let mut uniq: Vec<f32> = if spaced {
            (0..n).map(|i| i as f32 / 64.0).collect()
        } else {
            let mut u: Vec<f32> = (0..3 * n)
                .map(|_| f16::from_f32((rng.below(1 << 20) as f32 - 524_288.0) * 1e-6).to_f32())
                .collect();
            u.sort_by(f32::total_cmp);
            u.dedup();
            u
        };
        uniq.truncate(n);
        let counts: Vec<u32> = uniq.iter().map(|_| 1 + rng.below(2 * per) as u32).collect();
        let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        assert!(total > RECIP_TABLE_MAX, "{total}");
        let large: Vec<LargeCount> = counts.iter().map(|&c| LargeCount(c)).collect();
        for k in [2, 3, 16, 100, 256] {
            let (a, b) = (
                cluster_unique(&uniq, &counts, k),
                cluster_counts(&uniq, &counts, k),
            );
            assert_eq!(
                (&a.0, &a.1, a.2.to_bits()),
                (&b.0, &b.1, b.2.to_bits()),
                "{n}, {k}"
            );
            let (pa, pb) = (Prefix::new(&uniq, &counts), Prefix::new(&uniq, &large));
            assert_eq!(
                constrained_starts(&pa, uniq.len(), k),
                constrained_starts(&pb, uniq.len(), k),
                "{n}, {k}"
            );
        }
    }
}
