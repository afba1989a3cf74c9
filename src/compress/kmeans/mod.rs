//! Exact, deterministic 1-D k-means for palettization, in memory linear in the tensor size.
//!
//! # Problem
//!
//! Given the values of a tensor, find at most `k` centroids minimising the total squared error
//! when every value is replaced by a centroid. In one dimension every optimal clustering is a
//! partition of the *sorted* values into contiguous runs, each represented by its mean. Equal
//! values always share a cluster, so the dynamic programme runs over the `n` sorted **unique**
//! values weighted by their counts (fp16-exact weights have far fewer unique values than
//! elements):
//!
//! `D[m][j] = min_{i<j} D[m-1][i] + cost(i, j)`, where `D[m][j]` is the least error of splitting
//! the first `j` unique values into `m` clusters and `cost(i, j)` is the weighted squared error of
//! unique values `i..j` around their weighted mean. Prefix sums of `w`, `w·x` and `w·x²` (in
//! f64) make `cost` O(1). The cost is Monge (it satisfies the quadrangle inequality), so the
//! optimal split `opt[m][j]` is non-decreasing in `j` and in `m` (Knuth/Yao).
//!
//! The data-aware variant ([`kmeans_1d_weighted`]) minimises `sum_e h_e (x_e - c(e))²` with a
//! real weight `h_e >= 0` per element (for palettization, the second moment of the input channel
//! the weight multiplies). All of the above still holds with each unique value weighted by the
//! sum of its elements' `h_e` instead of their count, so the same solver is exact there too; the
//! weight type is a parameter of the solver (module `weight`). Unique values of (near) zero
//! total weight are raised to a tiny floor (`WEIGHT_FLOOR`), which keeps every cluster's mean
//! defined.
//!
//! # Time
//!
//! First a Lagrangian search (module `lagrange`): with a penalty per cluster instead of a
//! cluster count the DP has one layer, solved in O(n log n) (candidate deque, binary search for
//! the crossovers), and a few penalties (about 3 for k = 16, 8 for k = 256 on the TAEF2
//! weights) find one whose optimum has exactly `k` clusters, which is then an optimal
//! `k`-clustering. At a breakpoint of the error curve (several cluster counts tie for the
//! penalty; common for equally spaced values, never seen on real weights) it gives up and the
//! constrained DP below runs instead.
//!
//! Each layer `m` is a row-minima problem over a totally monotone matrix. Two solvers, chosen per
//! layer by an estimate of their work:
//!
//! * divide and conquer over `j` (each row's search window is bounded by the optima of already
//!   solved rows on both sides and, from below, by `opt[m-1][j]`): O(n log n) per layer;
//! * Knuth's bound `opt[m-1][j] <= opt[m][j] <= opt[m][j+1]`, rows visited right to left: the
//!   window shrinks like `j / m²`; on the TAEF2 weights the layers past ~40 of an 8-bit palette
//!   cost 2–4 evaluations per cell, against 8–14 for divide and conquer.
//!
//! With counts, cluster weights are integers up to the element count, so `1 / w` comes from a
//! table of reciprocals (O(N) for N elements) and the hot loop has no division (for tensors of
//! more than 2^18 elements the same reciprocal is computed in place: the table would cost more
//! than it saves); with real
//! weights it divides (no table). Both are monomorphised instances of one generic solver, so the
//! count path compiles as if written for counts alone. Short scans select the minimum without
//! branches; long ones branch (well predicted there).
//!
//! # Memory: O(n), no `k × n` table
//!
//! The textbook solution keeps `opt[m][j]` for all `m, j` to walk the boundaries back: `k × n`
//! words (the reference tool's exact k-means needs O(k·n) memory and fails on large models).
//! Here a forward pass keeps only two DP rows. Besides `D` and `opt` every row carries, for at
//! most [`CHECKPOINTS`] chosen layers `t`, the position where the optimal path to `(m, j)`
//! crosses from cluster `t` to `t+1` (copied from the row it extends, so O(1) per cell). One
//! forward pass therefore yields up to `CHECKPOINTS` boundaries of the optimum; the segments
//! between them are independent subproblems with fewer clusters and fewer values, solved the same
//! way (a Hirschberg-style recursion on `k`, with fan-out `CHECKPOINTS + 1` instead of 2). When
//! a subproblem has at most `CHECKPOINTS + 1` clusters the single pass yields all its
//! boundaries. Total work is the top-level pass times `1 + 1/(C+1) + 1/(C+1)² + … < 1.15`.
//!
//! Live allocations at any time: the sort buffer, the reciprocal table (counts only) and the
//! output (O(N) for N elements), the unique values and prefix sums (O(n)), and the scratch rows (five words plus
//! two `[u32; CHECKPOINTS]` per unique value), all independent of `k`. Recursion depth is
//! `log_{C+1} k`, with one boundary list of at most `k` entries per level. Nothing anywhere is
//! indexed by both a layer and a position: the only per-layer state is the current and previous
//! row.
//!
//! # Determinism
//!
//! Sorting is a radix sort on the bit patterns, every search takes the leftmost minimum, the
//! floating-point operations are plain IEEE (no FMA contraction, no reassociation), and the
//! parallel batch functions only distribute whole, independent tensors: the output is a function
//! of the input bits alone.
//!
//! # Files
//!
//! `unweighted` and `weighted` are the two entry points (values to unique values, unique
//! clusters back to indices), `fp16` the one for fp16 tensors with fp16 tables (a count per bit
//! pattern, the table rounded and every pattern's nearest entry found once), `batch` runs many tensors or channel groups over the cores, `dp`
//! is the solver over unique values (with `lagrange` and `weight`), `keys` sorts floats by
//! integer keys, `palette` is the result.

mod batch;
mod dp;
mod fp16;
mod keys;
mod lagrange;
mod palette;
#[cfg(test)]
mod tests;
mod unweighted;
mod weight;
mod weighted;

pub use batch::{
    kmeans_1d_batch, kmeans_1d_weighted_batch, palettize_grouped, palettize_grouped_weighted,
};
pub use fp16::{palettize_f16, try_palettize_f16};
pub(crate) use palette::nearest;
pub use palette::Palette;
pub use unweighted::kmeans_1d;
pub use weighted::kmeans_1d_weighted;

/// Boundaries recorded per forward pass. More means less recursion (the recursion adds at most
/// `1/CHECKPOINTS` to the top-level pass) but a bigger copy per DP cell; at 7 the copy is one
/// 28-byte move and the recursion overhead is about 14%.
pub const CHECKPOINTS: usize = 7;
