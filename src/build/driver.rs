//! The build itself: weights loaded and checked, the graph declared, passed, calibrated and
//! lowered, for a plan resolved once.

use super::calibration::{activation_ranges, calibrate_weights, calibration, ranges_by_name};
use super::error::{BuildError, BuildOption};
use super::metadata::{function_name, model_info};
use super::options::{ActivationRanges, BuildOptions, Precision};
use super::plan::Plan;
use super::report::{largest_intermediate, Intermediate, KeptFloat};
use crate::ir::Graph;
use crate::mil;
use crate::models::Part;
use crate::package::BlobWriter;
use crate::passes::specialize_shapes::Specialize;
use crate::passes::{self, PipelineOptions};
use crate::progress::{Observed, Stage};
use crate::weights::{Patched, TensorSource, Weights};
use std::time::{Duration, Instant};

/// A built model in memory, before it is written.
pub struct Compiled {
    pub model: &'static str,
    pub part: Part,
    pub lowered: mil::Lowered,
    pub largest_intermediate: Option<Intermediate>,
    pub weights_sha256: String,
    pub timings: Vec<(String, Duration)>,
    pub kept_float: Option<KeptFloat>,
    /// See [`super::BuildReport::fp32_ops`].
    pub fp32_ops: usize,
    /// See [`super::BuildReport::loras`].
    pub loras: Vec<crate::lora::LoraSummary>,
}

/// The IR of `opts`' model as the builder declares it (before any pass). A size whose value
/// differs between the enumerated sizes stays symbolic (`H`, `W`).
pub fn declare(opts: &BuildOptions, weights: &Weights) -> Result<Graph, BuildError> {
    let plan = Plan::new(opts)?;
    Ok(plan
        .model
        .build(plan.part, weights, &plan.fixed(), &opts.model_options)?)
}

/// [`declare`] that moves the weights into the graph rather than copying them.
pub fn declare_owned(opts: &BuildOptions, weights: Weights) -> Result<Graph, BuildError> {
    declare_planned(&Plan::new(opts)?, weights)
}

fn declare_planned(plan: &Plan, weights: Weights) -> Result<Graph, BuildError> {
    Ok(plan
        .model
        .build_owned(plan.part, weights, &plan.fixed(), &plan.opts.model_options)?)
}

/// The pass pipeline `opts` asks for.
pub fn pipeline_options(opts: &BuildOptions) -> Result<PipelineOptions, BuildError> {
    Ok(Plan::resolve(opts)?.pipeline())
}

/// The model's ML Program in memory, no package written: loads weights, declares, optimizes and
/// lowers the model; `after_pass` sees the declared graph
/// (as `"declare"`) and the graph after each pass. The loaded weights move into the graph, so
/// the model's tensors are in memory once.
pub fn build_program(
    opts: &BuildOptions,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    build_program_to(&Plan::new(opts)?, BlobWriter::new(), after_pass)
}

/// [`build_program`], with the weights going to `blobs`: a file-backed writer streams them into the
/// package being written, so they are in memory once (in the graph), not twice.
pub(super) fn build_program_to(
    plan: &Plan,
    blobs: BlobWriter,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    let (p, loras) = program_file(plan, after_pass)?;
    let mut c = lower_programmed(plan, p, blobs)?;
    c.loras = loras;
    Ok(c)
}

/// The weights file read (LoRAs fused as it is read), the graph declared and passed, not yet
/// lowered; with the LoRAs it took.
pub(super) fn program_file(
    plan: &Plan,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<(Programmed, Vec<crate::lora::LoraSummary>), BuildError> {
    let t = Instant::now();
    let path = plan.weights_path()?;
    let file = crate::weights::open(&path).map_err(crate::models::ModelError::from)?;
    // LoRAs are resolved against the file's index before any weight is read, then added to
    // each weight they adapt as it is read.
    // A LoRA patches what the model reads: through the part's view where its file layout is
    // not the model's key for key.
    let view = match plan.opts.loras.is_empty() && plan.opts.adapters.is_empty() {
        true => None,
        false => plan.model.adapter_view(plan.part, &*file)?,
    };
    let base: &dyn TensorSource = view.as_deref().unwrap_or(&*file);
    let fusion = super::lora::fusion(plan, base)?.map(std::sync::Arc::new);
    let patched = fusion.as_ref().map(|f| {
        let overlay: std::sync::Arc<dyn crate::weights::Overlay> = f.clone();
        match plan.opts.precision {
            Precision::Fp16 => Patched::new(base, overlay),
            Precision::Fp32 => Patched::new(base, overlay).widened(),
        }
    });
    let source: &dyn TensorSource = match &patched {
        Some(p) => p,
        None => base,
    };
    let source = Observed::new(source, plan.opts.progress.clone());
    let weights = plan
        .model
        .load(plan.part, &source, &plan.opts.model_options)?;
    let load = ("load weights".to_string(), t.elapsed());
    drop(patched);
    let loras = fusion.map(|f| f.summaries.clone()).unwrap_or_default();
    let (adapters, mut summaries) = super::lora::adapters(plan, base)?;
    summaries.splice(0..0, loras.iter().cloned());
    let mut p = program_from(
        plan,
        WeightsIn::Owned(weights),
        &summaries,
        &adapters,
        after_pass,
    )?;
    p.timings.insert(0, load);
    Ok((p, summaries))
}

/// [`build_program`] with weights already in memory (`opts.weights` is ignored, and so are
/// `opts.loras`: they patch weights as a file is read); the graph copies the tensors it needs.
pub fn build_program_from_weights(
    opts: &BuildOptions,
    weights: &Weights,
    after_pass: impl FnMut(&str, &Graph),
) -> Result<Compiled, BuildError> {
    let plan = Plan::new(opts)?;
    let p = program_from(&plan, WeightsIn::Borrowed(weights), &[], &[], after_pass)?;
    lower_programmed(&plan, p, BlobWriter::new())
}

enum WeightsIn<'w> {
    Borrowed(&'w Weights),
    Owned(Weights),
}

fn program_from(
    plan: &Plan,
    weights: WeightsIn,
    loras: &[crate::lora::LoraSummary],
    adapters: &[(String, passes::low_rank_adapter::LowRankAdapter)],
    mut after_pass: impl FnMut(&str, &Graph),
) -> Result<Programmed, BuildError> {
    let mut timings = Vec::new();
    let (opts, model, part) = (plan.opts, plan.model, plan.part);
    let progress = &opts.progress;

    // Hashed before declaring: an owned model's tensors leave the weights for the graph. A
    // deferred tensor (a LoRA fused as the package is written) is hashed and checked once it
    // has been read back, after lowering.
    progress.begin(Stage::HashWeights);
    let t = Instant::now();
    let w = match &weights {
        WeightsIn::Borrowed(w) => w,
        WeightsIn::Owned(w) => w,
    };
    let digest = w.digest();
    let weights_path = w.path.clone();
    timings.push(("hash weights".to_string(), t.elapsed()));
    // Before the graph takes the tensors: NaN, infinities, values fp16 cannot hold.
    digest.check(opts.precision == Precision::Fp16)?;

    progress.begin(Stage::Declare);
    let t = Instant::now();
    let g = match weights {
        WeightsIn::Borrowed(w) => model.build(part, w, &plan.fixed(), &opts.model_options)?,
        WeightsIn::Owned(w) => declare_planned(plan, w)?,
    };
    timings.push(("declare".to_string(), t.elapsed()));
    plan.declared.check_graph(&g)?;
    after_pass("declare", &g);
    // The package's names before anything reads them (calibration inputs, image features).
    let g = match opts.features.is_empty() {
        true => g,
        false => {
            let list: Vec<Box<dyn passes::Pass>> = vec![Box::new(
                passes::edit_features::EditFeatures(opts.features.clone()),
            )];
            passes::run_observed(g, &list, progress, |p, g| after_pass(p.name(), g))?
        }
    };
    // Each switchable adapter's function starts from the declared graph, passed on its own.
    let declared = (!adapters.is_empty()).then(|| g.clone());

    if opts.calibration.is_some() {
        progress.begin(Stage::Calibrate);
    }
    let t = Instant::now();
    let cal = calibration(plan, Some(&g))?;
    if cal.is_some() {
        timings.push(("load calibration".to_string(), t.elapsed()));
    }

    let pipeline = plan.pipeline();
    let mut t = Instant::now();
    let g = passes::run_observed(g, &passes::prepare(&pipeline), progress, |p, g| {
        timings.push((p.name().to_string(), t.elapsed()));
        after_pass(p.name(), g);
        t = Instant::now();
    })?;
    // Measured on the graph as it will compute, just before its weights are compressed.
    let t_stats = Instant::now();
    let (layers, early_ranges) = match (&cal, &opts.compression) {
        (Some(cal), Some(_)) => {
            progress.begin(Stage::Calibrate);
            let (layers, ranges) =
                calibrate_weights(&g, cal, &opts.quantize_activations, progress)?;
            timings.push(("weight statistics".to_string(), t_stats.elapsed()));
            (Some(passes::calibrated::Calibrated::new(layers)), ranges)
        }
        _ => (None, None),
    };
    let mut t = Instant::now();
    let g = passes::run_observed(g, &passes::finish(&pipeline, layers), progress, |p, g| {
        timings.push((p.name().to_string(), t.elapsed()));
        after_pass(p.name(), g);
        t = Instant::now();
    })?;

    // Last, on the final graph: the ranges are measured on the values the package computes.
    let mut kept_float = None;
    let g = match &opts.quantize_activations {
        Some(src) => {
            let t = Instant::now();
            let ranges = match early_ranges.as_ref().and_then(|r| ranges_by_name(&g, r)) {
                Some(r) => r,
                None => {
                    progress.begin(Stage::Calibrate);
                    let r = activation_ranges(&g, src, cal.as_ref())?;
                    timings.push(("activation ranges".to_string(), t.elapsed()));
                    r
                }
            };
            let keep_float = match (opts.activation_min_psnr, &cal) {
                (Some(db), Some(cal)) => {
                    progress.begin(Stage::Calibrate);
                    let t = Instant::now();
                    let choice = crate::calibrate::search::keep_float_for(&g, &ranges, cal, db)
                        .map_err(|e| BuildError::Option {
                            option: BuildOption::QuantizeActivations,
                            reason: e.to_string(),
                        })?;
                    timings.push(("activation search".to_string(), t.elapsed()));
                    kept_float = Some(KeptFloat {
                        names: choice
                            .keep_float
                            .iter()
                            .map(|&v| g.node(v).name.clone())
                            .collect(),
                        sites: choice.sites,
                        psnr: choice.psnr,
                    });
                    choice.keep_float
                }
                _ => Default::default(),
            };
            let list: Vec<Box<dyn passes::Pass>> = vec![Box::new(
                passes::quantize_activations::QuantizeActivations { ranges, keep_float },
            )];
            let t = Instant::now();
            let g = passes::run_observed(g, &list, progress, |p, g| after_pass(p.name(), g))?;
            timings.push(("quantize_activations".to_string(), t.elapsed()));
            g
        }
        None => g,
    };

    let mut largest = largest_intermediate(&g, &plan.sizes);
    let fp32_ops = match opts.precision {
        Precision::Fp16 => passes::cast_fp16::fp32_ops(&g),
        Precision::Fp32 => 0,
    };
    let t = Instant::now();
    // The weights' hash is set once the lowering has read every deferred tensor.
    let mut info = model_info(plan, &weights_path, "")?;
    if let Some(list) = super::lora::metadata(loras) {
        info.user_defined.insert("mlc.loras".into(), list);
    }
    if let Some(cal) = &cal {
        info.user_defined
            .insert("mlc.calibration.sha256".into(), cal.hash());
        if opts.compression.is_some() {
            info.user_defined.insert(
                "mlc.weights.fit".into(),
                "layer outputs (calibrated)".into(),
            );
        }
    }
    if opts.quantize_activations == Some(ActivationRanges::Calibrated) {
        info.user_defined
            .insert("mlc.activations".into(), "int8 (calibrated)".into());
    }
    let functions = if opts.multifunction {
        let (_, named) = plan.named_sizes()?;
        let mut functions = Vec::new();
        // Each function is its own run of the pass manager: specialised, verified, dumpable.
        for (b, size) in plan.varying().into_iter().zip(named) {
            let name = function_name(part, size);
            let list: Vec<Box<dyn passes::Pass>> = vec![
                Box::new(Specialize {
                    sizes: b,
                    function: name.clone(),
                }),
                // Static now, so the query count is known and attention can be chunked.
                Box::new(passes::attention_pass(&pipeline)),
            ];
            let f =
                passes::run_observed(g.clone(), &list, progress, |p, g| after_pass(p.name(), g))?;
            functions.push((name, f));
        }
        largest = functions
            .iter()
            .filter_map(|(_, f)| largest_intermediate(f, &[]))
            .max_by_key(|l| l.bytes);
        drop(g);
        timings.push(("specialize_shapes".to_string(), t.elapsed()));
        Functions::Several(functions)
    } else if let Some(declared) = declared {
        // The base model is the default function; each adapter a function of its own whose
        // base weights are the same constants, which the blob writer stores once.
        let mut functions = vec![(crate::lora::BASE_FUNCTION.to_string(), g)];
        for (name, adapter) in adapters {
            let mut list: Vec<Box<dyn passes::Pass>> = vec![Box::new(adapter.clone())];
            list.extend(passes::prepare(&pipeline));
            list.extend(passes::finish(&pipeline, None));
            let f = passes::run_observed(declared.clone(), &list, progress, |p, g| {
                after_pass(p.name(), g)
            })?;
            functions.push((name.clone(), f));
        }
        drop(declared);
        timings.push(("adapters".to_string(), t.elapsed()));
        Functions::Several(functions)
    } else {
        Functions::One(g)
    };
    Ok(Programmed {
        functions,
        info,
        largest_intermediate: largest,
        digest,
        timings,
        kept_float,
        fp32_ops,
    })
}

/// A program passed and ready to lower: its functions, its metadata, and what the report says
/// of it so far.
pub(super) struct Programmed {
    pub functions: Functions,
    pub info: mil::lower::ModelInfo,
    pub largest_intermediate: Option<Intermediate>,
    /// The weights' hash and check, finished after lowering.
    pub digest: crate::weights::Digest,
    pub timings: Vec<(String, Duration)>,
    pub kept_float: Option<KeptFloat>,
    pub fp32_ops: usize,
}

/// The functions of a program: one (`main`), or several sharing weights.
pub(super) enum Functions {
    One(Graph),
    Several(Vec<(String, Graph)>),
}

/// The deferred weights of `functions` in the order the lowering writes them.
fn deferred_in_order(functions: &Functions) -> Vec<crate::weights::Spilled> {
    let graphs: Vec<&Graph> = match functions {
        Functions::One(g) => vec![g],
        Functions::Several(f) => f.iter().map(|(_, g)| g).collect(),
    };
    graphs
        .into_iter()
        .flat_map(|g| g.nodes())
        .filter_map(|(_, n)| match &n.op {
            crate::ir::Op::Const(crate::ir::ConstData::Spilled { data, .. })
                if data.is_deferred() =>
            {
                Some(data.clone())
            }
            _ => None,
        })
        .collect()
}

/// Lowers a passed program into `blobs` (a package's weight file, or memory).
pub(super) fn lower_programmed(
    plan: &Plan,
    p: Programmed,
    mut blobs: BlobWriter,
) -> Result<Compiled, BuildError> {
    let opts = plan.opts;
    let Programmed {
        functions,
        info,
        largest_intermediate,
        digest,
        mut timings,
        kept_float,
        fp32_ops,
    } = p;
    let t = Instant::now();
    let iface = plan.lowering();
    blobs.observe(opts.progress.clone());
    opts.progress.begin(Stage::WriteWeights);
    // Weights fused as they are written are fused (and hashed) a few ahead of the writer.
    let prefetch = crate::weights::deferred::Prefetch::start(deferred_in_order(&functions), 2);
    let lowered = match &functions {
        Functions::One(g) => mil::lower::lower_into(g, opts.target, &info, &iface, &mut blobs)?,
        Functions::Several(f) => {
            mil::lower::lower_multifunction_into(f, opts.target, &info, &iface, &mut blobs)?
        }
    };
    drop(prefetch);
    drop(functions);
    // Every deferred tensor the package holds has been read: the hash needs no more reading
    // (unless the graph dropped one), and the check sees the fused values.
    let weights_sha256 = digest.sha256()?;
    digest.check(opts.precision == Precision::Fp16)?;
    let mut lowered = lowered;
    super::metadata::set_weights_sha256(&mut lowered, &weights_sha256);
    let lowered = if blobs.is_file() {
        let weight_file = match blobs.is_empty() {
            true => None,
            false => Some(blobs.finish_file()?),
        };
        mil::Lowered {
            model: lowered,
            weight_bin: None,
            weight_file,
        }
    } else {
        mil::lower::in_memory(lowered, blobs)
    };
    timings.push(("lower".to_string(), t.elapsed()));
    Ok(Compiled {
        model: plan.model.name(),
        part: plan.part,
        lowered,
        largest_intermediate,
        weights_sha256,
        timings,
        kept_float,
        fp32_ops,
        loras: Vec::new(),
    })
}
