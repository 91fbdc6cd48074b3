//! The launch configurations of the kernels that loop over their work (grid-stride): how many blocks of how
//! many threads; the kernels loop over whatever one grid does not cover.

use super::kernels::GRID_Y_MAX;
use cudarc::driver::LaunchConfig;

/// The most blocks a grid-stride launch asks for along x: far more than a GPU runs at once. CUDA's limit on y
/// (x takes more), so that one number caps both.
const MAX_BLOCKS_X: usize = GRID_Y_MAX;

/// Threads per block for pointwise kernels, and a grid that covers `n` elements with grid-stride loops.
pub(crate) fn pointwise_config(n: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    let blocks = n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS_X) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid for kernels that take eight elements a thread (16-byte bf16 vectors) over `n` elements.
pub(crate) fn vector8_config(n: usize) -> LaunchConfig {
    pointwise_config(n.div_ceil(8))
}

/// One warp per row in blocks of 8 warps, for kernels that grid-stride rows over warps (layernorm).
pub(crate) fn warp_per_row_config(rows: usize) -> LaunchConfig {
    const WARPS: u32 = 8;
    let blocks = rows.div_ceil(WARPS as usize).clamp(1, MAX_BLOCKS_X) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (32 * WARPS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A 2-D grid over `rows` rows of `row_len` elements: x across a row, y across rows; kernels grid-stride both.
/// Each thread takes about 4 elements of a row, to amortise the per-row index arithmetic (otherwise the
/// shortening and upsampling kernels are bound by it rather than by memory).
pub(crate) fn rows_config(rows: usize, row_len: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    const PER_THREAD: usize = 4;
    LaunchConfig {
        grid_dim: (
            row_len
                .div_ceil(THREADS as usize * PER_THREAD)
                .clamp(1, MAX_BLOCKS_X) as u32,
            rows.clamp(1, GRID_Y_MAX) as u32,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}
