//! Learning rate over training: linear warm-up from 0 to `peak`, then cosine decay from `peak` to `min_lr`
//! (the paper's enwik8 recipe: 4k warm-up steps, cosine decay).

use crate::error::{Error, Result};

/// `lr(step)` for `step` counted from 0 (the step about to be taken):
/// - warm-up, `step < warmup_steps`: `peak · (step + 1) / warmup_steps`, so the first step is not wasted at 0
///   and the last warm-up step reaches `peak`;
/// - decay, `warmup_steps <= step < total_steps`: `min_lr + (peak − min_lr) · (1 + cos(π · t)) / 2` with
///   `t = (step − warmup_steps) / (total_steps − warmup_steps)`, from `peak` at `t = 0` towards `min_lr`;
/// - after `total_steps`: `min_lr`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub peak: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub min_lr: f64,
}

impl LrSchedule {
    /// A checked schedule: `0 <= min_lr <= peak` (finite), `warmup_steps <= total_steps`, `total_steps >= 1`.
    pub fn new(peak: f64, warmup_steps: u64, total_steps: u64, min_lr: f64) -> Result<Self> {
        let s = Self {
            peak,
            warmup_steps,
            total_steps,
            min_lr,
        };
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.peak.is_finite()
            && self.min_lr.is_finite()
            && 0.0 <= self.min_lr
            && self.min_lr <= self.peak)
        {
            return Err(Error::Config(format!(
                "learning rate schedule: need 0 <= min_lr ({}) <= lr ({}), both finite",
                self.min_lr, self.peak
            )));
        }
        if self.total_steps == 0 || self.warmup_steps > self.total_steps {
            return Err(Error::Config(format!(
                "learning rate schedule: need 1 <= total_steps ({}) and warmup_steps ({}) <= total_steps",
                self.total_steps, self.warmup_steps
            )));
        }
        Ok(())
    }

    /// The learning rate for step `step` (from 0).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if step >= self.total_steps {
            return self.min_lr;
        }
        let t = (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64;
        self.min_lr + (self.peak - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}
