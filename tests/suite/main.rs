//! The integration tests, one crate with a module per area, so `cargo test` builds and links one test binary
//! instead of one per file. Choose with a filter on the module path:
//!
//! - `cargo test --test suite -- data::` runs one area, `-- gpu::` every GPU test (ignored without a GPU: add
//!   `--include-ignored`, with `HOURGLASS_REQUIRE_GPU=1` to make a missing device a failure, or
//!   `HOURGLASS_CUDA=emulator` to run them on the emulated device);
//! - `emulator::` the emulated device's self-tests, `emulator_planted::` its planted-bug tests.
//!
//! `tests/fuzz_loaders.rs` stays a binary of its own: it sets an environment variable the whole process reads.

mod common;

mod attention_bf16;
mod bf16;
mod causality;
mod cli_train;
mod components;
mod data;
mod decode;
mod docs;
mod emulator;
mod emulator_planted;
mod errors;
mod golden;
mod gpu;
mod gradcheck;
mod hardening;
mod image_cli;
mod image_grid;
mod images;
mod lm;
mod lm_ops;
mod plain;
mod rotary;
mod sample;
mod train;
mod train_loop;
