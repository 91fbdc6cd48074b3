//! The pre-norm transformer layer of the reference: x + Dropout(MHA(LN(x))), then x + Dropout(FFN(LN(x))).
//! Parameter names follow the reference's `TransformerLayer` (`norm_self_attn`, `self_attn.query.linear`, ...).

use super::layers::{LayerNorm, Linear};
use super::{impl_parameters, DropoutStream};
use crate::error::{shape_err, Error, Result};
use crate::ops::attention::{self, AttnMask, AttnSaved};
use crate::ops::{elementwise, Backend};
use crate::rng::{DropoutMask, SeededRng};
use crate::tensor::Tensor;

/// Checks the sizes every transformer layer needs.
pub fn check_layer_sizes(n_heads: usize, d_model: usize, d_ff: usize, dropout: f64) -> Result<()> {
    if n_heads == 0 || d_model == 0 || d_ff == 0 {
        return Err(Error::Config(format!(
            "n_heads ({n_heads}), d_model ({d_model}) and d_ff ({d_ff}) must all be at least 1"
        )));
    }
    if !d_model.is_multiple_of(n_heads) {
        return Err(Error::Config(format!(
            "d_model {d_model} is not divisible by n_heads {n_heads}"
        )));
    }
    if !(0.0..1.0).contains(&dropout) {
        return Err(Error::Config(format!(
            "dropout must be in [0, 1), got {dropout}"
        )));
    }
    Ok(())
}

fn not_run(what: &str) -> Error {
    shape_err!("{what}: backward called before forward")
}

/// Multi-head attention with separate query/key/value projections (with bias) and an output projection.
pub struct MultiHeadAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub output: Linear<B>,
    n_heads: usize,
    dropout: f64,
    saved: Option<AttnForward<B>>,
}

struct AttnForward<B: Backend> {
    q: Tensor<B>,
    k: Tensor<B>,
    v: Tensor<B>,
    attn: AttnSaved<B>,
    mask: AttnMask,
    dropout: Option<DropoutMask>,
}

impl<B: Backend> MultiHeadAttention<B> {
    pub fn new(
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
            saved: None,
        })
    }

    /// Attention of `query_in` over `kv_in` (the same tensor for self-attention).
    pub fn forward(
        &mut self,
        query_in: Tensor<B>,
        kv_in: Tensor<B>,
        mask: AttnMask,
        drop: &mut DropoutStream,
    ) -> Result<Tensor<B>> {
        let q = self.query.forward(query_in)?;
        let k = self.key.forward(kv_in.try_clone()?)?;
        let v = self.value.forward(kv_in)?;
        let dropout = drop.next(self.dropout);
        let attn = attention::forward(&q, &k, &v, self.n_heads, mask, dropout)?;
        let y = self.output.forward(attn.out.try_clone()?)?;
        self.saved = Some(AttnForward {
            q,
            k,
            v,
            attn,
            mask,
            dropout,
        });
        Ok(y)
    }

    /// Returns the gradients with respect to the query input and the key/value input.
    pub fn backward(&mut self, dy: &Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        let s = self.saved.take().ok_or_else(|| not_run("attention"))?;
        let d_out = self.output.backward(dy)?;
        let (dq, dk, dv) = attention::backward(
            &s.q,
            &s.k,
            &s.v,
            &s.attn,
            &d_out,
            self.n_heads,
            s.mask,
            s.dropout,
        )?;
        let dquery_in = self.query.backward(&dq)?;
        let mut dkv_in = self.key.backward(&dk)?;
        dkv_in.add_assign(&self.value.backward(&dv)?)?;
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
    pub layer1: Linear<B>,
    pub layer2: Linear<B>,
    dropout: f64,
    saved: Option<(Tensor<B>, Option<DropoutMask>)>,
}

impl<B: Backend> FeedForward<B> {
    pub fn new(
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
    pub fn forward(&mut self, x: Tensor<B>, drop: &mut DropoutStream) -> Result<Tensor<B>> {
        let h = elementwise::relu(&self.layer1.forward(x)?)?;
        let mask = drop.next(self.dropout);
        let y = self
            .layer2
            .forward(elementwise::dropout(h.try_clone()?, mask)?)?;
        self.saved = Some((h, mask));
        Ok(y)
    }
    pub fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let (h, mask) = self.saved.take().ok_or_else(|| not_run("feed-forward"))?;
        let dh = elementwise::dropout(self.layer2.backward(dy)?, mask)?;
        self.layer1.backward(&elementwise::relu_backward(&h, &dh)?)
    }
}

impl_parameters!(FeedForward { layer1 => "layer1", layer2 => "layer2" });

/// The pre-norm transformer layer, causal self-attention.
pub struct TransformerLayer<B: Backend> {
    pub norm_self_attn: LayerNorm<B>,
    pub self_attn: MultiHeadAttention<B>,
    pub norm_ff: LayerNorm<B>,
    pub feed_forward: FeedForward<B>,
    dropout: f64,
    masks: Option<[Option<DropoutMask>; 2]>,
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
            norm_ff: LayerNorm::new(backend, d_model)?,
            feed_forward: FeedForward::new(backend, d_model, d_ff, dropout, rng)?,
            dropout,
            masks: None,
        })
    }

    pub fn forward(
        &mut self,
        x: Tensor<B>,
        mask: AttnMask,
        drop: &mut DropoutStream,
    ) -> Result<Tensor<B>> {
        let z = self.norm_self_attn.forward(x.try_clone()?)?;
        let attn = self.self_attn.forward(z.try_clone()?, z, mask, drop)?;
        let attn_mask = drop.next(self.dropout);
        let x = x.add(&elementwise::dropout(attn, attn_mask)?)?;
        let z = self.norm_ff.forward(x.try_clone()?)?;
        let ff = self.feed_forward.forward(z, drop)?;
        let ff_mask = drop.next(self.dropout);
        let y = x.add(&elementwise::dropout(ff, ff_mask)?)?;
        self.masks = Some([attn_mask, ff_mask]);
        Ok(y)
    }

    pub fn backward(&mut self, dy: &Tensor<B>) -> Result<Tensor<B>> {
        let [attn_mask, ff_mask] = self
            .masks
            .take()
            .ok_or_else(|| not_run("transformer layer"))?;
        let d_ff = self
            .feed_forward
            .backward(&elementwise::dropout(dy.try_clone()?, ff_mask)?)?;
        let mut dx = self.norm_ff.backward(&d_ff)?;
        dx.add_assign(dy)?;
        let d_attn = elementwise::dropout(dx.try_clone()?, attn_mask)?;
        let (dq_in, dkv_in) = self.self_attn.backward(&d_attn)?;
        let mut dz = dq_in;
        dz.add_assign(&dkv_in)?;
        let mut d_in = self.norm_self_attn.backward(&dz)?;
        d_in.add_assign(&dx)?;
        Ok(d_in)
    }
}

impl_parameters!(TransformerLayer {
    norm_self_attn => "norm_self_attn",
    self_attn => "self_attn",
    norm_ff => "norm_ff",
    feed_forward => "feed_forward",
});

/// The block both attention resamplers share (the trax `AttentionResampling` core): queries `q` attend to
/// `h`, `y = q + Dropout(MHA(q, h, h))`, then `y = y + Dropout(FFN(LN_ff(y)))`. Dropout sites in order:
/// attention probabilities, the residual after attention, inside the FFN, the residual after the FFN.
pub struct CrossAttentionBlock<B: Backend> {
    pub attention: MultiHeadAttention<B>,
    pub norm_ff: LayerNorm<B>,
    pub feed_forward: FeedForward<B>,
    dropout: f64,
    masks: Option<[Option<DropoutMask>; 2]>,
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
            norm_ff: LayerNorm::new(backend, d_model)?,
            feed_forward: FeedForward::new(backend, d_model, d_ff, dropout, rng)?,
            dropout,
            masks: None,
        })
    }

    /// `q[Tq, B, D]` over `h[Tk, B, D]` under `mask`; returns `y[Tq, B, D]`.
    pub fn forward(
        &mut self,
        q: Tensor<B>,
        h: Tensor<B>,
        mask: AttnMask,
        drop: &mut DropoutStream,
    ) -> Result<Tensor<B>> {
        let attn = self.attention.forward(q.try_clone()?, h, mask, drop)?;
        let attn_mask = drop.next(self.dropout);
        let y = q.add(&elementwise::dropout(attn, attn_mask)?)?;
        let z = self.norm_ff.forward(y.try_clone()?)?;
        let ff = self.feed_forward.forward(z, drop)?;
        let ff_mask = drop.next(self.dropout);
        let y = y.add(&elementwise::dropout(ff, ff_mask)?)?;
        self.masks = Some([attn_mask, ff_mask]);
        Ok(y)
    }

    /// Returns the gradients with respect to `q` and `h`.
    pub fn backward(&mut self, dy: &Tensor<B>) -> Result<(Tensor<B>, Tensor<B>)> {
        let [attn_mask, ff_mask] = self
            .masks
            .take()
            .ok_or_else(|| not_run("cross-attention block"))?;
        let d_ff = self
            .feed_forward
            .backward(&elementwise::dropout(dy.try_clone()?, ff_mask)?)?;
        let mut dq = self.norm_ff.backward(&d_ff)?;
        dq.add_assign(dy)?;
        let d_attn = elementwise::dropout(dq.try_clone()?, attn_mask)?;
        let (dq_attn, dh) = self.attention.backward(&d_attn)?;
        dq.add_assign(&dq_attn)?;
        Ok((dq, dh))
    }
}

impl_parameters!(CrossAttentionBlock {
    attention => "attention",
    norm_ff => "norm_ff",
    feed_forward => "feed_forward",
});
