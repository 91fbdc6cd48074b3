//! The GPU tests: each op, model, training path and the CLI on CUDA against the CPU reference. Without a GPU
//! they are ignored (or, with `HOURGLASS_REQUIRE_GPU=1`, fail); `HOURGLASS_CUDA=emulator` runs them on the
//! emulated device.

mod attention;
mod bf16;
mod cli;
mod lm_ops;
mod model;
mod ops;
mod rotary;
mod train_loop;
mod train_ops;
