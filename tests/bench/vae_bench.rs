//! Full-size VAE benchmark inputs: `cargo run --release --example vae_bench -- OUT_DIR`.
//!
//! Writes synthetic weights with the real shapes of diffusers' `AutoencoderKL` (SD 1.x/2.x) and
//! `AutoencoderKLFlux2` (FLUX.2) — block_out_channels 128, 256, 512, 512, 2 resnets per encoder
//! level and 3 per decoder level, GroupNorm 32, encoder and decoder in one fp32 file — as
//! `OUT_DIR/{sd,flux2}/diffusion_pytorch_model.safetensors` with a `config.json` beside each.
//! Values are deterministic pseudo-random with the scales of a trained model (conv weights
//! uniform in ±1/√fan_in, norm scales near 1, positive batch-norm variances).
//!
//! It then compiles each decoder at a 128x128 latent through `mlc::compiler::build_program` and
//! reports, from the graph after the last pass and from the lowered MIL program, the non-const
//! op count and the largest intermediate tensors, and prints the commands that time the builds.
//!
//! The key list is generated from the architecture; with the same generator at the fixtures'
//! widths (32, 64, 64, 64) it must reproduce the fixture files' keys and shapes exactly, which
//! is checked when `/work/shared/fixtures/vae` (or `MLC_VAE_FIXTURES`) is there.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use mlc::compiler::{build_program, BuildOptions, Compression, Precision, Sizes};
use mlc::ir::{Graph, Op};

/// A tensor of the file: shape and how to fill it.
struct Spec {
    shape: Vec<usize>,
    fill: Fill,
}

#[derive(Clone, Copy)]
enum Fill {
    /// Uniform in ±1/√fan_in (PyTorch's default conv/linear init scale).
    Weight,
    /// Uniform in ±0.02.
    Bias,
    /// 1 ± 0.1 (norm scales).
    Scale,
    /// 0.5 ..= 1.5 (batch-norm running variance).
    Variance,
    /// A zero i64 (`num_batches_tracked`).
    Counter,
}

struct Arch {
    widths: Vec<usize>,
    latent: usize,
    flux2: bool,
}

/// The tensors of a file being described, added layer by layer under diffusers' names.
#[derive(Default)]
struct Keys(BTreeMap<String, Spec>);

impl Keys {
    fn add(&mut self, key: String, shape: Vec<usize>, fill: Fill) {
        self.0.insert(key, Spec { shape, fill });
    }

    fn conv(&mut self, p: &str, cout: usize, cin: usize, k: usize) {
        self.add(format!("{p}.weight"), vec![cout, cin, k, k], Fill::Weight);
        self.add(format!("{p}.bias"), vec![cout], Fill::Bias);
    }

    fn norm(&mut self, p: &str, c: usize) {
        self.add(format!("{p}.weight"), vec![c], Fill::Scale);
        self.add(format!("{p}.bias"), vec![c], Fill::Bias);
    }

    fn resnet(&mut self, p: &str, cin: usize, cout: usize) {
        self.norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cout, cin, 3);
        self.norm(&format!("{p}.norm2"), cout);
        self.conv(&format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{p}.conv_shortcut"), cout, cin, 1);
        }
    }

    fn mid(&mut self, p: &str, c: usize) {
        self.resnet(&format!("{p}.resnets.0"), c, c);
        let a = format!("{p}.attentions.0");
        self.norm(&format!("{a}.group_norm"), c);
        for l in ["to_q", "to_k", "to_v", "to_out.0"] {
            self.add(format!("{a}.{l}.weight"), vec![c, c], Fill::Weight);
            self.add(format!("{a}.{l}.bias"), vec![c], Fill::Bias);
        }
        self.resnet(&format!("{p}.resnets.1"), c, c);
    }
}

impl Arch {
    fn tensors(&self) -> BTreeMap<String, Spec> {
        let mut t = Keys::default();
        let w = &self.widths;
        let top = *w.last().unwrap();
        let z = self.latent;

        // Encoder: conv_in, down blocks (2 resnets, then a stride-2 conv but at the last),
        // mid, norm + conv_out to mean|logvar, quant_conv.
        t.conv("encoder.conv_in", w[0], 3, 3);
        let mut cin = w[0];
        for (i, &c) in w.iter().enumerate() {
            for r in 0..2 {
                let p = format!("encoder.down_blocks.{i}.resnets.{r}");
                t.resnet(&p, if r == 0 { cin } else { c }, c);
            }
            if i + 1 < w.len() {
                let p = format!("encoder.down_blocks.{i}.downsamplers.0.conv");
                t.conv(&p, c, c, 3);
            }
            cin = c;
        }
        t.mid("encoder.mid_block", top);
        t.norm("encoder.conv_norm_out", top);
        t.conv("encoder.conv_out", 2 * z, top, 3);
        t.conv("quant_conv", 2 * z, 2 * z, 1);

        // Decoder: post_quant_conv, conv_in, mid, up blocks (3 resnets, then upsample + conv
        // but at the last), norm + conv_out.
        t.conv("post_quant_conv", z, z, 1);
        t.conv("decoder.conv_in", top, z, 3);
        t.mid("decoder.mid_block", top);
        let mut cin = top;
        for (i, &c) in w.iter().rev().enumerate() {
            for r in 0..3 {
                let p = format!("decoder.up_blocks.{i}.resnets.{r}");
                t.resnet(&p, if r == 0 { cin } else { c }, c);
            }
            if i + 1 < w.len() {
                let p = format!("decoder.up_blocks.{i}.upsamplers.0.conv");
                t.conv(&p, c, c, 3);
            }
            cin = c;
        }
        t.norm("decoder.conv_norm_out", w[0]);
        t.conv("decoder.conv_out", 3, w[0], 3);

        if self.flux2 {
            t.add("bn.running_mean".into(), vec![4 * z], Fill::Bias);
            t.add("bn.running_var".into(), vec![4 * z], Fill::Variance);
            t.add("bn.num_batches_tracked".into(), vec![], Fill::Counter);
        }
        t.0
    }

    fn config(&self) -> serde_json::Value {
        let blocks = |kind: &'static str| vec![kind; self.widths.len()];
        let mut c = serde_json::json!({
            "_class_name": if self.flux2 { "AutoencoderKLFlux2" } else { "AutoencoderKL" },
            "act_fn": "silu",
            "block_out_channels": self.widths,
            "down_block_types": blocks("DownEncoderBlock2D"),
            "up_block_types": blocks("UpDecoderBlock2D"),
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": self.latent,
            "layers_per_block": 2,
            "mid_block_add_attention": true,
            "norm_num_groups": 32,
            "use_post_quant_conv": true,
            "use_quant_conv": true,
        });
        let o = c.as_object_mut().unwrap();
        if self.flux2 {
            o.insert("batch_norm_eps".into(), 1e-4.into());
            o.insert("batch_norm_momentum".into(), 0.1.into());
            o.insert("patch_size".into(), serde_json::json!([2, 2]));
            o.insert("sample_size".into(), 1024.into());
        } else {
            o.insert("scaling_factor".into(), 0.18215.into());
            o.insert("sample_size".into(), 512.into());
            o.insert("force_upcast".into(), true.into());
        }
        c
    }
}

use mlc::rng::SplitMix64;
#[path = "safetensors_header.rs"]
mod safetensors_header;

/// Writes the tensors as a safetensors file, streaming the data (no whole-file buffer).
fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Spec>, seed: u64) {
    let header = tensors.iter().map(|(k, s)| match s.fill {
        Fill::Counter => (k.as_str(), "I64", &s.shape[..], 8),
        _ => (k.as_str(), "F32", &s.shape[..], 4),
    });
    let mut out = safetensors_header::create(path, header);
    let mut rng = SplitMix64(seed);
    let mut buf = Vec::new();
    for s in tensors.values() {
        let n: usize = s.shape.iter().product();
        buf.clear();
        match s.fill {
            Fill::Counter => buf.extend_from_slice(&0i64.to_le_bytes()),
            fill => {
                let fan_in: usize = s.shape[1..].iter().product::<usize>().max(1);
                for _ in 0..n {
                    let u = 2.0 * rng.uniform() - 1.0;
                    let v = match fill {
                        Fill::Weight => u / (fan_in as f32).sqrt(),
                        Fill::Bias => 0.02 * u,
                        Fill::Scale => 1.0 + 0.1 * u,
                        Fill::Variance => 1.0 + 0.5 * u,
                        Fill::Counter => unreachable!(),
                    };
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        out.write_all(&buf).unwrap();
    }
    out.flush().unwrap();
}

/// Key → shape of a safetensors file's header.
fn header_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).expect("fixture");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    h.into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| (k, serde_json::from_value(v["shape"].clone()).unwrap()))
        .collect()
}

/// Statistics of a graph's non-constant values.
struct Stats {
    ops: usize,
    /// (bytes, shape, dtype, node name), largest first.
    largest: Vec<(usize, Vec<usize>, String, String)>,
}

fn graph_stats(g: &Graph) -> Stats {
    let mut ops = 0;
    let mut largest = Vec::new();
    for (_, n) in g.nodes() {
        if matches!(n.op, Op::Const(_) | Op::Input { .. }) {
            continue;
        }
        ops += 1;
        if let Some(shape) = n.ty.known_shape() {
            let bytes = shape.iter().product::<usize>() * n.ty.dtype.byte_size();
            largest.push((bytes, shape, n.ty.dtype.to_string(), n.name.clone()));
        }
    }
    largest.sort_by(|a, b| b.0.cmp(&a.0).then(a.3.cmp(&b.3)));
    largest.truncate(3);
    Stats { ops, largest }
}

fn mb(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn main() {
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!("usage: vae_bench OUT_DIR");
            std::process::exit(2)
        });
    let fixtures = std::env::var_os("MLC_VAE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/work/shared/fixtures/vae".into());

    let families = [
        ("sd", "sd-vae", 4, false, 1u64),
        ("flux2", "flux2-vae", 32, true, 2),
    ];
    for &(dir, _, latent, flux2, _) in &families {
        let fixture = fixtures
            .join(dir)
            .join("diffusers/diffusion_pytorch_model.safetensors");
        if fixture.is_file() {
            let small = Arch {
                widths: vec![32, 64, 64, 64],
                latent,
                flux2,
            };
            let ours: BTreeMap<String, Vec<usize>> = small
                .tensors()
                .into_iter()
                .map(|(k, s)| (k, s.shape))
                .collect();
            assert_eq!(
                ours,
                header_shapes(&fixture),
                "the generator disagrees with {}",
                fixture.display()
            );
            println!(
                "{dir}: key list matches {} at widths 32,64,64,64",
                fixture.display()
            );
        }
    }

    for &(dir, model, latent, flux2, seed) in &families {
        let arch = Arch {
            widths: vec![128, 256, 512, 512],
            latent,
            flux2,
        };
        let d = out.join(dir);
        std::fs::create_dir_all(&d).expect("output dir");
        let weights = d.join("diffusion_pytorch_model.safetensors");
        let tensors = arch.tensors();
        let params: usize = tensors
            .values()
            .filter(|s| !matches!(s.fill, Fill::Counter))
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        let decoder: usize = tensors
            .iter()
            .filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
            .map(|(_, s)| s.shape.iter().product::<usize>())
            .sum();
        write_safetensors(&weights, &tensors, seed);
        std::fs::write(
            d.join("config.json"),
            serde_json::to_string_pretty(&arch.config()).unwrap(),
        )
        .unwrap();
        let size = std::fs::metadata(&weights).unwrap().len() as usize;
        println!(
            "\n{model}: {} ({} tensors, {params} parameters, {}; decoder {decoder} parameters = {} f32, {} f16)",
            weights.display(),
            tensors.len(),
            mb(size),
            mb(4 * decoder),
            mb(2 * decoder),
        );

        for palettize in [false, true] {
            let mut opts = BuildOptions::new(model, &weights);
            opts.precision = Precision::Fp16;
            opts.sizes = Sizes::Latent(vec![[128, 128]]);
            if palettize {
                opts.compression = Some(Compression::Palettize {
                    bits: 4,
                    group_size: None,
                    min_elements: 2048,
                });
            }
            let mut last = None;
            let t = std::time::Instant::now();
            let c = build_program(&opts, |_, g| last = Some(graph_stats(g))).expect("compile");
            let secs = t.elapsed().as_secs_f64();
            let s = last.expect("at least one pass");
            let setting = if palettize {
                "fp16 --palettize 4"
            } else {
                "fp16"
            };
            println!(
                "  decoder, 128x128 latent, {setting}: IR after passes {} non-const ops, MIL {} \
                 non-const ops, weight.bin {} (in-process compile {secs:.2} s)",
                s.ops,
                mlc::compiler::count_ops(&c.lowered.model),
                mb(c.lowered.weight_bin.as_ref().map_or(0, Vec::len)),
            );
            for (bytes, shape, dtype, name) in &s.largest {
                println!(
                    "    largest intermediate: {dtype} {shape:?} = {} ({name})",
                    mb(*bytes)
                );
            }
        }
    }

    println!("\nTime the builds (whole process) with:");
    for &(dir, model, ..) in &families {
        let w = out.join(dir).join("diffusion_pytorch_model.safetensors");
        for extra in ["", " --palettize 4"] {
            let cmd = format!(
                "target/release/mlc build {model} --weights {} --latent-size 128{extra} -o /tmp/{model}.mlpackage",
                w.display()
            );
            println!("  /usr/bin/time -v {cmd}");
            println!("  hyperfine -w 1 -r 5 '{cmd}'");
        }
    }
}
