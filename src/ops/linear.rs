//! Linear layer `y = x·Wᵀ + b`, weights in PyTorch's `[out, in]` layout. CPU: blocked GEMM; CUDA: cuBLAS.

use crate::device::cpu::{col_sum_into, gemm, MatRef};
use crate::device::cuda::{pointwise_config, GemmOperand};
use crate::device::{BackendCore, Cpu, Cuda, Element};
use crate::error::{shape_err, Result};
use crate::tensor::{check_nonempty, Tensor};
use cudarc::driver::CudaSlice;

/// Sizes of one linear op: `rows` vectors of `d_in` mapped to `d_out`.
#[derive(Clone, Copy, Debug)]
pub struct LinearDims {
    pub rows: usize,
    pub d_in: usize,
    pub d_out: usize,
}

pub trait LinearOps: BackendCore {
    /// `y[rows, d_out] = x[rows, d_in] · w[d_out, d_in]ᵀ + b[d_out]`.
    fn linear_fwd(
        &self,
        x: &Self::Storage,
        w: &Self::Storage,
        b: Option<&Self::Storage>,
        d: LinearDims,
    ) -> Result<Self::Storage>;
    /// Returns `dx = dy · w`; accumulates `dw += dyᵀ · x` and `db += Σ_rows dy`.
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        x: &Self::Storage,
        w: &Self::Storage,
        dy: &Self::Storage,
        dw: &mut Self::Storage,
        db: Option<&mut Self::Storage>,
        d: LinearDims,
    ) -> Result<Self::Storage>;
}

impl<T: Element> LinearOps for Cpu<T> {
    fn linear_fwd(
        &self,
        x: &Vec<T>,
        w: &Vec<T>,
        b: Option<&Vec<T>>,
        d: LinearDims,
    ) -> Result<Vec<T>> {
        let mut y = vec![T::zero(); d.rows * d.d_out];
        if let Some(b) = b {
            y.chunks_mut(d.d_out).for_each(|row| row.copy_from_slice(b));
        }
        let beta = if b.is_some() { T::one() } else { T::zero() };
        gemm(
            MatRef {
                data: x,
                rows: d.rows,
                cols: d.d_in,
                transposed: false,
            },
            MatRef {
                data: w,
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
        x: &Vec<T>,
        w: &Vec<T>,
        dy: &Vec<T>,
        dw: &mut Vec<T>,
        db: Option<&mut Vec<T>>,
        d: LinearDims,
    ) -> Result<Vec<T>> {
        let mut dx = vec![T::zero(); d.rows * d.d_in];
        let dy_ref = MatRef {
            data: &dy[..],
            rows: d.rows,
            cols: d.d_out,
            transposed: false,
        };
        gemm(
            dy_ref,
            MatRef {
                data: w,
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
                data: x,
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

// CUDA half: cuBLAS for the products, `kernels/elementwise.cu` for the bias broadcast and its gradient.
impl LinearOps for Cuda {
    fn linear_fwd(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: Option<&CudaSlice<f32>>,
        d: LinearDims,
    ) -> Result<CudaSlice<f32>> {
        // SAFETY: broadcast_rows_f32 fills all of y (with a bias), or the GEMM writes all of it with beta 0 (without).
        let mut y = unsafe { self.alloc_uninit(d.rows * d.d_out) }?;
        let beta = match b {
            Some(b) => {
                let (rows, cols) = (d.rows as i64, d.d_out as i32);
                self.broadcast_rows_f32(pointwise_config(d.rows * d.d_out), b, &mut y, rows, cols)?;
                1.0
            }
            None => 0.0,
        };
        self.gemm(
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
            &mut y,
            beta,
        )?;
        Ok(y)
    }

    fn linear_bwd(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dw: &mut CudaSlice<f32>,
        db: Option<&mut CudaSlice<f32>>,
        d: LinearDims,
    ) -> Result<CudaSlice<f32>> {
        // SAFETY: the GEMM below writes all of dx with beta 0.
        let mut dx = unsafe { self.alloc_uninit(d.rows * d.d_in) }?;
        let dy_op = GemmOperand {
            data: dy,
            rows: d.rows,
            cols: d.d_out,
            transposed: false,
        };
        self.gemm(
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
        self.gemm(
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
            self.col_sum_add(dy, db, d.rows, d.d_out)?;
        }
        Ok(dx)
    }
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

/// `x·Wᵀ + b` over the last dimension of `x`.
pub fn forward<B: LinearOps>(
    x: &Tensor<B>,
    w: &Tensor<B>,
    b: Option<&Tensor<B>>,
) -> Result<Tensor<B>> {
    let d = dims(x, w, b)?;
    let y = x
        .backend()
        .linear_fwd(x.storage(), w.storage(), b.map(Tensor::storage), d)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = d.d_out;
    Tensor::from_storage(x.backend(), &shape, y)
}

/// Gradient of `forward`: returns `dx`, accumulates into `dw` and `db`.
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
    let dx = backend.linear_bwd(
        x.storage(),
        w.storage(),
        dy.storage(),
        dw.storage_mut(),
        db.map(|t| t.storage_mut()),
        d,
    )?;
    Tensor::from_storage(&backend, x.shape(), dx)
}
