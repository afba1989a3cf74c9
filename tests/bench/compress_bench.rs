//! Times palettization of the TAEF2 decoder's conv weights (>= 2048 elements), as `mlc build`
//! would run it: `cargo run --release --example compress_bench [weights.safetensors] [runs] [k]`.
//! Prints the median and minimum over the runs; the machine is shared, so look at the median.
//!
//! `cargo run --release --example compress_bench unet [bits] [group]` times the palettize pass
//! on a synthetic SD 1.5 UNet instead (see [`unet`]).

use std::time::Instant;

use half::f16;
use mlc::compress::{kmeans_1d, kmeans_1d_batch, quantize_per_channel_i8, ScaleType};
use mlc::ir::Graph;
use mlc::passes::palettize::Palettize;
use mlc::passes::Pass;
use mlc::tensor::Tensor;

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
/// --palettize BITS` runs it: first three sample tensors step by step, then the whole pass.
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
        let ms = |t0: Instant| t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let v = t.to_f32();
        let widen = ms(t0);
        let t0 = Instant::now();
        let p = kmeans_1d(&v, k);
        let cluster = ms(t0);
        let t0 = Instant::now();
        let h = p.with_f16_lut(&v);
        let round = ms(t0);
        std::hint::black_box(h);
        let g = one_constant_graph(vec![("w".into(), t)]);
        let t0 = Instant::now();
        std::hint::black_box(palettize(bits, group_size).run(g).expect("palettize"));
        println!(
            "{shape:?}: to_f32 {widen:7.1} ms, kmeans_1d {cluster:7.1} ms, with_f16_lut {round:7.1} ms; pass {:7.1} ms",
            ms(t0)
        );
    }
    let shapes = sd15_unet_shapes();
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let t0 = Instant::now();
    let tensors: Vec<(String, Tensor)> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("w{i}"), synthetic(s, i as u64 + 2)))
        .collect();
    println!(
        "SD 1.5 UNet: {} tensors, {total} parameters (generated in {:.1} s)",
        shapes.len(),
        t0.elapsed().as_secs_f64()
    );
    let g = one_constant_graph(tensors);
    let cpu0 = process_cpu_ms();
    let t0 = Instant::now();
    let g = palettize(bits, group_size).run(g).expect("palettize");
    println!(
        "whole UNet: {:.2} s wall, {:.2} s CPU",
        t0.elapsed().as_secs_f64(),
        (process_cpu_ms() - cpu0) / 1e3
    );
    std::hint::black_box(g);
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
/// deviation `1/sqrt(fan_in)`, one value in a thousand four times wider (trained weights have
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
    let mut uniform = move || {
        // xorshift64*: plenty for a benchmark's values.
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    };
    let data = (0..n)
        .map(|_| {
            let (u1, u2) = (uniform().max(1e-300), uniform());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let wide = if uniform() < 1e-3 { 4.0 } else { 1.0 };
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
