//! The paper's parts, written once against `ops::Backend`: each module keeps what its forward saw and
//! implements its own backward (no tape), accumulating parameter gradients into `Param::grad`.

pub mod decode;
pub mod hourglass;
pub(crate) mod layers;
pub mod lm;
pub mod shortening;
pub mod size;
pub mod transformer;
pub mod upsampling;

use crate::device::BackendCore;
use crate::error::Result;
use crate::rng::{splitmix64, staged_slot, DropoutMask, SeededRng};
use crate::tensor::Tensor;

pub use hourglass::HourGlass;

/// A learnable tensor and the gradient accumulated for it; in bf16, also the value rounded for the GEMMs it
/// feeds (made when first needed, rewritten by the optimiser's update, remade whenever `value` has changed
/// any other way).
pub struct Param<B: BackendCore> {
    pub value: Tensor<B>,
    pub grad: Tensor<B>,
    bf16: Option<Bf16Copy<B>>,
}

/// `value` rounded to bf16, and the version of `value` it was rounded from.
struct Bf16Copy<B: BackendCore> {
    of_version: u64,
    tensor: Tensor<B>,
}

impl<B: BackendCore> Param<B> {
    pub fn new(value: Tensor<B>) -> Result<Self> {
        let grad = Tensor::zeros(value.backend(), value.shape())?;
        Ok(Self {
            value,
            grad,
            bf16: None,
        })
    }
    /// The value a GEMM in `precision` takes: as it is in the element type; in bf16 the rounded copy, made
    /// again only when `value` has changed since it was made (the optimiser keeps it current).
    pub(crate) fn gemm_value(&mut self, precision: Precision) -> Result<Tensor<B>> {
        if precision == Precision::Element {
            return Ok(self.value.share());
        }
        match &self.bf16 {
            Some(copy) if copy.of_version == self.value.version() => Ok(copy.tensor.share()),
            _ => {
                let tensor = self.value.to_bf16()?;
                let shared = tensor.share();
                self.bf16 = Some(Bf16Copy {
                    of_version: self.value.version(),
                    tensor,
                });
                Ok(shared)
            }
        }
    }
    /// The bf16 copy, taken out for the optimiser to rewrite when it is current (a stale one is dropped).
    pub fn take_bf16_copy(&mut self) -> Option<Tensor<B>> {
        self.bf16
            .take()
            .filter(|copy| copy.of_version == self.value.version())
            .map(|copy| copy.tensor)
    }
    /// Puts back a bf16 copy that now holds `value` rounded.
    pub fn restore_bf16_copy(&mut self, tensor: Tensor<B>) {
        self.bf16 = Some(Bf16Copy {
            of_version: self.value.version(),
            tensor,
        });
    }
    /// The buffers the parameter holds (value, gradient, bf16 copy): `Tensor::buffer_id` of each.
    pub(crate) fn buffer_ids(&self) -> Vec<usize> {
        let mut ids = vec![self.value.buffer_id(), self.grad.buffer_id()];
        ids.extend(self.bf16.as_ref().map(|copy| copy.tensor.buffer_id()));
        ids
    }
    /// PyTorch's default Linear initialisation: U(-bound, bound) with bound = 1/sqrt(fan_in).
    pub(crate) fn uniform(
        backend: &B,
        shape: &[usize],
        bound: f64,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        let data: Vec<f64> = (0..crate::tensor::numel(shape)?)
            .map(|_| rng.uniform_in(-bound, bound))
            .collect();
        Self::new(Tensor::from_f64(backend, shape, &data)?)
    }
    pub(crate) fn filled(backend: &B, shape: &[usize], value: f64) -> Result<Self> {
        Self::new(Tensor::from_f64(
            backend,
            shape,
            &vec![value; crate::tensor::numel(shape)?],
        )?)
    }
}

/// Named access to every parameter, with the names of the PyTorch reference's `state_dict`.
pub trait Parameters<B: BackendCore> {
    /// Calls `f(name, param)` for every parameter under `prefix`, in a fixed order.
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>));
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>));

    /// Sets every gradient to zero.
    fn zero_grad(&mut self) -> Result<()> {
        let mut result = Ok(());
        self.visit_mut("", &mut |_, p| {
            if result.is_ok() {
                result = p.grad.fill_zero();
            }
        });
        result
    }
    /// Every parameter's name, in visiting order.
    fn param_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.visit("", &mut |n, _| names.push(n));
        names
    }
    /// Total number of scalar parameters.
    fn param_count(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, p| n += p.value.len());
        n
    }
}

impl<B: BackendCore> Parameters<B> for Param<B> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a Param<B>)) {
        f(prefix.to_string(), self);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut Param<B>)) {
        f(prefix.to_string(), self);
    }
}

/// Implements `Parameters` for a module by visiting its fields under the given (PyTorch) names.
macro_rules! impl_parameters {
    ($ty:ident { $($field:ident => $name:literal),* $(,)? }) => {
        impl<B: $crate::ops::Backend> $crate::model::Parameters<B> for $ty<B> {
            fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(String, &'a $crate::model::Param<B>)) {
                $( $crate::model::Parameters::visit(&self.$field, &$crate::model::join(prefix, $name), f); )*
            }
            fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(String, &mut $crate::model::Param<B>)) {
                $( $crate::model::Parameters::visit_mut(&mut self.$field, &$crate::model::join(prefix, $name), f); )*
            }
        }
    };
}
pub(crate) use impl_parameters;

/// `prefix.name`, or `name` at the top, or `prefix` for an unnamed field (a nested level's valley adds its
/// own name, so it is visited at "": `hour_glass.shortened...`, not `hour_glass..shortened...`).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else if name.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The precision the model computes in. `Element`: every operand in the backend's element type (f32 on
/// `Cpu<f32>` and CUDA, f64 on `Cpu<f64>`), spelled `f32` on the command line and in JSON (configs,
/// checkpoints), where every backend's is f32. `Bf16` rounds the operands of every GEMM and of attention's
/// products to bf16 (tensor cores on the GPU, products accumulated in f32), and keeps the rounded inputs for
/// backward. Parameters, gradients, optimiser state, LayerNorm statistics, the softmax and the loss are in the
/// element type either way.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    // Documented above: clap would print a doc comment here in `--help`.
    #[serde(rename = "f32")]
    #[value(name = "f32")]
    Element,
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Element => "f32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// What one forward pass needs besides its input: a fresh dropout mask for each dropout site it visits (in a
/// fixed order, so the same seed reproduces the same masks; none in evaluation mode), and the precision of its
/// GEMMs. A pass of a training step with no host round trip has its seeds staged on the device: its masks
/// name the slots (`rng::staged_slot` of its micro-batch), whose values `site_seed` gives the host.
pub struct Pass {
    training: bool,
    seed: u64,
    site: u64,
    precision: Precision,
    staged_micro: Option<usize>,
}

impl Pass {
    pub fn new(training: bool, seed: u64) -> Self {
        Self {
            training,
            seed,
            site: 0,
            precision: Precision::Element,
            staged_micro: None,
        }
    }
    pub fn eval() -> Self {
        Self::new(false, 0)
    }
    pub(crate) fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }
    /// Masks that name micro-batch `micro`'s staged seed slots (`rng::staged_slot`).
    pub(crate) fn with_staged_seeds(self, micro: Option<usize>) -> Self {
        Self {
            staged_micro: micro,
            ..self
        }
    }
    pub(crate) fn precision(&self) -> Precision {
        self.precision
    }
    /// The seed of site `site` (counted from 1) of the pass whose seed is `pass_seed`.
    pub(crate) fn site_seed(pass_seed: u64, site: u64) -> u64 {
        splitmix64(pass_seed ^ splitmix64(site))
    }
    /// The mask for the next site with drop probability `p` (`None` in evaluation or when `p == 0`).
    pub(crate) fn dropout(&mut self, p: f64) -> Option<DropoutMask> {
        self.site += 1;
        (self.training && p > 0.0).then(|| DropoutMask {
            p,
            seed: Self::site_seed(self.seed, self.site),
            slot: self
                .staged_micro
                .and_then(|micro| staged_slot(micro, self.site)),
        })
    }
    /// Dropout sites visited so far.
    pub(crate) fn sites(&self) -> u64 {
        self.site
    }
}
