//! Times calibration of the TAEF2 decoder, phase by phase, as a calibrated build would run it:
//! `cargo run --release --example calibrate_bench [latent] [photos] [--eval-only]`.
//! Defaults: latent 96 (768x768 images), ../shared/calibration, weights from ../shared/weights.
//! Photos smaller than the size are scaled up (the bench measures time, not fidelity). With
//! `--eval-only` it also times plain evaluation of the same latents, so the statistics' own cost
//! is the difference. Run under `/usr/bin/time -v` for the peak RSS.

use mlc::calibrate::{collect, Calibration, SampleSpec};
use mlc::compiler::{declare, BuildOptions, Sizes};
use mlc::models::{lookup, ModelOptions, Part, Role};
use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let shared = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let eval_only = args.iter().any(|a| a == "--eval-only");
    args.retain(|a| a != "--eval-only");
    let latent: usize = args.first().map_or(96, |a| a.parse().expect("latent size"));
    let photos = args
        .get(1)
        .map_or(shared.join("calibration"), PathBuf::from);
    let dec = shared.join("weights/taef2_decoder.safetensors");
    let enc = shared.join("weights/taef2_encoder.safetensors");

    let t = Instant::now();
    let mut o = BuildOptions::new("flux2", &dec);
    o.sizes = Sizes::Latent(vec![[latent, latent]]);
    let m = lookup("flux2").unwrap();
    let w = m
        .load(
            Part::DECODER,
            &*mlc::weights::open(&dec).unwrap(),
            &ModelOptions::default(),
        )
        .unwrap();
    let g = declare(&o, &w).unwrap();
    let declared = t.elapsed();

    let t = Instant::now();
    let none = ModelOptions::default();
    let iface = m.interface(Part::DECODER, &none);
    let b = iface.bindings(Role::Latent, [latent, latent]).unwrap();
    let mut target =
        SampleSpec::for_model(m, Part::DECODER, &iface, &none, &b, None, Some(&enc)).unwrap();
    target.upscale = true;
    let encoder_built = t.elapsed();

    let t = Instant::now();
    let cal = Calibration::load(&photos, &target).unwrap_or_else(|e| panic!("{e}"));
    let loaded = t.elapsed();

    let t = Instant::now();
    let stats = collect(&g, &cal, true).unwrap();
    let collected = t.elapsed();

    let t = Instant::now();
    let clips: Vec<f32> = stats.values.values().map(|s| s.clip_range(8)).collect();
    let clipped = t.elapsed();

    println!(
        "TAEF2 decoder, latent {latent} ({}x{} images), {} photos, {} values observed, sha256 {}",
        latent * 8,
        latent * 8,
        cal.len(),
        stats.values.len(),
        &cal.hash()[..16]
    );
    println!(
        "declare decoder graph      {:>8.2} s",
        declared.as_secs_f64()
    );
    println!(
        "build encoder graph        {:>8.2} s",
        encoder_built.as_secs_f64()
    );
    println!("decode+fit+encode photos   {:>8.2} s", loaded.as_secs_f64());
    println!(
        "decoder evals + statistics {:>8.2} s",
        collected.as_secs_f64()
    );
    println!(
        "clip ranges (int8, all)    {:>8.2} s",
        clipped.as_secs_f64()
    );
    if eval_only {
        let t = Instant::now();
        for i in 0..cal.len() {
            mlc::ir::eval::evaluate(&g, &cal.sample(i)).unwrap();
        }
        println!(
            "decoder evals alone        {:>8.2} s",
            t.elapsed().as_secs_f64()
        );
    }
    // The statistics' own cost, on one activation of the decoder's last stage.
    let big = mlc::kernels::Array::new(
        vec![1, 64, 8 * latent, 8 * latent],
        (0..64 * 64 * latent * latent)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
            .collect(),
    );
    let mut one = mlc::calibrate::ValueStats::new(64);
    let t = Instant::now();
    one.observe(&big).unwrap();
    let per = t.elapsed().as_secs_f64() / big.data.len() as f64;
    let observed: u64 = stats.values.values().map(|s| s.count).sum();
    println!(
        "statistics: {:.2} ns per element, {observed} elements observed: about {:.2} s",
        per * 1e9,
        per * observed as f64
    );
    let (worst, at) = stats
        .values
        .iter()
        .zip(&clips)
        .map(|((id, s), c)| (s.abs_max / c.max(f32::MIN_POSITIVE), id))
        .fold(
            (0f32, None),
            |m, (r, id)| if r > m.0 { (r, Some(id)) } else { m },
        );
    if let Some(id) = at {
        println!("largest max/clip ratio {worst:.2} at {}", g.node(*id).name);
    }
}
