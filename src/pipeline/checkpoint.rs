//! What a checkpoint is: a single file (`v1-5-pruned-emaonly.safetensors`, a fine-tuned `.ckpt`,
//! `sd_xl_base_1.0.safetensors`) or a diffusers folder, and which family its tensors say it is.
//! Only the files' indexes are read here (names, shapes), never a weight.

use std::path::{Path, PathBuf};

/// The family a checkpoint's tensors say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: CLIP ViT-L/14 text encoder in transformers' layout.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14 text encoder.
    Sd2,
    /// SDXL base: CLIP-L and OpenCLIP bigG.
    Sdxl,
    /// SDXL refiner: bigG alone; its UNet goes beside a base's parts (`--refiner`).
    SdxlRefiner,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL base",
            Family::SdxlRefiner => "SDXL refiner",
        }
    }

    /// The command's argument for it (`mlc pipeline sd|sdxl`).
    pub fn command(self) -> &'static str {
        match self {
            Family::Sd1 | Family::Sd2 => "sd",
            Family::Sdxl | Family::SdxlRefiner => "sdxl",
        }
    }

    /// The image side the family was trained at, the default size.
    pub fn image_side(self) -> usize {
        match self {
            Family::Sd1 => 512,
            // SD 2.x's v-prediction models (768-v) are the common ones; the 512 base needs
            // --image-size 512 (the tensors do not tell the two apart).
            Family::Sd2 => 768,
            Family::Sdxl | Family::SdxlRefiner => 1024,
        }
    }
}

/// A diffusers folder's components, by subfolder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Unet,
    Vae,
    TextEncoder,
    TextEncoder2,
}

impl Component {
    pub fn folder(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::Vae => "vae",
            Component::TextEncoder => "text_encoder",
            Component::TextEncoder2 => "text_encoder_2",
        }
    }

    /// The weight file names diffusers and transformers write, preferred first.
    fn files(self) -> &'static [&'static str] {
        match self {
            Component::Unet | Component::Vae => &[
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.fp16.safetensors.index.json",
            ],
            Component::TextEncoder | Component::TextEncoder2 => &[
                "model.safetensors",
                "model.fp16.safetensors",
                "model.safetensors.index.json",
                "model.fp16.safetensors.index.json",
            ],
        }
    }
}

/// Where a checkpoint's parts are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Every part in one file, under its prefix.
    SingleFile(PathBuf),
    /// A diffusers folder (`model_index.json`, one subfolder per component).
    Diffusers(PathBuf),
}

/// A checkpoint whose family is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub layout: Layout,
    pub family: Family,
}

/// Prefixes of a single-file checkpoint's parts (LDM / SGM names).
pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
const SD1_TEXT: &str = "cond_stage_model.transformer.";
const SD2_TEXT: &str = "cond_stage_model.model.";
/// The refiner's only text encoder (bigG), where the base has CLIP-L's `.transformer.`.
const REFINER_TEXT: &str = "conditioner.embedders.0.model.";
const SDXL_TEXT_2: &str = "conditioner.embedders.1.model.";
/// The UNet's first conv: its input channels tell an inpainting UNet (9) from a text-to-image
/// one (4).
const CONV_IN: &str = "input_blocks.0.0.weight";

/// A checkpoint mlc pipeline cannot turn into a Resources folder, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct CheckpointError {
    pub path: String,
    pub reason: String,
}

fn fail<T>(path: &Path, reason: impl Into<String>) -> Result<T, CheckpointError> {
    Err(CheckpointError {
        path: path.display().to_string(),
        reason: reason.into(),
    })
}

impl Checkpoint {
    /// Opens `path` (a file or a diffusers folder) and tells its family from its tensors.
    pub fn detect(path: &Path) -> Result<Checkpoint, CheckpointError> {
        if path.is_dir() {
            return Checkpoint::folder(path);
        }
        let file = crate::weights::open(path).or_else(|e| fail(path, e.to_string()))?;
        let index = file.tensors();
        let has = |prefix: &str| index.keys().any(|k| k.starts_with(prefix));
        let family = if has(SDXL_TEXT_2) {
            Family::Sdxl
        } else if has(REFINER_TEXT) {
            Family::SdxlRefiner
        } else if has(SD2_TEXT) {
            Family::Sd2
        } else if has(SD1_TEXT) {
            Family::Sd1
        } else {
            return fail(
                path,
                format!(
                    "no text encoder under {SD1_TEXT} (SD 1.x), {SD2_TEXT} (SD 2.x) or \
                     {SDXL_TEXT_2} (SDXL): not a Stable Diffusion checkpoint"
                ),
            );
        };
        for (prefix, what) in [(UNET_PREFIX, "UNet"), (VAE_PREFIX, "VAE")] {
            if !has(prefix) {
                return fail(
                    path,
                    format!(
                        "no {what} (no tensor under {prefix}): a {} checkpoint holds one",
                        family.name()
                    ),
                );
            }
        }
        let conv_in = format!("{UNET_PREFIX}{CONV_IN}");
        check_in_channels(path, index.get(&conv_in).map(|i| i.shape.as_slice()))?;
        Ok(Checkpoint {
            layout: Layout::SingleFile(path.to_path_buf()),
            family,
        })
    }

    fn folder(dir: &Path) -> Result<Checkpoint, CheckpointError> {
        let index = dir.join("model_index.json");
        let bytes = crate::limits::read_regular(&index, 1 << 20).or_else(|e| {
            fail(
                dir,
                format!("not a diffusers folder (model_index.json: {e})"),
            )
        })?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).or_else(|e| fail(&index, format!("not JSON: {e}")))?;
        let class = json
            .get("_class_name")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let family = match class {
            "StableDiffusionPipeline" | "StableDiffusionImg2ImgPipeline" => {
                // SD 2.x's folder holds a CLIPTextModel too: its width tells it apart.
                let config = dir.join("text_encoder").join("config.json");
                let hidden = crate::limits::read_regular(&config, 1 << 20)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|j| j.get("hidden_size").and_then(|h| h.as_u64()));
                match hidden {
                    Some(1024) => Family::Sd2,
                    _ => Family::Sd1,
                }
            }
            "StableDiffusionXLPipeline" | "StableDiffusionXLImg2ImgPipeline"
                if dir.join("text_encoder").is_dir() =>
            {
                Family::Sdxl
            }
            "StableDiffusionXLImg2ImgPipeline" => Family::SdxlRefiner,
            "" => return fail(&index, "no _class_name"),
            other => {
                return fail(
                    &index,
                    format!(
                        "_class_name {other:?} is not a Stable Diffusion 1.x/2.x or SDXL pipeline"
                    ),
                )
            }
        };
        let c = Checkpoint {
            layout: Layout::Diffusers(dir.to_path_buf()),
            family,
        };
        let unet = c.file(Component::Unet)?;
        let file = crate::weights::open(&unet).or_else(|e| fail(&unet, e.to_string()))?;
        check_in_channels(
            &unet,
            file.tensors()
                .get("conv_in.weight")
                .map(|i| i.shape.as_slice()),
        )?;
        Ok(c)
    }

    /// The weights file a part is read from: the single file itself (each model finds its
    /// prefix), or the component's file in the folder.
    pub fn file(&self, component: Component) -> Result<PathBuf, CheckpointError> {
        let dir = match &self.layout {
            Layout::SingleFile(p) => return Ok(p.clone()),
            Layout::Diffusers(d) => d.join(component.folder()),
        };
        match component
            .files()
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
        {
            Some(p) => Ok(p),
            None => fail(
                &dir,
                format!(
                    "no {} weights ({})",
                    component.folder(),
                    component.files().join(", ")
                ),
            ),
        }
    }

    /// The folder holding the tokenizer files, when the checkpoint has one.
    pub fn tokenizer_dir(&self) -> Option<PathBuf> {
        match &self.layout {
            Layout::Diffusers(d) => Some(d.join("tokenizer")).filter(|t| t.is_dir()),
            Layout::SingleFile(_) => None,
        }
    }

    /// The path as given, for reports.
    pub fn path(&self) -> &Path {
        match &self.layout {
            Layout::SingleFile(p) | Layout::Diffusers(p) => p,
        }
    }
}

/// Refuses an inpainting UNet (9 input channels: latent, mask, masked image), which Apple's
/// pipelines do not run, and a UNet without its first conv.
fn check_in_channels(path: &Path, shape: Option<&[usize]>) -> Result<(), CheckpointError> {
    match shape {
        Some([_, 4, ..]) => Ok(()),
        Some([_, 9, ..]) => fail(
            path,
            "an inpainting UNet (9 input channels): Apple's StableDiffusionPipeline runs \
             text-to-image UNets (4); build this one with `mlc build sd-unet`",
        ),
        Some(s) => fail(
            path,
            format!("the UNet's first conv is {s:?}: not 4 latent input channels"),
        ),
        None => fail(path, "no UNet input conv (conv_in / input_blocks.0.0)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn write(path: &Path, keys: &[(&str, Vec<usize>)]) {
        let tensors: BTreeMap<String, crate::kernels::Array> = keys
            .iter()
            .map(|(k, s)| {
                let n = s.iter().product();
                (
                    k.to_string(),
                    crate::kernels::Array::new(s.clone(), vec![0.0; n]),
                )
            })
            .collect();
        crate::run::write_safetensors(&tensors, path).unwrap();
    }

    #[test]
    fn families_are_told_by_their_text_encoders() {
        let t = tempfile::tempdir().unwrap();
        let conv = (
            "model.diffusion_model.input_blocks.0.0.weight",
            vec![2, 4, 3, 3],
        );
        let vae = ("first_stage_model.decoder.conv_in.weight", vec![1]);
        for (text, family) in [
            (
                "cond_stage_model.transformer.text_model.x",
                Some(Family::Sd1),
            ),
            ("cond_stage_model.model.ln_final.weight", Some(Family::Sd2)),
            (
                "conditioner.embedders.1.model.ln_final.weight",
                Some(Family::Sdxl),
            ),
            (
                "conditioner.embedders.0.model.ln_final.weight",
                Some(Family::SdxlRefiner),
            ),
            ("something.else", None),
        ] {
            let p = t.path().join("c.safetensors");
            write(&p, &[conv.clone(), vae.clone(), (text, vec![1])]);
            let got = Checkpoint::detect(&p);
            match family {
                Some(f) => assert_eq!(got.unwrap().family, f, "{text}"),
                None => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains("c.safetensors"), "{e}");
                }
            }
        }
        let p = t.path().join("inpaint.safetensors");
        let nine = (conv.0, vec![2, 9, 3, 3]);
        write(
            &p,
            &[
                nine,
                vae.clone(),
                ("cond_stage_model.transformer.x", vec![1]),
            ],
        );
        let e = Checkpoint::detect(&p).unwrap_err().to_string();
        assert!(e.contains("inpainting"), "{e}");
        let p = t.path().join("novae.safetensors");
        write(&p, &[conv, ("cond_stage_model.transformer.x", vec![1])]);
        let e = Checkpoint::detect(&p).unwrap_err().to_string();
        assert!(e.contains("first_stage_model."), "{e}");
    }

    #[test]
    fn a_folder_without_model_index_is_named() {
        let t = tempfile::tempdir().unwrap();
        let e = Checkpoint::detect(t.path()).unwrap_err().to_string();
        assert!(e.contains("model_index.json"), "{e}");
        std::fs::write(
            t.path().join("model_index.json"),
            r#"{"_class_name": "FluxPipeline"}"#,
        )
        .unwrap();
        let e = Checkpoint::detect(t.path()).unwrap_err().to_string();
        assert!(e.contains("FluxPipeline"), "{e}");
    }
}
