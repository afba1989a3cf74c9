//! Calibration in a build: the calibration set read into the model's inputs, the layer
//! statistics calibrated compression fits to, and the clipping ranges of int8 activations.

use super::error::{BuildError, BuildOption};
use super::options::{ActivationRanges, BuildOptions};
use super::plan::Plan;
use crate::ir::Graph;
use crate::passes;
use crate::passes::specialize_shapes::Bindings;

/// Clipping ranges of the values int8 activations need, by value.
pub type Ranges = std::collections::HashMap<crate::ir::ValueId, f32>;

/// The calibration set `opts` names, read into the package's inputs (the plan's interface,
/// feature edits applied) at its first size (a decoder's photos encoded by its encoder); `None`
/// without `--calibration`.
pub fn load_calibration(
    opts: &BuildOptions,
) -> Result<Option<crate::calibrate::Calibration>, BuildError> {
    calibration(&Plan::resolve(opts)?, None)
}

/// [`load_calibration`], with the sizes the options leave open taken from the `declared`
/// graph's inputs where it is given.
pub(super) fn calibration(
    plan: &Plan,
    declared: Option<&Graph>,
) -> Result<Option<crate::calibrate::Calibration>, BuildError> {
    let Some(c) = &plan.opts.calibration else {
        return Ok(None);
    };
    let failed = |reason: String| BuildError::Option {
        option: BuildOption::Calibration,
        reason,
    };
    let mut b = plan.sizes.first().cloned().unwrap_or_default();
    if let Some(g) = declared {
        bind_from_graph(&mut b, &plan.interface, g);
    }
    let weights = plan.weights_path()?;
    let mut target = crate::calibrate::SampleSpec::for_model(
        plan.model,
        plan.part,
        &plan.interface,
        &plan.opts.model_options,
        &b,
        Some(&weights),
        c.encoder_weights.as_deref(),
    )
    .map_err(|e| failed(e.to_string()))?;
    target.upscale = c.upscale;
    crate::calibrate::Calibration::load(&c.path, &target)
        .map(Some)
        .map_err(|e| failed(e.to_string()))
}

/// Binds the interface's size symbols the options leave open from the declared graph's inputs:
/// where the weights fix a size (an image encoder's position embeddings), the graph has it and
/// the options do not.
fn bind_from_graph(b: &mut Bindings, iface: &crate::models::Interface, g: &Graph) {
    for &v in g.inputs() {
        let n = g.node(v);
        let Some(f) = iface.inputs.iter().find(|f| f.name == n.name) else {
            continue;
        };
        if f.shape.len() != n.ty.rank() {
            continue;
        }
        use crate::ir::Dim;
        for (d, got) in f.shape.iter().zip(&n.ty.shape) {
            // Only a bare symbol (`H`, not `8*H`) names its size directly.
            if let (Dim::Sym(s), Dim::Known(size)) = (d, got) {
                if let Some(sym) = s.symbols().next().filter(|&sym| *d == Dim::sym(sym)) {
                    b.entry(sym.to_string()).or_insert(*size);
                }
            }
        }
    }
}

/// The symmetric clipping magnitude of every value the activation pass can quantize in `g` (the
/// final graph, whose value ids the pass reads): from `cal` ([`load_calibration`]) for
/// [`ActivationRanges::Calibrated`].
pub fn activation_ranges(
    g: &Graph,
    src: &ActivationRanges,
    cal: Option<&crate::calibrate::Calibration>,
) -> Result<Ranges, BuildError> {
    let wanted = activation_inputs(g);
    let failed = |reason: String| BuildError::Option {
        option: BuildOption::QuantizeActivations,
        reason,
    };
    match src {
        ActivationRanges::Calibrated => {
            let cal = cal.ok_or_else(|| failed("needs a calibration set".into()))?;
            // Nothing printed: the build's observer shows the stage.
            let stats = crate::calibrate::collect_values(g, cal, false, Some(&wanted))
                .map_err(|e| failed(e.to_string()))?;
            Ok(stats
                .values
                .iter()
                .map(|(&v, s)| (v, s.clip_range(8)))
                .collect())
        }
        ActivationRanges::MaxAbs(inputs) => {
            let mut ranges = std::collections::HashMap::new();
            crate::ir::eval::evaluate_observed(g, inputs, &mut |v, a| {
                if wanted.contains(&v) {
                    let m = a.data.iter().fold(0f32, |m, x| m.max(x.abs()));
                    let r = ranges.entry(v).or_insert(0f32);
                    *r = r.max(m);
                }
            })
            .map_err(|e| failed(format!("measuring activation ranges: {e}")))?;
            Ok(ranges)
        }
    }
}

/// The layers' input statistics for calibrated weight compression, measured on `g` (the graph
/// about to be compressed); with calibrated int8 activations, their clipping ranges too, by
/// node name, from the same evaluation (one decoder run per sample instead of two: compression
/// leaves the activations it would measure within its own small error). Counts samples into
/// `progress`.
#[allow(clippy::type_complexity)]
pub(super) fn calibrate_weights(
    g: &Graph,
    cal: &crate::calibrate::Calibration,
    activations: &Option<ActivationRanges>,
    progress: &crate::progress::Observer,
) -> Result<
    (
        std::sync::Arc<crate::calibrate::layer_inputs::LayerInputs>,
        Option<std::collections::HashMap<String, f32>>,
    ),
    BuildError,
> {
    let ranged = *activations == Some(ActivationRanges::Calibrated);
    let wanted = match ranged {
        true => activation_inputs(g),
        false => Default::default(),
    };
    let mut layers = crate::calibrate::layer_inputs::Collector::new(g);
    let mut stats = crate::calibrate::Stats::new(cal);
    progress.total(cal.len() as u64);
    crate::calibrate::stats::evaluate_samples(g, cal, false, "calibrating", &mut |s, id, a| {
        progress.advance(s as u64);
        layers.observe(s, id, a)?;
        match ranged {
            true => stats.observe(g, id, a, Some(&wanted)),
            false => Ok(()),
        }
    })
    .map_err(|e| BuildError::Option {
        option: BuildOption::Calibration,
        reason: e.to_string(),
    })?;
    progress.advance(cal.len() as u64);
    let ranges = ranged.then(|| {
        stats
            .values
            .iter()
            .map(|(&v, s)| (g.node(v).name.clone(), s.clip_range(8)))
            .collect()
    });
    Ok((std::sync::Arc::new(layers.finish(cal.len())), ranges))
}

/// `ranges` (by node name) for the activation sites of `g`; `None` if a site has none (it was
/// not measured under that name).
pub(super) fn ranges_by_name(
    g: &Graph,
    ranges: &std::collections::HashMap<String, f32>,
) -> Option<Ranges> {
    activation_inputs(g)
        .into_iter()
        .map(|v| Some((v, *ranges.get(&g.node(v).name)?)))
        .collect()
}

/// The values the activation pass can quantize in `g`: the inputs of its sites.
fn activation_inputs(g: &Graph) -> std::collections::BTreeSet<crate::ir::ValueId> {
    passes::quantize_activations::sites(g)
        .into_iter()
        .flat_map(|(_, inputs)| inputs)
        .collect()
}
