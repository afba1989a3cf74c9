//! The build options only some models or parts take, as each model declares them
//! ([`super::Model::options`]); the build refuses the rest in one place.

/// A build option only some models or parts have a meaning for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelOption {
    /// One function per size (first: it comes with sizes, and is the one to name).
    Multifunction,
    /// Sizes given as the latent's.
    LatentSize,
    /// Sizes given as the image's.
    ImageSize,
    /// A channels-last input array.
    InputLayout,
    /// A channels-last output array.
    OutputLayout,
    /// A Core ML image input.
    InputImage,
    /// A Core ML image output.
    OutputImage,
    /// The diffusion model's latent scaling folded in.
    LatentScaling,
    /// The transformer's packed latents as input.
    PackedInput,
    /// The posterior's `logvar` as a second output.
    LogvarOutput,
    /// The posterior's mean and log-variance as one output.
    Moments,
    /// An inner layer's hidden states as an extra output.
    HiddenLayer,
    /// A projecting text encoder's unprojected pooled state as an extra output.
    PooledOutput,
    /// A transformer's activations in the Neural Engine's layout.
    Layout,
    /// A batch size other than the model's default.
    Batch,
    /// A sequence length other than the model's default.
    Tokens,
    /// The EMA copy of a single-file checkpoint's weights.
    Ema,
    /// LoRA adapters fused into the weights (the part says which LoRA keys are its own:
    /// [`super::Model::adapter_scope`]).
    Lora,
}

impl ModelOption {
    pub const ALL: [ModelOption; 18] = [
        ModelOption::Multifunction,
        ModelOption::LatentSize,
        ModelOption::ImageSize,
        ModelOption::InputLayout,
        ModelOption::OutputLayout,
        ModelOption::InputImage,
        ModelOption::OutputImage,
        ModelOption::LatentScaling,
        ModelOption::PackedInput,
        ModelOption::LogvarOutput,
        ModelOption::Moments,
        ModelOption::HiddenLayer,
        ModelOption::PooledOutput,
        ModelOption::Layout,
        ModelOption::Batch,
        ModelOption::Tokens,
        ModelOption::Ema,
        ModelOption::Lora,
    ];

    /// The option as the user types it (the command line's flag, with its value where the
    /// flag's default is always taken).
    pub fn flag(self) -> &'static str {
        match self {
            ModelOption::LatentSize => "--latent-size",
            ModelOption::ImageSize => "--image-size",
            ModelOption::Multifunction => "--multifunction",
            ModelOption::InputLayout => "--input-layout nhwc",
            ModelOption::OutputLayout => "--output-layout nhwc",
            ModelOption::InputImage => "--input-type image",
            ModelOption::OutputImage => "--output-type image",
            ModelOption::LatentScaling => "--latent-scaling",
            ModelOption::PackedInput => "--input packed",
            ModelOption::LogvarOutput => "--logvar",
            ModelOption::Moments => "--moments",
            ModelOption::HiddenLayer => "--hidden-layer",
            ModelOption::PooledOutput => "--pooled",
            ModelOption::Layout => "--layout ane",
            ModelOption::Batch => "--batch",
            ModelOption::Tokens => "--tokens",
            ModelOption::Ema => "--ema",
            ModelOption::Lora => "--lora",
        }
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// The options a model's part takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionSet(u32);

impl OptionSet {
    pub const NONE: OptionSet = OptionSet(0);
    /// What every image autoencoder part takes: sizes by the latent or the image, one function
    /// per size, channels-last arrays.
    pub const SPATIAL: OptionSet = OptionSet::of(&[
        ModelOption::Multifunction,
        ModelOption::LatentSize,
        ModelOption::ImageSize,
        ModelOption::InputLayout,
        ModelOption::OutputLayout,
    ]);

    pub const fn of(options: &[ModelOption]) -> OptionSet {
        let mut bits = 0;
        let mut i = 0;
        while i < options.len() {
            bits |= options[i].bit();
            i += 1;
        }
        OptionSet(bits)
    }

    pub const fn with(self, options: &[ModelOption]) -> OptionSet {
        OptionSet(self.0 | OptionSet::of(options).0)
    }

    pub fn contains(self, o: ModelOption) -> bool {
        self.0 & o.bit() != 0
    }

    /// The options in the set, in [`ModelOption::ALL`]'s order.
    pub fn iter(self) -> impl Iterator<Item = ModelOption> {
        ModelOption::ALL
            .into_iter()
            .filter(move |&o| self.contains(o))
    }

    /// The set's flags, comma-separated, for messages.
    pub fn flags(self) -> String {
        let v: Vec<&str> = self.iter().map(ModelOption::flag).collect();
        match v.is_empty() {
            true => "none of these options".into(),
            false => v.join(", "),
        }
    }
}
