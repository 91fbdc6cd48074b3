//! `Tensor`: a shape, a backend (which fixes the device) and that backend's storage, row-major. The storage
//! carries the dtype: the backend's element type (f32, or f64 for gradient checks), or bf16.

use crate::device::{BackendCore, DType, DeviceKind, Element};
use crate::error::{shape_err, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A number no tensor content has had before: a tensor takes a new one whenever its buffer may change.
fn new_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Errors unless every dimension of `shape` is at least 1; `what` names the tensor in the message.
pub(crate) fn check_nonempty(what: &str, shape: &[usize]) -> Result<()> {
    if shape.contains(&0) {
        return Err(shape_err!(
            "{what} has shape {shape:?}: every dimension must be at least 1"
        ));
    }
    Ok(())
}

/// The number of elements of `shape`, or an error naming it when that does not fit in memory's address range.
pub(crate) fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| shape_err!("shape {shape:?} has more elements than can be addressed"))
}

/// A tensor's buffer: the backend's element type, or bf16.
pub enum Storage<B: BackendCore> {
    Elem(B::Storage),
    Bf16(B::Bf16Storage),
}

/// A shape, a backend and a buffer. Handles made by [`Tensor::share`] hold the same buffer (what modules keep
/// for backward costs no copy); writing through a shared handle copies the buffer first, so no handle ever
/// sees another's writes.
pub struct Tensor<B: BackendCore> {
    shape: Vec<usize>,
    storage: Arc<Storage<B>>,
    backend: B,
    version: u64,
}

impl<B: BackendCore> Tensor<B> {
    /// Wraps storage whose length must equal the product of `shape`.
    pub(crate) fn from_storage(backend: &B, shape: &[usize], storage: B::Storage) -> Result<Self> {
        Self::wrap(backend, shape, Storage::Elem(storage))
    }
    /// Wraps bf16 storage whose length must equal the product of `shape`.
    pub(crate) fn from_bf16_storage(
        backend: &B,
        shape: &[usize],
        storage: B::Bf16Storage,
    ) -> Result<Self> {
        Self::wrap(backend, shape, Storage::Bf16(storage))
    }
    fn wrap(backend: &B, shape: &[usize], storage: Storage<B>) -> Result<Self> {
        let want = numel(shape)?;
        let have = match &storage {
            Storage::Elem(s) => B::storage_len(s),
            Storage::Bf16(s) => B::bf16_len(s),
        };
        if want != have {
            return Err(shape_err!(
                "shape {shape:?} needs {want} elements, storage holds {have}"
            ));
        }
        Ok(Self {
            shape: shape.to_vec(),
            storage: Arc::new(storage),
            backend: backend.clone(),
            version: new_version(),
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
    /// The values as the backend's element type (a bf16 tensor's exactly).
    pub fn to_vec(&self) -> Result<Vec<B::Elem>> {
        match &*self.storage {
            Storage::Elem(s) => self.backend.download(s),
            Storage::Bf16(s) => self.backend.download(&self.backend.widen_bf16(s)?),
        }
    }
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        Ok(self.to_vec()?.into_iter().map(Element::to_f64).collect())
    }
    /// A copy in a buffer of its own.
    pub fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            shape: self.shape.clone(),
            storage: Arc::new(self.copy_storage()?),
            backend: self.backend.clone(),
            version: self.version,
        })
    }
    fn copy_storage(&self) -> Result<Storage<B>> {
        Ok(match &*self.storage {
            Storage::Elem(s) => Storage::Elem(self.backend.copy(s)?),
            // Widening and rounding back is exact: bf16 -> Elem -> bf16 is the identity.
            Storage::Bf16(s) => {
                Storage::Bf16(self.backend.round_to_bf16(&self.backend.widen_bf16(s)?)?)
            }
        })
    }
    /// Another handle on the same buffer, without a copy (see [`Tensor`]).
    pub fn share(&self) -> Self {
        Self {
            shape: self.shape.clone(),
            storage: Arc::clone(&self.storage),
            backend: self.backend.clone(),
            version: self.version,
        }
    }
    /// Identifies these contents: equal versions mean equal values (a copy or a share keeps the version), and
    /// every write through [`Tensor::storage_mut`] takes a new one. Caches derived from a tensor (a
    /// parameter's bf16 copy) compare it to know whether they are still current.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// Whether another handle holds this tensor's buffer.
    /// Rows `start..start + count` along the first dimension, copied (`[count, ...]`).
    pub(crate) fn rows(&self, start: usize, count: usize) -> Result<Self> {
        let (row, mut shape) = self.row_shape("rows", start, count)?;
        shape[0] = count;
        let (at, len) = (start * row, count * row);
        let b = &self.backend;
        match &*self.storage {
            Storage::Elem(s) => Self::from_storage(b, &shape, b.copy_range(s, at, len)?),
            Storage::Bf16(s) => Self::from_bf16_storage(b, &shape, b.copy_range_bf16(s, at, len)?),
        }
    }

    /// Zeros of this tensor's dtype and shape but with `rows` rows along the first dimension (a buffer that
    /// rows like these are written into).
    pub(crate) fn zeros_with_rows(&self, rows: usize) -> Result<Self> {
        let mut shape = self.shape.clone();
        match shape.first_mut() {
            Some(first) => *first = rows,
            None => return Err(shape_err!("zeros_with_rows of a scalar")),
        }
        let zeros = Self::zeros(&self.backend, &shape)?;
        match self.dtype() {
            DType::Bf16 => zeros.to_bf16(),
            _ => Ok(zeros),
        }
    }

    /// Writes `src`'s rows over rows `first..` of this tensor (same dtype and trailing shape), in place.
    pub(crate) fn write_rows(&mut self, first: usize, src: &Self) -> Result<()> {
        let count = src.shape.first().copied().unwrap_or(0);
        let (row, shape) = self.row_shape("write_rows", first, count)?;
        if src.shape[1..] != shape[1..] || src.dtype() != self.dtype() {
            return Err(shape_err!(
                "write_rows: a {} tensor of shape {:?} into a {} one of shape {:?}",
                src.dtype(),
                src.shape,
                self.dtype(),
                self.shape
            ));
        }
        let b = self.backend.clone();
        match (src.dtype(), &*src.storage) {
            (DType::Bf16, Storage::Bf16(s)) => {
                b.copy_into_bf16(self.bf16_storage_mut()?, first * row, s)
            }
            (_, Storage::Elem(s)) => b.copy_into(self.storage_mut()?, first * row, s),
            _ => Err(shape_err!("write_rows: storage and dtype disagree")),
        }
    }

    /// Elements per row along the first dimension and the shape, after checking rows `start..start+count`
    /// are inside it (`what` names the caller).
    fn row_shape(&self, what: &str, start: usize, count: usize) -> Result<(usize, Vec<usize>)> {
        let rows = self.shape.first().copied().unwrap_or(0);
        if start.checked_add(count).is_none_or(|end| end > rows) {
            return Err(shape_err!(
                "{what}: rows {start}..{} of a tensor of shape {:?}",
                start.saturating_add(count),
                self.shape
            ));
        }
        Ok((self.len() / rows.max(1), self.shape.clone()))
    }

    /// Which buffer this handle holds: equal for handles that share one (`share`), different after a write
    /// to a shared buffer gave this handle a copy. A captured step checks with it that nothing it reads or
    /// writes has moved.
    pub(crate) fn buffer_id(&self) -> usize {
        Arc::as_ptr(&self.storage) as *const () as usize
    }
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.storage) > 1
    }
    /// This tensor rounded to bf16 (to nearest, ties to even); a bf16 tensor is copied.
    pub fn to_bf16(&self) -> Result<Self> {
        match &*self.storage {
            Storage::Elem(s) => {
                Self::from_bf16_storage(&self.backend, &self.shape, self.backend.round_to_bf16(s)?)
            }
            Storage::Bf16(_) => self.try_clone(),
        }
    }
    /// This tensor in the backend's element type: a bf16 tensor widened (exactly), any other copied.
    pub fn widen(&self) -> Result<Self> {
        match &*self.storage {
            Storage::Elem(_) => self.try_clone(),
            Storage::Bf16(s) => {
                Self::from_storage(&self.backend, &self.shape, self.backend.widen_bf16(s)?)
            }
        }
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
        match *self.storage {
            Storage::Elem(_) => B::Elem::DTYPE,
            Storage::Bf16(_) => DType::Bf16,
        }
    }
    pub(crate) fn device(&self) -> DeviceKind {
        self.backend.kind()
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The buffer of a tensor in the backend's element type; a bf16 tensor is an error naming its shape (ops
    /// that take bf16 ask for `bf16_storage`).
    pub fn storage(&self) -> Result<&B::Storage> {
        match &*self.storage {
            Storage::Elem(s) => Ok(s),
            Storage::Bf16(_) => Err(self.wrong_dtype(B::Elem::DTYPE)),
        }
    }
    /// The buffer to write to: a shared one is copied first (copy-on-write). The tensor takes a new version.
    pub fn storage_mut(&mut self) -> Result<&mut B::Storage> {
        if self.dtype() == DType::Bf16 {
            return Err(self.wrong_dtype(B::Elem::DTYPE));
        }
        match self.unshared_storage()? {
            Storage::Elem(s) => Ok(s),
            Storage::Bf16(_) => Err(shape_err!(
                "a bf16 buffer where {} was expected",
                B::Elem::DTYPE
            )),
        }
    }
    /// The bf16 buffer to write to, as `storage_mut` (copied first when shared; a new version).
    pub(crate) fn bf16_storage_mut(&mut self) -> Result<&mut B::Bf16Storage> {
        if self.dtype() != DType::Bf16 {
            return Err(self.wrong_dtype(DType::Bf16));
        }
        match self.unshared_storage()? {
            Storage::Bf16(s) => Ok(s),
            Storage::Elem(_) => Err(shape_err!(
                "a {} buffer where bf16 was expected",
                B::Elem::DTYPE
            )),
        }
    }
    fn unshared_storage(&mut self) -> Result<&mut Storage<B>> {
        if self.is_shared() {
            self.storage = Arc::new(self.copy_storage()?);
        }
        self.version = new_version();
        Arc::get_mut(&mut self.storage).ok_or_else(|| {
            shape_err!(
                "tensor {:?}: its buffer is still shared after a copy",
                self.shape
            )
        })
    }
    /// The buffer of a bf16 tensor; any other dtype is an error naming its shape.
    pub(crate) fn bf16_storage(&self) -> Result<&B::Bf16Storage> {
        match &*self.storage {
            Storage::Bf16(s) => Ok(s),
            Storage::Elem(_) => Err(self.wrong_dtype(DType::Bf16)),
        }
    }
    fn wrong_dtype(&self, want: DType) -> crate::error::Error {
        shape_err!(
            "a {} tensor of shape {:?} where {want} was expected",
            self.dtype(),
            self.shape
        )
    }
    /// The same data under another shape with the same number of elements.
    pub(crate) fn reshape(self, shape: &[usize]) -> Result<Self> {
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
    pub(crate) fn expect_shape(&self, what: &str, want: &[usize]) -> Result<()> {
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
        let storage = self.backend.add(self.storage()?, other.storage()?)?;
        Self::from_storage(&self.backend, &self.shape, storage)
    }
    /// `self += other` (gradient accumulation).
    pub fn add_assign(&mut self, other: &Self) -> Result<()> {
        self.expect_same_shape("add_assign", other)?;
        let backend = self.backend.clone();
        backend.add_assign(self.storage_mut()?, other.storage()?)
    }
    pub fn fill_zero(&mut self) -> Result<()> {
        let backend = self.backend.clone();
        backend.fill_zero(self.storage_mut()?)
    }
    /// The tensors stacked along their first dimension (which may differ; the others must not), all of one
    /// dtype: the weights of several linear maps of one input, as the weight of one GEMM.
    pub(crate) fn concat(parts: &[&Self]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(shape_err!("concat of no tensors"));
        };
        let (backend, dtype, trailing) = (first.backend(), first.dtype(), &first.shape[1..]);
        let mut rows = 0;
        for p in parts {
            if p.shape.is_empty() || &p.shape[1..] != trailing || p.dtype() != dtype {
                return Err(shape_err!(
                    "concat: a {} tensor of shape {:?} after a {dtype} one of shape {:?}",
                    p.dtype(),
                    p.shape,
                    first.shape
                ));
            }
            rows += p.shape[0];
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        if dtype == DType::Bf16 {
            let buffers = parts
                .iter()
                .map(|p| p.bf16_storage())
                .collect::<Result<Vec<_>>>()?;
            Self::from_bf16_storage(backend, &shape, backend.concat_bf16(&buffers)?)
        } else {
            let buffers = parts
                .iter()
                .map(|p| p.storage())
                .collect::<Result<Vec<_>>>()?;
            Self::from_storage(backend, &shape, backend.concat(&buffers)?)
        }
    }
    /// `self += stacked[first_row .. first_row + self.shape[0]]` along the first dimension (the other
    /// dimensions agree): one map's share of a stacked gradient (see [`Tensor::concat`]).
    pub(crate) fn add_assign_rows(&mut self, stacked: &Self, first_row: usize) -> Result<()> {
        let fits = !self.shape.is_empty()
            && stacked.shape.len() == self.shape.len()
            && stacked.shape[1..] == self.shape[1..]
            && first_row + self.shape[0] <= stacked.shape[0];
        if !fits {
            return Err(shape_err!(
                "add_assign_rows: rows {first_row}.. of {:?} into {:?}",
                stacked.shape,
                self.shape
            ));
        }
        let offset = first_row * self.shape[1..].iter().product::<usize>();
        let backend = self.backend.clone();
        backend.add_assign_from(self.storage_mut()?, stacked.storage()?, offset)
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

/// Token ids in a backend's memory, each checked on the host to be below `vocab` when written: the
/// embedding's rows and the loss's targets. Shared like a tensor's buffer (`share`), so the pass that read
/// them can keep them for backward at no cost.
pub struct Tokens<B: BackendCore> {
    ids: Arc<B::Ids>,
    vocab: usize,
    backend: B,
}

impl<B: BackendCore> Tokens<B> {
    /// `ids`, checked against `vocab` (errors name the position and the value) and copied to the backend.
    pub fn upload(backend: &B, ids: &[u32], vocab: usize) -> Result<Self> {
        check_ids(ids, vocab)?;
        Ok(Self {
            ids: Arc::new(backend.upload_ids(ids)?),
            vocab,
            backend: backend.clone(),
        })
    }
    /// `len` zero ids: a buffer for `write_async` to fill.
    pub fn zeros(backend: &B, len: usize, vocab: usize) -> Result<Self> {
        Self::upload(backend, &vec![0; len], vocab)
    }
    /// Replaces the ids in place (the buffer stays where it is) by a queued copy (`BackendCore::write_async`).
    pub fn write_async(&mut self, ids: &[u32]) -> Result<()> {
        check_ids(ids, self.vocab)?;
        if ids.len() != self.len() {
            return Err(shape_err!(
                "{} token ids for a buffer of {}",
                ids.len(),
                self.len()
            ));
        }
        let buffer = Arc::get_mut(&mut self.ids).ok_or_else(|| {
            shape_err!(
                "token ids still held by a pass that has not run backward cannot be rewritten"
            )
        })?;
        self.backend.write_ids_async(buffer, ids)
    }
    /// As `Tensor::buffer_id`.
    pub(crate) fn buffer_id(&self) -> usize {
        Arc::as_ptr(&self.ids) as *const () as usize
    }
    pub(crate) fn share(&self) -> Self {
        Self {
            ids: self.ids.clone(),
            vocab: self.vocab,
            backend: self.backend.clone(),
        }
    }
    pub(crate) fn len(&self) -> usize {
        B::ids_len(&self.ids)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every id is below this.
    pub(crate) fn vocab(&self) -> usize {
        self.vocab
    }
    pub(crate) fn ids(&self) -> &B::Ids {
        &self.ids
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

/// Errors unless every id is below `vocab`, naming the first that is not and its position.
fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    check_nonempty("token ids", &[ids.len()])?;
    match ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        Some((n, id)) => Err(shape_err!(
            "token id {id} at position {n} is outside the vocabulary of {vocab}"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Cpu;

    #[test]
    fn a_shared_buffer_is_copied_before_a_write() -> Result<()> {
        let cpu = Cpu::<f32>::new();
        let mut a = Tensor::from_slice(&cpu, &[3], &[1.0, 2.0, 3.0])?;
        let b = a.share();
        assert!(a.is_shared() && b.is_shared());
        assert!(std::ptr::eq(a.storage()?.as_ptr(), b.storage()?.as_ptr()));
        a.add_assign(&b)?;
        assert_eq!(a.to_vec()?, [2.0, 4.0, 6.0]);
        assert_eq!(
            b.to_vec()?,
            [1.0, 2.0, 3.0],
            "the other handle keeps its values"
        );
        assert!(!a.is_shared() && !b.is_shared());
        // An unshared buffer is written in place.
        let before = a.storage()?.as_ptr();
        a.fill_zero()?;
        assert_eq!(before, a.storage()?.as_ptr());
        Ok(())
    }
}
