//! Every CUDA kernel the crate launches, named once with its parameter types: the one place that must agree
//! with the `extern "C" __global__` signatures in `kernels/*.cu` (a test parses those files and holds this
//! table to them). Each entry becomes a typed method of `Cuda`, so an op's launch is an ordinary call that
//! the compiler checks, and the one `unsafe` launch lives here. Here too, named once and held by the same test
//! to the `#define`s and instance lists of the .cu side: the numbers the launches must agree on (mask kinds,
//! block shapes and tiles, the grid limit) and the attention kernels' names (`AttnKernel`).

use super::error::cuda_err;
use super::handle::Cuda;
use crate::error::{Error, Result};
use cudarc::driver::{CudaSlice, LaunchArgs, LaunchConfig, PushKernelArg};
use half::bf16;

/// A kernel argument: a device buffer (read through `&`, written through `&mut`) or a scalar by value.
pub(crate) trait KernelArg {
    fn push<'a>(&'a mut self, launch: &mut LaunchArgs<'a>);
}

impl<T> KernelArg for &CudaSlice<T> {
    fn push<'a>(&'a mut self, launch: &mut LaunchArgs<'a>) {
        launch.arg(*self);
    }
}

impl<T> KernelArg for &mut CudaSlice<T> {
    fn push<'a>(&'a mut self, launch: &mut LaunchArgs<'a>) {
        launch.arg(&mut **self);
    }
}

macro_rules! scalar_args {
    ($($t:ty),*) => {$(
        impl KernelArg for $t {
            fn push<'a>(&'a mut self, launch: &mut LaunchArgs<'a>) {
                launch.arg(&*self);
            }
        }
    )*};
}
scalar_args!(i32, i64, u32, u64, f32, f64);

/// A dropout kernel's seed parameter (`const unsigned long long* seed`): the device address of the u64 it reads
/// the mask's seed from, a slot of the seed table (`Cuda::seed_ptr`, `seeds`).
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub(crate) struct SeedPtr(pub(crate) u64);

// SAFETY: a plain 8-byte value, passed as the kernel's pointer parameter of the same size.
unsafe impl cudarc::driver::DeviceRepr for SeedPtr {}

impl KernelArg for SeedPtr {
    fn push<'a>(&'a mut self, launch: &mut LaunchArgs<'a>) {
        launch.arg(&self.0);
    }
}

/// Declares scalar arguments that several kernels take together, passed as one struct: pushed in field
/// order, and with the fields' types for the test against the .cu.
macro_rules! arg_group {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name {
            $(pub(crate) $field: $ty),*
        }

        impl KernelArg for $name {
            fn push<'a>(&'a mut self, launch: &mut LaunchArgs<'a>) {
                $(launch.arg(&self.$field);)*
            }
        }

        #[cfg(test)]
        impl $name {
            const TYPES: &'static [&'static str] = &[$(stringify!($ty)),*];
        }
    };
}

arg_group!(
    /// The scalars every attention kernel takes after its tensors (`ATT_PARAMS` in
    /// kernels/attention_common.cuh); the dropout seed goes to the module's constant (`Cuda::set_attention_seed`).
    AttnParams {
        batch: i32,
        heads: i32,
        q_len: i32,
        kv_len: i32,
        d_head: i32,
        scale: f32,
        mask_kind: i32,
        mask_param: i32,
        threshold: u32,
        drop_scale: f32,
        use_dropout: i32,
        q_stride: i32,
        q_off: i32,
        kv_stride: i32,
        k_off: i32,
        v_off: i32,
        scale_log2: f32,
    }
);

/// Declares numbers of type `$ty` that the host must keep equal to the kernels' `#define`s of the same names in
/// kernels/*.cu, and (for the test that holds each to its `#define`) a list `$group` of their names and values.
macro_rules! cu_constants {
    ($group:ident: $ty:ty { $($(#[$doc:meta])* $name:ident = $value:expr),* $(,)? }) => {
        $($(#[$doc])* pub(crate) const $name: $ty = $value;)*

        #[cfg(test)]
        const $group: &[(&str, i64)] = &[$((stringify!($name), $name as i64)),*];
    };
}

cu_constants!(MASK_KINDS: i32 {
    // The attention kernels' mask kinds (`mask_range` in kernels/attention_common.cuh), as `AttnMask::code`
    // passes them.
    ATT_MASK_CAUSAL = 0, ATT_MASK_FULL = 1, ATT_MASK_FUNNEL = 2,
    ATT_MASK_WINDOW = 3, ATT_MASK_UP_CAUSAL = 4, ATT_MASK_UP_WINDOW = 5,
});

cu_constants!(ATTENTION_BLOCKS: usize {
    /// CUDA's limit on a grid's y (and z): the attention grids' y is batch·heads (kernels/attention_common.cuh),
    /// and the grids that stride over their y stop there.
    GRID_Y_MAX = 65_535,
    /// Threads per block of the attention.cu kernels (but `attention_bwd_dot_f32`, a warp per row).
    ATT_THREADS = 128,
    /// Warps per block of the attention_mma.cu kernels, and the rows (queries, or keys for dK/dV) each warp
    /// owns.
    MMA_WARPS = 4,
    MMA_ROWS = 16,
    /// Keys per tile of the bf16 forward's online softmax, whose probabilities are rounded to bf16 tile by
    /// tile (`ops::attention::BF16_KEY_TILE`).
    MMA_KEY_TILE = 64,
});

cu_constants!(LAYERNORM_BLOCKS: usize {
    /// `layernorm_bwd_params_partial_f32`'s blocks: this many columns (x), at most `LN_PARAM_MAX_LANES` row
    /// lanes (y).
    LN_PARAM_COLS = 32,
    LN_PARAM_MAX_LANES = 32,
});

/// The tiles of kernels/attention.cu at one head-size bucket (its `ATT_ENTRIES` lines, which a test holds
/// this table to): rows per block of each kernel, which its grid is sized by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttTiles {
    /// The largest head size of the bucket.
    pub(crate) bucket: usize,
    /// Queries per block of the forward kernel.
    pub(crate) fwd_q: usize,
    /// Keys per block of the dK/dV kernel.
    pub(crate) dkv_k: usize,
    /// Queries per block of the dQ kernel.
    pub(crate) dq_q: usize,
}

/// The head-size buckets of every attention version, smallest first, with attention.cu's tiles at each.
pub(crate) const ATT_TILES: [AttTiles; 3] = [
    AttTiles {
        bucket: 32,
        fwd_q: 64,
        dkv_k: 64,
        dq_q: 64,
    },
    AttTiles {
        bucket: 64,
        fwd_q: 64,
        dkv_k: 64,
        dq_q: 64,
    },
    AttTiles {
        bucket: 128,
        fwd_q: 64,
        dkv_k: 32,
        dq_q: 32,
    },
];

/// The buckets the tuned tensor-core kernels are built for (their staged tiles fit in shared memory).
pub(crate) const MMA_TUNED_BUCKETS: [usize; 2] = [32, 64];

/// An attention kernel version: kernels/attention.cu (f32 operands, SIMT cores) or kernels/attention_mma.cu
/// (bf16 operands, tensor cores), simple or tuned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttnImpl {
    Simt,
    Mma,
    MmaTuned,
}

/// One of the three kernels of a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttnPass {
    Fwd,
    BwdDkv,
    BwdDq,
}

/// An attention version at one head-size bucket (one of `ATT_TILES`): the kernel instances it launches and
/// their blocks. `name` is the one place instance names are made; a test holds every name to the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttnKernel {
    pub(crate) version: AttnImpl,
    pub(crate) tiles: AttTiles,
}

impl AttnKernel {
    /// The module whose `__constant__` dropout seed the kernels read.
    pub(crate) fn module(self) -> &'static str {
        match self.version {
            AttnImpl::Simt => "attention",
            AttnImpl::Mma | AttnImpl::MmaTuned => "attention_mma",
        }
    }

    /// `attention_{pass}_d{bucket}_f32`, or `attention_mma_{pass}[_tuned]_d{bucket}_bf16`.
    pub(crate) fn name(self, pass: AttnPass) -> String {
        let pass = match pass {
            AttnPass::Fwd => "fwd",
            AttnPass::BwdDkv => "bwd_dkv",
            AttnPass::BwdDq => "bwd_dq",
        };
        let bucket = self.tiles.bucket;
        match self.version {
            AttnImpl::Simt => format!("attention_{pass}_d{bucket}_f32"),
            AttnImpl::Mma => format!("attention_mma_{pass}_d{bucket}_bf16"),
            AttnImpl::MmaTuned => format!("attention_mma_{pass}_tuned_d{bucket}_bf16"),
        }
    }

    /// Rows per block of `pass`: queries for the forward and dQ, keys for dK/dV.
    pub(crate) fn rows_per_block(self, pass: AttnPass) -> usize {
        match (self.version, pass) {
            (AttnImpl::Simt, AttnPass::Fwd) => self.tiles.fwd_q,
            (AttnImpl::Simt, AttnPass::BwdDkv) => self.tiles.dkv_k,
            (AttnImpl::Simt, AttnPass::BwdDq) => self.tiles.dq_q,
            (AttnImpl::Mma | AttnImpl::MmaTuned, _) => MMA_WARPS * MMA_ROWS,
        }
    }

    /// Threads per block.
    pub(crate) fn threads(self) -> u32 {
        match self.version {
            AttnImpl::Simt => ATT_THREADS as u32,
            AttnImpl::Mma | AttnImpl::MmaTuned => 32 * MMA_WARPS as u32,
        }
    }

    /// Every version at every bucket it is built for.
    #[cfg(test)]
    fn all() -> Vec<Self> {
        let versions = [AttnImpl::Simt, AttnImpl::Mma, AttnImpl::MmaTuned];
        versions
            .iter()
            .flat_map(|&version| ATT_TILES.iter().map(move |&tiles| Self { version, tiles }))
            .filter(|k| {
                k.version != AttnImpl::MmaTuned || MMA_TUNED_BUCKETS.contains(&k.tiles.bucket)
            })
            .collect()
    }
}

/// `name(param: type, ...);` declares a kernel and a `Cuda` method of the same name that launches it;
/// `name = ["kernel_a", "kernel_b"](...);` declares kernels of one signature (template instances) behind one
/// method that takes the instance's name first.
macro_rules! kernels {
    ($(
        $(#[$doc:meta])*
        $method:ident $(= [$($instance:literal),+])? ($($arg:ident: $ty:ty),* $(,)?);
    )*) => {
        /// Each kernel's name and parameter types, as declared here (for the test against `kernels/*.cu`).
        #[cfg(test)]
        #[allow(clippy::vec_init_then_push)]
        fn signatures() -> Vec<(&'static str, Vec<&'static str>)> {
            let mut all: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
            $(kernels!(@push all, $method, [$($($instance),+)?], [$(stringify!($ty)),*]);)*
            all
        }

        /// `(method, instance)` for each instance of the methods that take one.
        #[cfg(test)]
        #[allow(clippy::vec_init_then_push)]
        fn instances() -> Vec<(&'static str, &'static str)> {
            let mut all = Vec::new();
            $($($(all.push((stringify!($method), $instance));)+)?)*
            all
        }

        impl Cuda {$(
            $(#[$doc])*
            #[allow(clippy::too_many_arguments)]
            pub(crate) fn $method(
                &self,
                $(instance: kernels!(@str $($instance),+),)?
                config: LaunchConfig,
                $(mut $arg: $ty),*
            ) -> Result<()> {
                let name = kernels!(@name $method $(, instance, [$($instance),+])?);
                let function = self.function(name)?;
                let mut launch = self.stream().launch_builder(function);
                $(KernelArg::push(&mut $arg, &mut launch);)*
                // SAFETY: the arguments are the kernel's parameters in order and type, as declared in this
                // table, which `tests::the_table_matches_the_kernels` holds to the signatures in kernels/*.cu.
                // The callers size every buffer for the elements the launch configuration makes the kernel
                // touch (the ops' checked dims).
                unsafe { launch.launch(config) }.map_err(cuda_err)?;
                self.count_launch();
                Ok(())
            }
        )*}
    };
    (@push $all:ident, $method:ident, [], $types:tt) => {
        $all.push((stringify!($method), $types.to_vec()));
    };
    (@push $all:ident, $method:ident, [$($instance:literal),+], $types:tt) => {
        $($all.push(($instance, $types.to_vec()));)+
    };
    (@str $($instance:literal),+) => { &str };
    (@name $method:ident) => { stringify!($method) };
    (@name $method:ident, $instance:ident, [$($known:literal),+]) => {{
        if ![$($known),+].contains(&$instance) {
            return Err(Error::Cuda(format!(
                "{} has no instance {:?}",
                stringify!($method),
                $instance
            )));
        }
        $instance
    }};
}

type In<'a, T = f32> = &'a CudaSlice<T>;
type Out<'a, T = f32> = &'a mut CudaSlice<T>;

kernels! {
    // elementwise.cu
    add_f32(a: In, b: In, out: Out, n: i64);
    add_assign_f32(acc: Out, x: In, offset: i64, n: i64);
    round_to_bf16_f32(x: In, y: Out<bf16>, n: i64);
    widen_bf16_f32(x: In<bf16>, y: Out, n: i64);
    broadcast_rows_f32(bias: In, out: Out, rows: i64, cols: i32);
    col_sum_add_f32(x: In, acc: Out, rows: i64, cols: i32);
    relu_dropout_f32(x: In, y: Out, n: i64, seed: SeedPtr, threshold: u32, scale: f32, use_dropout: i32);
    relu_dropout_bf16(x: In, y: Out<bf16>, n: i64, seed: SeedPtr, threshold: u32, scale: f32, use_dropout: i32);
    relu_dropout_bwd_f32(
        x: In, dy: In, dx: Out, n: i64, seed: SeedPtr, threshold: u32, scale: f32, use_dropout: i32,
    );
    dropout_f32(x: In, out: Out, n: i64, seed: SeedPtr, threshold: u32, scale: f32);
    scale_f32(x: Out, n: i64, factor: f32);
    // layernorm.cu
    layernorm_fwd_f32(x: In, gamma: In, beta: In, y: Out, mean: Out, rstd: Out, rows: i64, d: i32);
    layernorm_fwd_bf16(x: In, gamma: In, beta: In, y: Out<bf16>, mean: Out, rstd: Out, rows: i64, d: i32);
    layernorm_bwd_dx_f32(x: In, gamma: In, mean: In, rstd: In, dy: In, dx: Out, rows: i64, d: i32);
    layernorm_bwd_dx_residual_f32(
        x: In, gamma: In, mean: In, rstd: In, dy: In, dres: In, dx: Out, rows: i64, d: i32,
    );
    residual_layernorm_fwd_f32(
        x: In, branch: In, s: Out, gamma: In, beta: In, y: Out, mean: Out, rstd: Out, rows: i64, d: i32,
        seed: SeedPtr, threshold: u32, scale: f32, use_dropout: i32,
    );
    residual_layernorm_fwd_bf16(
        x: In, branch: In, s: Out, gamma: In, beta: In, y: Out<bf16>, mean: Out, rstd: Out, rows: i64, d: i32,
        seed: SeedPtr, threshold: u32, scale: f32, use_dropout: i32,
    );
    layernorm_bwd_f32(
        x: In, gamma: In, mean: In, rstd: In, dy: In, dx: Out, part: Out, dgamma: Out, dbeta: Out,
        ticket: Out<u32>, rows: i64, d: i32,
    );
    layernorm_bwd_residual_f32(
        x: In, gamma: In, mean: In, rstd: In, dy: In, dres: In, dx: Out, part: Out, dgamma: Out, dbeta: Out,
        ticket: Out<u32>, rows: i64, d: i32,
    );
    layernorm_bwd_params_partial_f32(
        x: In, mean: In, rstd: In, dy: In, part_dg: Out, part_db: Out, rows: i64, d: i32, rows_per_chunk: i32,
    );
    // shorten.cu, upsample.cu, window.cu
    shorten_fwd_f32(x: In, out: Out, seq: i64, row: i64, factor: i32, shift: i64);
    shorten_bwd_f32(dout: In, dx: Out, seq: i64, row: i64, factor: i32, shift: i64);
    upsample_add_fwd_f32(x: In, coarse: In, y: Out, seq: i64, row: i64, factor: i32);
    upsample_bwd_f32(dy: In, dcoarse: Out, seq: i64, row: i64, factor: i32);
    window_fold_f32(
        x: In, out: Out, seq: i64, batch: i32, d: i64, factor: i32, shift: i64, short_len: i64,
    );
    window_unfold_f32(g: In, dx: Out, seq: i64, batch: i32, d: i64, factor: i32, shift: i64);
    // embedding.cu, loss.cu, adamw.cu, rotary.cu, reduce.cu
    embedding_fwd_f32(table: In, ids: In<u32>, out: Out, n: i64, d: i32);
    embedding_bwd_f32(dout: In, ids: In<u32>, dtable: Out, n: i64, d: i32, vocab: i32);
    softmax_xent_f32(
        logits: In, targets: In<u32>, loss: Out, dlogits: Out, rows: i64, vocab: i32, scale: f32,
    );
    adamw_multi_f32(
        tensors: In<u64>, chunk_starts: In<i64>, count: i32, state: In, beta1: f32, beta2: f32, eps: f32,
    );
    step_guard_f32(state: Out, losses: i32);
    rotary_table_f32(table: Out, seq: i64, first: i64, d_head: i32, sign: f64);
    rotary_f32(x: Out, table: In, seq: i64, batch: i64, row_heads: i32, rotated: i32, d_head: i32);
    sum_squares_multi_f32(tensors: In<u64>, block_starts: In<i64>, count: i32, partial: Out<f64>);
    sum_squares_stage2_f64(partial: In<f64>, n: i64, out: Out<f64>);
    sum_squares_stage2_into_f32(partial: In<f64>, n: i64, out: Out, index: i64);
    mean_into_f32(x: In, n: i64, out: Out, index: i64);
    // attention.cu
    attention_bwd_dot_f32(dout: In, out: In, dvec: Out, batch: i32, heads: i32, q_len: i32, d_head: i32);
    attention_fwd = ["attention_fwd_d32_f32", "attention_fwd_d64_f32", "attention_fwd_d128_f32"](
        q: In, kv: In, out: Out, lse: Out, params: AttnParams,
    );
    attention_bwd_dkv = ["attention_bwd_dkv_d32_f32", "attention_bwd_dkv_d64_f32", "attention_bwd_dkv_d128_f32"](
        q: In, kv: In, dout: In, lse: In, dvec: In, dkv: Out, params: AttnParams,
    );
    attention_bwd_dq = ["attention_bwd_dq_d32_f32", "attention_bwd_dq_d64_f32", "attention_bwd_dq_d128_f32"](
        q: In, kv: In, dout: In, lse: In, dvec: In, dq: Out, params: AttnParams,
    );
    // attention_mma.cu
    attention_keep_bits(keep: Out<u32>, rows: i64, tk: i32, seed: SeedPtr, threshold: u32);
    attention_mma_fwd = [
        "attention_mma_fwd_d32_bf16", "attention_mma_fwd_d64_bf16", "attention_mma_fwd_d128_bf16",
        "attention_mma_fwd_tuned_d32_bf16", "attention_mma_fwd_tuned_d64_bf16"
    ](
        q: In<bf16>, kv: In<bf16>, out: Out, lse: Out, params: AttnParams,
    );
    attention_mma_bwd_dkv = [
        "attention_mma_bwd_dkv_d32_bf16", "attention_mma_bwd_dkv_d64_bf16", "attention_mma_bwd_dkv_d128_bf16",
        "attention_mma_bwd_dkv_tuned_d32_bf16", "attention_mma_bwd_dkv_tuned_d64_bf16"
    ](
        q: In<bf16>, kv: In<bf16>, dout: In<bf16>, lse: In, dvec: In, keep: In<u32>, dkv: Out,
        params: AttnParams,
    );
    attention_mma_bwd_dq = [
        "attention_mma_bwd_dq_d32_bf16", "attention_mma_bwd_dq_d64_bf16", "attention_mma_bwd_dq_d128_bf16",
        "attention_mma_bwd_dq_tuned_d32_bf16", "attention_mma_bwd_dq_tuned_d64_bf16"
    ](
        q: In<bf16>, kv: In<bf16>, dout: In<bf16>, lse: In, dvec: In, keep: In<u32>, dq: Out,
        params: AttnParams,
    );
}

#[cfg(test)]
mod tests {
    use super::{
        instances, signatures, AttnImpl, AttnKernel, AttnParams, AttnPass, ATTENTION_BLOCKS,
        ATT_TILES, LAYERNORM_BLOCKS, MASK_KINDS,
    };
    use std::collections::{BTreeMap, BTreeSet};

    const SOURCES: [&str; 13] = [
        include_str!("../../../kernels/adamw.cu"),
        include_str!("../../../kernels/attention.cu"),
        include_str!("../../../kernels/attention_common.cuh"),
        include_str!("../../../kernels/attention_mma.cu"),
        include_str!("../../../kernels/elementwise.cu"),
        include_str!("../../../kernels/embedding.cu"),
        include_str!("../../../kernels/layernorm.cu"),
        include_str!("../../../kernels/loss.cu"),
        include_str!("../../../kernels/reduce.cu"),
        include_str!("../../../kernels/rotary.cu"),
        include_str!("../../../kernels/shorten.cu"),
        include_str!("../../../kernels/upsample.cu"),
        include_str!("../../../kernels/window.cu"),
    ];

    /// A C parameter's type as the table writes it: buffers `In<T>` (const) or `Out<T>`, scalars by Rust type.
    fn rust_type(param: &str) -> String {
        if param.trim() == "ATT_PARAMS" {
            return "AttnParams".into();
        }
        if param.contains("unsigned long long* seed") {
            return "SeedPtr".into();
        }
        let param = param.replace("__restrict__", "");
        let words: Vec<&str> = param.split_whitespace().collect();
        let (ty, _name) = words.split_at(words.len() - 1);
        let ty = ty.join(" ");
        let (ty, pointer) = match ty.strip_suffix('*') {
            Some(t) => (t.trim().to_string(), true),
            None => (ty, false),
        };
        let (ty, constant) = match ty.strip_prefix("const ") {
            Some(t) => (t.to_string(), true),
            None => (ty, false),
        };
        let scalar = match ty.as_str() {
            "float" => "f32",
            "double" => "f64",
            "int" => "i32",
            "long" => "i64",
            "unsigned" | "unsigned int" => "u32",
            "unsigned long long" => "u64",
            "__nv_bfloat16" => "bf16",
            other => panic!("no Rust type for C type {other:?} in {param:?}"),
        };
        match (pointer, constant, scalar) {
            (true, true, "f32") => "In".into(),
            (true, false, "f32") => "Out".into(),
            (true, true, t) => format!("In<{t}>"),
            (true, false, t) => format!("Out<{t}>"),
            (false, _, t) => t.into(),
        }
    }

    /// Every `extern "C" __global__` kernel of the sources, with its parameters' types (`ATT_PARAMS` as the
    /// one `AttnParams`); the attention kernels' `ATT_ENTRIES` macro is expanded for each head-dimension bucket
    /// it is instantiated with.
    fn kernels_in_sources() -> BTreeMap<String, Vec<String>> {
        let mut found = BTreeMap::new();
        for source in SOURCES {
            let text = source.replace("\\\n", " ");
            let buckets: Vec<String> = text
                .lines()
                .filter_map(|l| {
                    let l = l.trim();
                    l.strip_prefix("ATT_ENTRIES(")
                        .or_else(|| l.strip_prefix("MMA_ENTRIES("))
                })
                .map(|rest| rest.split([',', ')']).next().unwrap().trim().to_string())
                .collect();
            for chunk in text.split("extern \"C\" __global__").skip(1) {
                let open = chunk.find('(').unwrap();
                let head = &chunk[..open];
                // `__launch_bounds__(...) name(params)`: the name follows the first `)`.
                let after = if head.contains("__launch_bounds__") {
                    &chunk[chunk.find(')').unwrap() + 1..]
                } else {
                    chunk
                };
                let open = after.find('(').unwrap();
                let name = after[..open].split_whitespace().last().unwrap().to_string();
                let close = after[open..].find(')').unwrap() + open;
                let types: Vec<String> = after[open + 1..close].split(',').map(rust_type).collect();
                if name.contains("##D##") {
                    for d in &buckets {
                        found.insert(name.replace("##D##", d), types.clone());
                    }
                } else {
                    found.insert(name, types);
                }
            }
        }
        found
    }

    #[test]
    fn the_table_matches_the_kernels() {
        let table: BTreeMap<String, Vec<String>> = signatures()
            .into_iter()
            .map(|(name, types)| {
                let types = types.iter().map(|t| t.replace(' ', "")).collect();
                (name.to_string(), types)
            })
            .collect();
        let sources = kernels_in_sources();
        assert!(sources.len() >= 30, "only {} kernels parsed", sources.len());
        for (name, types) in &sources {
            assert_eq!(
                table.get(name),
                Some(types),
                "kernel {name}: kernels/*.cu says {types:?}"
            );
        }
        for name in table.keys() {
            assert!(
                sources.contains_key(name),
                "{name} is in the table but in no kernels/*.cu"
            );
        }
        let group: Vec<String> = AttnParams::TYPES
            .iter()
            .map(|t| t.replace(' ', ""))
            .collect();
        assert_eq!(
            group,
            att_params_in_source(),
            "AttnParams against ATT_PARAMS"
        );
        the_constants_match_the_kernels();
        the_attention_kernels_match_the_table();
    }

    /// Each `#define NAME VALUE` of the sources (line continuations joined): NAME -> VALUE's first word.
    fn defines_in_sources() -> BTreeMap<String, String> {
        let mut found = BTreeMap::new();
        for source in SOURCES {
            for line in source.replace("\\\n", " ").lines() {
                let Some(rest) = line.trim().strip_prefix("#define ") else {
                    continue;
                };
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(value)) = (words.next(), words.next()) {
                    found.insert(name.to_string(), value.to_string());
                }
            }
        }
        found
    }

    /// Every constant of `cu_constants!` equals the `#define` of its name.
    fn the_constants_match_the_kernels() {
        let defines = defines_in_sources();
        for &(name, value) in [MASK_KINDS, ATTENTION_BLOCKS, LAYERNORM_BLOCKS]
            .concat()
            .iter()
        {
            let define = defines.get(name).unwrap_or_else(|| {
                panic!("{name} is named in src/device/cuda/kernels.rs but #defined in no kernels/*")
            });
            assert_eq!(
                define.parse::<i64>().ok(),
                Some(value),
                "{name}: {value} in src/device/cuda/kernels.rs, {define} in kernels/*"
            );
        }
    }

    /// `ATT_TILES` against attention.cu's `ATT_ENTRIES(D, FQ, FK, FSEP, KK, KQ, KSEP, QQ, QK, QSEP)` lines; every
    /// name `AttnKernel` makes is an instance of the method its operands' dtype launches it with, and every
    /// attention instance of the table is one it makes.
    fn the_attention_kernels_match_the_table() {
        let text = include_str!("../../../kernels/attention.cu");
        let entries: Vec<[usize; 4]> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("ATT_ENTRIES("))
            .map(|rest| {
                let args: Vec<&str> = rest
                    .trim_end_matches(')')
                    .split(',')
                    .map(str::trim)
                    .collect();
                let n = |i: usize| args[i].parse::<usize>().expect("a tile size");
                [n(0), n(1), n(4), n(7)]
            })
            .collect();
        let tiles: Vec<[usize; 4]> = ATT_TILES
            .iter()
            .map(|t| [t.bucket, t.fwd_q, t.dkv_k, t.dq_q])
            .collect();
        assert_eq!(
            tiles, entries,
            "ATT_TILES (bucket, fwd_q, dkv_k, dq_q) against ATT_ENTRIES"
        );

        let passes = [AttnPass::Fwd, AttnPass::BwdDkv, AttnPass::BwdDq];
        let made: BTreeSet<(&str, String)> = AttnKernel::all()
            .into_iter()
            .flat_map(|kernel| passes.map(|pass| (kernel, pass)))
            .map(|(kernel, pass)| {
                let method = match (kernel.version, pass) {
                    (AttnImpl::Simt, AttnPass::Fwd) => "attention_fwd",
                    (AttnImpl::Simt, AttnPass::BwdDkv) => "attention_bwd_dkv",
                    (AttnImpl::Simt, AttnPass::BwdDq) => "attention_bwd_dq",
                    (_, AttnPass::Fwd) => "attention_mma_fwd",
                    (_, AttnPass::BwdDkv) => "attention_mma_bwd_dkv",
                    (_, AttnPass::BwdDq) => "attention_mma_bwd_dq",
                };
                (method, kernel.name(pass))
            })
            .collect();
        let declared: BTreeSet<(&str, String)> = instances()
            .into_iter()
            .filter(|(method, _)| method.starts_with("attention_"))
            .map(|(method, instance)| (method, instance.to_string()))
            .collect();
        assert_eq!(
            made, declared,
            "AttnKernel's names against the table's attention instances"
        );
    }

    /// The driver finds a kernel by name only if it is `.visible`: every kernel of the table is, in the PTX the
    /// build embedded (its cubins are made from that PTX).
    #[test]
    fn every_kernel_in_the_table_is_visible_in_the_ptx() {
        if !super::super::modules::NVCC_FOUND {
            println!("skipped: this build has no kernels (nvcc was not found)");
            return;
        }
        for (name, _) in signatures() {
            let declaration = format!(".visible .entry {name}(");
            assert!(
                super::super::modules::MODULES
                    .iter()
                    .any(|m| m.ptx.contains(&declaration)),
                "no module's PTX has {declaration}"
            );
        }
    }

    /// The types of `#define ATT_PARAMS` in kernels/attention_common.cuh.
    fn att_params_in_source() -> Vec<String> {
        let text = include_str!("../../../kernels/attention_common.cuh").replace("\\\n", " ");
        let params = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("#define ATT_PARAMS"))
            .expect("kernels/attention_common.cuh defines ATT_PARAMS");
        params.trim().split(',').map(rust_type).collect()
    }
}
