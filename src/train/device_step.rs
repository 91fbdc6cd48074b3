//! A training step with no host round trip, and on CUDA one graph that replays it.
//!
//! The host path (`StepMode::Host`) reads each micro-batch's loss and the gradient norm back before the update:
//! two blocking copies a step, and every value the step needs passed as a kernel argument. Here the step's
//! scalars live on the device in a small `state` tensor (`ops::adamw::state`): the host queues the learning
//! rate and bias corrections into it, and the batches into buffers that never move, through pinned memory;
//! the step writes its losses and sum of squared gradients there, `adamw::guard` turns them into the clipping
//! factor and a skip flag (raised on a non-finite value: the updates then change nothing until the host has
//! read that step), and AdamW reads them there. The state comes back through pinned memory one step later, when
//! the host reports the step (`StepLog`) or stops on the non-finite value, naming the step as the host path does.
//!
//! Because nothing of the step is decided on the host after it starts, the same work serves every step: with
//! `StepMode::Graph` the first step runs as it is (it creates what the run keeps: moments, bf16 copies, cuBLAS
//! plans), the step is captured right after it, and every later step replays that graph, one launch. Dropout masks
//! come from seeds staged per step in the device's seed table (`rng::staged_slot`), not from kernel arguments.

use super::data::{Corpus, Split};
use super::history::StepLog;
use super::optim::AdamW;
use super::recipe::{ResolvedConfig, StepMode, TrainConfig};
use crate::device::Element;
use crate::error::{Error, Result};
use crate::model::lm::{HourglassLM, VOCAB};
use crate::model::Parameters;
use crate::ops::adamw::{self, state};
use crate::ops::Backend;
use crate::rng::SITES_PER_PASS;
use crate::tensor::{Tensor, Tokens};
use std::collections::VecDeque;

/// The device-side half of a run in `Device` or `Graph` mode.
pub(crate) struct DeviceStep<B: Backend> {
    graph_wanted: bool,
    /// Each micro-batch's ids and targets, rewritten in place every step.
    ids: Vec<Tokens<B>>,
    targets: Vec<Tokens<B>>,
    state: Tensor<B>,
    graph: Option<B::Graph>,
    /// Steps queued whose state has not been read back: (step log without its loss and norm, the read).
    pending: VecDeque<(StepLog, B::PendingRead)>,
    /// The buffers the graph was captured with (`buffer_ids`): a replay needs them all where they were.
    captured_with: Vec<usize>,
    /// The step that stopped the run on a non-finite value (no update from it on took effect).
    failed: Option<u64>,
}

impl<B: Backend> DeviceStep<B> {
    /// The buffers of a run of `settings`, issued in its step mode (`Device` or `Graph`).
    pub(crate) fn new(backend: &B, settings: &ResolvedConfig) -> Result<Self> {
        let config = settings.config();
        let rows = config.seq_len * config.batch;
        let tokens = || {
            (0..config.accum)
                .map(|_| Tokens::zeros(backend, rows, VOCAB))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            graph_wanted: settings.step_mode() == StepMode::Graph,
            ids: tokens()?,
            targets: tokens()?,
            state: Tensor::zeros(backend, &[state::len(config.accum)])?,
            graph: None,
            pending: VecDeque::new(),
            captured_with: Vec::new(),
            failed: None,
        })
    }

    /// Queues step `index + 1` (the batches, learning rate and seeds first, then the work: replayed, captured
    /// or run). Returns the logs of the steps whose results are back, keeping at most this one in flight.
    pub(crate) fn queue(
        &mut self,
        lm: &mut HourglassLM<B>,
        opt: &mut AdamW<B>,
        config: &TrainConfig,
        corpus: &Corpus,
        lr: f64,
    ) -> Result<Vec<StepLog>> {
        let index = opt.steps();
        self.stage(lm, opt, config, corpus, index, lr)?;
        if self.graph.is_some() && self.buffer_ids(lm, opt) != self.captured_with {
            // Something replaced a parameter's buffer since the capture (a checkpoint loaded into the model,
            // say): run this step uncaptured, then capture again.
            self.graph = None;
        }
        match &self.graph {
            Some(graph) => {
                lm.hourglass.backend().replay(graph)?;
                opt.set_steps(index + 1);
            }
            None => {
                self.run(lm, opt, config, index)?;
                // Right after a whole step (which made what the run keeps: moments, bf16 copies, plans) and
                // before anything else (an evaluation leaves buffers the next step frees, which a capture may
                // not): the capture records the next step without running it.
                if self.graph_wanted {
                    self.capture(lm, opt, config, index + 1)?;
                    opt.set_steps(index + 1);
                }
            }
        }
        let log = StepLog {
            step: index + 1,
            bits: f64::NAN,
            lr,
            grad_norm: f64::NAN,
        };
        let read = lm.hourglass.backend().read_async(self.state.storage()?)?;
        self.pending.push_back((log, read));
        let mut done = Vec::new();
        while self.pending.len() > 1 {
            done.push(self.finish_oldest(lm, config)?);
        }
        Ok(done)
    }

    /// The step that stopped the run, if one did.
    pub(crate) fn failed_step(&self) -> Option<u64> {
        self.failed
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Waits for every queued step; their logs, oldest first.
    pub(crate) fn finish(
        &mut self,
        lm: &HourglassLM<B>,
        config: &TrainConfig,
    ) -> Result<Vec<StepLog>> {
        let mut done = Vec::new();
        while !self.pending.is_empty() {
            done.push(self.finish_oldest(lm, config)?);
        }
        Ok(done)
    }

    /// The oldest queued step's log, or the error that stops the run when one of its values is not finite.
    fn finish_oldest(&mut self, lm: &HourglassLM<B>, config: &TrainConfig) -> Result<StepLog> {
        let (log, read) = self.pending.pop_front().expect("a pending step");
        let values = lm.hourglass.backend().finish_read(read)?;
        let value = |i: usize| values[i].to_f64();
        let step = log.step;
        let losses: Vec<f64> = (0..config.accum)
            .map(|m| value(state::LOSSES + m))
            .collect();
        if let Some((micro, loss)) = losses.iter().enumerate().find(|(_, l)| !l.is_finite()) {
            self.pending.clear();
            self.failed = Some(step);
            return Err(Error::Training(format!(
                "the training loss is {loss} at step {step} (micro-batch {micro}); stopping"
            )));
        }
        let norm = value(state::SUM_SQUARES).sqrt();
        if !norm.is_finite() {
            self.pending.clear();
            self.failed = Some(step);
            return Err(Error::Training(format!(
                "the gradient norm is {norm} at step {step}; stopping"
            )));
        }
        if value(state::SKIP) != 0.0 {
            // Raised by an earlier step, which reported it; a flag up with every value finite is a bug.
            return Err(Error::Training(format!(
                "step {step} was skipped on the device with every value finite; stopping"
            )));
        }
        let nats: f64 = losses.iter().sum();
        Ok(StepLog {
            bits: nats / config.accum as f64 / std::f64::consts::LN_2,
            grad_norm: norm,
            ..log
        })
    }

    /// Queues this step's inputs: the state's host part, every micro-batch's ids and targets (drawn as the
    /// host path draws them), and the dropout seeds of its passes.
    fn stage(
        &mut self,
        lm: &HourglassLM<B>,
        opt: &AdamW<B>,
        config: &TrainConfig,
        corpus: &Corpus,
        index: u64,
        lr: f64,
    ) -> Result<()> {
        let (b1, b2) = adamw::bias_corrections(opt.beta1, opt.beta2, index + 1);
        let max_norm = if config.clip > 0.0 { config.clip } else { 0.0 };
        let mut inputs = [B::Elem::zero(); state::INPUTS_AND_GUARD];
        inputs[state::LR] = B::Elem::from_f64(lr);
        inputs[state::BIAS1] = B::Elem::from_f64(b1);
        inputs[state::BIAS2] = B::Elem::from_f64(b2);
        inputs[state::MAX_NORM] = B::Elem::from_f64(max_norm);
        inputs[state::GRAD_SCALE] = B::Elem::one();
        // The skip flag stays up from a non-finite step through the step queued behind it, which must not
        // update either. With no step in flight the host has read them all (after a NaN stop, a run that goes
        // on restarts from the last good step), so the flag goes down.
        let written = if self.pending.is_empty() {
            state::INPUTS_AND_GUARD
        } else {
            state::INPUTS
        };
        let backend = lm.hourglass.backend().clone();
        backend.write_async(self.state.storage_mut()?, 0, &inputs[..written])?;
        let mut rng = config.batch_rng(index);
        for micro in 0..config.accum {
            let (inputs, targets) =
                corpus.batch(Split::Train, config.seq_len, config.batch, &mut rng)?;
            self.ids[micro].write_async(&inputs)?;
            self.targets[micro].write_async(&targets)?;
        }
        // Before the first pass the number of sites is not known: every slot gets a seed.
        let sites = match lm.hourglass.dropout_sites() {
            0 => SITES_PER_PASS as u64,
            n => n,
        };
        if sites > SITES_PER_PASS as u64 {
            return Err(Error::Training(format!(
                "a pass has {sites} dropout sites; a step without host round trips stages at most \
                 {SITES_PER_PASS} (train with the host path instead)"
            )));
        }
        let mut seeds = vec![0u64; config.accum * SITES_PER_PASS];
        for (micro, slots) in seeds.chunks_mut(SITES_PER_PASS).enumerate() {
            let pass = index * config.accum as u64 + micro as u64;
            let pass_seeds = lm.hourglass.dropout_seeds(pass, sites);
            slots[..pass_seeds.len()].copy_from_slice(&pass_seeds);
        }
        backend.stage_seeds(&seeds)
    }

    /// The step's work: the micro-batches' forward and backward, the sum of squared gradients, the guard and
    /// the update, all reading and writing the device (what a graph captures).
    fn run(
        &mut self,
        lm: &mut HourglassLM<B>,
        opt: &mut AdamW<B>,
        config: &TrainConfig,
        index: u64,
    ) -> Result<()> {
        lm.train(true);
        lm.zero_grad()?;
        let result = (0..config.accum).try_for_each(|micro| {
            lm.set_dropout_pass(index * config.accum as u64 + micro as u64);
            lm.set_staged_seeds(Some(micro));
            lm.accumulate_into(
                &self.ids[micro],
                &self.targets[micro],
                [config.seq_len, config.batch],
                config.accum,
                &mut self.state,
                state::LOSSES + micro,
            )
        });
        lm.set_staged_seeds(None);
        result?;
        super::clip::grad_sum_squares_into(lm, &mut self.state, state::SUM_SQUARES)?;
        adamw::guard(&mut self.state, config.accum)?;
        opt.step_from_state(lm, &self.state)
    }

    /// Captures `run` into the graph, checking that every buffer the graph will read or write stays where
    /// it was (a buffer made during the capture would belong to the graph and be gone at replay).
    fn capture(
        &mut self,
        lm: &mut HourglassLM<B>,
        opt: &mut AdamW<B>,
        config: &TrainConfig,
        index: u64,
    ) -> Result<()> {
        let before = self.buffer_ids(lm, opt);
        let backend = lm.hourglass.backend().clone();
        backend.begin_capture()?;
        let ran = self.run(lm, opt, config, index);
        let graph = backend.end_capture();
        let graph = match (ran, graph) {
            (Ok(()), Ok(graph)) => graph,
            (Err(e), _) | (Ok(()), Err(e)) => {
                return Err(Error::Training(format!(
                    "capturing the training step into a CUDA graph failed: {e} (--no-graph runs it \
                     uncaptured)"
                )))
            }
        };
        if self.buffer_ids(lm, opt) != before {
            return Err(Error::Training(
                "capturing the training step moved a parameter, gradient, optimiser moment or input \
                 buffer, which a replay would not see (--no-graph runs it uncaptured)"
                    .into(),
            ));
        }
        self.graph = Some(graph);
        self.captured_with = before;
        Ok(())
    }

    fn buffer_ids(&self, lm: &HourglassLM<B>, opt: &AdamW<B>) -> Vec<usize> {
        let mut ids = vec![self.state.buffer_id()];
        ids.extend(self.ids.iter().chain(&self.targets).map(Tokens::buffer_id));
        lm.visit("", &mut |_, p| ids.extend(p.buffer_ids()));
        ids.extend(opt.buffer_ids());
        ids
    }
}
