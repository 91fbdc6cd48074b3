//! `Tensor`: a shape, a backend (which fixes dtype and device) and that backend's storage, row-major.

use crate::device::{BackendCore, DType, DeviceKind, Element};
use crate::error::{shape_err, Result};

/// Errors unless every dimension of `shape` is at least 1; `what` names the tensor in the message.
pub fn check_nonempty(what: &str, shape: &[usize]) -> Result<()> {
    if shape.contains(&0) {
        return Err(shape_err!(
            "{what} has shape {shape:?}: every dimension must be at least 1"
        ));
    }
    Ok(())
}

/// The number of elements of `shape`, or an error naming it when that does not fit in memory's address range.
pub fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| shape_err!("shape {shape:?} has more elements than can be addressed"))
}

pub struct Tensor<B: BackendCore> {
    shape: Vec<usize>,
    storage: B::Storage,
    backend: B,
}

impl<B: BackendCore> Tensor<B> {
    /// Wraps storage whose length must equal the product of `shape`.
    pub fn from_storage(backend: &B, shape: &[usize], storage: B::Storage) -> Result<Self> {
        let want = numel(shape)?;
        let have = B::storage_len(&storage);
        if want != have {
            return Err(shape_err!(
                "shape {shape:?} needs {want} elements, storage holds {have}"
            ));
        }
        Ok(Self {
            shape: shape.to_vec(),
            storage,
            backend: backend.clone(),
        })
    }
    pub fn zeros(backend: &B, shape: &[usize]) -> Result<Self> {
        let storage = backend.zeros(numel(shape)?)?;
        Self::from_storage(backend, shape, storage)
    }
    pub fn from_slice(backend: &B, shape: &[usize], data: &[B::Elem]) -> Result<Self> {
        let want = numel(shape)?;
        if want != data.len() {
            return Err(shape_err!(
                "shape {shape:?} needs {want} elements, got {}",
                data.len()
            ));
        }
        Self::from_storage(backend, shape, backend.upload(data)?)
    }
    /// Builds a tensor from f64 values (converted to the backend's element type).
    pub fn from_f64(backend: &B, shape: &[usize], data: &[f64]) -> Result<Self> {
        let conv: Vec<B::Elem> = data.iter().map(|&v| B::Elem::from_f64(v)).collect();
        Self::from_slice(backend, shape, &conv)
    }
    pub fn to_vec(&self) -> Result<Vec<B::Elem>> {
        self.backend.download(&self.storage)
    }
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self.to_vec()?.into_iter().map(Element::to_f64).collect())
    }
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            shape: self.shape.clone(),
            storage: self.backend.copy(&self.storage)?,
            backend: self.backend.clone(),
        })
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype(&self) -> DType {
        B::Elem::DTYPE
    }
    pub fn device(&self) -> DeviceKind {
        self.backend.kind()
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn storage(&self) -> &B::Storage {
        &self.storage
    }
    pub fn storage_mut(&mut self) -> &mut B::Storage {
        &mut self.storage
    }
    /// The same data under another shape with the same number of elements.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        let want = numel(shape)?;
        if want != self.len() {
            return Err(shape_err!("cannot reshape {:?} to {shape:?}", self.shape));
        }
        Ok(Self {
            shape: shape.to_vec(),
            ..self
        })
    }
    /// Errors unless the shape is exactly `want`; `what` names the tensor in the message.
    pub fn expect_shape(&self, what: &str, want: &[usize]) -> Result<()> {
        if self.shape != want {
            return Err(shape_err!(
                "{what} has shape {:?}, expected {want:?}",
                self.shape
            ));
        }
        Ok(())
    }
    /// `self + other` (residual connections).
    pub fn add(&self, other: &Self) -> Result<Self> {
        self.expect_same_shape("add", other)?;
        let storage = self.backend.add(&self.storage, &other.storage)?;
        Self::from_storage(&self.backend, &self.shape, storage)
    }
    /// `self += other` (gradient accumulation).
    pub fn add_assign(&mut self, other: &Self) -> Result<()> {
        self.expect_same_shape("add_assign", other)?;
        self.backend.add_assign(&mut self.storage, &other.storage)
    }
    pub fn fill_zero(&mut self) -> Result<()> {
        self.backend.fill_zero(&mut self.storage)
    }
    fn expect_same_shape(&self, op: &str, other: &Self) -> Result<()> {
        if self.shape != other.shape {
            return Err(shape_err!(
                "{op}: shapes {:?} and {:?} differ",
                self.shape,
                other.shape
            ));
        }
        Ok(())
    }
}

impl<B: BackendCore> std::fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {:?}, {:?})",
            self.shape,
            self.dtype(),
            self.device()
        )
    }
}
