//! Training: the optimiser (more — schedule, data, sampling — arrives with the training issue).

pub mod data;
pub mod optim;

pub use optim::AdamW;
