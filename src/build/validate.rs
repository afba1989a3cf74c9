//! Option combinations a build cannot honour, refused before any work with one line naming the
//! option: what the target supports, what compression and calibration need, and the options a
//! model does not declare.

use super::error::{option_error, BuildError, BuildOption};
use super::options::{
    ActivationRanges, ArrayLayout, BuildOptions, InputType, OutputType, Precision, QuantMode, Sizes,
};
use super::plan::{declared_image, Plan};
use crate::mil::Target;
use crate::models::{Model, ModelError, ModelOption, Part, Role, TransformerLayout};
use crate::passes::Compression;

/// The options only some models take that `opts` set, in [`ModelOption::ALL`]'s order.
pub fn requested(opts: &BuildOptions) -> Vec<ModelOption> {
    ModelOption::ALL
        .into_iter()
        .filter(|&o| asks(opts, o))
        .collect()
}

fn asks(opts: &BuildOptions, o: ModelOption) -> bool {
    let m = &opts.model_options;
    match o {
        ModelOption::Multifunction => opts.multifunction,
        ModelOption::LatentSize => matches!(opts.sizes, Sizes::Latent(_)),
        ModelOption::ImageSize => matches!(opts.sizes, Sizes::Image(_)),
        ModelOption::InputLayout => opts.input_layout == ArrayLayout::Nhwc,
        ModelOption::OutputLayout => opts.output_layout == ArrayLayout::Nhwc,
        ModelOption::InputImage => opts.input_type == InputType::Image,
        ModelOption::OutputImage => opts.output_type == OutputType::Image,
        ModelOption::LatentScaling => m.latent_scaling,
        ModelOption::PackedInput => m.packed_input,
        ModelOption::LogvarOutput => m.logvar_output,
        ModelOption::Moments => m.moments_output,
        ModelOption::HiddenLayer => m.hidden_layer.is_some(),
        ModelOption::PooledOutput => m.pooled_output,
        ModelOption::Layout => m.layout != TransformerLayout::Standard,
        ModelOption::Batch => m.batch.is_some(),
        ModelOption::Tokens => m.tokens.is_some(),
        ModelOption::Ema => m.ema,
        ModelOption::Lora => !opts.loras.is_empty() || !opts.adapters.is_empty(),
    }
}

/// Refuses the first option `opts` set that the model's part does not declare.
pub fn declared(opts: &BuildOptions, model: &dyn Model, part: Part) -> Result<(), BuildError> {
    let takes = model.options(part);
    match requested(opts).into_iter().find(|&o| !takes.contains(o)) {
        None => Ok(()),
        Some(o) => Err(ModelError::Option {
            model: model.name(),
            part,
            option: o.flag(),
            takes: takes.flags(),
        }
        .into()),
    }
}

/// Checks option combinations before any work is done.
pub fn validate(plan: &Plan) -> Result<(), BuildError> {
    use BuildOption as O;
    let (opts, model, part, iface) = (plan.opts, plan.model, plan.part, &plan.interface);
    let sizes = &plan.sizes;
    let ios18 = |o: BuildOption| {
        option_error(
            o,
            format!("needs target ios18 or newer (got {})", opts.target),
        )
    };
    let multiple = model.size_multiple(part);
    if sizes.len() > 1 && multiple > 1 {
        for b in sizes {
            let Some([h, w]) = iface.size_of(Role::Latent, b) else {
                continue;
            };
            if h % multiple != 0 || w % multiple != 0 {
                return option_error(
                    O::Sizes,
                    format!(
                        "latent size {h}x{w}: when a package takes several sizes, each side must be a multiple of {multiple} for {} (one size alone may be any)",
                        model.name()
                    ),
                );
            }
        }
    }
    if !opts.adapters.is_empty() {
        if opts.target < Target::Ios18 {
            return ios18(O::Adapter);
        }
        if sizes.len() > 1 || opts.multifunction {
            return option_error(
                O::Adapter,
                "an adapter package has one function per adapter at one size; give one size",
            );
        }
        if opts.calibration.is_some() || opts.quantize_activations.is_some() {
            return option_error(
                O::Adapter,
                "calibrated compression and int8 activations are not offered with adapters",
            );
        }
        let mut names = std::collections::BTreeSet::new();
        if let Some(a) = opts.adapters.iter().find(|a| !names.insert(&a.name)) {
            return option_error(O::Adapter, format!("two adapters are named \"{}\"", a.name));
        }
    }
    if opts.multifunction {
        if opts.target < Target::Ios18 {
            return ios18(O::Multifunction);
        }
        if sizes.len() < 2 {
            return option_error(
                O::Multifunction,
                "needs at least two sizes (one function per size)",
            );
        }
    }
    match &opts.compression {
        Some(Compression::Palettize {
            bits, group_size, ..
        }) => {
            let ok: &[u32] = if opts.target >= Target::Ios18 {
                &[1, 2, 3, 4, 6, 8]
            } else {
                &[1, 2, 4, 6, 8]
            };
            if !ok.contains(bits) {
                let also = if *bits == 3 {
                    " (3 needs target ios18)"
                } else {
                    ""
                };
                return option_error(
                    O::Palettize(*bits),
                    format!("{} supports {ok:?} bits{also}", opts.target),
                );
            }
            if let Some(g) = group_size {
                if *g == 0 {
                    return option_error(O::Granularity, "the group size must be positive");
                }
                if opts.target < Target::Ios18 {
                    return ios18(O::Granularity);
                }
            }
        }
        Some(Compression::Quantize {
            mode,
            block_size: Some(b),
            ..
        }) => {
            if *b == 0 {
                return option_error(O::BlockSize, "the block size must be positive");
            }
            if opts.target < Target::Ios18 {
                return ios18(O::BlockSize);
            }
            if *mode == QuantMode::Uint8 {
                return option_error(
                    O::BlockSize,
                    "block scales are for int8 only (uint8 keeps one scale per channel)",
                );
            }
        }
        Some(Compression::Quantize {
            block_size: None, ..
        }) => {}
        None => {}
    }
    if let Some(src) = &opts.quantize_activations {
        if opts.target < Target::Ios17 {
            return option_error(
                O::QuantizeActivations,
                format!(
                    "needs target ios17 or newer for MIL's quantize op (got {})",
                    opts.target
                ),
            );
        }
        if let Some(p) = opts.activation_min_psnr.filter(|p| !p.is_finite()) {
            return option_error(
                O::QuantizeActivations,
                format!("--activation-min-psnr {p}: needs a finite number of dB"),
            );
        }
        if let (Some(p), ActivationRanges::MaxAbs(_)) = (opts.activation_min_psnr, src) {
            return option_error(
                O::QuantizeActivations,
                format!("--activation-min-psnr {p} needs a calibration set"),
            );
        }
        if *src == ActivationRanges::Calibrated && opts.calibration.is_none() {
            return option_error(O::QuantizeActivations, "needs a calibration set");
        }
    }
    if let Some(c) = &opts.calibration {
        if opts.compression.is_none() && opts.quantize_activations.is_none() {
            return option_error(
                O::Calibration,
                "calibrates compression: give a weight compression or int8 activations",
            );
        }
        if std::fs::metadata(&c.path).is_err() {
            return option_error(
                O::Calibration,
                format!("calibration {}: not found", c.path.display()),
            );
        }
    }
    // An image size with no default is the weights' (clip-vision's position table): one
    // size can be checked against them, several cannot all be it.
    if sizes.len() > 1
        && iface.all_of(Role::Image).next().is_some()
        && iface.size_of(Role::Image, &iface.default_size).is_none()
    {
        return option_error(
            O::Sizes,
            format!(
                "{} sizes given, but {}'s weights fix its one image size",
                sizes.len(),
                model.name()
            ),
        );
    }
    if opts.output_type == OutputType::Image && declared_image(&iface.outputs).is_none() {
        return option_error(
            O::OutputType,
            format!("the {part}'s output is not an RGB image"),
        );
    }
    if opts.input_type == InputType::Image {
        if declared_image(&iface.inputs).is_none() {
            let reason = match crate::models::Interface::images(&iface.inputs).count() {
                0 => format!("the {part}'s input is not an RGB image"),
                n => format!("the {part} has {n} inputs declared as RGB images, not one"),
            };
            return option_error(O::InputType, reason);
        }
        if opts.io_precision == Some(Precision::Fp16) {
            return option_error(
                O::InputType,
                "Core ML image inputs are fp32 arrays; fp16 I/O precision cannot apply",
            );
        }
        if opts.input_layout == ArrayLayout::Nhwc {
            return option_error(
                O::InputType,
                "an image has its own layout; an NHWC input layout cannot apply",
            );
        }
    }
    let fp16_io = opts.io_precision.unwrap_or(opts.precision) == Precision::Fp16;
    if !opts.features.float_inputs.is_empty() && opts.precision == Precision::Fp16 && fp16_io {
        return option_error(
            O::Features,
            "inputs taken as Float32 need fp32 I/O precision (an fp16 array cannot hold every token id)",
        );
    }
    if opts.output_type == OutputType::Image {
        if opts.io_precision == Some(Precision::Fp16) {
            return option_error(
                O::OutputType,
                "Core ML image outputs are fp32 arrays; fp16 I/O precision cannot apply",
            );
        }
        if opts.output_layout == ArrayLayout::Nhwc {
            return option_error(
                O::OutputType,
                "an image has its own layout; an NHWC output layout cannot apply",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::options::Sizes;
    use crate::models::{registry, OptionSet};

    /// Options asking for `o` alone, in a form the build accepts where the model takes it.
    fn asking(model: &str, part: Part, o: ModelOption) -> BuildOptions {
        let mut opts = BuildOptions::new(model, "unread.safetensors");
        opts.part = Some(part.into());
        match o {
            ModelOption::LatentSize => opts.sizes = Sizes::Latent(vec![[8, 8]]),
            ModelOption::ImageSize => opts.sizes = Sizes::Image(vec![[64, 64]]),
            ModelOption::Multifunction => {
                opts.multifunction = true;
                opts.target = Target::Ios18;
                opts.sizes = Sizes::Latent(vec![[8, 8], [16, 16]]);
            }
            ModelOption::InputLayout => opts.input_layout = ArrayLayout::Nhwc,
            ModelOption::OutputLayout => opts.output_layout = ArrayLayout::Nhwc,
            ModelOption::InputImage => opts.input_type = InputType::Image,
            ModelOption::OutputImage => opts.output_type = OutputType::Image,
            ModelOption::LatentScaling => opts.model_options.latent_scaling = true,
            ModelOption::PackedInput => opts.model_options.packed_input = true,
            ModelOption::LogvarOutput => opts.model_options.logvar_output = true,
            ModelOption::Moments => opts.model_options.moments_output = true,
            ModelOption::HiddenLayer => opts.model_options.hidden_layer = Some(2),
            ModelOption::PooledOutput => opts.model_options.pooled_output = true,
            ModelOption::Layout => opts.model_options.layout = TransformerLayout::Ane,
            ModelOption::Batch => opts.model_options.batch = Some(1),
            ModelOption::Tokens => opts.model_options.tokens = Some(64),
            ModelOption::Ema => opts.model_options.ema = true,
            ModelOption::Lora => opts.loras = vec![crate::lora::LoraSpec::parse("x").unwrap()],
        }
        assert_eq!(
            requested(&opts)[0],
            o,
            "{o:?} is the option asked for first"
        );
        opts
    }

    #[test]
    fn only_a_feature_declared_as_an_image_is_one() {
        use crate::models::{Feature, FeatureDtype, ImageSpec, Role};
        let f = |name: &str, role, image| Feature {
            name: name.into(),
            role,
            dtype: FeatureDtype::Float,
            shape: vec![],
            description: String::new(),
            image,
        };
        let rgb = Some(ImageSpec::range(-1.0, 1.0));
        // Two float inputs, one an image: that one, whatever the order.
        let inputs = [
            f("latent", Role::Latent, None),
            f("image", Role::Image, rgb),
        ];
        let (one, spec) = declared_image(&inputs).unwrap();
        assert_eq!((one.name.as_str(), spec.range), ("image", (-1.0, 1.0)));
        // An image-role feature not declared as an image is not one.
        let undeclared = [
            f("latent", Role::Latent, None),
            f("image", Role::Image, None),
        ];
        assert!(declared_image(&undeclared).is_none());
        // Two declared images: which one would be a guess.
        let two = [f("a", Role::Image, rgb), f("b", Role::Image, rgb)];
        assert!(declared_image(&two).is_none());
    }

    /// Token ids as floats need fp32 arrays.
    #[test]
    fn feature_edits_refuse_what_they_cannot_honour() {
        let mut opts = BuildOptions::new("clip-l", "unread.safetensors");
        opts.features.float_inputs = vec!["input_ids".into()];
        let e = opts.validate().unwrap_err().to_string();
        assert!(e.starts_with("features: ") && e.contains("fp32 I/O"), "{e}");
        opts.io_precision = Some(Precision::Fp32);
        opts.validate().unwrap();
        opts.features.rename = vec![("nope".into(), "x".into())];
        let e = opts.validate().unwrap_err().to_string();
        assert!(e.contains("\"nope\" is not a feature"), "{e}");
    }

    #[test]
    fn a_part_the_model_does_not_list_is_refused_with_its_list() {
        let mut opts = BuildOptions::new("clip-l", "unread.safetensors");
        opts.part = Some("decoder".into());
        let e = opts.validate().unwrap_err().to_string();
        assert_eq!(e, "clip-l has no part \"decoder\" (its parts: encoder)");
        opts.part = Some("encoder".into());
        assert_eq!(opts.model_part().unwrap().1, Part::ENCODER);
        opts.part = None;
        assert_eq!(opts.model_part().unwrap().1, Part::ENCODER);
    }

    #[test]
    fn every_model_refuses_every_option_it_does_not_declare() {
        let mut refused = 0;
        for model in registry() {
            for &part in model.parts() {
                let takes = model.options(part);
                for o in ModelOption::ALL {
                    let opts = asking(model.name(), part, o);
                    // Validated whole, nothing built: the weights are never read.
                    let got = Plan::new(&opts);
                    let who = format!("{} {part} {}", model.name(), o.flag());
                    if takes.contains(o) {
                        assert!(got.is_ok(), "{who}: {}", got.err().unwrap());
                        continue;
                    }
                    refused += 1;
                    let e = got.err().expect(&who).to_string();
                    let flag = o.flag().split(' ').next().unwrap();
                    assert!(
                        e.starts_with(&format!("{} {part} does not take {flag}", model.name()))
                            && !e.contains('\n'),
                        "{who}: {e}"
                    );
                }
            }
        }
        // The bug this replaced: sd-vae took --layout ane and built the standard package.
        let sd = crate::models::lookup("sd-vae").unwrap();
        assert!(!sd.options(Part::DECODER).contains(ModelOption::Layout));
        assert!(refused > 50, "{refused}");
    }

    #[test]
    fn option_sets_list_their_flags_in_order() {
        use ModelOption::*;
        let s = OptionSet::of(&[Layout, HiddenLayer]);
        assert!(s.contains(Layout) && !s.contains(LatentScaling));
        assert_eq!(s.flags(), "--hidden-layer, --layout ane");
        assert_eq!(OptionSet::NONE.flags(), "none of these options");
        assert_eq!(OptionSet::SPATIAL.with(&[LogvarOutput]).iter().count(), 6);
    }
}
