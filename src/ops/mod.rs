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

use crate::device::{BackendCore, DType};
use crate::error::{shape_err, Result};
use crate::tensor::{Storage, Tensor};
use std::borrow::Cow;

/// Declares `Backend`, every op trait together, and implements it for every backend that implements them.
macro_rules! backend {
    ($(#[$doc:meta])* $($op:path),+ $(,)?) => {
        $(#[$doc])*
        pub trait Backend: BackendCore $(+ $op)+ {}

        impl<B> Backend for B where B: BackendCore $(+ $op)+ {}
    };
}

backend!(
    /// A backend that implements every op: what the model is written against.
    linear::LinearOps,
    layernorm::LayerNormOps,
    attention::AttentionOps,
    elementwise::ElementwiseOps,
    shorten::ShortenOps,
    upsample::UpsampleOps,
    window::WindowOps,
    embedding::EmbeddingOps,
    loss::LossOps,
    adamw::AdamWOps,
    reduce::ReduceOps,
    rotary::RotaryOps,
);

/// The two operands of an op that runs on the backend's element type or on bf16 (linear's input and weight,
/// attention's q and kv), both of one dtype: the op's one method per backend matches on it only where the
/// dtypes differ (the GEMM's operand type or the kernel version, and the rounding points).
pub enum Operands<'a, B: BackendCore> {
    Elem(&'a B::Storage, &'a B::Storage),
    Bf16(&'a B::Bf16Storage, &'a B::Bf16Storage),
}

impl<B: BackendCore> Clone for Operands<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: BackendCore> Copy for Operands<'_, B> {}

impl<'a, B: BackendCore> Operands<'a, B> {
    /// The buffers of `a` and `b`, both bf16 or both the element type; a mix is an error that names `op` and
    /// each operand (`(name, tensor)`) with its shape and dtype.
    pub(crate) fn of(
        op: &str,
        (a_name, a): (&str, &'a Tensor<B>),
        (b_name, b): (&str, &'a Tensor<B>),
    ) -> Result<Self> {
        match (a.dtype(), b.dtype()) {
            (DType::Bf16, DType::Bf16) => Ok(Self::Bf16(a.bf16_storage()?, b.bf16_storage()?)),
            (x, y) if x == y => Ok(Self::Elem(a.storage()?, b.storage()?)),
            (x, y) => Err(shape_err!(
                "{op}: {a_name} {:?} is {x} but {b_name} {:?} is {y}; both must be bf16 or neither",
                a.shape(),
                b.shape()
            )),
        }
    }

    pub(crate) fn is_bf16(&self) -> bool {
        matches!(self, Self::Bf16(..))
    }

    /// Both operands in the element type: bf16 ones widened (exactly, into new buffers), others as they are.
    pub(crate) fn widened(self, backend: &B) -> Result<[Cow<'a, B::Storage>; 2]>
    where
        B::Storage: Clone,
    {
        Ok(match self {
            Self::Elem(a, b) => [Cow::Borrowed(a), Cow::Borrowed(b)],
            Self::Bf16(a, b) => [
                Cow::Owned(backend.widen_bf16(a)?),
                Cow::Owned(backend.widen_bf16(b)?),
            ],
        })
    }
}

/// A tensor of `shape` over `storage`, in the dtype the storage has (an op's output in the element type or
/// bf16).
pub(crate) fn tensor_of<B: BackendCore>(
    backend: &B,
    shape: &[usize],
    storage: Storage<B>,
) -> Result<Tensor<B>> {
    match storage {
        Storage::Elem(s) => Tensor::from_storage(backend, shape, s),
        Storage::Bf16(s) => Tensor::from_bf16_storage(backend, shape, s),
    }
}
