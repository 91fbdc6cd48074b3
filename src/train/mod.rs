//! Training: the optimiser, the learning-rate schedule, gradient clipping by global norm, the byte corpus and
//! its batches (or whole images, read by `images`), the run's settings, presets and their resolution on a
//! backend (`recipe`), what a run logs (`history`), the loop with its checkpoints (`trainer`) and its steps
//! without host round trips (`device_step`), sampling (`sample`), images drawn by the model (`image_sample`)
//! and shown as a PNG grid (`image_grid`).
//!
//! Gradient accumulation: every backward adds into `Param::grad` (zeroed only by `Parameters::zero_grad`), so a
//! step over `accum` micro-batches is `accum` calls of `HourglassLM::accumulate` (each scales its gradient by
//! `1 / accum`), then `clip_grad_norm`, `AdamW::step`, `zero_grad`: the same gradient as one batch `accum`
//! times as large (exactly so in evaluation mode; in training mode the dropout masks differ).

pub mod clip;
pub mod data;
pub(crate) mod device_step;
pub mod history;
pub mod image_grid;
pub mod image_sample;
pub mod images;
pub mod optim;
pub mod plot;
pub(crate) mod recipe;
pub mod sample;
pub(crate) mod schedule;
pub mod trainer;

pub use clip::{clip_factor, clip_grad_norm, grad_norm};
pub use optim::AdamW;
pub use recipe::{Preset, ResolvedConfig, StepMode, TrainConfig};
pub use trainer::{Outcome, Trainer};
