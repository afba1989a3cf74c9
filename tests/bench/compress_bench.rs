//! Times palettization of the TAEF2 decoder's conv weights (>= 2048 elements), as `mlc build`
//! would run it: `cargo run --release --example compress_bench [weights.safetensors] [runs] [k]`.
//! Prints the median and minimum over the runs; the machine is shared, so look at the median.

use std::time::Instant;

use mlc::compress::{kmeans_1d, kmeans_1d_batch, quantize_per_channel_i8, ScaleType};

fn main() {
    let mut args = std::env::args().skip(1);
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
