//! Linear layer `y = x·Wᵀ + b`, weights in PyTorch's `[out, in]` layout. CPU: blocked GEMM; CUDA: cuBLAS.
//!
//! Inputs and weights are both the backend's element type, or both bf16 (mixed precision: tensor-core GEMMs
//! on the GPU). With bf16 operands the output, the bias and the parameter gradients stay in the element type
//! and products accumulate in f32; backward rounds the output gradient to bf16 for its two GEMMs (the bias
//! gradient sums it unrounded). The CPU half rounds at exactly those points and multiplies the widened values
//! in f32, where a bf16 x bf16 product is exact: it differs from cuBLAS only in the order of the f32 sums.

use crate::device::cpu::{col_sum_into, gemm, MatRef};
use crate::device::cuda::{GemmElem, GemmOperand};
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::ops::Operands;
use crate::tensor::{check_nonempty, Tensor};
use cudarc::driver::CudaSlice;
use std::borrow::Cow;

/// Sizes of one linear op: `rows` vectors of `d_in` mapped to `d_out`.
#[derive(Clone, Copy, Debug)]
pub struct LinearDims {
    pub(crate) rows: usize,
    pub(crate) d_in: usize,
    pub(crate) d_out: usize,
}

pub trait LinearOps: BackendCore {
    /// `y[rows, d_out] = x[rows, d_in] · w[d_out, d_in]ᵀ + b[d_out]`, from `xw = (x, w)` in the element type or
    /// bf16; y in the element type.
    fn linear_fwd(
        &self,
        xw: Operands<'_, Self>,
        b: Option<&Self::Storage>,
        d: LinearDims,
    ) -> Result<Self::Storage>;
    /// Returns `dx = dy · w`; accumulates `dw += dyᵀ · x` and `db += Σ_rows dy`. With bf16 operands `dy` is
    /// rounded to bf16 for `dx` and `dw`, and `db` sums it unrounded.
    fn linear_bwd(
        &self,
        xw: Operands<'_, Self>,
        dy: &Self::Storage,
        dw: &mut Self::Storage,
        db: Option<&mut Self::Storage>,
        d: LinearDims,
    ) -> Result<Self::Storage>;
}

impl<T: Element> LinearOps for Cpu<T> {
    fn linear_fwd(
        &self,
        xw: Operands<'_, Self>,
        b: Option<&Vec<T>>,
        d: LinearDims,
    ) -> Result<Vec<T>> {
        let [x, w] = xw.widened(self)?;
        let mut y = vec![T::zero(); d.rows * d.d_out];
        if let Some(b) = b {
            y.chunks_mut(d.d_out).for_each(|row| row.copy_from_slice(b));
        }
        let beta = if b.is_some() { T::one() } else { T::zero() };
        gemm(
            MatRef {
                data: &x,
                rows: d.rows,
                cols: d.d_in,
                transposed: false,
            },
            MatRef {
                data: &w,
                rows: d.d_out,
                cols: d.d_in,
                transposed: true,
            },
            &mut y,
            beta,
        );
        Ok(y)
    }

    fn linear_bwd(
        &self,
        xw: Operands<'_, Self>,
        dy: &Vec<T>,
        dw: &mut Vec<T>,
        db: Option<&mut Vec<T>>,
        d: LinearDims,
    ) -> Result<Vec<T>> {
        // The two GEMMs take dy as their other operands come: rounded to bf16 with bf16 operands.
        let dy_gemm = match xw {
            Operands::Elem(..) => Cow::Borrowed(dy),
            Operands::Bf16(..) => Cow::Owned(self.widen_bf16(&self.round_to_bf16(dy)?)?),
        };
        let [x, w] = xw.widened(self)?;
        let mut dx = vec![T::zero(); d.rows * d.d_in];
        let dy_ref = MatRef {
            data: &dy_gemm[..],
            rows: d.rows,
            cols: d.d_out,
            transposed: false,
        };
        gemm(
            dy_ref,
            MatRef {
                data: &w,
                rows: d.d_out,
                cols: d.d_in,
                transposed: false,
            },
            &mut dx,
            T::zero(),
        );
        gemm(
            MatRef {
                transposed: true,
                ..dy_ref
            },
            MatRef {
                data: &x,
                rows: d.rows,
                cols: d.d_in,
                transposed: false,
            },
            dw,
            T::one(),
        );
        if let Some(db) = db {
            col_sum_into(db, dy, d.rows, d.d_out);
        }
        Ok(dx)
    }
}

// CUDA half: cuBLASLt for the products (f32, or bf16 on the tensor cores) with the bias in its epilogue
// (`Cuda::gemm_bias`, which falls back to cublasGemmEx and a broadcast kernel), `kernels/elementwise.cu` for
// the bias gradient. The operands' dtype picks the GEMM's type.
impl LinearOps for Cuda {
    fn linear_fwd(
        &self,
        xw: Operands<'_, Self>,
        b: Option<&CudaSlice<f32>>,
        d: LinearDims,
    ) -> Result<CudaSlice<f32>> {
        match xw {
            Operands::Elem(x, w) => cuda_linear_fwd(self, x, w, b, d),
            Operands::Bf16(x, w) => cuda_linear_fwd(self, x, w, b, d),
        }
    }

    fn linear_bwd(
        &self,
        xw: Operands<'_, Self>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        db: Option<&mut CudaSlice<f32>>,
        d: LinearDims,
    ) -> Result<CudaSlice<f32>> {
        match xw {
            Operands::Elem(x, w) => cuda_linear_bwd(self, x, w, dy, dy, dw, db, d),
            Operands::Bf16(x, w) => {
                let dy_rounded = self.round_to_bf16(dy)?;
                cuda_linear_bwd(self, x, w, &dy_rounded, dy, dw, db, d)
            }
        }
    }
}

fn cuda_linear_fwd<T: GemmElem>(
    cuda: &Cuda,
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
    b: Option<&CudaSlice<f32>>,
    d: LinearDims,
) -> Result<CudaSlice<f32>> {
    // SAFETY: the GEMM writes all of y (beta 0; with a bias, in cuBLASLt's epilogue or over a broadcast of it).
    let mut y = unsafe { cuda.alloc_uninit(d.rows * d.d_out) }?;
    cuda.gemm_bias(
        GemmOperand {
            data: x,
            rows: d.rows,
            cols: d.d_in,
            transposed: false,
        },
        GemmOperand {
            data: w,
            rows: d.d_out,
            cols: d.d_in,
            transposed: true,
        },
        b,
        &mut y,
        0.0,
    )?;
    Ok(y)
}

/// `dy` feeds the two GEMMs (in their input type), `dy_sum` the bias gradient (f32).
#[allow(clippy::too_many_arguments)]
fn cuda_linear_bwd<T: GemmElem>(
    cuda: &Cuda,
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
    dy: &CudaSlice<T>,
    dy_sum: &CudaSlice<f32>,
    dw: &mut CudaSlice<f32>,
    db: Option<&mut CudaSlice<f32>>,
    d: LinearDims,
) -> Result<CudaSlice<f32>> {
    // SAFETY: the GEMM below writes all of dx with beta 0.
    let mut dx = unsafe { cuda.alloc_uninit(d.rows * d.d_in) }?;
    let dy_op = GemmOperand {
        data: dy,
        rows: d.rows,
        cols: d.d_out,
        transposed: false,
    };
    cuda.gemm(
        dy_op,
        GemmOperand {
            data: w,
            rows: d.d_out,
            cols: d.d_in,
            transposed: false,
        },
        &mut dx,
        0.0,
    )?;
    // Weight gradients accumulate in f32 (beta 1), whatever the operands' type.
    cuda.gemm(
        GemmOperand {
            transposed: true,
            ..dy_op
        },
        GemmOperand {
            data: x,
            rows: d.rows,
            cols: d.d_in,
            transposed: false,
        },
        dw,
        1.0,
    )?;
    if let Some(db) = db {
        cuda.col_sum_add(dy_sum, db, d.rows, d.d_out)?;
    }
    Ok(dx)
}

/// Checks `x[..., d_in]`, `w[d_out, d_in]`, `b[d_out]` and returns the sizes.
fn dims<B: BackendCore>(x: &Tensor<B>, w: &Tensor<B>, b: Option<&Tensor<B>>) -> Result<LinearDims> {
    let [d_out, d_in] = w.shape() else {
        return Err(shape_err!(
            "linear weight must be [out, in], got {:?}",
            w.shape()
        ));
    };
    let (d_out, d_in) = (*d_out, *d_in);
    check_nonempty("linear weight", w.shape())?;
    check_nonempty("linear input", x.shape())?;
    if x.shape().last() != Some(&d_in) {
        return Err(shape_err!(
            "linear input {:?} does not end in the weight's in-width {d_in}",
            x.shape()
        ));
    }
    if let Some(b) = b {
        b.expect_shape("linear bias", &[d_out])?;
    }
    Ok(LinearDims {
        rows: x.len() / d_in,
        d_in,
        d_out,
    })
}

/// `x` and `w`, both bf16 or both the element type (anything else is an error naming them).
fn operands<'a, B: BackendCore>(x: &'a Tensor<B>, w: &'a Tensor<B>) -> Result<Operands<'a, B>> {
    Operands::of("linear", ("input", x), ("weight", w))
}

/// `x·Wᵀ + b` over the last dimension of `x`: in the element type, or from bf16 `x` and `W` (see the module).
pub fn forward<B: LinearOps>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    b: Option<&Tensor<B>>,
) -> Result<Tensor<B>> {
    let d = dims(x, w, b)?;
    let bias = b.map(Tensor::storage).transpose()?;
    let backend = x.backend();
    let y = backend.linear_fwd(operands(x, w)?, bias, d)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = d.d_out;
    Tensor::from_storage(backend, &shape, y)
}

/// Gradient of `forward`: returns `dx`, accumulates into `dw` and `db` (all in the element type, as is `dy`).
pub fn backward<B: LinearOps>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    dy: &Tensor<B>,
    dw: &mut Tensor<B>,
    db: Option<&mut Tensor<B>>,
) -> Result<Tensor<B>> {
    let d = dims(x, w, None)?;
    let mut y_shape = x.shape().to_vec();
    *y_shape.last_mut().unwrap() = d.d_out;
    dy.expect_shape("linear output gradient", &y_shape)?;
    dw.expect_shape("linear weight gradient", w.shape())?;
    if let Some(db) = &db {
        db.expect_shape("linear bias gradient", &[d.d_out])?;
    }
    let backend = x.backend().clone();
    let (dw, db) = (dw.storage_mut()?, db.map(Tensor::storage_mut).transpose()?);
    let dx = backend.linear_bwd(operands(x, w)?, dy.storage()?, dw, db, d)?;
    Tensor::from_storage(&backend, x.shape(), dx)
}
