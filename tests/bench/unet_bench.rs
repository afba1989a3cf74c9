//! Full-size Stable Diffusion UNet benchmark inputs: `cargo run --release --example unet_bench --
//! OUT_DIR [sd15|sdxl|all]`.
//!
//! Writes synthetic weights with the real shapes of diffusers' `UNet2DConditionModel` in the
//! diffusers layout, stored fp16 as the published fp16 variants are:
//! `OUT_DIR/{sd15,sdxl}/unet/{config.json,diffusion_pytorch_model.fp16.safetensors}` for SD 1.5
//! (859,520,964 parameters, 1.6 GiB) and SDXL base (2,567,463,684, 4.8 GiB). Values are
//! deterministic pseudo-random with a trained model's scales (weights uniform in ±1/√fan_in, norm
//! scales near 1, biases ±0.02), streamed to the file a chunk at a time: the file is never in
//! memory. A file already there with the expected header and length is kept.
//!
//! The tensors are generated from the config.json by one function following diffusers'
//! structure, so the tests can check it against the fixtures: with the small configs of
//! `../shared/fixtures/unet/{sd15,sd21,sdxl,sd15_inpaint}/diffusers` it must give exactly the
//! fixture files' keys and shapes, and with the real configs the published parameter counts
//! (`cargo test --release --example unet_bench`; CI runs it too). `tests/bench/unet_bench.sh`
//! writes the files once and times the whole-process builds.

use std::path::{Path, PathBuf};

// Shared with the other benchmarks; this one draws four values per `next`, not `unit`.
#[path = "unet_lora.rs"]
mod lora;
#[allow(dead_code)]
#[path = "safetensors_header.rs"]
mod safetensors_header;
#[allow(dead_code)]
#[path = "tensor_file.rs"]
mod tensor_file;
#[allow(dead_code)]
#[path = "unet_arch.rs"]
mod unet_arch;
use tensor_file::{write_file, Fill, Spec};
use unet_arch::{full_config, Arch};

/// The models the benchmark writes: folder name, seed.
const MODELS: [(&str, u64); 2] = [("sd15", 1), ("sdxl", 2)];
/// Writes one model's folder; returns its weights file.
fn write_model(out: &Path, name: &str, seed: u64) -> Result<PathBuf, String> {
    let config = full_config(name);
    let tensors = Arch::from_config(&config)?.tensors();
    let dir = out.join(name).join("unet");
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", dir.display());
    std::fs::create_dir_all(&dir).map_err(|e| err(&e))?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| err(&e))?;
    std::fs::write(dir.join("config.json"), text + "\n").map_err(|e| err(&e))?;
    let weights = dir.join("diffusion_pytorch_model.fp16.safetensors");
    write_file(&weights, &tensors, seed, name)?;
    Ok(weights)
}

/// Writes the model's rank-32 kohya LoRA beside its `unet` folder ([`lora`]); returns the file.
fn write_lora(out: &Path, name: &str, seed: u64) -> Result<PathBuf, String> {
    let arch = Arch::from_config(&full_config(name))?;
    let names = match name {
        "sdxl" => lora::Names::Sgm,
        _ => lora::Names::Diffusers,
    };
    let tensors = lora::tensors(&arch, &arch.tensors(), names, lora::RANK);
    let path = out.join(name).join(lora::FILE);
    let what = format!(
        "{name} LoRA: {} modules, rank {}",
        tensors.len() / 3,
        lora::RANK
    );
    write_file(&path, &tensors, seed.wrapping_add(100), &what)?;
    Ok(path)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.get(1).map_or("all", String::as_str);
    let models: Vec<_> = MODELS
        .iter()
        .filter(|(name, _)| which == "all" || which == *name)
        .collect();
    if args.is_empty() || args.len() > 2 || models.is_empty() {
        eprintln!("usage: unet_bench OUT_DIR [sd15|sdxl|all]");
        std::process::exit(2);
    }
    let out = PathBuf::from(&args[0]);
    for &&(name, seed) in &models {
        let model = if name == "sdxl" {
            "sdxl-unet"
        } else {
            "sd-unet"
        };
        match write_model(&out, name, seed).and_then(|w| Ok((w, write_lora(&out, name, seed)?))) {
            Ok((w, l)) => println!(
                "  /usr/bin/time -v target/release/mlc build {model} --weights {} -o /tmp/{name}.mlpackage [--lora {}]",
                w.display(),
                l.display()
            ),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor_file::{header_shapes, is_complete, parameters, write_safetensors};
    use std::collections::BTreeMap;
    use std::fs::File;

    const FIXTURES: [&str; 4] = ["sd15", "sd21", "sdxl", "sd15_inpaint"];

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/unet")
            .join(name)
            .join("diffusers")
    }

    fn read_config(dir: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn shapes(tensors: &BTreeMap<String, Spec>) -> BTreeMap<String, Vec<usize>> {
        tensors
            .iter()
            .map(|(k, s)| (k.clone(), s.shape.clone()))
            .collect()
    }

    /// The generator at the fixtures' sizes gives exactly their keys and shapes (diffusers'
    /// own state dicts), so at the real sizes it gives the real models'.
    #[test]
    fn generator_reproduces_every_fixture() {
        for name in FIXTURES {
            let dir = fixture(name);
            let ours = shapes(&Arch::from_config(&read_config(&dir)).unwrap().tensors());
            let (theirs, _) =
                header_shapes(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
            let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
            let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{name}: {} missing (first {:?}), {} extra (first {:?})",
                missing.len(),
                missing.first(),
                extra.len(),
                extra.first()
            );
            assert_eq!(ours, theirs, "{name}: shapes differ");
        }
    }

    #[test]
    fn real_configs_give_the_published_parameter_counts() {
        let count = |name| parameters(&Arch::from_config(&full_config(name)).unwrap().tensors());
        assert_eq!(count("sd15"), 859_520_964);
        assert_eq!(count("sdxl"), 2_567_463_684);
    }

    #[test]
    fn real_configs_have_the_fixtures_fields() {
        for name in ["sd15", "sdxl"] {
            let keys = |c: &serde_json::Value| c.as_object().unwrap().keys().cloned().collect();
            let ours: std::collections::BTreeSet<String> = keys(&full_config(name));
            let theirs: std::collections::BTreeSet<String> = keys(&read_config(&fixture(name)));
            assert_eq!(ours, theirs, "{name}");
        }
    }

    /// What the writer streams is a safetensors file mlc reads back, with every tensor fp16 at
    /// its fill's scale, the same bytes for the same seed and other values for another.
    #[test]
    fn writer_round_trips_through_mlc() {
        let tensors = Arch::from_config(&read_config(&fixture("sdxl")))
            .unwrap()
            .tensors();
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c] = ["a", "b", "c"].map(|n| dir.path().join(n));
        write_safetensors(&a, &tensors, 7).unwrap();
        write_safetensors(&b, &tensors, 7).unwrap();
        write_safetensors(&c, &tensors, 8).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert!(
            bytes == std::fs::read(&b).unwrap(),
            "same seed, other bytes"
        );
        assert!(
            bytes != std::fs::read(&c).unwrap(),
            "other seed, same bytes"
        );
        assert!(is_complete(&a, &tensors));
        let cut = File::options().write(true).open(&c).unwrap();
        cut.set_len(bytes.len() as u64 - 2).unwrap();
        assert!(!is_complete(&c, &tensors), "a cut file counts as complete");
        assert!(!is_complete(
            &a,
            &Arch::from_config(&read_config(&fixture("sd15")))
                .unwrap()
                .tensors()
        ));

        let w = mlc::weights::Weights::load(&a).unwrap();
        assert_eq!(w.tensors.len(), tensors.len());
        for (k, s) in &tensors {
            let t = &w.tensors[k];
            assert_eq!(t.shape, s.shape, "{k}");
            assert_eq!(t.dtype(), mlc::tensor::DType::F16, "{k}");
            let v = t.to_f32();
            let fan_in = s.shape[1..].iter().product::<usize>().max(1) as f32;
            let (centre, bound) = match s.fill {
                Fill::Weight => (0.0, 1.0 / fan_in.sqrt()),
                Fill::Bias => (0.0, 0.02),
                Fill::Scale => (1.0, 0.1),
                Fill::Const(c) => (c, 0.0),
                Fill::F32(_) | Fill::I32(_) | Fill::Positions => {
                    panic!("{k}: a UNet has no buffers")
                }
            };
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let spread = v.iter().fold(0f32, |m, x| m.max((x - centre).abs()));
            assert!(
                spread <= bound * 1.001 && (v.len() < 32 || spread > bound * 0.5),
                "{k}: values reach {spread}, the fill's bound is {bound}"
            );
            if v.len() >= 1024 {
                assert!((mean - centre).abs() < bound * 0.1, "{k}: mean {mean}");
            }
        }
    }

    #[test]
    fn configs_outside_the_sd_unets_are_refused_naming_the_field() {
        let cases: [(&str, serde_json::Value, &str); 4] = [
            (
                "down_block_types",
                serde_json::Value::from(vec!["AttnDownBlock2D"; 4]),
                "AttnDownBlock2D",
            ),
            (
                "transformer_layers_per_block",
                serde_json::json!([1, 2]),
                "one integer per level",
            ),
            (
                "addition_embed_type",
                serde_json::json!("text"),
                "supported: null, text_time",
            ),
            (
                "class_embed_type",
                serde_json::json!("timestep"),
                "only null",
            ),
        ];
        for (key, value, says) in cases {
            let mut c = read_config(&fixture("sd15"));
            c[key] = value;
            let e = Arch::from_config(&c).unwrap_err();
            assert!(
                e.contains(key) && e.contains(says) && !e.contains('\n'),
                "{e}"
            );
        }
        let mut c = read_config(&fixture("sd15"));
        c.as_object_mut().unwrap().remove("cross_attention_dim");
        assert_eq!(
            Arch::from_config(&c).unwrap_err(),
            "config.json: missing field \"cross_attention_dim\""
        );
    }
    /// The full-size LoRAs adapt the module set kohya's sd-scripts reports (722 modules for
    /// SDXL, 192 for SD 1.5) with the real shapes: SDXL's cross-attention reads 2048 channels,
    /// GEGLU's projection gives 2 · 4C, SD 1.5's projections are 1x1 convolutions.
    #[test]
    fn full_size_loras_cover_kohyas_modules_with_real_shapes() {
        let lora_of = |name, names| {
            let arch = Arch::from_config(&full_config(name)).unwrap();
            lora::tensors(&arch, &arch.tensors(), names, lora::RANK)
        };
        let sdxl = lora_of("sdxl", lora::Names::Sgm);
        let sd15 = lora_of("sd15", lora::Names::Diffusers);
        assert_eq!(sdxl.len(), 3 * 722);
        assert_eq!(sd15.len(), 3 * 192);
        let shape = |t: &BTreeMap<String, Spec>, k: &str| {
            t.get(k)
                .map(|s| s.shape.clone())
                .unwrap_or_else(|| panic!("no {k}"))
        };
        let x = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k";
        assert_eq!(shape(&sdxl, &format!("{x}.lora_down.weight")), [32, 2048]);
        assert_eq!(shape(&sdxl, &format!("{x}.lora_up.weight")), [640, 32]);
        let x = "lora_unet_middle_block_1_transformer_blocks_9_ff_net_0_proj";
        assert_eq!(shape(&sdxl, &format!("{x}.lora_up.weight")), [10240, 32]);
        let x = "lora_unet_output_blocks_5_1_transformer_blocks_1_ff_net_2";
        assert_eq!(shape(&sdxl, &format!("{x}.lora_down.weight")), [32, 2560]);
        assert_eq!(shape(&sdxl, &format!("{x}.alpha")), Vec::<usize>::new());
        let x = "lora_unet_up_blocks_3_attentions_2_proj_out";
        assert_eq!(
            shape(&sd15, &format!("{x}.lora_down.weight")),
            [32, 320, 1, 1]
        );
        assert_eq!(
            shape(&sd15, &format!("{x}.lora_up.weight")),
            [320, 32, 1, 1]
        );
    }

    /// At the fixtures' sizes the generator names exactly the transformer modules of the LoRA
    /// fixtures (written independently, checked against diffusers' loader), with their shapes:
    /// SGM names for SDXL, diffusers names for SD 1.5. Their resnet (LoCon) and text-encoder
    /// keys are left out: the benchmark's LoRA adapts what kohya adapts by default.
    #[test]
    fn fixture_sizes_give_the_lora_fixtures_keys() {
        for (name, file, names) in [
            ("sdxl", "kohya_sdxl_sgm", lora::Names::Sgm),
            ("sd15", "kohya_sd15", lora::Names::Diffusers),
        ] {
            let arch = Arch::from_config(&read_config(&fixture(name))).unwrap();
            let ours = shapes(&lora::tensors(&arch, &arch.tensors(), names, 4));
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/fixtures/unet/lora")
                .join(format!("{file}.safetensors"));
            let (mut theirs, _) = header_shapes(&path).unwrap();
            theirs.retain(|k, _| {
                !k.starts_with("lora_te") && !k.contains("_layers_") && !k.contains("resnets")
            });
            assert!(theirs.len() > 100, "{file}: {} keys", theirs.len());
            assert_eq!(ours, theirs, "{name}");
        }
    }

    /// mlc fuses the generated SDXL LoRA into every module it names, written by the same
    /// writer as the benchmark's (fp16, alpha a scalar), and the fused build differs.
    #[test]
    fn mlc_fuses_every_module_of_a_generated_lora() {
        let dir = tempfile::tempdir().unwrap();
        let arch = Arch::from_config(&read_config(&fixture("sdxl"))).unwrap();
        let tensors = lora::tensors(&arch, &arch.tensors(), lora::Names::Sgm, 4);
        let file = dir.path().join("lora.safetensors");
        write_safetensors(&file, &tensors, 3).unwrap();
        let weights = fixture("sdxl").join("diffusion_pytorch_model.safetensors");
        let build = |loras: Vec<mlc::lora::LoraSpec>, out: &str| {
            let mut o = mlc::compiler::BuildOptions::new("sdxl-unet", &weights);
            o.sizes = mlc::compiler::Sizes::Latent(vec![[16, 16]]);
            o.loras = loras;
            o.output = Some(dir.path().join(out));
            mlc::compiler::build(&o).unwrap()
        };
        let fused = build(
            vec![mlc::lora::LoraSpec {
                path: file,
                weight: 1.0,
            }],
            "fused.mlpackage",
        );
        let base = build(Vec::new(), "base.mlpackage");
        assert_eq!(fused.loras.len(), 1);
        assert_eq!(fused.loras[0].modules, tensors.len() / 3);
        assert!(fused.loras[0].skipped.is_empty());
        assert_ne!(fused.weights_sha256, base.weights_sha256);
    }
}
