//! The pre-norm transformer layer of the reference: x + Dropout(MHA(LN(x))), then x + Dropout(FFN(LN(x)));
//! and the cross-attention block of the attention resamplers, which ends with the same feed-forward sublayer.
//! Parameter names follow the reference's `TransformerLayer` (`norm_self_attn`, `self_attn.query.linear`, ...).
//!
//! With `"positions": "rotary"` the self-attention of every transformer layer rotates its projected queries
//! and keys by their positions (`ops::rotary`) before attention; the cross-attention block never does (its
//! queries and keys are at different rates, and its masks already fix their alignment).

use super::decode::CachedRows;
use super::layers::{gemm_input, LayerNorm, Linear, LinearSaved, StackedLinear};
use super::{impl_parameters, Pass, Precision};
use crate::config::check_layer_sizes;
use crate::error::{shape_err, Error, Result};
use crate::ops::attention::{self, AttnMask, AttnSaved};
use crate::ops::{elementwise, rotary, Backend};
use crate::rng::{DropoutMask, SeededRng};
use crate::tensor::Tensor;

fn not_run(what: &str) -> Error {
    shape_err!("{what}: backward called before forward")
}

/// Multi-head attention with query/key/value projections (with bias) and an output projection; optionally
/// rotary position embeddings on the projected queries and keys (self-attention only). The projections of
/// one input run as one GEMM (`StackedLinear`: q, k and v for self-attention, k and v for cross-attention),
/// whose output attention reads in place.
pub struct MultiHeadAttention<B: Backend> {
    pub(crate) query: Linear<B>,
    pub(crate) key: Linear<B>,
    pub(crate) value: Linear<B>,
    pub(crate) output: Linear<B>,
    n_heads: usize,
    dropout: f64,
    rotary: bool,
    saved: Option<AttnForward<B>>,
}

/// What incremental decoding keeps for one self-attention layer: its packed q, k, v rows (`[positions, B, 3·D]`,
/// growing as positions come, in the dtype attention reads: bf16 in a bf16 pass), and its projection weights
/// stacked once (they do not change while decoding).
pub struct AttnCache<B: Backend> {
    rows: CachedRows<B>,
    stacked: Option<(Tensor<B>, Tensor<B>)>,
}

impl<B: Backend> AttnCache<B> {
    /// An empty cache for up to `capacity` positions.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            rows: CachedRows::new(capacity),
            stacked: None,
        }
    }
    /// Writes `qkv`'s rows (`[n, B, 3·D]`) at positions `first..first + n`; returns every row.
    pub(crate) fn write(&mut self, first: usize, qkv: &Tensor<B>) -> Result<&Tensor<B>> {
        self.rows.write(first, qkv)
    }
}

/// The projections attention read: self-attention's `qkv[T, B, 3·W]` (q and k rotated, with rotary
/// positions), or cross-attention's `q[Tq, B, W]` and `kv[Tk, B, 2·W]`.
enum Projected<B: Backend> {
    Packed {
        qkv: Tensor<B>,
        stacked: StackedLinear<B>,
    },
    Split {
        q: Tensor<B>,
        kv: Tensor<B>,
        stacked: StackedLinear<B>,
    },
}

struct AttnForward<B: Backend> {
    projected: Projected<B>,
    attn: AttnSaved<B>,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
}

impl<B: Backend> MultiHeadAttention<B> {
    pub(crate) fn new(
        backend: &B,
        n_heads: usize,
        d_model: usize,
        dropout: f64,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        Ok(Self {
            query: Linear::new(backend, d_model, d_model, rng)?,
            key: Linear::new(backend, d_model, d_model, rng)?,
            value: Linear::new(backend, d_model, d_model, rng)?,
            output: Linear::new(backend, d_model, d_model, rng)?,
            n_heads,
            dropout,
            rotary: false,
            saved: None,
        })
    }

    /// With `true`, rotary position embeddings (`ops::rotary`) on the projected queries and keys, positions
    /// `0..len` of each: for self-attention, where queries and keys are the same positions. Needs an even
    /// d_head (else `forward_self` returns the op's error).
    pub(crate) fn with_rotary(mut self, rotary: bool) -> Self {
        self.rotary = rotary;
        self
    }

    pub fn rotary(&self) -> bool {
        self.rotary
    }

    /// Self-attention of `x` (q, k and v from one GEMM).
    pub(crate) fn forward_self(
        &mut self,
        x: Tensor<B>,
        mask: AttnMask,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let precision = pass.precision();
        let (mut qkv, stacked) = StackedLinear::forward(
            x,
            &mut [&mut self.query, &mut self.key, &mut self.value],
            precision,
        )?;
        if self.rotary {
            // The q and k heads of qkv, in place: heads 0..2H of 3H.
            rotary::rotate(&mut qkv, 3 * self.n_heads, 2 * self.n_heads, false)?;
        }
        // In bf16, attention's products run on bf16 operands (the tensor cores on the GPU).
        let qkv = gemm_input(qkv, precision)?;
        let dropout = pass.dropout(self.dropout);
        let attn = attention::forward_packed(&qkv, self.n_heads, mask, dropout)?;
        self.finish(
            Projected::Packed { qkv, stacked },
            attn,
            mask,
            dropout,
            precision,
        )
    }

    /// Self-attention of one new position, `x[1, B, D]` at `position`, given every earlier position's
    /// projections in `cache` (incremental decoding in the evaluation pass `pass`; nothing kept for
    /// backward): its q, k and v are computed (rotated to `position`), written to row `position` of the
    /// cache, and its query attends to rows `0..=position` (`attention::forward_cached`).
    pub(crate) fn step_self(
        &mut self,
        x: Tensor<B>,
        cache: &mut AttnCache<B>,
        position: usize,
        pass: &Pass,
    ) -> Result<Tensor<B>> {
        let precision = pass.precision();
        let (w, b) = match &cache.stacked {
            Some(stacked) => stacked,
            None => cache.stacked.insert(StackedLinear::stack(
                &mut [&mut self.query, &mut self.key, &mut self.value],
                precision,
            )?),
        };
        let (mut qkv, _) = LinearSaved::forward_with(x, w.share(), Some(b), precision)?;
        if self.rotary {
            rotary::rotate_from(&mut qkv, 3 * self.n_heads, 2 * self.n_heads, position)?;
        }
        let qkv = gemm_input(qkv, precision)?;
        let rows = cache.write(position, &qkv)?;
        let out = attention::forward_cached(&qkv, rows, position + 1, self.n_heads)?;
        self.output.forward(out, precision)
    }

    /// The packed q, k, v (`[T, B, 3·D]`, as attention read them) of the last `forward_self` not yet followed
    /// by backward: what incremental decoding's cache holds for those positions.
    pub(crate) fn last_qkv(&self) -> Option<&Tensor<B>> {
        match &self.saved.as_ref()?.projected {
            Projected::Packed { qkv, .. } => Some(qkv),
            Projected::Split { .. } => None,
        }
    }

    /// Attention of `query_in` over `kv_in` (k and v from one GEMM). Never rotary.
    pub(crate) fn forward(
        &mut self,
        query_in: Tensor<B>,
        kv_in: Tensor<B>,
        mask: AttnMask,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let precision = pass.precision();
        let q = gemm_input(self.query.forward(query_in, precision)?, precision)?;
        let (kv, stacked) =
            StackedLinear::forward(kv_in, &mut [&mut self.key, &mut self.value], precision)?;
        let kv = gemm_input(kv, precision)?;
        let dropout = pass.dropout(self.dropout);
        let attn = attention::forward(&q, &kv, self.n_heads, mask, dropout)?;
        self.finish(
            Projected::Split { q, kv, stacked },
            attn,
            mask,
            dropout,
            precision,
        )
    }

    /// The output projection, and what backward needs.
    fn finish(
        &mut self,
        projected: Projected<B>,
        attn: AttnSaved<B>,
        mask: AttnMask,
        dropout: Option<DropoutMask>,
        precision: Precision,
    ) -> Result<Tensor<B>> {
        let y = self.output.forward(attn.out.share(), precision)?;
        self.saved = Some(AttnForward {
            projected,
            attn,
            mask,
            dropout,
        });
        Ok(y)
    }

    /// The gradient with respect to `forward_self`'s input.
    pub(crate) fn backward_self(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let s = self.saved.take().ok_or_else(|| not_run("attention"))?;
        let Projected::Packed { qkv, stacked } = s.projected else {
            return Err(shape_err!(
                "attention: backward_self after a cross-attention forward"
            ));
        };
        let d_out = self.output.backward(dy)?;
        let mut dqkv =
            attention::backward_packed(&qkv, &s.attn, &d_out, self.n_heads, s.mask, s.dropout)?;
        if self.rotary {
            rotary::rotate(&mut dqkv, 3 * self.n_heads, 2 * self.n_heads, true)?;
        }
        stacked.backward(
            &mut [&mut self.query, &mut self.key, &mut self.value],
            &dqkv,
        )
    }

    /// The gradients with respect to `forward`'s query input and key/value input.
    pub(crate) fn backward(&mut self, dy: &Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        let s = self.saved.take().ok_or_else(|| not_run("attention"))?;
        let Projected::Split { q, kv, stacked } = s.projected else {
            return Err(shape_err!(
                "attention: the cross-attention backward after a self-attention forward"
            ));
        };
        let d_out = self.output.backward(dy)?;
        let (dq, dkv) =
            attention::backward(&q, &kv, &s.attn, &d_out, self.n_heads, s.mask, s.dropout)?;
        let dquery_in = self.query.backward(&dq)?;
        let dkv_in = stacked.backward(&mut [&mut self.key, &mut self.value], &dkv)?;
        Ok((dquery_in, dkv_in))
    }
}

impl_parameters!(MultiHeadAttention {
    query => "query.linear",
    key => "key.linear",
    value => "value.linear",
    output => "output",
});

/// Linear(d_model, d_ff) → ReLU → Dropout → Linear(d_ff, d_model).
pub struct FeedForward<B: Backend> {
    pub(crate) layer1: Linear<B>,
    pub(crate) layer2: Linear<B>,
    dropout: f64,
    saved: Option<(Tensor<B>, Option<DropoutMask>)>,
}

impl<B: Backend> FeedForward<B> {
    pub(crate) fn new(
        backend: &B,
        d_model: usize,
        d_ff: usize,
        dropout: f64,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        Ok(Self {
            layer1: Linear::new(backend, d_model, d_ff, rng)?,
            layer2: Linear::new(backend, d_ff, d_model, rng)?,
            dropout,
            saved: None,
        })
    }
    pub(crate) fn forward(&mut self, x: Tensor<B>, pass: &mut Pass) -> Result<Tensor<B>> {
        let precision = pass.precision();
        let pre = self.layer1.forward(x, precision)?;
        let mask = pass.dropout(self.dropout);
        // ReLU, dropout and (in bf16) the rounding for layer2 in one pass; backward needs only `pre`.
        let h = elementwise::relu_dropout(&pre, mask, precision == Precision::Bf16)?;
        let y = self.layer2.forward(h, precision)?;
        self.saved = Some((pre, mask));
        Ok(y)
    }
    pub(crate) fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let (pre, mask) = self.saved.take().ok_or_else(|| not_run("feed-forward"))?;
        let dh = self.layer2.backward(dy)?;
        self.layer1
            .backward(&elementwise::relu_dropout_backward(&pre, &dh, mask)?)
    }
}

impl_parameters!(FeedForward { layer1 => "layer1", layer2 => "layer2" });

/// The pre-norm feed-forward sublayer both the transformer layer and the cross-attention block end with:
/// `y = s + Dropout(FFN(LN_ff(s)))` on the residual stream `s` that the attention before it left (dropout
/// sites: inside the FFN, then the residual).
pub struct ResidualFeedForward<B: Backend> {
    pub(crate) norm_ff: LayerNorm<B>,
    pub(crate) feed_forward: FeedForward<B>,
    dropout: f64,
    mask: Option<Option<DropoutMask>>,
}

impl<B: Backend> ResidualFeedForward<B> {
    pub(crate) fn new(
        backend: &B,
        d_model: usize,
        d_ff: usize,
        dropout: f64,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        Ok(Self {
            norm_ff: LayerNorm::new(backend, d_model)?,
            feed_forward: FeedForward::new(backend, d_model, d_ff, dropout, rng)?,
            dropout,
            mask: None,
        })
    }
    /// `s = x + Dropout(branch)` (the residual before this sublayer, with the caller's `branch_mask`), then
    /// `s + Dropout(FFN(LN_ff(s)))`. The add and the LayerNorm are one op.
    pub(crate) fn forward(
        &mut self,
        x: &Tensor<B>,
        branch: &Tensor<B>,
        branch_mask: Option<DropoutMask>,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let (s, z) = self
            .norm_ff
            .forward_residual(x, branch, branch_mask, pass.precision())?;
        let ff = self.feed_forward.forward(z, pass)?;
        let mask = pass.dropout(self.dropout);
        self.mask = Some(mask);
        s.add(&elementwise::dropout(ff, mask)?)
    }
    /// The gradient of `s` (that of `x`; `branch`'s is it through the caller's dropout mask).
    pub(crate) fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let mask = self
            .mask
            .take()
            .ok_or_else(|| not_run("feed-forward sublayer"))?;
        let d_ff = self
            .feed_forward
            .backward(&elementwise::dropout(dy.share(), mask)?)?;
        self.norm_ff.backward_residual(&d_ff, Some(dy))
    }
}

impl_parameters!(ResidualFeedForward { norm_ff => "norm_ff", feed_forward => "feed_forward" });

/// The pre-norm transformer layer: `x + Dropout(MHA(LN(x)))` (causal or full mask; rotary positions on q and
/// k with `with_rotary(true)`), then the feed-forward sublayer.
pub struct TransformerLayer<B: Backend> {
    pub(crate) norm_self_attn: LayerNorm<B>,
    pub(crate) self_attn: MultiHeadAttention<B>,
    /// `norm_ff`, `feed_forward.*`.
    pub(crate) ff: ResidualFeedForward<B>,
    dropout: f64,
    attn_mask: Option<Option<DropoutMask>>,
}

impl<B: Backend> TransformerLayer<B> {
    pub fn new(
        backend: &B,
        n_heads: usize,
        d_model: usize,
        d_ff: usize,
        dropout: f64,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        check_layer_sizes(n_heads, d_model, d_ff, dropout)?;
        Ok(Self {
            norm_self_attn: LayerNorm::new(backend, d_model)?,
            self_attn: MultiHeadAttention::new(backend, n_heads, d_model, dropout, rng)?,
            ff: ResidualFeedForward::new(backend, d_model, d_ff, dropout, rng)?,
            dropout,
            attn_mask: None,
        })
    }

    /// With `true`, rotary position embeddings on the self-attention's queries and keys (`"positions":
    /// "rotary"`). Needs an even d_head.
    pub(crate) fn with_rotary(mut self, rotary: bool) -> Self {
        self.self_attn = self.self_attn.with_rotary(rotary);
        self
    }

    pub fn forward(&mut self, x: Tensor<B>, mask: AttnMask, pass: &mut Pass) -> Result<Tensor<B>> {
        let z = self
            .norm_self_attn
            .forward_in(x.share(), pass.precision())?;
        let attn = self.self_attn.forward_self(z, mask, pass)?;
        let attn_mask = pass.dropout(self.dropout);
        self.attn_mask = Some(attn_mask);
        self.ff.forward(&x, &attn, attn_mask, pass)
    }

    /// The layer on one new position `x[1, B, D]` at `position`, its self-attention reading and extending
    /// `cache` (`MultiHeadAttention::step_self`): incremental decoding, in the evaluation pass `pass`.
    pub(crate) fn step(
        &mut self,
        x: Tensor<B>,
        cache: &mut AttnCache<B>,
        position: usize,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let z = self
            .norm_self_attn
            .forward_in(x.share(), pass.precision())?;
        let attn = self.self_attn.step_self(z, cache, position, pass)?;
        self.ff.forward(&x, &attn, None, pass)
    }

    pub fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let attn_mask = self
            .attn_mask
            .take()
            .ok_or_else(|| not_run("transformer layer"))?;
        let dx = self.ff.backward(dy)?;
        let d_attn = elementwise::dropout(dx.share(), attn_mask)?;
        let dz = self.self_attn.backward_self(&d_attn)?;
        self.norm_self_attn.backward_residual(&dz, Some(&dx))
    }
}

// The feed-forward sublayer's parameters keep the reference's names (`norm_ff`, `feed_forward`).
impl_parameters!(TransformerLayer {
    norm_self_attn => "norm_self_attn",
    self_attn => "self_attn",
    ff => "",
});

/// The block both attention resamplers share (the trax `AttentionResampling` core): queries `q` attend to
/// `h`, `y = q + Dropout(MHA(q, h, h))`, then the feed-forward sublayer `y = y + Dropout(FFN(LN_ff(y)))`.
/// Dropout sites in order: attention probabilities, the residual after attention, inside the FFN, the
/// residual after the FFN.
pub struct CrossAttentionBlock<B: Backend> {
    pub(crate) attention: MultiHeadAttention<B>,
    /// `norm_ff`, `feed_forward.*`.
    pub(crate) ff: ResidualFeedForward<B>,
    dropout: f64,
    attn_mask: Option<Option<DropoutMask>>,
}

impl<B: Backend> CrossAttentionBlock<B> {
    pub fn new(
        backend: &B,
        n_heads: usize,
        d_model: usize,
        d_ff: usize,
        dropout: f64,
        rng: &mut SeededRng,
    ) -> Result<Self> {
        check_layer_sizes(n_heads, d_model, d_ff, dropout)?;
        Ok(Self {
            attention: MultiHeadAttention::new(backend, n_heads, d_model, dropout, rng)?,
            ff: ResidualFeedForward::new(backend, d_model, d_ff, dropout, rng)?,
            dropout,
            attn_mask: None,
        })
    }

    /// `q[Tq, B, D]` over `h[Tk, B, D]` under `mask`; returns `y[Tq, B, D]`.
    pub fn forward(
        &mut self,
        q: Tensor<B>,
        h: Tensor<B>,
        mask: AttnMask,
        pass: &mut Pass,
    ) -> Result<Tensor<B>> {
        let attn = self.attention.forward(q.share(), h, mask, pass)?;
        let attn_mask = pass.dropout(self.dropout);
        self.attn_mask = Some(attn_mask);
        self.ff.forward(&q, &attn, attn_mask, pass)
    }

    /// Returns the gradients with respect to `q` and `h`.
    pub fn backward(&mut self, dy: &Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        let attn_mask = self
            .attn_mask
            .take()
            .ok_or_else(|| not_run("cross-attention block"))?;
        let mut dq = self.ff.backward(dy)?;
        let d_attn = elementwise::dropout(dq.share(), attn_mask)?;
        let (dq_attn, dh) = self.attention.backward(&d_attn)?;
        dq.add_assign(&dq_attn)?;
        Ok((dq, dh))
    }
}

impl_parameters!(CrossAttentionBlock {
    attention => "attention",
    ff => "",
});
