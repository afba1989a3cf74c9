//! The kinds of cluster weight the solver runs on: integer element counts (plain k-means), with
//! a table of reciprocals or, for large tensors, without; and real per-element weights
//! (data-aware k-means). The DP only ever needs prefix sums of the weights and
//! `num / (w[j] - w[i])`; this trait supplies both, monomorphised so that the count path
//! compiles to the same code as a solver written for counts alone.

/// A cluster weight: summed along the sorted unique values into prefix sums, and divided by.
pub(super) trait Weight: Copy + Send + Sync + 'static {
    const ZERO: Self;

    /// `self + other` (prefix sums; for counts the caller bounds the total by the element
    /// count, which fits in u32).
    fn add(self, other: Self) -> Self;

    fn to_f64(self) -> f64;

    /// Table that [`Weight::quotient`] reads: `1/t` for every count `t` up to `total`, so the hot
    /// loop multiplies instead of dividing. Empty for real weights, which divide.
    fn recip_table(total: Self) -> Vec<f64>;

    /// The part of `table` that row `wj`'s quotients can read. Slicing once per row lets the
    /// compiler keep the bound in a register instead of re-reading the table length.
    fn row_table(table: &[f64], wj: Self) -> &[f64];

    /// `num / (wj - wi)` for `wi < wj`, through `table` when there is one.
    fn quotient(num: f64, table: &[f64], wj: Self, wi: Self) -> f64;

    /// `num / (wj - wi)` by division: for access patterns that jump far (binary searches), where
    /// a table as long as the tensor would miss the cache.
    fn quotient_div(num: f64, wj: Self, wi: Self) -> f64;
}

impl Weight for u32 {
    const ZERO: Self = 0;

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self + other
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }

    fn recip_table(total: Self) -> Vec<f64> {
        (0..=total).map(|t| 1.0 / f64::from(t)).collect()
    }

    #[inline(always)]
    fn row_table(table: &[f64], wj: Self) -> &[f64] {
        &table[..=wj as usize]
    }

    #[inline(always)]
    fn quotient(num: f64, table: &[f64], wj: Self, wi: Self) -> f64 {
        num * table[(wj - wi) as usize]
    }

    #[inline(always)]
    fn quotient_div(num: f64, wj: Self, wi: Self) -> f64 {
        num / f64::from(wj - wi)
    }
}

impl Weight for f64 {
    const ZERO: Self = 0.0;

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        self + other
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }

    fn recip_table(_total: Self) -> Vec<f64> {
        Vec::new()
    }

    #[inline(always)]
    fn row_table(table: &[f64], _wj: Self) -> &[f64] {
        table
    }

    #[inline(always)]
    fn quotient(num: f64, _table: &[f64], wj: Self, wi: Self) -> f64 {
        num / (wj - wi)
    }

    #[inline(always)]
    fn quotient_div(num: f64, wj: Self, wi: Self) -> f64 {
        num / (wj - wi)
    }
}

/// Element counts of a tensor too large for [`u32`]'s table of reciprocals: building it costs
/// a division and 8 bytes per element (118 MB for a 1280x1280x3x3 weight), more than the DP's
/// divisions it saves, and at that size its look-ups miss the cache. The reciprocal is computed
/// where it is needed instead, as the same IEEE operations as the table's entry (`1 / t`, then
/// a multiply), so every DP value, and therefore the result, is bit for bit the table's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct LargeCount(pub(super) u32);

impl Weight for LargeCount {
    const ZERO: Self = LargeCount(0);

    #[inline(always)]
    fn add(self, other: Self) -> Self {
        LargeCount(self.0 + other.0)
    }

    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self.0)
    }

    fn recip_table(_total: Self) -> Vec<f64> {
        Vec::new()
    }

    #[inline(always)]
    fn row_table(table: &[f64], _wj: Self) -> &[f64] {
        table
    }

    #[inline(always)]
    fn quotient(num: f64, _table: &[f64], wj: Self, wi: Self) -> f64 {
        num * (1.0 / f64::from(wj.0 - wi.0))
    }

    #[inline(always)]
    fn quotient_div(num: f64, wj: Self, wi: Self) -> f64 {
        num / f64::from(wj.0 - wi.0)
    }
}
