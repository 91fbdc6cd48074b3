//! safetensors files with the PyTorch reference's parameter names, so weights move both ways.
//!
//! Reading checks everything a user can get wrong: truncated or corrupt files, non-f32 tensors, missing,
//! extra or mis-shaped parameters, NaN or Inf values. Writing goes to a temporary file then renames it, so a
//! reader never sees half a file.

use crate::device::{BackendCore, Element};
use crate::error::{Error, Result};
use crate::model::{Param, Parameters};
use crate::tensor::Tensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// An f32 tensor on the host, as stored in a file.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub(crate) fn from_tensor<B: BackendCore>(t: &Tensor<B>) -> Result<Self> {
        Ok(Self {
            shape: t.shape().to_vec(),
            data: t.to_vec()?.into_iter().map(|v| v.to_f64() as f32).collect(),
        })
    }
    pub(crate) fn to_tensor<B: BackendCore>(&self, backend: &B) -> Result<Tensor<B>> {
        let data: Vec<B::Elem> = self
            .data
            .iter()
            .map(|&v| B::Elem::from_f64(v as f64))
            .collect();
        Tensor::from_slice(backend, &self.shape, &data)
    }
    /// The index and value of the first NaN or infinity, if any.
    pub(crate) fn first_non_finite(&self) -> Option<(usize, f32)> {
        let i = self.data.iter().position(|v| !v.is_finite())?;
        Some((i, self.data[i]))
    }
}

/// Named tensors in file order (sorted by name, as safetensors stores them), plus the file's metadata.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    pub tensors: BTreeMap<String, HostTensor>,
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            Error::Checkpoint(msg) => Error::Checkpoint(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| {
            Error::Checkpoint(format!(
                "not a valid safetensors file (truncated or corrupt?): {e}"
            ))
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| Error::Checkpoint(format!("unreadable safetensors header: {e}")))?;
        let mut out = TensorFile {
            metadata: header.metadata().clone().unwrap_or_default(),
            ..Default::default()
        };
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(Error::Checkpoint(format!(
                    "tensor {name} is {:?}, expected F32",
                    view.dtype()
                )));
            }
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            out.tensors.insert(
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(out)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(&String, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n, bytemuck::cast_slice(&t.data).to_vec()))
            .collect();
        let views = bytes
            .iter()
            .zip(self.tensors.values())
            .map(|((n, b), t)| {
                Ok((
                    n.as_str(),
                    safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)?,
                ))
            })
            .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| Error::Checkpoint(format!("cannot build safetensors view: {e}")))?;
        let metadata = (!self.metadata.is_empty()).then(|| self.metadata.clone());
        safetensors::serialize(views, metadata)
            .map_err(|e| Error::Checkpoint(format!("cannot serialise: {e}")))
    }

    /// Writes atomically: a temporary file beside `path`, then a rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fs::write_atomic(path, &self.to_bytes()?)
            .map_err(|e| Error::Checkpoint(e.to_string()))
    }

    /// The tensor called `name`, or an error naming it and the file's contents.
    pub fn get(&self, name: &str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| {
            let names: Vec<&String> = self.tensors.keys().collect();
            Error::Checkpoint(format!("tensor {name} is missing (file holds {names:?})"))
        })
    }

    /// The tensor called `name`, which must have shape `shape` and only finite values.
    pub(crate) fn get_checked(&self, name: &str, shape: &[usize]) -> Result<&HostTensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::Checkpoint(format!(
                "tensor {name} has shape {:?}, the model expects {shape:?}",
                t.shape
            )));
        }
        if let Some((i, v)) = t.first_non_finite() {
            return Err(Error::Checkpoint(format!(
                "tensor {name} holds {v} at index {i}"
            )));
        }
        Ok(t)
    }

    /// The first tensor holding a NaN or infinity: its name, the index and the value.
    pub(crate) fn first_non_finite(&self) -> Option<(&str, usize, f32)> {
        self.tensors
            .iter()
            .find_map(|(name, t)| t.first_non_finite().map(|(i, v)| (name.as_str(), i, v)))
    }

    pub(crate) fn insert<B: BackendCore>(
        &mut self,
        name: impl Into<String>,
        t: &Tensor<B>,
    ) -> Result<()> {
        self.tensors
            .insert(name.into(), HostTensor::from_tensor(t)?);
        Ok(())
    }
}

/// Every parameter's value (or, with `grads`, its gradient under `grad.<name>`).
pub fn export_params<B: BackendCore>(
    model: &impl Parameters<B>,
    grads: bool,
) -> Result<TensorFile> {
    let mut file = TensorFile::default();
    let mut result = Ok(());
    model.visit("", &mut |name, p: &Param<B>| {
        if result.is_ok() {
            result = if grads {
                file.insert(format!("grad.{name}"), &p.grad)
            } else {
                file.insert(name, &p.value)
            };
        }
    });
    result.map(|_| file)
}

/// Where a training checkpoint keeps the optimiser's state (`train::optim`), beside the model's parameters.
pub(crate) const OPTIMIZER_PREFIX: &str = "optimizer.";

/// Loads every parameter from `file`: each must be present, with the parameter's shape and finite values,
/// and the file must hold no other tensor (but the optimiser state of a training checkpoint).
pub fn import_params<B: BackendCore>(
    model: &mut impl Parameters<B>,
    file: &TensorFile,
) -> Result<()> {
    let expected = param_names(model, "");
    if let Some(extra) = file
        .tensors
        .keys()
        .find(|n| !expected.contains(*n) && !n.starts_with(OPTIMIZER_PREFIX))
    {
        return Err(Error::Checkpoint(format!(
            "unexpected tensor {extra}: the model has no such parameter"
        )));
    }
    load_params(model, file, "")
}

/// Loads every parameter of `model` from the tensors named `<prefix>.<name>` (the `hourglass` inside an LM
/// checkpoint, say); the file's other tensors are not looked at.
pub(crate) fn import_params_under<B: BackendCore>(
    model: &mut impl Parameters<B>,
    file: &TensorFile,
    prefix: &str,
) -> Result<()> {
    load_params(model, file, prefix)
}

/// The names `model`'s parameters have under `prefix`.
pub fn param_names<B: BackendCore>(
    model: &impl Parameters<B>,
    prefix: &str,
) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    model.visit(prefix, &mut |n, _| {
        names.insert(n);
    });
    names
}

fn load_params<B: BackendCore>(
    model: &mut impl Parameters<B>,
    file: &TensorFile,
    prefix: &str,
) -> Result<()> {
    let mut result = Ok(());
    model.visit_mut(prefix, &mut |name, p| {
        if result.is_err() {
            return;
        }
        result = (|| {
            let t = file.get_checked(&name, p.value.shape())?;
            p.value = t.to_tensor(p.value.backend())?;
            Ok(())
        })();
    });
    result
}
