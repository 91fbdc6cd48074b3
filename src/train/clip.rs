//! Gradient clipping by global norm, like `torch.nn.utils.clip_grad_norm_`: the norm of all gradients taken
//! together, and every gradient scaled by `max_norm / norm` when that norm is larger than `max_norm`.
//! (PyTorch divides by `norm + 1e-6`; this divides by `norm`, so the clipped norm is `max_norm` itself.)

use crate::error::{Error, Result};
use crate::model::{Param, Parameters};
use crate::ops::{elementwise, reduce, Backend};
use crate::tensor::Tensor;

/// The global L2 norm of every gradient of `model` (one deterministic reduction, one host copy).
pub fn grad_norm<B: Backend>(model: &impl Parameters<B>) -> Result<f64> {
    Ok(reduce::sum_squares_all(&gradients(model))?.sqrt())
}

fn gradients<B: Backend>(model: &impl Parameters<B>) -> Vec<&Tensor<B>> {
    let mut grads: Vec<&Tensor<B>> = Vec::new();
    model.visit("", &mut |_, p: &Param<B>| grads.push(&p.grad));
    grads
}

/// The sum of the squared gradients (the norm's square), stored in `out[index]` on the device: a training step
/// with no host round trip, whose guard (`ops::adamw::guard`) takes the clipping factor from it there.
pub(crate) fn grad_sum_squares_into<B: Backend>(
    model: &impl Parameters<B>,
    out: &mut Tensor<B>,
    index: usize,
) -> Result<()> {
    reduce::sum_squares_all_into(&gradients(model), out, index)
}

/// What clipping to `max_norm` multiplies gradients of global norm `norm` by: `max_norm / norm` when the norm
/// is larger, else 1 (and 1 for a non-finite norm, which the caller stops on instead).
pub fn clip_factor(norm: f64, max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::Config(format!(
            "gradient clipping: max_norm must be positive and finite, got {max_norm}"
        )));
    }
    Ok(if norm.is_finite() && norm > max_norm {
        max_norm / norm
    } else {
        1.0
    })
}

/// Clips the gradients of `model` to global norm `max_norm` and returns the norm before clipping.
///
/// A non-finite norm (a NaN or infinite gradient) is returned as it is and nothing is scaled: the caller
/// stops or skips the step (scaling by `max_norm / inf` would turn the gradients into zeros and NaNs).
pub fn clip_grad_norm<B: Backend>(model: &mut impl Parameters<B>, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(model)?;
    let factor = clip_factor(norm, max_norm)?;
    if factor != 1.0 {
        let mut result = Ok(());
        model.visit_mut("", &mut |_, p| {
            if result.is_ok() {
                result = elementwise::scale(&mut p.grad, factor);
            }
        });
        result?;
    }
    Ok(norm)
}
