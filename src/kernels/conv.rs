//! 2-D convolution on top of `matrixmultiply::sgemm`, in three formulations.
//!
//! Per (batch, group) a convolution is `out[Cout_g, P] = W[Cout_g, K] · col[K, P]` with
//! `K = Cin_g·kh·kw` over the `P = Ho·Wo` output pixels.
//!
//! * 1×1, stride-1, unpadded convs: `col` is the input as laid out; one GEMM per band, no copy.
//! * Other stride-1 convs (all of the TAESD decoder's 3×3s): the "shifted GEMM" of
//!   `shifted_band`, kh·kw accumulating GEMMs over offset views of zero-padded input rows. It
//!   copies each input row ~once instead of kh·kw times and measured 6–25% less CPU time than
//!   im2col on 64-channel 3×3 convs.
//! * Everything else (strided convs): im2col. Materialising all of `col` would be 9× the input,
//!   so output pixels are cut into bands whose slice of `col` is built just before its GEMM.
//!
//! Work is cut into bands (pixel ranges, or output rows on the shifted path) sized to keep the
//! GEMM operands in L2, and the bands are shared out to one scoped thread per core, each thread
//! claiming the next unclaimed band. `sgemm` itself runs single-threaded (matrixmultiply is built
//! without its "threading" feature): its pool hands every GEMM call to a worker over a channel
//! and waits in `sched_yield`, which at ~7000 small GEMMs per 768² shifted conv cost more than
//! the parallel GEMM gained: in an int8 calibrated TAEF2 build ~20% of `perf` samples were in the
//! scheduler, and band threads cut the encoder's evaluation from ~25 s to ~12 s. Claiming
//! bands dynamically rather than dealing them round-robin keeps both cores busy when a
//! neighbouring process takes one of them for a while.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{num_threads, Array, PAR_MIN_ELEMS};

/// Convolution hyper-parameters with PyTorch / Core ML meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub strides: [usize; 2],
    /// Zero padding: top, bottom, left, right.
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    pub groups: usize,
}

/// Target size of one band's im2col buffer. On a 2-core Zen 4 (1 MiB L2) 512 KiB measured best in
/// CPU time per conv (see `bench`); 128 KiB bands cost ~35% more (short GEMMs), 1 MiB ~5% more.
const IM2COL_BAND_BYTES: usize = 512 * 1024;

/// Target size of one band's padded input rows on the shifted path (at least one row).
/// 128–512 KiB measured within 3% of each other, 1 MiB ~5% worse.
const SHIFTED_BAND_BYTES: usize = 256 * 1024;

/// Raw output pointer shared by band workers. Bands write disjoint column ranges of the output,
/// so concurrent writes never alias.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Going through a method makes closures capture the whole `OutPtr` (which is `Sync`)
    /// rather than its raw-pointer field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Geometry of one conv call, after shape checks.
struct Geom {
    cin_g: usize,
    h: usize,
    w: usize,
    cout_g: usize,
    kh: usize,
    kw: usize,
    wo: usize,
    p: Conv2d,
}

impl Geom {
    fn k(&self) -> usize {
        self.cin_g * self.kh * self.kw
    }
}

/// Cross-correlation of `x: [N, Cin, H, W]` with `w: [Cout, Cin/groups, kh, kw]`, plus optional
/// `bias: [Cout]`, zero padding. Output `[N, Cout, Ho, Wo]` with
/// `Ho = (H + pad_t + pad_b - dil_h·(kh-1) - 1) / stride_h + 1` (likewise Wo).
///
/// Panics on contract violations the evaluators check first: ranks other than 4, `groups`,
/// strides or dilations of 0, `Cin != groups·w.shape[1]`, `Cout % groups != 0`,
/// `bias.len() != Cout`, or a dilated kernel larger than the padded input.
pub fn conv2d(x: &Array, w: &Array, bias: Option<&[f32]>, p: &Conv2d) -> Array {
    conv2d_with(x, w, bias, p, Strategy::default())
}

/// How `conv2d` cuts up and spreads its work. `conv2d` uses the default; the others exist to be
/// tested and measured against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Strategy {
    im2col_band_bytes: usize,
    shifted_band_bytes: usize,
    /// Share bands out to one scoped thread per core. Otherwise everything runs on the calling
    /// thread.
    threaded: bool,
    /// Use the shifted-GEMM formulation for stride-1 convs instead of im2col.
    shifted: bool,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy {
            im2col_band_bytes: IM2COL_BAND_BYTES,
            shifted_band_bytes: SHIFTED_BAND_BYTES,
            threaded: true,
            shifted: true,
        }
    }
}

/// Which formulation a conv uses; see the module doc and [`shifted_band`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// 1×1, stride 1, unpadded: the input already is the GEMM's B.
    Direct,
    /// Stride 1: nine (kh·kw) GEMMs over shifted views of zero-padded input rows.
    Shifted,
    Im2col,
}

fn conv2d_with(
    x: &Array,
    w: &Array,
    bias: Option<&[f32]>,
    p: &Conv2d,
    strategy: Strategy,
) -> Array {
    assert_eq!(
        x.shape.len(),
        4,
        "conv2d: input rank {} != 4",
        x.shape.len()
    );
    assert_eq!(
        w.shape.len(),
        4,
        "conv2d: weight rank {} != 4",
        w.shape.len()
    );
    let [n, cin, h, wd] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    let [cout, cin_g, kh, kw] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
    let g = p.groups;
    assert!(
        g >= 1 && cin == cin_g * g && cout % g == 0,
        "conv2d: channels {cin}->{cout} with {g} groups and weight {:?}",
        w.shape
    );
    assert!(
        p.strides.iter().chain(&p.dilations).all(|&s| s >= 1),
        "conv2d: zero stride or dilation in {p:?}"
    );
    assert!(kh >= 1 && kw >= 1, "conv2d: empty kernel {:?}", w.shape);
    let ekh = p.dilations[0] * (kh - 1) + 1;
    let ekw = p.dilations[1] * (kw - 1) + 1;
    let (ph, pw) = (h + p.pads[0] + p.pads[1], wd + p.pads[2] + p.pads[3]);
    assert!(
        ph >= ekh && pw >= ekw,
        "conv2d: kernel {ekh}x{ekw} larger than padded input {ph}x{pw}"
    );
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            cout,
            "conv2d: bias length {} != Cout {cout}",
            b.len()
        );
    }
    let ho = (ph - ekh) / p.strides[0] + 1;
    let wo = (pw - ekw) / p.strides[1] + 1;
    let geom = Geom {
        cin_g,
        h,
        w: wd,
        cout_g: cout / g,
        kh,
        kw,
        wo,
        p: p.clone(),
    };
    let k = geom.k();
    let npix = ho * wo;
    let out_len = n * cout * npix;
    let mut out = vec![0.0f32; out_len];

    let path = if kh == 1 && kw == 1 && p.strides == [1, 1] && p.pads == [0; 4] {
        Path::Direct
    } else if strategy.shifted && p.strides == [1, 1] {
        Path::Shifted
    } else {
        Path::Im2col
    };
    // Bands are output pixel ranges, except for Shifted where they are whole output rows.
    let (band, extent) = if path == Path::Shifted {
        let row_bytes = (4 * cin_g * pw).max(1);
        ((strategy.shifted_band_bytes / row_bytes).max(1).min(ho), ho)
    } else {
        // Whole multiples of 64 pixels keep bands aligned to the GEMM kernel's column blocks.
        (
            (strategy.im2col_band_bytes / (4 * k).max(1))
                .max(64)
                .next_multiple_of(64)
                .min(npix.max(1)),
            npix,
        )
    };

    // Bands of different images and groups are independent, so they all go into one task list
    // and a conv with many small groups still spreads over every core.
    let mut tasks = Vec::new();
    for ni in 0..n {
        for gi in 0..g {
            for b0 in (0..extent).step_by(band) {
                tasks.push((ni, gi, b0));
            }
        }
    }
    let outp = OutPtr(out.as_mut_ptr());
    let run = |task_ids: &mut dyn Iterator<Item = usize>| {
        let mut buf = Vec::new();
        let mut cbuf = Vec::new();
        for t in task_ids {
            let (ni, gi, b0) = tasks[t];
            let b1 = (b0 + band).min(extent);
            let xg = &x.data[(ni * cin + gi * cin_g) * h * wd..][..cin_g * h * wd];
            let wg = &w.data[gi * geom.cout_g * k..][..geom.cout_g * k];
            let bias_g = bias.map(|b| &b[gi * geom.cout_g..][..geom.cout_g]);
            // This task owns output channels oc0..oc0+cout_g of its band (see OutPtr).
            let oc0 = ni * cout + gi * geom.cout_g;
            match path {
                Path::Shifted => {
                    let c = outp.at(oc0 * npix + b0 * wo);
                    shifted_band(&geom, xg, wg, bias_g, b0, b1, &mut buf, &mut cbuf, c, npix);
                }
                Path::Direct | Path::Im2col => {
                    let c = outp.at(oc0 * npix + b0);
                    let (b, rsb) = if path == Path::Direct {
                        (xg[b0..].as_ptr(), h * wd)
                    } else {
                        buf.resize(k * (b1 - b0), 0.0);
                        im2col(&geom, xg, b0, b1, &mut buf);
                        (buf.as_ptr(), b1 - b0)
                    };
                    // SAFETY: A is cout_g×K in `wg`, B is K×(b1-b0) with row stride rsb
                    // inside `xg` or `buf`, C is cout_g×(b1-b0) with row stride npix inside
                    // `out`; all in bounds.
                    unsafe {
                        sgemm(
                            geom.cout_g,
                            k,
                            b1 - b0,
                            wg.as_ptr(),
                            k,
                            1,
                            b,
                            rsb,
                            c,
                            npix,
                            false,
                        )
                    };
                    if let Some(bias_g) = bias_g {
                        for (co, &bv) in bias_g.iter().enumerate() {
                            // SAFETY: the band-owned region the GEMM above just wrote.
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(c.add(co * npix), b1 - b0)
                            };
                            for v in row {
                                *v += bv;
                            }
                        }
                    }
                }
            }
        }
    };
    // A thread spawn costs ~10-50µs; convs with little output stay on the calling thread.
    let threads = if strategy.threaded {
        num_threads()
            .min(tasks.len())
            .min(out_len / PAR_MIN_ELEMS)
            .max(1)
    } else {
        1
    };
    let ntasks = tasks.len();
    if threads <= 1 {
        run(&mut (0..ntasks));
    } else {
        let next = AtomicUsize::new(0);
        let claim = || {
            std::iter::from_fn(|| {
                let t = next.fetch_add(1, Ordering::Relaxed);
                (t < ntasks).then_some(t)
            })
        };
        std::thread::scope(|s| {
            let (run, claim) = (&run, &claim);
            for _ in 1..threads {
                s.spawn(move || run(&mut claim()));
            }
            run(&mut claim());
        });
    }
    Array {
        shape: vec![n, cout, ho, wo],
        data: out,
    }
}

/// `C[m×n] (+)= A[m×k]·B[k×n]` for row-major-ish operands: A with strides (rsa, csa), B with row
/// stride rsb, C with row stride rsc. `accumulate` adds to C instead of overwriting it.
///
/// # Safety
/// The pointers must cover the strided extents and C must not alias A or B.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    rsa: usize,
    csa: usize,
    b: *const f32,
    rsb: usize,
    c: *mut f32,
    rsc: usize,
    accumulate: bool,
) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    matrixmultiply::sgemm(
        m,
        k,
        n,
        1.0,
        a,
        rsa as isize,
        csa as isize,
        b,
        rsb as isize,
        1,
        beta,
        c,
        rsc as isize,
        1,
    )
}

/// Stride-1 conv of output rows `r0..r1` without im2col.
///
/// The band's input rows are copied once into `buf` with their zero padding, as planes of
/// `rin × pw` (padded width). In that layout, output pixel `(r, ox)` at flat position
/// `q = r·pw + ox` sees tap `(ky, kx)` at `buf[ci, q + ky·dh·pw + kx·dw]`: for every tap, B is
/// the same matrix shifted by a constant. So the conv is kh·kw accumulating GEMMs with K = Cin_g
/// that read `buf` in place. Columns with `ox >= wo` are the (pw - wo) wrap-around columns per
/// row; they are computed into `cbuf` and dropped when copying to `out`.
#[allow(clippy::too_many_arguments)]
fn shifted_band(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    r0: usize,
    r1: usize,
    buf: &mut Vec<f32>,
    cbuf: &mut Vec<f32>,
    out: *mut f32,
    npix: usize,
) {
    let [dh, dw] = g.p.dilations;
    let [pt, _, pl, _] = g.p.pads;
    let pw = g.w + g.p.pads[2] + g.p.pads[3];
    let rows = r1 - r0;
    let rin = rows + (g.kh - 1) * dh;
    buf.clear();
    buf.resize(g.cin_g * rin * pw, 0.0);
    for ci in 0..g.cin_g {
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        for j in 0..rin {
            let iy = (r0 + j) as isize - pt as isize;
            if (0..g.h as isize).contains(&iy) {
                let dst = &mut buf[(ci * rin + j) * pw + pl..][..g.w];
                dst.copy_from_slice(&plane[iy as usize * g.w..][..g.w]);
            }
        }
    }
    // Trailing wrap-around columns of the last row are never needed, and dropping them keeps
    // the furthest tap read exactly at the end of `buf`.
    let n = (rows - 1) * pw + g.wo;
    cbuf.clear();
    cbuf.resize(g.cout_g * n, 0.0);
    let k = g.k();
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let shift = ky * dh * pw + kx * dw;
            debug_assert!((g.cin_g - 1) * rin * pw + shift + n <= buf.len());
            // SAFETY: A is w[:, :, ky, kx] (strides K, kh·kw) inside `w`; B rows are the
            // cin_g planes of `buf` offset by `shift`, the last element read is at most
            // buf.len()-1 (checked above); C is `cbuf`, cout_g × n.
            unsafe {
                sgemm(
                    g.cout_g,
                    g.cin_g,
                    n,
                    w.as_ptr().add(ky * g.kw + kx),
                    k,
                    g.kh * g.kw,
                    buf.as_ptr().add(shift),
                    rin * pw,
                    cbuf.as_mut_ptr(),
                    n,
                    ky + kx > 0,
                )
            };
        }
    }
    for co in 0..g.cout_g {
        let bv = bias.map_or(0.0, |b| b[co]);
        for r in 0..rows {
            // SAFETY: row `co` of this task's channels, output rows r0..r1: owned by this task.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.add(co * npix + r * g.wo), g.wo) };
            for (d, &s) in dst.iter_mut().zip(&cbuf[co * n + r * pw..][..g.wo]) {
                *d = s + bv;
            }
        }
    }
}

/// Builds `col[K, p1-p0]` for output pixels `p0..p1` of one (batch, group): row
/// `(ci·kh + ky)·kw + kx` holds the input sample each output pixel sees through that tap,
/// or 0 in the padding.
fn im2col(g: &Geom, x: &[f32], p0: usize, p1: usize, col: &mut [f32]) {
    let nb = p1 - p0;
    let [sh, sw] = g.p.strides;
    let [dh, dw] = g.p.dilations;
    let (pt, pl) = (g.p.pads[0] as isize, g.p.pads[2] as isize);
    let (h, w) = (g.h as isize, g.w as isize);
    let mut rows = col.chunks_exact_mut(nb);
    for ci in 0..g.cin_g {
        let plane = &x[ci * g.h * g.w..][..g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let row = rows.next().unwrap();
                // Input column of output column ox is ox·sw + xoff.
                let xoff = (kx * dw) as isize - pl;
                let mut j = 0;
                let mut pix = p0;
                while pix < p1 {
                    let (oy, ox0) = (pix / g.wo, pix % g.wo);
                    let seg = (g.wo - ox0).min(p1 - pix);
                    let out = &mut row[j..j + seg];
                    let iy = (oy * sh + ky * dh) as isize - pt;
                    if iy < 0 || iy >= h {
                        out.fill(0.0);
                    } else {
                        let src = &plane[iy as usize * g.w..][..g.w];
                        // Valid t (offset within segment): 0 <= (ox0+t)·sw + xoff < w.
                        let sw_i = sw as isize;
                        let first_ox = (-xoff).max(0).div_ceil_pos(sw_i);
                        let end_ox = (w - xoff).max(0).div_ceil_pos(sw_i);
                        let lo = (first_ox - ox0 as isize).clamp(0, seg as isize) as usize;
                        let hi = (end_ox - ox0 as isize).clamp(lo as isize, seg as isize) as usize;
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        if hi > lo {
                            let ix0 = ((ox0 + lo) * sw) as isize + xoff;
                            let ix0 = ix0 as usize;
                            if sw == 1 {
                                out[lo..hi].copy_from_slice(&src[ix0..ix0 + (hi - lo)]);
                            } else {
                                for (t, o) in out[lo..hi].iter_mut().enumerate() {
                                    *o = src[ix0 + t * sw];
                                }
                            }
                        }
                    }
                    j += seg;
                    pix += seg;
                }
            }
        }
    }
}

trait DivCeilPos {
    fn div_ceil_pos(self, d: isize) -> isize;
}

impl DivCeilPos for isize {
    /// Ceiling division for non-negative `self` and positive `d`.
    fn div_ceil_pos(self, d: isize) -> isize {
        (self + d - 1) / d
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::Lcg;
    use super::*;

    /// Textbook seven-loop convolution, accumulating in f64.
    fn naive(x: &Array, w: &Array, bias: Option<&[f32]>, p: &Conv2d) -> Array {
        let [n, cin, h, wd] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let [cout, cin_g, kh, kw] = [w.shape[0], w.shape[1], w.shape[2], w.shape[3]];
        let cout_g = cout / p.groups;
        let ho = (h + p.pads[0] + p.pads[1] - p.dilations[0] * (kh - 1) - 1) / p.strides[0] + 1;
        let wo = (wd + p.pads[2] + p.pads[3] - p.dilations[1] * (kw - 1) - 1) / p.strides[1] + 1;
        let mut out = Array::zeros(vec![n, cout, ho, wo]);
        for ni in 0..n {
            for co in 0..cout {
                let gi = co / cout_g;
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bias.map_or(0.0, |b| b[co] as f64);
                        for cig in 0..cin_g {
                            let ci = gi * cin_g + cig;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * p.strides[0] + ky * p.dilations[0]) as isize
                                        - p.pads[0] as isize;
                                    let ix = (ox * p.strides[1] + kx * p.dilations[1]) as isize
                                        - p.pads[2] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x.data
                                        [((ni * cin + ci) * h + iy as usize) * wd + ix as usize];
                                    let wv = w.data[((co * cin_g + cig) * kh + ky) * kw + kx];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        out.data[((ni * cout + co) * ho + oy) * wo + ox] = acc as f32;
                    }
                }
            }
        }
        out
    }

    struct Case {
        x: [usize; 4],
        cout: usize,
        k: [usize; 2],
        p: Conv2d,
        bias: bool,
    }

    fn conv(strides: [usize; 2], pads: [usize; 4], dilations: [usize; 2], groups: usize) -> Conv2d {
        Conv2d {
            strides,
            pads,
            dilations,
            groups,
        }
    }

    fn check(case: &Case, seed: u64, strategies: &[Strategy]) {
        let mut rng = Lcg(seed);
        let cin_g = case.x[1] / case.p.groups;
        let x = Array::new(case.x.to_vec(), rng.vec(case.x.iter().product()));
        let wshape = vec![case.cout, cin_g, case.k[0], case.k[1]];
        let w = Array::new(wshape.clone(), rng.vec(wshape.iter().product()));
        let b = rng.vec(case.cout);
        let bias = case.bias.then_some(&b[..]);
        let want = naive(&x, &w, bias, &case.p);
        // Relative to the output's magnitude: f32 sums of K products carry ~K·ε error.
        let scale = want.data.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let tol = 1e-4 * scale;
        for &s in strategies {
            let got = conv2d_with(&x, &w, bias, &case.p, s);
            assert_eq!(got.shape, want.shape, "{:?} {:?}", case.x, case.p);
            let diff = got
                .data
                .iter()
                .zip(&want.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                diff < tol,
                "diff {diff} (tol {tol}) for x {:?} cout {} k {:?} {:?} {s:?}",
                case.x,
                case.cout,
                case.k,
                case.p
            );
        }
    }

    /// Every formulation and threading mode, with default and tiny bands (many bands per
    /// image, pixel bands ending mid-row, single-row shifted bands).
    const ALL: [Strategy; 8] = {
        let default = Strategy {
            im2col_band_bytes: IM2COL_BAND_BYTES,
            shifted_band_bytes: SHIFTED_BAND_BYTES,
            threaded: false,
            shifted: false,
        };
        let mut all = [default; 8];
        let mut i = 0;
        while i < 8 {
            if i & 1 == 1 {
                all[i].im2col_band_bytes = 1;
                all[i].shifted_band_bytes = 1;
            }
            all[i].threaded = i & 2 != 0;
            all[i].shifted = i & 4 != 0;
            i += 1;
        }
        all
    };

    #[test]
    fn matches_naive_on_fixed_cases() {
        let cases = [
            // TAESD shapes in miniature: 3x3 same-padding, 1x1 expand/contract.
            Case {
                x: [1, 8, 9, 7],
                cout: 8,
                k: [3, 3],
                p: conv([1, 1], [1, 1, 1, 1], [1, 1], 1),
                bias: true,
            },
            Case {
                x: [1, 8, 9, 7],
                cout: 16,
                k: [1, 1],
                p: conv([1, 1], [0; 4], [1, 1], 1),
                bias: true,
            },
            Case {
                x: [2, 16, 5, 6],
                cout: 4,
                k: [1, 1],
                p: conv([1, 1], [0; 4], [1, 1], 1),
                bias: false,
            },
            // Unpadded, asymmetric padding, non-square kernels.
            Case {
                x: [1, 3, 8, 10],
                cout: 5,
                k: [3, 3],
                p: conv([1, 1], [0; 4], [1, 1], 1),
                bias: false,
            },
            Case {
                x: [1, 3, 8, 10],
                cout: 5,
                k: [2, 3],
                p: conv([1, 1], [0, 2, 1, 0], [1, 1], 1),
                bias: true,
            },
            Case {
                x: [2, 4, 11, 6],
                cout: 6,
                k: [3, 1],
                p: conv([1, 1], [2, 1, 0, 3], [1, 1], 1),
                bias: true,
            },
            // Stride 2, including with odd sizes and a 1x1 kernel (not the direct path).
            Case {
                x: [1, 4, 9, 11],
                cout: 6,
                k: [3, 3],
                p: conv([2, 2], [1, 1, 1, 1], [1, 1], 1),
                bias: true,
            },
            Case {
                x: [1, 4, 8, 8],
                cout: 3,
                k: [1, 1],
                p: conv([2, 2], [0; 4], [1, 1], 1),
                bias: true,
            },
            Case {
                x: [1, 4, 10, 9],
                cout: 3,
                k: [3, 3],
                p: conv([2, 1], [0, 1, 2, 0], [1, 1], 1),
                bias: false,
            },
            // 1x1 with padding: not the direct path either.
            Case {
                x: [1, 4, 5, 5],
                cout: 3,
                k: [1, 1],
                p: conv([1, 1], [1, 0, 0, 2], [1, 1], 1),
                bias: true,
            },
            // Dilation 2.
            Case {
                x: [1, 3, 12, 10],
                cout: 4,
                k: [3, 3],
                p: conv([1, 1], [2, 2, 2, 2], [2, 2], 1),
                bias: true,
            },
            Case {
                x: [1, 3, 12, 10],
                cout: 4,
                k: [3, 3],
                p: conv([2, 2], [1, 0, 3, 1], [2, 1], 1),
                bias: false,
            },
            // Groups 2 and depthwise (groups = C).
            Case {
                x: [2, 6, 7, 8],
                cout: 4,
                k: [3, 3],
                p: conv([1, 1], [1, 1, 1, 1], [1, 1], 2),
                bias: true,
            },
            Case {
                x: [1, 4, 7, 8],
                cout: 4,
                k: [1, 1],
                p: conv([1, 1], [0; 4], [1, 1], 2),
                bias: true,
            },
            Case {
                x: [1, 5, 7, 6],
                cout: 5,
                k: [3, 3],
                p: conv([1, 1], [1, 1, 1, 1], [1, 1], 5),
                bias: true,
            },
            Case {
                x: [1, 4, 9, 9],
                cout: 8,
                k: [3, 3],
                p: conv([2, 2], [1, 1, 1, 1], [2, 2], 4),
                bias: false,
            },
            // Kernel exactly covering the padded input: a single output pixel.
            Case {
                x: [1, 2, 3, 3],
                cout: 2,
                k: [3, 3],
                p: conv([1, 1], [0; 4], [1, 1], 1),
                bias: true,
            },
            Case {
                x: [1, 2, 1, 1],
                cout: 3,
                k: [3, 3],
                p: conv([1, 1], [1, 1, 1, 1], [1, 1], 1),
                bias: true,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            check(c, i as u64 + 1, &ALL);
        }
    }

    #[test]
    fn matches_naive_on_random_cases() {
        let mut rng = Lcg(99);
        for seed in 0..60 {
            let groups = [1, 1, 2, 3][rng.below(4)];
            let cin = groups * (1 + rng.below(4));
            let cout = groups * (1 + rng.below(4));
            let k = [1 + rng.below(3), 1 + rng.below(3)];
            let dil = [1 + rng.below(2), 1 + rng.below(2)];
            let p = conv(
                [1 + rng.below(2), 1 + rng.below(2)],
                [rng.below(3), rng.below(3), rng.below(3), rng.below(3)],
                dil,
                groups,
            );
            let eh = dil[0] * (k[0] - 1) + 1;
            let ew = dil[1] * (k[1] - 1) + 1;
            let x = [
                1 + rng.below(2),
                cin,
                eh + rng.below(10),
                ew + rng.below(10),
            ];
            check(
                &Case {
                    x,
                    cout,
                    k,
                    p,
                    bias: rng.below(2) == 0,
                },
                1000 + seed,
                &ALL,
            );
        }
    }

    #[test]
    fn large_enough_to_band_and_thread() {
        // Several default-size bands per image (K = 288 → ~450-pixel bands) and two images;
        // outputs above PAR_MIN_ELEMS, so the bands run on several threads.
        let c = Case {
            x: [2, 32, 40, 37],
            cout: 32,
            k: [3, 3],
            p: conv([1, 1], [1, 1, 1, 1], [1, 1], 1),
            bias: true,
        };
        check(&c, 5, &[Strategy::default()]);
        let c = Case {
            x: [1, 32, 40, 37],
            cout: 64,
            k: [1, 1],
            p: conv([1, 1], [0; 4], [1, 1], 1),
            bias: true,
        };
        check(&c, 6, &[Strategy::default()]);
    }

    #[test]
    fn degenerate_channel_counts() {
        // No input channels: the output is the bias alone. No output channels: empty output.
        let p = conv([1, 1], [1, 1, 1, 1], [1, 1], 1);
        for s in ALL {
            let out = conv2d_with(
                &Array::zeros(vec![1, 0, 3, 4]),
                &Array::zeros(vec![2, 0, 3, 3]),
                Some(&[1.0, 2.0]),
                &p,
                s,
            );
            assert_eq!(out.shape, vec![1, 2, 3, 4]);
            assert_eq!(out.data, [[1.0; 12], [2.0; 12]].concat());
            let out = conv2d_with(
                &Array::zeros(vec![1, 3, 3, 4]),
                &Array::zeros(vec![0, 3, 3, 3]),
                None,
                &p,
                s,
            );
            assert_eq!(out.shape, vec![1, 0, 3, 4]);
        }
    }

    #[test]
    #[should_panic]
    fn rejects_channel_mismatch() {
        let x = Array::zeros(vec![1, 4, 3, 3]);
        let w = Array::zeros(vec![2, 3, 1, 1]);
        conv2d(&x, &w, None, &conv([1, 1], [0; 4], [1, 1], 1));
    }

    /// User + system CPU seconds of this process (Linux; 0 elsewhere). On a loaded machine wall
    /// time mostly measures the neighbours; CPU time still measures the work done.
    fn cpu_time() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// (wall, cpu) seconds of one call.
    fn time_conv(x: &Array, w: &Array, p: &Conv2d, s: Strategy) -> (f64, f64) {
        let b = vec![0.5; w.shape[0]];
        let (t, c) = (std::time::Instant::now(), cpu_time());
        std::hint::black_box(conv2d_with(x, w, Some(&b), p, s));
        (t.elapsed().as_secs_f64(), cpu_time() - c)
    }

    /// Best-of-`rounds` time per strategy, rounds interleaved so that load from other processes
    /// on a shared machine hits every strategy alike.
    fn compare(
        name: &str,
        x: &Array,
        w: &Array,
        p: &Conv2d,
        strategies: &[Strategy],
        rounds: usize,
    ) {
        let k = w.shape[1] * w.shape[2] * w.shape[3];
        let out = conv2d(x, w, None, p);
        let flops = 2.0 * (k * out.len()) as f64;
        let mut best = vec![f64::INFINITY; strategies.len()];
        let mut all = vec![Vec::new(); strategies.len()];
        let mut cpu = vec![0.0; strategies.len()];
        for _ in 0..rounds {
            for (i, &s) in strategies.iter().enumerate() {
                let (t, c) = time_conv(x, w, p, s);
                best[i] = best[i].min(t);
                all[i].push(t);
                cpu[i] += c;
            }
        }
        for (i, s) in strategies.iter().enumerate() {
            all[i].sort_by(f64::total_cmp);
            let med = all[i][all[i].len() / 2];
            println!(
                "{name} {s:?}: best {:.1} ms ({:.1} GFLOP/s), median {:.1} ms, cpu {:.1} ms/call",
                best[i] * 1e3,
                flops / best[i] / 1e9,
                med * 1e3,
                cpu[i] / rounds as f64 * 1e3
            );
        }
    }

    /// `cargo test --release --lib kernels::conv::tests::bench -- --ignored --nocapture`
    ///
    /// Env knobs: `MLC_BENCH_MODES` (comma list; i = im2col, s = shifted, upper case = band-level
    /// threads; default "i,s,S"), `MLC_BENCH_BANDS` (KiB list overriding both band sizes),
    /// `MLC_BENCH_ROUNDS`, `MLC_BENCH_ONLY_3X3`.
    #[test]
    #[ignore]
    fn bench() {
        let mut rng = Lcg(1);
        let same = conv([1, 1], [1, 1, 1, 1], [1, 1], 1);
        let one = conv([1, 1], [0; 4], [1, 1], 1);
        let x = Array::new(vec![1, 64, 256, 256], rng.vec(64 * 256 * 256));
        let w3 = Array::new(vec![64, 64, 3, 3], rng.vec(64 * 64 * 9));
        let modes = std::env::var("MLC_BENCH_MODES").unwrap_or("i,s,S".into());
        let bands: Vec<Option<usize>> = match std::env::var("MLC_BENCH_BANDS") {
            Ok(b) => b
                .split(',')
                .map(|kb| Some(kb.parse::<usize>().unwrap() << 10))
                .collect(),
            Err(_) => vec![None],
        };
        let mut strategies = Vec::new();
        for band in bands {
            for m in modes.split(',') {
                let mut s = Strategy {
                    threaded: m.chars().all(char::is_uppercase),
                    shifted: m.eq_ignore_ascii_case("s"),
                    ..Strategy::default()
                };
                if let Some(b) = band {
                    (s.im2col_band_bytes, s.shifted_band_bytes) = (b, b);
                }
                strategies.push(s);
            }
        }
        let rounds = std::env::var("MLC_BENCH_ROUNDS").map_or(7, |r| r.parse().unwrap());
        compare("3x3 64->64 256^2", &x, &w3, &same, &strategies, rounds);
        if std::env::var("MLC_BENCH_ONLY_3X3").is_ok() {
            return;
        }
        let direct = [
            Strategy {
                threaded: false,
                ..Strategy::default()
            },
            Strategy::default(),
        ];
        let w1 = Array::new(vec![256, 64, 1, 1], rng.vec(256 * 64));
        compare("1x1 64->256 256^2", &x, &w1, &one, &direct, rounds);
        let x256 = Array::new(vec![1, 256, 256, 256], rng.vec(256 * 256 * 256));
        let w1b = Array::new(vec![64, 256, 1, 1], rng.vec(256 * 64));
        compare("1x1 256->64 256^2", &x256, &w1b, &one, &direct, rounds);
        let xl = Array::new(vec![1, 64, 768, 768], rng.vec(64 * 768 * 768));
        let big = [
            Strategy {
                shifted: false,
                ..Strategy::default()
            },
            Strategy::default(),
        ];
        compare("3x3 64->64 768^2", &xl, &w3, &same, &big, 3);
    }
}
