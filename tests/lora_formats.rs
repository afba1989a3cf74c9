//! LoRA key forms mlc reads, each written by this test on the sd15 UNet fixture with small random
//! factors: LyCORIS LoHa (with a Tucker conv) and LoKr (every split of its two sides, a Tucker
//! conv), the old diffusers attention-processor form, PEFT with per-module alphas in its
//! metadata, and a kohya file saved as a `.ckpt`. The expected change is formed here in plain
//! loops with the published formulas (ComfyUI's `weight_adapter/loha.py` and `lokr.py`, kohya's
//! `alpha / rank`), fused into a copy of the weights, and the package built from that copy must
//! evaluate like the package built with `--lora` (fp32, ≤ 1e-5 of the output's largest
//! magnitude), while the LoRA must move the output (> 1e-3) so the test can fail; the same for
//! a file's text-encoder parts on CLIP-L. Then the refusals: DoRA, keys naming nothing,
//! misfits, non-finite values, a fused f16 weight past fp16's range, files that are not LoRAs;
//! each one line naming the file and the key, and nothing left where the package would go.

mod common;

use common::*;
use mlc::compiler::{build, BuildOptions, Precision, Sizes};
use mlc::kernels::Array;
use mlc::lora::LoraSpec;
use mlc::tensor::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Tensors = BTreeMap<String, Tensor>;

/// Weights of the sd15 fixture the LoRAs adapt (diffusers keys; the shapes are the fixture's).
const Q: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"; // [32, 32]
const K2: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"; // [32, 64]
const FF: &str = "down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight"; // [256, 32]
const PROJ_IN: &str = "down_blocks.0.attentions.0.proj_in.weight"; // [32, 32, 1, 1]
const CONV: &str = "down_blocks.1.resnets.0.conv1.weight"; // [32, 32, 3, 3]
const MID_OUT: &str = "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0.weight"; // [64, 64]
const UP_V: &str = "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v.weight"; // [64, 64]
const UP_CONV: &str = "up_blocks.2.resnets.1.conv2.weight"; // [32, 32, 3, 3]
const MID_FF: &str = "mid_block.attentions.0.transformer_blocks.0.ff.net.2.weight"; // [64, 256]

fn sd15() -> PathBuf {
    shared("fixtures/unet/sd15/diffusers/diffusion_pytorch_model.safetensors")
}

/// The fixture case's inputs (`b2_16x16`).
fn inputs() -> BTreeMap<String, Array> {
    let mut all =
        mlc::run::read_safetensors(&shared("fixtures/unet/sd15/b2_16x16.safetensors")).unwrap();
    ["sample", "timestep", "encoder_hidden_states"]
        .into_iter()
        .map(|k| (k.to_string(), all.remove(k).unwrap()))
        .collect()
}

fn rand(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    Tensor::f32(shape.to_vec(), random(shape.iter().product(), seed, scale))
}

fn scalar(v: f32) -> Tensor {
    Tensor::f32(vec![], vec![v])
}

/// kohya's module name of a diffusers weight key (`lora_unet_` + the path with `_` for `.`).
fn kohya(key: &str) -> String {
    format!(
        "lora_unet_{}",
        key.strip_suffix(".weight").unwrap().replace('.', "_")
    )
}

/// PEFT's module name of a diffusers weight key.
fn peft(key: &str) -> String {
    format!("unet.{}", key.strip_suffix(".weight").unwrap())
}

/// `a [n, r] · b [r, m]` (trailing dims of `b` folded into m), in plain loops.
fn mm(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let (n, r) = (a.shape[0], a.shape[1]);
    assert_eq!(b.shape[0], r);
    let m = b.len() / r;
    let (a, b) = (a.to_f32(), b.to_f32());
    let mut out = vec![0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let mut s = 0f32;
            for k in 0..r {
                s += a[i * r + k] * b[k * m + j];
            }
            out[i * m + j] = s;
        }
    }
    out
}

/// `einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)`: [out = p, in = r, k, l].
fn tucker(t: &Tensor, w_b: &Tensor, w_a: &Tensor) -> Vec<f32> {
    let [ni, nj, nk, nl] = [t.shape[0], t.shape[1], t.shape[2], t.shape[3]];
    let (nr, np) = (w_b.shape[1], w_a.shape[1]);
    let (t, b, a) = (t.to_f32(), w_b.to_f32(), w_a.to_f32());
    let mut out = vec![0f32; np * nr * nk * nl];
    for p in 0..np {
        for r in 0..nr {
            for k in 0..nk {
                for l in 0..nl {
                    let mut s = 0f32;
                    for i in 0..ni {
                        for j in 0..nj {
                            s +=
                                t[((i * nj + j) * nk + k) * nl + l] * b[j * nr + r] * a[i * np + p];
                        }
                    }
                    out[((p * nr + r) * nk + k) * nl + l] = s;
                }
            }
        }
    }
    out
}

/// `torch.kron(w1, w2)` for `w1` [a, b] (as [a, b, 1, 1] beside a 4-D `w2`) and `w2` [c, d, ...].
fn kron(w1: &[f32], [a, b]: [usize; 2], w2: &[f32], w2_shape: &[usize]) -> Vec<f32> {
    let (c, d) = (w2_shape[0], w2_shape[1]);
    let k: usize = w2_shape[2..].iter().product();
    let mut out = vec![0f32; a * c * b * d * k];
    for i1 in 0..a {
        for j1 in 0..b {
            for i2 in 0..c {
                for j2 in 0..d {
                    for q in 0..k {
                        out[((i1 * c + i2) * (b * d) + j1 * d + j2) * k + q] =
                            w1[i1 * b + j1] * w2[(i2 * d + j2) * k + q];
                    }
                }
            }
        }
    }
    out
}

fn times(v: Vec<f32>, s: f32) -> Vec<f32> {
    v.into_iter().map(|x| x * s).collect()
}

fn hadamard(a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    assert_eq!(a.len(), b.len());
    a.into_iter().zip(b).map(|(x, y)| x * y).collect()
}

/// A LoRA file the test wrote and what it must change: by model key, ΔW times the file's own
/// scale (before the LoRA's weight).
struct Written {
    tag: &'static str,
    file: PathBuf,
    weight: f32,
    deltas: BTreeMap<String, Vec<f32>>,
}

/// LyCORIS LoHa: linears (one without alpha: scale 1, as ComfyUI and A1111 do; one with alpha
/// 0: no change), a 1x1 conv from 2-D factors, and a 3x3 conv with the Tucker cores
/// `hada_t1`/`hada_t2`.
fn loha(dir: &Path) -> Written {
    let (mut t, mut d) = (Tensors::new(), BTreeMap::new());
    let mut seed = 100;
    let mut r = |shape: &[usize], scale: f32| {
        seed += 1;
        rand(shape, seed, scale)
    };
    for (key, out, inp, rank, alpha) in [
        (Q, 32, 32, 4, Some(2.0)),
        (K2, 32, 64, 2, None),
        (FF, 256, 32, 4, Some(8.0)),
        (PROJ_IN, 32, 32, 3, Some(3.0)),
        (MID_FF, 64, 256, 2, Some(0.0)), // alpha 0: no change, as in ComfyUI
    ] {
        let (w1a, w1b) = (r(&[out, rank], 0.5), r(&[rank, inp], 0.5));
        let (w2a, w2b) = (r(&[out, rank], 0.5), r(&[rank, inp], 0.5));
        let scale = alpha.map_or(1.0, |a| a / rank as f32);
        d.insert(
            key.to_string(),
            times(hadamard(mm(&w1a, &w1b), mm(&w2a, &w2b)), scale),
        );
        let m = kohya(key);
        for (s, v) in [("w1_a", w1a), ("w1_b", w1b), ("w2_a", w2a), ("w2_b", w2b)] {
            t.insert(format!("{m}.hada_{s}"), v);
        }
        if let Some(a) = alpha {
            t.insert(format!("{m}.alpha"), scalar(a));
        }
    }
    // Tucker: w_a is [rank, out], w_b [rank, in], t [rank, rank, 3, 3].
    let rank = 3;
    let m = kohya(CONV);
    let (t1, w1a, w1b) = (
        r(&[rank, rank, 3, 3], 0.5),
        r(&[rank, 32], 0.5),
        r(&[rank, 32], 0.5),
    );
    let (t2, w2a, w2b) = (
        r(&[rank, rank, 3, 3], 0.5),
        r(&[rank, 32], 0.5),
        r(&[rank, 32], 0.5),
    );
    d.insert(
        CONV.to_string(),
        times(
            hadamard(tucker(&t1, &w1b, &w1a), tucker(&t2, &w2b, &w2a)),
            1.5 / rank as f32,
        ),
    );
    for (s, v) in [
        ("t1", t1),
        ("w1_a", w1a),
        ("w1_b", w1b),
        ("t2", t2),
        ("w2_a", w2a),
        ("w2_b", w2b),
    ] {
        t.insert(format!("{m}.hada_{s}"), v);
    }
    t.insert(format!("{m}.alpha"), scalar(1.5));
    let file = dir.join("loha.safetensors");
    write_safetensors(&file, &t);
    Written {
        tag: "loha",
        file,
        weight: 0.8,
        deltas: d,
    }
}

/// LyCORIS LoKr: `w1` whole with `w2` a pair, `w1` a pair with `w2` whole (both scaled
/// alpha / dim), both whole (scale 1 whatever the alpha says), and a 3x3 conv whose `w2` is a
/// Tucker pair with `lokr_t2`.
fn lokr(dir: &Path) -> Written {
    let (mut t, mut d) = (Tensors::new(), BTreeMap::new());
    let mut seed = 200;
    let mut r = |shape: &[usize], scale: f32| {
        seed += 1;
        rand(shape, seed, scale)
    };
    // K2 [32, 64] = kron(w1 [4, 8], w2_a [8, 2] · w2_b [2, 8]); alpha 1, dim 2.
    let m = kohya(K2);
    let (w1, w2a, w2b) = (r(&[4, 8], 0.5), r(&[8, 2], 0.5), r(&[2, 8], 0.5));
    let w2 = mm(&w2a, &w2b);
    d.insert(
        K2.to_string(),
        times(kron(&w1.to_f32(), [4, 8], &w2, &[8, 8]), 1.0 / 2.0),
    );
    t.insert(format!("{m}.lokr_w1"), w1);
    t.insert(format!("{m}.lokr_w2_a"), w2a);
    t.insert(format!("{m}.lokr_w2_b"), w2b);
    t.insert(format!("{m}.alpha"), scalar(1.0));
    // FF [256, 32] = kron(w1_a [16, 3] · w1_b [3, 4], w2 [16, 8]); alpha 6, dim 3.
    let m = kohya(FF);
    let (w1a, w1b, w2) = (r(&[16, 3], 0.5), r(&[3, 4], 0.5), r(&[16, 8], 0.5));
    let w1 = mm(&w1a, &w1b);
    d.insert(
        FF.to_string(),
        times(kron(&w1, [16, 4], &w2.to_f32(), &[16, 8]), 6.0 / 3.0),
    );
    t.insert(format!("{m}.lokr_w1_a"), w1a);
    t.insert(format!("{m}.lokr_w1_b"), w1b);
    t.insert(format!("{m}.lokr_w2"), w2);
    t.insert(format!("{m}.alpha"), scalar(6.0));
    // MID_OUT [64, 64] = kron(w1 [8, 8], w2 [8, 8]): both whole, so alpha 100 is not applied.
    let m = kohya(MID_OUT);
    let (w1, w2) = (r(&[8, 8], 0.5), r(&[8, 8], 0.5));
    d.insert(
        MID_OUT.to_string(),
        kron(&w1.to_f32(), [8, 8], &w2.to_f32(), &[8, 8]),
    );
    t.insert(format!("{m}.lokr_w1"), w1);
    t.insert(format!("{m}.lokr_w2"), w2);
    t.insert(format!("{m}.alpha"), scalar(100.0));
    // UP_CONV [32, 32, 3, 3] = kron(w1 [4, 4], tucker(t2 [2, 2, 3, 3], w2_b [2, 8], w2_a [2, 8])).
    let m = kohya(UP_CONV);
    let (w1, t2, w2a, w2b) = (
        r(&[4, 4], 0.5),
        r(&[2, 2, 3, 3], 0.5),
        r(&[2, 8], 0.5),
        r(&[2, 8], 0.5),
    );
    let w2 = tucker(&t2, &w2b, &w2a);
    d.insert(
        UP_CONV.to_string(),
        times(kron(&w1.to_f32(), [4, 4], &w2, &[8, 8, 3, 3]), 1.0 / 2.0),
    );
    t.insert(format!("{m}.lokr_w1"), w1);
    t.insert(format!("{m}.lokr_t2"), t2);
    t.insert(format!("{m}.lokr_w2_a"), w2a);
    t.insert(format!("{m}.lokr_w2_b"), w2b);
    t.insert(format!("{m}.alpha"), scalar(1.0));
    let file = dir.join("lokr.safetensors");
    write_safetensors(&file, &t);
    Written {
        tag: "lokr",
        file,
        weight: 1.0,
        deltas: d,
    }
}

/// The old diffusers attention processors (`attn1.processor.to_q_lora.down.weight`, no alpha:
/// scale 1), `to_out_lora` adapting `to_out.0`; one block written without the `unet.` prefix
/// as the oldest files did.
fn processor(dir: &Path) -> Written {
    let (mut t, mut d) = (Tensors::new(), BTreeMap::new());
    let mut seed = 300;
    let blocks = [
        (
            "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
            32,
            32,
        ),
        (
            "mid_block.attentions.0.transformer_blocks.0.attn2",
            "mid_block.attentions.0.transformer_blocks.0.attn2",
            64,
            64,
        ),
    ];
    for (prefix, module, ch, ctx) in blocks {
        for (proj, target, inp) in [
            ("to_q_lora", "to_q", ch),
            ("to_k_lora", "to_k", ctx),
            ("to_v_lora", "to_v", ctx),
            ("to_out_lora", "to_out.0", ch),
        ] {
            seed += 2;
            let (down, up) = (rand(&[4, inp], seed, 0.3), rand(&[ch, 4], seed + 1, 0.3));
            d.insert(format!("{module}.{target}.weight"), mm(&up, &down));
            t.insert(format!("{prefix}.processor.{proj}.down.weight"), down);
            t.insert(format!("{prefix}.processor.{proj}.up.weight"), up);
        }
    }
    let file = dir.join("processor.safetensors");
    write_safetensors(&file, &t);
    Written {
        tag: "processor",
        file,
        weight: -0.7,
        deltas: d,
    }
}

/// PEFT (`unet.<module>.lora_A.weight` / `lora_B.weight`) with diffusers' metadata: `r` 4,
/// `lora_alpha` 8, an `alpha_pattern` naming one module by its full path and one by a dotted
/// suffix, and a rank-2 module from `rank_pattern` (scale alpha / its own rank).
fn peft_file(dir: &Path) -> Written {
    let (mut t, mut d) = (Tensors::new(), BTreeMap::new());
    let mut seed = 400;
    for (key, rank, alpha) in [
        (Q, 4, 8.0),       // lora_alpha
        (K2, 4, 2.0),      // alpha_pattern by full path
        (UP_V, 4, 12.0),   // alpha_pattern by suffix "attentions.2.transformer_blocks.0.attn2.to_v"
        (MID_FF, 2, 8.0),  // rank_pattern 2, lora_alpha 8: scale 4
        (PROJ_IN, 4, 8.0), // a 1x1 conv: [r, in, 1, 1] and [out, r, 1, 1]
    ] {
        let (out, inp) = match key {
            K2 => (32, 64),
            UP_V => (64, 64),
            MID_FF => (64, 256),
            _ => (32, 32),
        };
        seed += 2;
        let trail: &[usize] = if key == PROJ_IN { &[1, 1] } else { &[] };
        let a = rand(&[&[rank, inp][..], trail].concat(), seed, 0.3);
        let b = rand(&[&[out, rank][..], trail].concat(), seed + 1, 0.3);
        let b2 = Tensor::f32(vec![out, rank], b.to_f32());
        d.insert(key.to_string(), times(mm(&b2, &a), alpha / rank as f32));
        t.insert(format!("{}.lora_A.weight", peft(key)), a);
        t.insert(format!("{}.lora_B.weight", peft(key)), b);
    }
    let meta = serde_json::json!({
        "unet.r": 4,
        "unet.lora_alpha": 8,
        "unet.target_modules": ["to_q", "to_k", "to_v", "proj_in", "ff.net.2"],
        "unet.rank_pattern": { "mid_block.attentions.0.transformer_blocks.0.ff.net.2": 2 },
        "unet.alpha_pattern": {
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": 2,
            "attentions.2.transformer_blocks.0.attn2.to_v": 12,
        },
        "unet.use_dora": false,
    });
    let file = dir.join("peft.safetensors");
    write_with_metadata(&file, &t, &meta.to_string());
    Written {
        tag: "peft",
        file,
        weight: 0.5,
        deltas: d,
    }
}

/// kohya (`lora_down`/`lora_up`/`alpha`, LoCon on a 3x3 conv, a 1x1 conv) saved by
/// `torch.save` as a `.ckpt`; an alpha of 0 means alpha = rank, as sd-scripts reads it.
fn kohya_ckpt(dir: &Path) -> Written {
    let (mut t, mut d) = (Tensors::new(), BTreeMap::new());
    let mut seed = 500;
    for (key, out, inp, trail, alpha) in [
        (UP_V, 64, 64, &[][..], 2.0),
        (FF, 256, 32, &[][..], 0.0), // alpha 0 reads as alpha = rank, as kohya trains
        (PROJ_IN, 32, 32, &[1, 1][..], 4.0),
        (CONV, 32, 32, &[3, 3][..], 2.0),
    ] {
        let rank = 4;
        seed += 2;
        let down = rand(&[&[rank, inp][..], trail].concat(), seed, 0.3);
        let up_trail: &[usize] = if trail.is_empty() { &[] } else { &[1, 1] };
        let up = rand(&[&[out, rank][..], up_trail].concat(), seed + 1, 0.3);
        let up2 = Tensor::f32(vec![out, rank], up.to_f32());
        let scale = if alpha == 0.0 {
            1.0
        } else {
            alpha / rank as f32
        };
        d.insert(key.to_string(), times(mm(&up2, &down), scale));
        let m = kohya(key);
        t.insert(format!("{m}.lora_down.weight"), down);
        t.insert(format!("{m}.lora_up.weight"), up);
        t.insert(format!("{m}.alpha"), scalar(alpha));
    }
    let file = dir.join("kohya.ckpt");
    write_ckpt(&file, &t);
    Written {
        tag: "kohya_ckpt",
        file,
        weight: 1.2,
        deltas: d,
    }
}

/// Writes f32 tensors to a safetensors file with `lora_adapter_metadata` (diffusers' PEFT
/// export).
fn write_with_metadata(path: &Path, tensors: &Tensors, meta: &str) {
    let meta = std::collections::HashMap::from([
        ("lora_adapter_metadata".to_string(), meta.to_string()),
        ("format".to_string(), "pt".to_string()),
    ]);
    write_safetensors_with(path, tensors, Some(meta));
}

/// The fixture's weights with `w`'s deltas added at its weight, as f32, in `dir` beside a copy
/// of the fixture's config.json.
fn fused_copy(base: &BTreeMap<String, Array>, w: &Written, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut t: Tensors = base
        .iter()
        .map(|(k, a)| (k.clone(), Tensor::f32(a.shape.clone(), a.data.clone())))
        .collect();
    for (key, delta) in &w.deltas {
        let a = &base[key];
        assert_eq!(a.data.len(), delta.len(), "{}: {key}", w.tag);
        let fused: Vec<f32> = a
            .data
            .iter()
            .zip(delta)
            .map(|(v, d)| v + w.weight * d)
            .collect();
        t.insert(key.clone(), Tensor::f32(a.shape.clone(), fused));
    }
    std::fs::copy(
        sd15().with_file_name("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let path = dir.join("diffusion_pytorch_model.safetensors");
    write_safetensors(&path, &t);
    path
}

/// A 16x16 fp32 sd-unet package of `weights` with `loras`, written to `out`.
fn options(weights: &Path, loras: Vec<LoraSpec>, out: PathBuf) -> BuildOptions {
    let mut o = BuildOptions::new("sd-unet", weights);
    o.precision = Precision::Fp32;
    o.io_precision = Some(Precision::Fp32);
    o.sizes = Sizes::Latent(vec![[16, 16]]);
    o.loras = loras;
    o.output = Some(out);
    o
}

/// `noise_pred` of the package [`options`] describes, on the fixture case.
fn noise_pred(o: &BuildOptions, inputs: &BTreeMap<String, Array>) -> Array {
    let pkg = build(o).unwrap().package;
    let mut r = mlc::run::run_path(&pkg, inputs).unwrap();
    r.remove("noise_pred").unwrap()
}

#[test]
fn every_key_form_fuses_like_its_published_formula() {
    let out = out_dir("lora_formats");
    let work = tempfile::tempdir().unwrap();
    let inputs = inputs();
    let base = mlc::run::read_safetensors(&sd15()).unwrap();
    let plain = noise_pred(
        &options(&sd15(), vec![], out.join("base.mlpackage")),
        &inputs,
    );
    let mut report = String::new();
    let mut failed = Vec::new();
    for w in [
        loha(work.path()),
        lokr(work.path()),
        processor(work.path()),
        peft_file(work.path()),
        kohya_ckpt(work.path()),
    ] {
        let spec = LoraSpec {
            path: w.file.clone(),
            weight: w.weight,
        };
        let r = build(&options(
            &sd15(),
            vec![spec],
            out.join(format!("{}.mlpackage", w.tag)),
        ));
        let got = match r {
            Ok(r) => {
                assert_eq!(r.loras.len(), 1, "{}", w.tag);
                let changed = r.loras[0].modules;
                if changed != w.deltas.len() {
                    failed.push(format!(
                        "{}: {changed} weights changed, {} written",
                        w.tag,
                        w.deltas.len()
                    ));
                }
                let mut e = mlc::run::run_path(&r.package, &inputs).unwrap();
                e.remove("noise_pred").unwrap()
            }
            Err(e) => {
                failed.push(format!("{}: {e}", w.tag));
                continue;
            }
        };
        // The twin is only a reference: built outside `out`, so the round trip skips it.
        let twin_weights = fused_copy(&base, &w, &work.path().join(w.tag));
        let twin = noise_pred(
            &options(
                &twin_weights,
                vec![],
                work.path().join(format!("{}_twin.mlpackage", w.tag)),
            ),
            &inputs,
        );
        let e = relative_error(&got, &twin);
        let moved = relative_error(&got, &plain);
        report += &format!(
            "{}: against the fused twin {e:.2e}, against the base {moved:.2e}\n",
            w.tag
        );
        if e > 1e-5 || moved <= 1e-3 {
            failed.push(format!("{}: twin {e:.2e}, base {moved:.2e}", w.tag));
        }
    }
    eprintln!("{report}");
    assert!(failed.is_empty(), "{failed:#?}\n{report}");
}

/// A kohya low-rank pair for `module` (`lora_unet_...`): down [rank, inp], up [out, up_rank].
fn pair(t: &mut Tensors, module: &str, [out, inp]: [usize; 2], rank: usize, up_rank: usize) {
    t.insert(
        format!("{module}.lora_down.weight"),
        rand(&[rank, inp], 7, 0.3),
    );
    t.insert(
        format!("{module}.lora_up.weight"),
        rand(&[out, up_rank], 8, 0.3),
    );
    t.insert(format!("{module}.alpha"), scalar(1.0));
}

/// Every file in `dir`, hidden ones too, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The one-line error of `o` (its output in `dir`), which must name every one of `needles`
/// and leave `dir` as it was: no package, no temporary sibling.
fn refused(o: &BuildOptions, dir: &Path, needles: &[&str]) -> String {
    let before = listing(dir);
    let e = one_line_error(o);
    assert_eq!(listing(dir), before, "a refused build left files: {e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} is not in: {e}");
    }
    e
}

/// DoRA in each of its spellings: kohya's `.dora_scale`, PEFT's `lora_magnitude_vector`, and
/// diffusers' metadata flag; each named with the key that says so.
#[test]
fn dora_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.mlpackage");
    let m = kohya(Q);
    let mut t = Tensors::new();
    pair(&mut t, &m, [32, 32], 4, 4);
    t.insert(format!("{m}.dora_scale"), rand(&[32, 1], 9, 1.0));
    let file = dir.path().join("dora.safetensors");
    write_safetensors(&file, &t);
    let spec = |p: &Path| LoraSpec {
        path: p.to_path_buf(),
        weight: 1.0,
    };
    let key = format!("{m}.dora_scale");
    let o = options(&sd15(), vec![spec(&file)], out.clone());
    refused(&o, dir.path(), &["dora.safetensors", "DoRA", &key]);

    let mut t = Tensors::new();
    t.insert(format!("{}.lora_A.weight", peft(Q)), rand(&[4, 32], 1, 0.3));
    t.insert(format!("{}.lora_B.weight", peft(Q)), rand(&[32, 4], 2, 0.3));
    let plain = t.clone();
    let key = format!("{}.lora_magnitude_vector", peft(Q));
    t.insert(key.clone(), rand(&[32], 3, 1.0));
    let file = dir.path().join("peft_dora.safetensors");
    write_safetensors(&file, &t);
    let o = options(&sd15(), vec![spec(&file)], out.clone());
    refused(&o, dir.path(), &["peft_dora.safetensors", "DoRA", &key]);

    let meta = r#"{"unet.r": 4, "unet.lora_alpha": 4, "unet.use_dora": true}"#;
    let file = dir.path().join("peft_dora_meta.safetensors");
    write_with_metadata(&file, &plain, meta);
    let o = options(&sd15(), vec![spec(&file)], out.clone());
    refused(
        &o,
        dir.path(),
        &["peft_dora_meta.safetensors", "DoRA", "unet.use_dora"],
    );
    // Rank-stabilised LoRA scales by alpha / sqrt(r): refused the same way, not fused wrong.
    let meta = r#"{"unet.r": 4, "unet.lora_alpha": 4, "unet.use_rslora": true}"#;
    let file = dir.path().join("peft_rslora.safetensors");
    write_with_metadata(&file, &plain, meta);
    let o = options(&sd15(), vec![spec(&file)], out);
    refused(
        &o,
        dir.path(),
        &["peft_rslora.safetensors", "unet.use_rslora"],
    );
}

/// What a LoRA cannot be fused with: one line naming the file and the key at fault, before
/// anything is written.
#[test]
fn broken_loras_are_refused_in_one_line_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.mlpackage");
    let lora_of = |name: &str, t: &Tensors| {
        let file = dir.path().join(name);
        write_safetensors(&file, t);
        vec![LoraSpec {
            path: file,
            weight: 1.0,
        }]
    };
    // (file, tensors, what the error names besides the file)
    let mut cases: Vec<(&str, Tensors, Vec<String>)> = Vec::new();
    let mut t = Tensors::new();
    let nowhere = "lora_unet_down_blocks_9_attentions_0_proj_in";
    pair(&mut t, nowhere, [32, 32], 4, 4);
    cases.push((
        "nowhere.safetensors",
        t,
        vec![
            format!("{nowhere}.lora_down.weight"),
            "down_blocks_9".into(),
        ],
    ));
    let mut t = Tensors::new();
    t.insert(
        "unet.down_blocks.9.attentions.0.proj_in.lora_A.weight".into(),
        rand(&[4, 32], 1, 0.3),
    );
    t.insert(
        "unet.down_blocks.9.attentions.0.proj_in.lora_B.weight".into(),
        rand(&[32, 4], 2, 0.3),
    );
    cases.push((
        "nowhere_peft.safetensors",
        t,
        vec!["unet.down_blocks.9.attentions.0.proj_in.lora_A.weight".into()],
    ));
    // attn2.to_k is [32, 64]: a down for 32 inputs does not fit.
    let mut t = Tensors::new();
    pair(&mut t, &kohya(K2), [32, 32], 4, 4);
    cases.push((
        "misfit.safetensors",
        t,
        vec![
            format!("{}.lora_down.weight", kohya(K2)),
            "does not fit".into(),
            K2.into(),
        ],
    ));
    let mut t = Tensors::new();
    pair(&mut t, &kohya(Q), [32, 32], 4, 2);
    cases.push((
        "ranks.safetensors",
        t,
        vec![
            format!("{}.lora_down.weight", kohya(Q)),
            "rank disagrees".into(),
        ],
    ));
    let mut t = Tensors::new();
    pair(&mut t, &kohya(Q), [32, 32], 4, 4);
    let up = format!("{}.lora_up.weight", kohya(Q));
    let mut v = t[&up].to_f32();
    v[17] = f32::NAN;
    t.insert(up.clone(), Tensor::f32(vec![32, 4], v));
    cases.push(("nan.safetensors", t, vec![up, "not finite".into()]));
    // LoKr whose kron makes [32, 64] for the [32, 32] to_q.
    let mut t = Tensors::new();
    let m = kohya(Q);
    t.insert(format!("{m}.lokr_w1"), rand(&[4, 8], 1, 0.5));
    t.insert(format!("{m}.lokr_w2"), rand(&[8, 8], 2, 0.5));
    cases.push(("lokr_misfit.safetensors", t, vec![format!("{m}.lokr_w1")]));
    // LoHa missing a factor.
    let mut t = Tensors::new();
    for s in ["w1_a", "w1_b", "w2_a"] {
        t.insert(format!("{m}.hada_{s}"), rand(&[32, 32], 1, 0.5));
    }
    cases.push((
        "loha_half.safetensors",
        t,
        vec![format!("{m}.hada_w1_a"), "missing".into()],
    ));
    // The same weight adapted twice in one file, in two key forms.
    let mut t = Tensors::new();
    pair(&mut t, &kohya(Q), [32, 32], 4, 4);
    t.insert(format!("{}.lora_A.weight", peft(Q)), rand(&[4, 32], 1, 0.3));
    t.insert(format!("{}.lora_B.weight", peft(Q)), rand(&[32, 4], 2, 0.3));
    cases.push((
        "twice.safetensors",
        t,
        vec![Q.into(), "second module".into()],
    ));
    // LoCon's Tucker middle, which mlc does not form.
    let mut t = Tensors::new();
    pair(&mut t, &kohya(CONV), [32, 32], 4, 4);
    let mid = format!("{}.lora_mid.weight", kohya(CONV));
    t.insert(mid.clone(), rand(&[4, 4, 3, 3], 3, 0.3));
    cases.push(("locon_mid.safetensors", t, vec![mid, "lora_mid".into()]));
    let mut report = String::new();
    for (name, t, needles) in &cases {
        let o = options(&sd15(), lora_of(name, t), out.clone());
        let mut all: Vec<&str> = vec![name];
        all.extend(needles.iter().map(String::as_str));
        report += &format!("{}\n", refused(&o, dir.path(), &all));
    }

    // A LoRA that pushes an f16 weight past fp16's range: refused in an fp16 build by the LoRA
    // (not as an infinity of the model's file), fused in an fp32 build.
    let mut t = Tensors::new();
    let m = kohya(Q);
    t.insert(
        format!("{m}.lora_down.weight"),
        Tensor::f32(vec![4, 32], vec![200.0; 128]),
    );
    t.insert(
        format!("{m}.lora_up.weight"),
        Tensor::f32(vec![32, 4], vec![200.0; 128]),
    );
    let huge = lora_of("huge.safetensors", &t);
    let mut o = options(&sd15(), huge.clone(), out.clone());
    o.precision = Precision::Fp16;
    let e = refused(
        &o,
        dir.path(),
        &["huge.safetensors", Q, "fp16", "65504", "fp32 precision"],
    );
    assert!(!e.contains("infinite"), "{e}");
    report += &format!("{e}\n");
    let o = options(&sd15(), huge, out.clone());
    build(&o).unwrap();
    std::fs::remove_dir_all(&out).unwrap();

    // A whole model passed as a LoRA: its first key is not a LoRA key.
    let o = options(
        &sd15(),
        vec![LoraSpec {
            path: sd15(),
            weight: 1.0,
        }],
        out.clone(),
    );
    report += &format!(
        "{}\n",
        refused(
            &o,
            dir.path(),
            &[
                "diffusion_pytorch_model.safetensors",
                "conv_in.bias",
                "prefix"
            ]
        )
    );
    // A truncated file, bytes that are no weights, a missing file.
    let kohya_sd15 = shared("fixtures/unet/lora/kohya_sd15.safetensors");
    let bytes = std::fs::read(&kohya_sd15).unwrap();
    let ckpt = dir.path().join("whole.ckpt");
    let mut t = Tensors::new();
    pair(&mut t, &kohya(Q), [32, 32], 4, 4);
    write_ckpt(&ckpt, &t);
    let ckpt = std::fs::read(&ckpt).unwrap();
    for (name, content) in [
        ("truncated.safetensors", &bytes[..bytes.len() / 2]),
        ("noise.safetensors", &b"not a LoRA at all, just text"[..]),
        ("truncated.ckpt", &ckpt[..ckpt.len() - 100]),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        let o = options(
            &sd15(),
            vec![LoraSpec {
                path: file,
                weight: 1.0,
            }],
            out.clone(),
        );
        report += &format!("{}\n", refused(&o, dir.path(), &[name]));
    }
    let missing = dir.path().join("missing.safetensors");
    let o = options(
        &sd15(),
        vec![LoraSpec {
            path: missing,
            weight: 1.0,
        }],
        out.clone(),
    );
    report += &format!(
        "{}\n",
        refused(&o, dir.path(), &["missing.safetensors", "not found"])
    );

    // A UNet-only LoRA on the text encoder: nothing for it, said with what the file holds.
    let b = shared("fixtures/unet/lora/kohya_sd15_b.safetensors");
    let mut o = BuildOptions::new("clip-l", shared("fixtures/clip/clip_l/model.safetensors"));
    o.loras = vec![LoraSpec {
        path: b,
        weight: 1.0,
    }];
    o.output = Some(out.clone());
    report += &format!(
        "{}\n",
        refused(
            &o,
            dir.path(),
            &["kohya_sd15_b.safetensors", "clip-l", "216 for unet"]
        )
    );
    // Models whose weights no LoRA names do not take the option.
    for (model, weights) in [
        (
            "sd-vae",
            shared("fixtures/vae/sd/diffusers/diffusion_pytorch_model.safetensors"),
        ),
        ("taesd", shared("weights/taef2_decoder.safetensors")),
    ] {
        let mut o = BuildOptions::new(model, weights);
        o.loras = vec![LoraSpec {
            path: kohya_sd15.clone(),
            weight: 1.0,
        }];
        o.output = Some(out.clone());
        report += &format!(
            "{}\n",
            refused(&o, dir.path(), &[model, "does not take --lora"])
        );
    }
    eprintln!("{report}");
}

/// The text-encoder part of a file on CLIP-L: PEFT `text_encoder.` keys with their own
/// `text_encoder.lora_alpha` (the file's `unet.` part, another alpha, skipped and counted) and
/// a kohya `lora_te_` LoKr, against the same change fused into a copy of the weights.
#[test]
fn text_encoder_parts_fuse_like_their_formulas() {
    let out = out_dir("lora_formats_clip");
    let work = tempfile::tempdir().unwrap();
    let weights = shared("fixtures/clip/clip_l/model.safetensors");
    let base = mlc::run::read_safetensors(&weights).unwrap();
    let all =
        mlc::run::read_safetensors(&shared("fixtures/clip/clip_l/short.safetensors")).unwrap();
    let ids = BTreeMap::from([("input_ids".to_string(), all["input_ids"].clone())]);
    let (mut t, mut d) = (Tensors::new(), BTreeMap::new());
    // PEFT on q_proj and fc2 of layer 1: text_encoder.lora_alpha 2 over rank 4.
    for (i, (module, out_f, in_f)) in [
        ("encoder.layers.1.self_attn.q_proj", 64, 64),
        ("encoder.layers.1.mlp.fc2", 64, 256),
    ]
    .into_iter()
    .enumerate()
    {
        let (a, b) = (
            rand(&[4, in_f], 600 + 2 * i as u64, 0.3),
            rand(&[out_f, 4], 601 + 2 * i as u64, 0.3),
        );
        d.insert(format!("{module}.weight"), times(mm(&b, &a), 2.0 / 4.0));
        t.insert(format!("text_encoder.text_model.{module}.lora_A.weight"), a);
        t.insert(format!("text_encoder.text_model.{module}.lora_B.weight"), b);
    }
    // A UNet module in the same file: skipped when building the text encoder.
    t.insert(
        format!("{}.lora_A.weight", peft(Q)),
        rand(&[4, 32], 610, 0.3),
    );
    t.insert(
        format!("{}.lora_B.weight", peft(Q)),
        rand(&[32, 4], 611, 0.3),
    );
    let meta = r#"{"unet.r": 4, "unet.lora_alpha": 16, "text_encoder.r": 4, "text_encoder.lora_alpha": 2}"#;
    let peft_file = work.path().join("peft_te.safetensors");
    write_with_metadata(&peft_file, &t, meta);
    // kohya LoKr on fc1 of layer 0 [256, 64] = kron(w1 [16, 8], w2_a [16, 2] · w2_b [2, 8]).
    let m = "lora_te_text_model_encoder_layers_0_mlp_fc1";
    let (w1, w2a, w2b) = (
        rand(&[16, 8], 620, 0.5),
        rand(&[16, 2], 621, 0.5),
        rand(&[2, 8], 622, 0.5),
    );
    let lokr_delta = times(
        kron(&w1.to_f32(), [16, 8], &mm(&w2a, &w2b), &[16, 8]),
        3.0 / 2.0,
    );
    let lokr_file = work.path().join("lokr_te.safetensors");
    let lokr: Tensors = [
        (format!("{m}.lokr_w1"), w1),
        (format!("{m}.lokr_w2_a"), w2a),
        (format!("{m}.lokr_w2_b"), w2b),
        (format!("{m}.alpha"), scalar(3.0)),
    ]
    .into_iter()
    .collect();
    write_safetensors(&lokr_file, &lokr);

    let (w_peft, w_lokr) = (0.9, -0.6);
    let build_clip = |weights: &Path, loras: Vec<LoraSpec>, pkg: PathBuf| {
        let mut o = BuildOptions::new("clip-l", weights);
        o.precision = Precision::Fp32;
        o.io_precision = Some(Precision::Fp32);
        o.loras = loras;
        o.output = Some(pkg);
        let r = build(&o).unwrap();
        let got = mlc::run::run_path(&r.package, &ids).unwrap();
        (r.loras, got["last_hidden_state"].clone())
    };
    let (summaries, got) = build_clip(
        &weights,
        vec![
            LoraSpec {
                path: peft_file,
                weight: w_peft,
            },
            LoraSpec {
                path: lokr_file,
                weight: w_lokr,
            },
        ],
        out.join("clip_loras.mlpackage"),
    );
    assert_eq!(summaries[0].modules, 2);
    assert_eq!(summaries[0].skipped, BTreeMap::from([("unet", 2)]));
    assert_eq!(summaries[1].modules, 1);
    let (_, plain) = build_clip(&weights, vec![], out.join("clip_base.mlpackage"));

    // The twin: both LoRAs' changes added to a copy, at their weights.
    let twin_dir = work.path().join("twin");
    std::fs::create_dir_all(&twin_dir).unwrap();
    let mut fused: Tensors = base
        .iter()
        .map(|(k, a)| (k.clone(), Tensor::f32(a.shape.clone(), a.data.clone())))
        .collect();
    let lokr_key = "encoder.layers.0.mlp.fc1.weight".to_string();
    for (key, delta, w) in d
        .iter()
        .map(|(k, v)| (k, v, w_peft))
        .chain(std::iter::once((&lokr_key, &lokr_delta, w_lokr)))
    {
        let a = &base[key];
        let v = a.data.iter().zip(delta).map(|(x, y)| x + w * y).collect();
        fused.insert(key.clone(), Tensor::f32(a.shape.clone(), v));
    }
    let twin_weights = twin_dir.join("model.safetensors");
    write_safetensors(&twin_weights, &fused);
    std::fs::copy(
        weights.with_file_name("config.json"),
        twin_dir.join("config.json"),
    )
    .unwrap();
    let (_, twin) = build_clip(&twin_weights, vec![], twin_dir.join("twin.mlpackage"));
    let e = relative_error(&got, &twin);
    let moved = relative_error(&got, &plain);
    eprintln!("clip-l: against the fused twin {e:.2e}, against the base {moved:.2e}");
    assert!(e <= 1e-5, "{e:.2e}");
    assert!(moved > 1e-3, "{moved:.2e}");
}
