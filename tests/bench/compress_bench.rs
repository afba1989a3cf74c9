//! Times palettization of the TAEF2 decoder's conv weights (>= 2048 elements), as `mlc build`
//! would run it: `cargo run --release --example compress_bench [weights.safetensors] [runs] [k]`.
//! Prints the median and minimum over the runs; the machine is shared, so look at the median.
//!
//! `cargo run --release --example compress_bench unet [bits] [group]` times the palettize pass
//! on a synthetic SD 1.5 UNet instead (see [`unet`]).

use std::time::Instant;

use half::f16;
use mlc::compress::{
    kmeans_1d, kmeans_1d_batch, palettize_f16, palettize_grouped, quantize_per_channel_i8, Palette,
    ScaleType,
};
use mlc::ir::{ConstData, Graph, Op};
use mlc::passes::palettize::Palettize;
use mlc::passes::Pass;
use mlc::tensor::{Tensor, TensorData};

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("unet") {
        args.next();
        return unet(args);
    }
    let path = args.next().unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/weights/taef2_decoder.safetensors"
        )
        .into()
    });
    let runs: usize = args.next().map_or(15, |r| r.parse().expect("runs"));
    let bytes = std::fs::read(&path).expect("weights file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let tensors: Vec<(Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .filter(|(_, t)| t.shape().len() == 4 && t.shape().iter().product::<usize>() >= 2048)
        .map(|(_, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            (t.shape().to_vec(), v.collect())
        })
        .collect();
    let slices: Vec<&[f32]> = tensors.iter().map(|(_, v)| v.as_slice()).collect();
    println!(
        "{} tensors, {} elements, {} threads",
        slices.len(),
        slices.iter().map(|s| s.len()).sum::<usize>(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let time = |label: &str, f: &dyn Fn()| {
        let cpu0 = process_cpu_ms();
        let mut ms: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        let cpu = (process_cpu_ms() - cpu0) / runs as f64;
        ms.sort_by(f64::total_cmp);
        println!(
            "{label:<34} median {:8.2} ms   min {:8.2} ms   CPU/run {cpu:8.1} ms",
            ms[ms.len() / 2],
            ms[0]
        );
    };
    // Optional third argument: only this k (to measure CPU time of one setting with perf stat).
    let only: Option<usize> = args.next().map(|k| k.parse().expect("k"));
    for k in [16usize, 256]
        .into_iter()
        .filter(|&k| only.is_none_or(|o| o == k))
    {
        time(&format!("k={k} batch (all cores)"), &|| {
            std::hint::black_box(kmeans_1d_batch(&slices, k));
        });
        time(&format!("k={k} sequential (1 core)"), &|| {
            for s in &slices {
                std::hint::black_box(kmeans_1d(s, k));
            }
        });
    }
    time("int8 per-channel (1 core)", &|| {
        for (shape, v) in &tensors {
            std::hint::black_box(quantize_per_channel_i8(v, shape, ScaleType::F32));
        }
    });
}

/// User + system CPU time of the whole process so far (all threads), from `/proc/self/stat`
/// (clock ticks, assumed 100 per second; 10 ms resolution, so use enough runs). NaN elsewhere.
fn process_cpu_ms() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) * 10.0
}

/// `compress_bench unet [bits] [group]`: palettization of a synthetic SD 1.5 UNet (its real
/// weight shapes, values gaussian like trained weights and rounded to fp16) as `mlc build
/// --palettize BITS [--granularity per-grouped-channel=GROUP]` runs it, against the f32 path the
/// pass took before fp16 weights were counted by bit pattern (f32 copies, k-means, the fp16
/// rounding of each table element by element on one thread; the k-means itself is today's, so
/// on main's code the f32 path is slower still): first three sample tensors step by step (CPU
/// time of the calling thread), then the whole UNet both ways, checking that both give the same
/// tables and indices.
fn unet(mut args: impl Iterator<Item = String>) {
    let bits: u32 = args.next().map_or(4, |b| b.parse().expect("bits"));
    let group_size: Option<usize> = args.next().map(|g| g.parse().expect("group size"));
    let k = 1usize << bits;
    println!(
        "{bits}-bit, {}, {} threads",
        group_size.map_or("per tensor".to_string(), |g| format!(
            "groups of {g} channels"
        )),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for shape in [
        vec![1280, 1280, 3, 3],
        vec![320, 320, 3, 3],
        vec![5120, 1280],
    ] {
        let t = synthetic(&shape, 1);
        let TensorData::F16(h) = &t.data else {
            unreachable!()
        };
        let (v, widen) = thread_cpu(|| t.to_f32());
        let (p, cluster) = thread_cpu(|| kmeans_1d(&v, k));
        let (old, round) = thread_cpu(|| p.with_f16_lut(&v));
        let (new, counted) = thread_cpu(|| palettize_f16(h, k));
        assert_eq!((old.lut, old.indices), (new.lut, new.indices), "{shape:?}");
        let distinct = h
            .iter()
            .map(|x| x.to_bits())
            .collect::<std::collections::HashSet<_>>();
        println!(
            "{shape:?} ({} distinct): f32 path: to_f32 {widen:6.1} + kmeans_1d {cluster:6.1} + with_f16_lut {round:6.1} = {:6.1} ms; palettize_f16 {counted:6.1} ms",
            distinct.len(),
            widen + cluster + round
        );
    }
    let shapes = sd15_unet_shapes();
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let t0 = Instant::now();
    // Two halves on two threads: generating 860 M values is slower than clustering them.
    let gen = |lo: usize, hi: usize| {
        (lo..hi)
            .map(|i| (format!("w{i}"), synthetic(&shapes[i], i as u64 + 2)))
            .collect::<Vec<_>>()
    };
    let half = shapes.len() / 2;
    let tensors: Vec<(String, Tensor)> = std::thread::scope(|s| {
        let a = s.spawn(|| gen(0, half));
        let mut b = gen(half, shapes.len());
        let mut all = a.join().expect("generator");
        all.append(&mut b);
        all
    });
    println!(
        "SD 1.5 UNet: {} tensors, {total} parameters (generated in {:.1} s)",
        shapes.len(),
        t0.elapsed().as_secs_f64()
    );
    let (before, wall, cpu) = process_time(|| old_pass(&tensors, k, group_size));
    println!("whole UNet, f32 path:   {wall:6.2} s wall, {cpu:6.2} s CPU");
    let g = one_constant_graph(tensors);
    let (g, wall, cpu) = process_time(|| palettize(bits, group_size).run(g).expect("palettize"));
    println!("whole UNet, the pass: {wall:6.2} s wall, {cpu:6.2} s CPU");
    let after: Vec<u64> = g
        .node_slice()
        .iter()
        .filter_map(|n| match &n.op {
            Op::Const(ConstData::Palettized(p)) => Some(digest(&p.lut.to_f32(), &p.indices)),
            _ => None,
        })
        .collect();
    assert_eq!(before, after, "the same tables and indices");
    println!("same tables and indices for all {} tensors", after.len());
}

/// The pass as it was before fp16 patterns were counted (main at commit 5cf0c99), step by step:
/// batches of 16 Mi elements widened to f32, k-means of the tensors or groups on every core, then
/// each table rounded to fp16 on the calling thread. Returns the [`digest`] of every palettized
/// tensor.
fn old_pass(tensors: &[(String, Tensor)], k: usize, group_size: Option<usize>) -> Vec<u64> {
    let chosen: Vec<&Tensor> = tensors
        .iter()
        .map(|(_, t)| t)
        .filter(|t| t.len() >= 2048.max(k))
        .collect();
    let mut out = Vec::new();
    for batch in chunks_of_elements(&chosen, 16 << 20) {
        let values: Vec<Vec<f32>> = batch.iter().map(|t| t.to_f32()).collect();
        assert!(values.iter().flatten().all(|v| v.is_finite()));
        let palettes: Vec<Vec<Palette>> = match group_size {
            None => {
                let slices: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
                kmeans_1d_batch(&slices, k)
                    .into_iter()
                    .map(|p| vec![p])
                    .collect()
            }
            Some(g) => batch
                .iter()
                .zip(&values)
                .map(|(t, v)| {
                    let rows = t.shape[0];
                    let gs = if rows % g == 0 { g } else { rows };
                    palettize_grouped(v, &t.shape, gs, k)
                })
                .collect(),
        };
        for (v, ps) in values.iter().zip(palettes) {
            let per = v.len() / ps.len();
            let rounded: Vec<Palette> = ps
                .iter()
                .enumerate()
                .map(|(g, p)| p.with_f16_lut(&v[g * per..(g + 1) * per]))
                .collect();
            let mut lut = Vec::new();
            let mut indices = Vec::new();
            for p in &rounded {
                lut.extend(&p.lut);
                lut.resize(lut.len() + k - p.lut.len(), 0.0);
                indices.extend(&p.indices);
            }
            out.push(digest(&lut, &indices));
        }
    }
    out
}

/// Consecutive runs of `tensors` of about `elements` elements each (at least one tensor).
fn chunks_of_elements<'a>(tensors: &'a [&'a Tensor], elements: usize) -> Vec<&'a [&'a Tensor]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < tensors.len() {
        let (mut end, mut n) = (start, 0);
        while end < tensors.len() && (end == start || n < elements) {
            n += tensors[end].len();
            end += 1;
        }
        out.push(&tensors[start..end]);
        start = end;
    }
    out
}

/// FNV-1a of a palettized tensor's LUT (as fp16 bits, unused entries 0) and indices.
fn digest(lut: &[f32], indices: &[u16]) -> u64 {
    let bits = lut.iter().map(|&c| f16::from_f32(c).to_bits());
    bits.chain(indices.iter().copied())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
            (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// `f()` and the calling thread's CPU time it took, in ms.
fn thread_cpu<R>(f: impl FnOnce() -> R) -> (R, f64) {
    let t0 = cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID);
    let r = f();
    (r, (cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID) - t0) * 1e3)
}

/// `f()`, the wall time it took and the CPU time of all the process's threads, in s.
fn process_time<R>(f: impl FnOnce() -> R) -> (R, f64, f64) {
    let (t0, c0) = (Instant::now(), cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID));
    let r = f();
    let cpu = cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID) - c0;
    (r, t0.elapsed().as_secs_f64(), cpu)
}

/// Seconds on a CPU-time clock.
fn cpu_clock(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The pass as `mlc build --palettize BITS [--granularity per-grouped-channel=G]` sets it up.
fn palettize(bits: u32, group_size: Option<usize>) -> Palettize {
    Palettize {
        bits,
        group_size,
        min_elements: 2048,
        calibrated: None,
    }
}

/// A graph whose outputs are the given constants.
fn one_constant_graph(tensors: Vec<(String, Tensor)>) -> Graph {
    let mut g = Graph::new("unet");
    for (name, t) in tensors {
        let v = g.constant(name.clone(), t);
        g.set_output(&name, v);
    }
    g
}

/// An fp16 tensor of `shape` with values like a trained layer's: gaussian with standard
/// deviation `1/sqrt(fan_in)`, one value in 1024 four times wider (trained weights have
/// heavier tails than a gaussian); rank-1 tensors (norms, biases) around 1 or 0.
fn synthetic(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
    let (centre, std) = if shape.len() == 1 {
        (if seed % 2 == 0 { 1.0 } else { 0.0 }, 0.1)
    } else {
        (0.0, 1.0 / (fan_in as f64).sqrt())
    };
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        // xorshift64*: plenty for a benchmark's values.
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let data = (0..n)
        .map(|_| {
            // Four 32-bit uniforms summed (Irwin-Hall): close to a gaussian, and much cheaper
            // than Box-Muller for 860 M values.
            let (a, b) = (next(), next());
            let sum = [a >> 32, a & 0xffff_ffff, b >> 32, b & 0xffff_ffff]
                .iter()
                .map(|&u| u as f64)
                .sum::<f64>();
            let z = (sum / 4_294_967_296.0 - 2.0) * 3f64.sqrt();
            let wide = if a & 0x3ff == 0 { 4.0 } else { 1.0 };
            f16::from_f64(centre + z * std * wide)
        })
        .collect();
    Tensor::f16(shape.to_vec(), data)
}

/// Every weight, bias and norm parameter of the SD 1.5 UNet (diffusers layout): block channels
/// 320/640/1280/1280, two resnets per down level and three per up level, cross-attention on
/// all levels but the deepest (text width 768), GEGLU feed-forward of 4x width.
fn sd15_unet_shapes() -> Vec<Vec<usize>> {
    const TEXT: usize = 768;
    const TEMB: usize = 1280;
    let mut s: Vec<Vec<usize>> = Vec::new();
    let conv = |s: &mut Vec<Vec<usize>>, o: usize, i: usize, k: usize| {
        s.push(vec![o, i, k, k]);
        s.push(vec![o]);
    };
    let resnet = |s: &mut Vec<Vec<usize>>, i: usize, o: usize| {
        s.extend([vec![i], vec![i]]);
        conv(s, o, i, 3);
        s.extend([vec![o, TEMB], vec![o]]);
        s.extend([vec![o], vec![o]]);
        conv(s, o, o, 3);
        if i != o {
            conv(s, o, i, 1);
        }
    };
    let transformer = |s: &mut Vec<Vec<usize>>, c: usize| {
        s.extend([vec![c], vec![c]]);
        conv(s, c, c, 1);
        for _ in 0..3 {
            s.extend([vec![c], vec![c]]);
        }
        s.extend([vec![c, c], vec![c, c], vec![c, c], vec![c, c], vec![c]]);
        s.extend([
            vec![c, c],
            vec![c, TEXT],
            vec![c, TEXT],
            vec![c, c],
            vec![c],
        ]);
        s.extend([vec![8 * c, c], vec![8 * c], vec![c, 4 * c], vec![c]]);
        conv(s, c, c, 1);
    };
    let channels = [320, 640, 1280, 1280];
    conv(&mut s, 320, 4, 3);
    s.extend([vec![TEMB, 320], vec![TEMB], vec![TEMB, TEMB], vec![TEMB]]);
    // Channel counts of the skip connections the up blocks concatenate, in push order.
    let mut skips = vec![320];
    let mut prev = 320;
    for (level, &c) in channels.iter().enumerate() {
        for _ in 0..2 {
            resnet(&mut s, prev, c);
            if level < 3 {
                transformer(&mut s, c);
            }
            prev = c;
            skips.push(c);
        }
        if level < 3 {
            conv(&mut s, c, c, 3);
            skips.push(c);
        }
    }
    resnet(&mut s, 1280, 1280);
    transformer(&mut s, 1280);
    resnet(&mut s, 1280, 1280);
    for (level, &c) in channels.iter().rev().enumerate() {
        for _ in 0..3 {
            let skip = skips.pop().expect("one skip per up resnet");
            resnet(&mut s, prev + skip, c);
            if level > 0 {
                transformer(&mut s, c);
            }
            prev = c;
        }
        if level < 3 {
            conv(&mut s, c, c, 3);
        }
    }
    s.extend([vec![320], vec![320]]);
    conv(&mut s, 4, 320, 3);
    s
}
