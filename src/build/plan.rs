//! A build's options resolved once: the model and part, its interface, the symbol values of every
//! size, and what the passes and the lowering are told. Everything after this reads the plan.

use super::error::{option_error, BuildError, BuildOption};
use super::options::{
    ArrayLayout, BuildOptions, InputType, OutputType, Precision, Sizes, MAX_IMAGE_SIDE, MAX_SIZES,
};
use crate::mil::{lower, Target};
use crate::models::{self, Model, ModelError, Part, Role};
use crate::passes::image_input::{ImageInput, PixelMap};
use crate::passes::image_output::ImageOutput;
use crate::passes::specialize_shapes::Bindings;
use crate::passes::PipelineOptions;
use std::path::PathBuf;

/// What `opts` build, resolved.
pub struct Plan<'o> {
    pub opts: &'o BuildOptions,
    pub model: &'static dyn Model,
    pub part: Part,
    /// The package's interface: the part's under the options, with the feature edits.
    pub interface: models::Interface,
    /// The part's own interface, which the declared graph has.
    pub declared: models::Interface,
    /// The interface symbols' values for every size, the default first.
    pub sizes: Vec<Bindings>,
}

impl<'o> Plan<'o> {
    /// Resolves `opts` and checks every option combination before any work is done.
    pub fn new(opts: &'o BuildOptions) -> Result<Plan<'o>, BuildError> {
        let plan = Plan::resolve(opts)?;
        super::validate::validate(&plan)?;
        Ok(plan)
    }

    /// Resolves the model, part, interface and sizes; refuses an option the model does not take
    /// and sizes the interface cannot have, nothing else.
    pub fn resolve(opts: &'o BuildOptions) -> Result<Plan<'o>, BuildError> {
        let (model, part) = model_part(opts)?;
        super::validate::declared(opts, model, part)?;
        let declared = model.interface(part, &opts.model_options);
        let interface =
            opts.features
                .interface(&declared)
                .map_err(|reason| BuildError::Option {
                    option: BuildOption::Features,
                    reason,
                })?;
        let sizes = size_bindings(opts, &interface)?;
        Ok(Plan {
            opts,
            model,
            part,
            interface,
            declared,
            sizes,
        })
    }

    /// The symbols whose value is the same at every size, with that value.
    pub fn fixed(&self) -> Bindings {
        let Some(first) = self.sizes.first() else {
            return Bindings::new();
        };
        first
            .iter()
            .filter(|(k, v)| self.sizes.iter().all(|b| b.get(*k) == Some(v)))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Symbol values per size for the symbols whose size varies (empty for a static model).
    pub fn varying(&self) -> Vec<Bindings> {
        if self.sizes.len() < 2 {
            return vec![];
        }
        let fixed = self.fixed();
        self.sizes
            .iter()
            .map(|b| {
                b.iter()
                    .filter(|(k, _)| !fixed.contains_key(*k))
                    .map(|(k, v)| (k.clone(), *v))
                    .collect()
            })
            .collect()
    }

    /// The image size at every size, `[height, width]`.
    pub fn image_sizes(&self) -> Result<Vec<[usize; 2]>, BuildError> {
        self.sizes_of(Role::Image)
    }

    /// The sizes that name a package's sizes (its functions, its metadata): the image's when
    /// the model has an image, else the latent's (a UNet), with the role they are of.
    pub fn named_sizes(&self) -> Result<(Role, Vec<[usize; 2]>), BuildError> {
        let role = match self.interface.all_of(Role::Image).next() {
            Some(_) => Role::Image,
            None => Role::Latent,
        };
        Ok((role, self.sizes_of(role)?))
    }

    /// The spatial size of the feature of `role` at every size.
    fn sizes_of(&self, role: Role) -> Result<Vec<[usize; 2]>, BuildError> {
        self.sizes
            .iter()
            .map(|b| {
                self.interface
                    .size_of(role, b)
                    .ok_or_else(|| BuildError::Option {
                        option: BuildOption::Sizes,
                        reason: format!("{} has no {} size", self.model.name(), role.name()),
                    })
            })
            .collect()
    }

    /// Whether the image size is the weights' alone: no size given, and the interface has none
    /// by default (`clip-vision`, whose position embeddings fix it).
    pub fn fixed_by_weights(&self) -> bool {
        let has_image = self.interface.all_of(Role::Image).next().is_some();
        has_image
            && self
                .sizes
                .iter()
                .any(|b| self.interface.size_of(Role::Image, b).is_none())
    }

    /// The weights file to read: the given one, or the published one, fetched if not cached.
    pub fn weights_path(&self) -> Result<PathBuf, BuildError> {
        if let Some(p) = &self.opts.weights {
            return Ok(p.clone());
        }
        let (model, part) = (self.model, self.part);
        let src = match (model.published(part), part) {
            (Some(src), _) => src,
            (None, Part::DECODER) => crate::hub::require_source(model.name())?,
            (None, _) => {
                return option_error(
                    BuildOption::Weights,
                    format!(
                        "no published {part} weights for {} are known; give a weights file",
                        model.name()
                    ),
                )
            }
        };
        Ok(crate::hub::resolve(src, &crate::hub::HubConfig::from_env())?.path)
    }

    /// The package to write: the given path, else `<model>_<part>.mlpackage`.
    pub fn output_path(&self) -> PathBuf {
        self.opts.output.clone().unwrap_or_else(|| {
            PathBuf::from(format!("{}_{}.mlpackage", self.model.name(), self.part))
        })
    }

    /// Refuses, before building, a package mlc's own compiler ([`crate::mlmodelc`]) would
    /// refuse after: several sizes in one function are enumerated shapes.
    pub fn check_mlc_compilable(&self) -> Result<(), BuildError> {
        if self.sizes.len() > 1 && !self.opts.multifunction {
            return option_error(
                BuildOption::Compile,
                format!(
                    "several sizes in one function are enumerated shapes, {}",
                    crate::mlmodelc::ENUMERATED_SHAPES
                ),
            );
        }
        Ok(())
    }

    /// How the package's features are described to the lowering.
    pub fn lowering(&self) -> lower::FeatureTypes {
        lower::FeatureTypes {
            sizes: if self.opts.multifunction {
                vec![]
            } else {
                self.varying()
            },
            image_outputs: self.image_output().into_iter().map(|o| o.name).collect(),
            image_inputs: self.image_input().into_iter().map(|i| i.name).collect(),
        }
    }

    /// The output presented as a Core ML image, when `--output-type image` asks for one: the
    /// one output the interface declares as an image (validation refuses the option otherwise).
    fn image_output(&self) -> Option<ImageOutput> {
        if self.opts.output_type != OutputType::Image {
            return None;
        }
        let (f, spec) = declared_image(&self.interface.outputs)?;
        let (low, high) = spec.range;
        Some(ImageOutput {
            name: f.name.clone(),
            low,
            high,
        })
    }

    /// The input presented as a Core ML image, when `--input-type image` asks for one, and how
    /// its 0..255 pixels map to the model's values.
    fn image_input(&self) -> Option<ImageInput> {
        if self.opts.input_type != InputType::Image {
            return None;
        }
        let (f, spec) = declared_image(&self.interface.inputs)?;
        let (low, high) = spec.range;
        let map = match spec.normalization {
            None => PixelMap::range(low, high),
            Some(n) => PixelMap::normalized(low, high, n.mean, n.std),
        };
        Some(ImageInput {
            name: f.name.clone(),
            map,
        })
    }

    /// The pass pipeline the options ask for.
    pub fn pipeline(&self) -> PipelineOptions {
        let opts = self.opts;
        let fp16 = opts.precision == Precision::Fp16;
        let fp16_io = fp16 && opts.io_precision.unwrap_or(opts.precision) == Precision::Fp16;
        let image = opts.output_type == OutputType::Image;
        let image_in = opts.input_type == InputType::Image;
        PipelineOptions {
            fp16,
            fp16_inputs: fp16_io && !image_in,
            fp16_outputs: fp16_io && !image,
            input_nhwc: opts.input_layout == ArrayLayout::Nhwc,
            output_nhwc: opts.output_layout == ArrayLayout::Nhwc,
            image_output: self.image_output(),
            image_input: self.image_input(),
            sizes: self.lowering().sizes,
            compression: opts.compression.clone(),
            fused_attention: opts.target >= Target::Ios18,
            lower_attention: !opts.multifunction,
        }
    }
}

impl BuildOptions {
    /// Resolves and checks the options: see [`Plan::new`].
    pub fn plan(&self) -> Result<Plan<'_>, BuildError> {
        Plan::new(self)
    }

    /// The model and part asked for.
    pub fn model_part(&self) -> Result<(&'static dyn Model, Part), BuildError> {
        model_part(self)
    }

    /// The weights file to read: the given one, or the published one, fetched if not cached.
    pub fn weights_path(&self) -> Result<PathBuf, BuildError> {
        Plan::resolve(self)?.weights_path()
    }

    pub fn output_path(&self) -> Result<PathBuf, BuildError> {
        Ok(Plan::resolve(self)?.output_path())
    }

    /// The interface symbols' values for every size, the default first.
    pub fn size_bindings(&self) -> Result<Vec<Bindings>, BuildError> {
        Ok(Plan::resolve(self)?.sizes)
    }

    /// Checks option combinations before any work is done.
    pub fn validate(&self) -> Result<(), BuildError> {
        Plan::new(self).map(drop)
    }
}

fn model_part(opts: &BuildOptions) -> Result<(&'static dyn Model, Part), BuildError> {
    let model = models::lookup(&opts.model)?;
    let part = match opts.part.as_deref() {
        None => model.parts()[0],
        Some(p) => match model.parts().iter().find(|q| q.name() == p) {
            Some(q) => *q,
            None => {
                return Err(ModelError::NoPart {
                    model: model.name(),
                    part: p.to_string(),
                    has: model
                        .parts()
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
                .into())
            }
        },
    };
    Ok((model, part))
}

/// The interface symbols' values for every size `opts` name, the default first, with the batch
/// bound at each.
fn size_bindings(
    opts: &BuildOptions,
    iface: &models::Interface,
) -> Result<Vec<Bindings>, BuildError> {
    let mut sizes = spatial_bindings(opts, iface)?;
    // The batch is one symbol like H and W, the same at every size: `--batch`, else the
    // interface's default (a model without a batch axis has neither).
    let batch = opts
        .model_options
        .batch
        .or_else(|| iface.default_size.get(models::BATCH).copied());
    if let Some(n) = batch {
        for b in &mut sizes {
            b.insert(models::BATCH.to_string(), n);
        }
    }
    Ok(sizes)
}

/// The symbol values the spatial sizes `opts` name give, the default first.
fn spatial_bindings(
    opts: &BuildOptions,
    iface: &models::Interface,
) -> Result<Vec<Bindings>, BuildError> {
    let (role, sizes) = match &opts.sizes {
        Sizes::Default => return Ok(vec![iface.default_size.clone()]),
        Sizes::Latent(s) => (Role::Latent, s),
        Sizes::Image(s) => (Role::Image, s),
    };
    let bad = |m: String| option_error(BuildOption::Sizes, m);
    if sizes.is_empty() {
        return bad("no size given".into());
    }
    if sizes.len() > MAX_SIZES {
        return bad(format!(
            "{} sizes given; at most {MAX_SIZES} can be enumerated",
            sizes.len()
        ));
    }
    let mut out: Vec<Bindings> = Vec::with_capacity(sizes.len());
    for s in sizes {
        if s.contains(&0) {
            return bad(format!("{} size {}x{} is empty", role.name(), s[0], s[1]));
        }
        let too_big = |side: &[usize; 2]| side.iter().any(|&n| n > MAX_IMAGE_SIDE);
        if too_big(s) {
            return bad(format!(
                "{} size {}x{} is over the limit of {MAX_IMAGE_SIDE} per side",
                role.name(),
                s[0],
                s[1]
            ));
        }
        let b = iface.bindings(role, *s)?;
        if let Some(image) = iface.size_of(Role::Image, &b).filter(too_big) {
            return bad(format!(
                "{} size {}x{} gives {}x{} images, over the limit of {MAX_IMAGE_SIDE} pixels per side",
                role.name(),
                s[0],
                s[1],
                image[0],
                image[1]
            ));
        }
        if out.contains(&b) {
            return bad(format!(
                "{} size {}x{} is given twice",
                role.name(),
                s[0],
                s[1]
            ));
        }
        out.push(b);
    }
    Ok(out)
}

/// The one feature among `features` declared as an image ([`models::Feature::image`]); None
/// when there is none, or several (which one to present as an image would be a guess).
pub(super) fn declared_image(
    features: &[models::Feature],
) -> Option<(&models::Feature, models::ImageSpec)> {
    let mut images = models::Interface::images(features);
    match (images.next(), images.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Dim;

    /// A UNet declares `[B, C, H, W]`; the plan binds B at every size, to `--batch` or the
    /// interface's default, and B never varies between sizes.
    #[test]
    fn the_batch_is_a_symbol_the_plan_binds() {
        let mut o = BuildOptions::new("sd-unet", "unread.safetensors");
        let plan = Plan::resolve(&o).unwrap();
        for name in ["sample", "timestep", "encoder_hidden_states", "noise_pred"] {
            let f = plan.interface.by_name(name).unwrap();
            assert_eq!(f.shape[0], Dim::sym(models::BATCH), "{name}");
        }
        assert_eq!(plan.fixed().get(models::BATCH), Some(&2));

        o.model_options.batch = Some(1);
        o.sizes = Sizes::Latent(vec![[8, 8], [16, 16]]);
        let plan = Plan::resolve(&o).unwrap();
        assert_eq!(plan.sizes.len(), 2);
        assert!(plan.sizes.iter().all(|b| b.get(models::BATCH) == Some(&1)));
        assert_eq!(plan.fixed().get(models::BATCH), Some(&1));
        assert!(plan
            .varying()
            .iter()
            .all(|b| !b.contains_key(models::BATCH)));
        let sample = plan.interface.by_name("sample").unwrap();
        let bound = models::bind_shape(&sample.shape, &plan.fixed()).unwrap();
        assert_eq!(bound[0], Dim::Known(1));

        // A model without a batch axis has no batch symbol to bind.
        let o = BuildOptions::new("taesd", "unread.safetensors");
        let plan = Plan::resolve(&o).unwrap();
        assert!(plan.sizes.iter().all(|b| !b.contains_key(models::BATCH)));
    }
}
