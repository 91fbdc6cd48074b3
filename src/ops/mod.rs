//! Every op the model uses, one file each. In each file: the op's trait (the backend's half, on raw storage
//! with validated sizes), its CPU implementation, its CUDA launch (kernel in `kernels/<same name>.cu`), and the
//! checked, tensor-level functions the model calls.

pub mod adamw;
pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod layernorm;
pub mod linear;
pub mod loss;
pub mod reduce;
pub mod rotary;
pub mod shorten;
pub mod upsample;
pub mod window;

use crate::device::BackendCore;

/// A backend that implements every op: what the model is written against.
pub trait Backend:
    BackendCore
    + linear::LinearOps
    + layernorm::LayerNormOps
    + attention::AttentionOps
    + elementwise::ElementwiseOps
    + shorten::ShortenOps
    + upsample::UpsampleOps
    + window::WindowOps
    + embedding::EmbeddingOps
    + loss::LossOps
    + adamw::AdamWOps
    + reduce::ReduceOps
    + rotary::RotaryOps
{
}

impl<B> Backend for B where
    B: BackendCore
        + linear::LinearOps
        + layernorm::LayerNormOps
        + attention::AttentionOps
        + elementwise::ElementwiseOps
        + shorten::ShortenOps
        + upsample::UpsampleOps
        + window::WindowOps
        + embedding::EmbeddingOps
        + loss::LossOps
        + adamw::AdamWOps
        + reduce::ReduceOps
        + rotary::RotaryOps
{
}
