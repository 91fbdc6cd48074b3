//! File-level jobs shared by the CLI (`hourglass forward`, `hourglass demo`) and the golden tests;
//! `hourglass train` and `hourglass sample` are in [`train`].
//!
//! `forward_files` is the contract with the PyTorch reference: config + weights + input in, `y` (and with
//! `gy`, `gx` and every parameter's gradient) out, all as safetensors with the reference's names.

pub mod train;

use crate::checkpoint::{
    export_params, import_params, import_params_under, HostTensor, TensorFile,
};
use crate::config::HourGlassConfig;
use crate::error::{Error, Result};
use crate::model::lm::LM_HOURGLASS;
use crate::model::size::{self, Workload};
use crate::model::{HourGlass, Parameters, Precision};
use crate::ops::Backend;
use crate::rng::{splitmix64, SeededRng};
use crate::tensor::Tensor;
use crate::train::trainer::{checkpoint_config, is_training_checkpoint};
use std::fmt;
use std::path::Path;
use std::time::Instant;

/// The names an input file may hold: `x` (required) and `gy` (optional).
pub(crate) const INPUT_NAMES: [&str; 2] = ["x", "gy"];

/// Errors unless every value of the input tensor `name` is finite (NaN or Inf would silently poison `y`).
fn check_finite(name: &str, t: &HostTensor) -> Result<()> {
    match t.first_non_finite() {
        Some((i, v)) => Err(Error::Shape(format!(
            "input tensor {name} holds {v} at index {i}: inputs must be finite"
        ))),
        None => Ok(()),
    }
}

/// Runs the model described by `config`, with the parameters of `weights`, in evaluation mode (no dropout)
/// on `input`.
///
/// `weights` is a weights file, or a training checkpoint (whose `hourglass.*` tensors are loaded).
/// `input` must hold `x` of shape `[seq_len, batch, d_model]` and may hold `gy` (the gradient of a loss with
/// respect to `y`, of `y`'s shape); any other tensor is an error. `weights` must hold exactly the model's
/// parameters, with their shapes and finite values. The result holds `y` and, when `gy` was given, `gx` and
/// `grad.<parameter name>` for every parameter.
pub fn forward_files<B: Backend>(
    backend: &B,
    config: &HourGlassConfig,
    weights: &TensorFile,
    input: &TensorFile,
) -> Result<TensorFile> {
    forward_files_in(backend, config, weights, input, Precision::Element)
}

/// [`forward_files`] with the GEMMs in `precision` (bf16: the GPU's training precision, whose CPU half is
/// the bf16 reference).
pub fn forward_files_in<B: Backend>(
    backend: &B,
    config: &HourGlassConfig,
    weights: &TensorFile,
    input: &TensorFile,
    precision: Precision,
) -> Result<TensorFile> {
    if let Some(name) = input
        .tensors
        .keys()
        .find(|n| !INPUT_NAMES.contains(&n.as_str()))
    {
        return Err(Error::Checkpoint(format!(
            "unexpected input tensor {name}: an input file holds only x [seq_len, batch, d_model] and \
             optionally gy"
        )));
    }
    let x = input.tensors.get("x").ok_or_else(|| {
        Error::Checkpoint(
            "input tensor x is missing: expected x of shape [seq_len, batch, d_model]".into(),
        )
    })?;
    if x.shape.len() != 3 {
        return Err(Error::Shape(format!(
            "input tensor x has shape {:?} (rank {}): expected rank 3 [seq_len, batch, d_model] with \
             d_model {}",
            x.shape,
            x.shape.len(),
            config.d_model
        )));
    }
    check_finite("x", x)?;
    let gy = input.tensors.get("gy");
    if let Some(gy) = gy {
        // y has x's shape; checking here rejects a bad gy before the forward pass is paid for.
        if gy.shape != x.shape {
            return Err(Error::Shape(format!(
                "input tensor gy has shape {:?}, expected y's shape {:?}",
                gy.shape, x.shape
            )));
        }
        check_finite("gy", gy)?;
    }

    if x.shape[2] != config.d_model {
        return Err(Error::Shape(format!(
            "input tensor x has shape {:?}: its width {} is not the config's d_model {}",
            x.shape, x.shape[2], config.d_model
        )));
    }
    // A training checkpoint holds the hourglass under `hourglass.`, beside the LM's other parts.
    let prefix = if is_training_checkpoint(weights) {
        LM_HOURGLASS
    } else {
        ""
    };
    check_weights_size(config, weights, prefix)?;
    let workload = Workload {
        seq_len: x.shape[0],
        batch: x.shape[1],
        training: gy.is_some(),
        lm: false,
        tied: false,
        cached_positions: 0,
    };
    size::check(backend, "this forward pass", config, workload)?;

    let mut model = HourGlass::from_config(backend, config, 0)?;
    model.train(false);
    model.set_precision(precision);
    if prefix.is_empty() {
        import_params(&mut model, weights)?;
    } else {
        import_params_under(&mut model, weights, prefix)?;
    }

    let x = x.to_tensor(backend)?;
    let y = model.forward(&x)?;
    let mut out = TensorFile::default();
    if let Some(gy) = gy {
        let gy = gy.to_tensor(backend)?;
        gy.expect_shape("input tensor gy", y.shape())?;
        model.zero_grad()?;
        let gx = model.backward(&gy)?;
        out = export_params(&model, true)?;
        out.insert("gx", &gx)?;
    }
    out.insert("y", &y)?;
    Ok(out)
}

/// The model config for `forward_files`: the file `config` when given, else the model settings a training
/// checkpoint holds; a plain weights file needs `config`.
pub fn forward_config(
    config: Option<&Path>,
    weights: &TensorFile,
    weights_path: &Path,
) -> Result<HourGlassConfig> {
    match config {
        Some(path) => HourGlassConfig::from_file(path),
        None if is_training_checkpoint(weights) => {
            Ok(checkpoint_config(weights, weights_path)?.model)
        }
        None => Err(Error::Config(format!(
            "{} is a weights file, which does not say what model it is for: give --config (only a training \
             checkpoint, which holds its settings, can do without)",
            weights_path.display()
        ))),
    }
}

/// Refuses, before the model is built, a config whose model is far larger than the weights meant for it (a
/// typo in d_model, say, would otherwise build gigabytes of parameters to report one wrong shape). Close
/// sizes go on to the model's own checks, which name the tensor.
fn check_weights_size(config: &HourGlassConfig, weights: &TensorFile, prefix: &str) -> Result<()> {
    // Counted as integers: an f64 sum of no tensors is -0.
    let in_file: usize = weights
        .tensors
        .iter()
        .filter(|(name, _)| prefix.is_empty() || name.starts_with(&format!("{prefix}.")))
        .map(|(_, t)| t.data.len())
        .sum();
    let wanted = size::hourglass_params(config)?;
    if wanted > 2.0 * in_file as f64 {
        return Err(Error::Checkpoint(format!(
            "the weights hold {in_file} parameter values{}, but the config describes a model of {wanted} \
             ({}): they do not belong together",
            if prefix.is_empty() {
                String::new()
            } else {
                format!(" under {prefix}.")
            },
            size::model_settings(config)
        )));
    }
    Ok(())
}

/// The seed's example: `HourGlass(n_heads 4, d_model 512, dropout 0.1, d_ff 2048, factors [2, 3])` on `x` of
/// shape `[10, 32, 512]`.
pub(crate) fn demo_config() -> HourGlassConfig {
    HourGlassConfig::reference(4, 512, 0.1, 2048, &[2, 3])
}

/// `[seq_len, batch]` of the seed's example.
pub(crate) const DEMO_SEQ_BATCH: [usize; 2] = [10, 32];

/// What `demo` measured.
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub(crate) config: HourGlassConfig,
    pub(crate) device: String,
    pub(crate) seed: u64,
    pub(crate) params: usize,
    pub(crate) x_shape: Vec<usize>,
    pub(crate) y_shape: Vec<usize>,
    pub(crate) gx_shape: Vec<usize>,
    /// Sum and sum of squares of `y` from the first forward pass of the freshly built model (reproducible
    /// from the seed: the dropout masks depend on the seed and the step).
    pub(crate) y_sum: f64,
    pub(crate) y_sum_sq: f64,
    /// Sum and sum of squares of `gx` for the gradient `gy = y` (the gradient of `0.5 * ||y||^2`).
    pub(crate) gx_sum: f64,
    pub(crate) gx_sum_sq: f64,
    /// Median over `runs` timed runs (after one warm-up), in milliseconds.
    pub(crate) forward_ms: f64,
    pub(crate) forward_backward_ms: f64,
    pub(crate) runs: usize,
}

impl DemoReport {
    pub(crate) fn tokens(&self) -> usize {
        self.x_shape[0] * self.x_shape[1]
    }
    pub(crate) fn forward_tokens_per_s(&self) -> f64 {
        self.tokens() as f64 / self.forward_ms * 1e3
    }
    pub(crate) fn forward_backward_tokens_per_s(&self) -> f64 {
        self.tokens() as f64 / self.forward_backward_ms * 1e3
    }
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "HourGlass(n_heads {}, d_model {}, dropout {}, d_ff {}, shortening_factors {:?}) on {}, seed {}",
            c.n_heads, c.d_model, c.dropout, c.d_ff, c.shortening_factors, self.device, self.seed
        )?;
        writeln!(f, "parameters:        {}", self.params)?;
        writeln!(f, "x:                 {:?}", self.x_shape)?;
        writeln!(f, "y:                 {:?}", self.y_shape)?;
        writeln!(f, "grad x:            {:?}", self.gx_shape)?;
        writeln!(
            f,
            "forward:           {:9.2} ms  {:>12.0} tokens/s",
            self.forward_ms,
            self.forward_tokens_per_s()
        )?;
        writeln!(
            f,
            "forward+backward:  {:9.2} ms  {:>12.0} tokens/s",
            self.forward_backward_ms,
            self.forward_backward_tokens_per_s()
        )?;
        writeln!(
            f,
            "                   (median of {} runs after a warm-up, training mode)",
            self.runs
        )?;
        writeln!(
            f,
            "checksum y:        sum {:.6e}  sum of squares {:.6e}",
            self.y_sum, self.y_sum_sq
        )?;
        write!(
            f,
            "checksum grad x:   sum {:.6e}  sum of squares {:.6e}",
            self.gx_sum, self.gx_sum_sq
        )
    }
}

fn sums(v: &[f64]) -> (f64, f64) {
    (v.iter().sum(), v.iter().map(|a| a * a).sum())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the seed's example on `backend`: builds the model (training mode, dropout 0.1) from `seed`, draws `x`
/// (standard normal) from the seed, runs forward and backward (`gy = y`) and times `runs` further passes of
/// each (median, after a warm-up), waiting for the device before reading the clock.
pub fn demo<B: Backend>(backend: &B, device: &str, seed: u64, runs: usize) -> Result<DemoReport> {
    let config = demo_config();
    let [seq, batch] = DEMO_SEQ_BATCH;
    let shape = [seq, batch, config.d_model];
    let mut model = HourGlass::from_config(backend, &config, seed)?;
    let mut rng = SeededRng::new(splitmix64(seed ^ 0x5EED_0A7A));
    let data: Vec<f64> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
    let x = Tensor::from_f64(backend, &shape, &data)?;

    // The checksummed pass: the model's first forward, so the dropout masks depend only on the seed.
    let y = model.forward(&x)?;
    let gx = model.backward(&y)?;
    let (y_sum, y_sum_sq) = sums(&y.to_f64_vec()?);
    let (gx_sum, gx_sum_sq) = sums(&gx.to_f64_vec()?);

    let runs = runs.max(1);
    let mut forward = Vec::with_capacity(runs);
    let mut forward_backward = Vec::with_capacity(runs);
    for _ in 0..runs + 1 {
        backend.synchronize()?;
        let t = Instant::now();
        let y = model.forward(&x)?;
        backend.synchronize()?;
        let t_forward = t.elapsed().as_secs_f64() * 1e3;
        model.zero_grad()?;
        backend.synchronize()?;
        let t = Instant::now();
        let y2 = model.forward(&x)?;
        model.backward(&y2)?;
        backend.synchronize()?;
        let t_both = t.elapsed().as_secs_f64() * 1e3;
        drop(y);
        forward.push(t_forward);
        forward_backward.push(t_both);
    }
    // The first run is the warm-up.
    forward.remove(0);
    forward_backward.remove(0);

    Ok(DemoReport {
        params: model.param_count(),
        config,
        device: device.to_string(),
        seed,
        x_shape: x.shape().to_vec(),
        y_shape: y.shape().to_vec(),
        gx_shape: gx.shape().to_vec(),
        y_sum,
        y_sum_sq,
        gx_sum,
        gx_sum_sq,
        forward_ms: median(forward),
        forward_backward_ms: median(forward_backward),
        runs,
    })
}
