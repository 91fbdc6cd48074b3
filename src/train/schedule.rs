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
pub(crate) struct LrSchedule {
    pub(crate) peak: f64,
    pub(crate) warmup_steps: u64,
    pub(crate) total_steps: u64,
    pub(crate) min_lr: f64,
}

impl LrSchedule {
    /// A checked schedule: `0 <= min_lr <= peak` (finite), `warmup_steps <= total_steps`, `total_steps >= 1`.
    pub(crate) fn new(peak: f64, warmup_steps: u64, total_steps: u64, min_lr: f64) -> Result<Self> {
        let s = Self {
            peak,
            warmup_steps,
            total_steps,
            min_lr,
        };
        s.validate()?;
        Ok(s)
    }

    pub(crate) fn validate(&self) -> Result<()> {
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
    pub(crate) fn lr(&self, step: u64) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> LrSchedule {
        LrSchedule::new(4e-4, 100, 1100, 1e-5).unwrap()
    }

    #[test]
    fn schedule_values_at_the_landmarks() {
        let s = schedule();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-15 * b.abs().max(1e-300);
        assert!(close(s.lr(0), 4e-4 / 100.0), "first step: {}", s.lr(0));
        assert!(close(s.lr(49), 4e-4 * 0.5), "half-way up: {}", s.lr(49));
        assert!(
            close(s.lr(99), 4e-4),
            "warm-up ends at the peak: {}",
            s.lr(99)
        );
        assert!(
            close(s.lr(100), 4e-4),
            "decay starts at the peak: {}",
            s.lr(100)
        );
        let mid = 1e-5 + (4e-4 - 1e-5) * 0.5;
        assert!(
            close(s.lr(600), mid),
            "middle of the decay: {} vs {mid}",
            s.lr(600)
        );
        assert!(
            s.lr(1099) > 1e-5 && s.lr(1099) < 1e-5 + 1e-9,
            "last step: {}",
            s.lr(1099)
        );
        assert_eq!(s.lr(1100), 1e-5, "end");
        assert_eq!(s.lr(1_000_000), 1e-5, "after the end");
    }

    #[test]
    fn schedule_rises_then_falls_monotonically() {
        let s = schedule();
        for step in 0..99 {
            assert!(s.lr(step + 1) > s.lr(step), "warm-up rises at {step}");
        }
        for step in 100..1100 {
            assert!(s.lr(step + 1) <= s.lr(step), "decay falls at {step}");
        }
        for step in 0..1200 {
            let lr = s.lr(step);
            assert!(
                (1e-5..=4e-4).contains(&lr) || step < 100,
                "lr {lr} at {step} in [min, peak]"
            );
            assert!(lr > 0.0 && lr <= 4e-4);
        }
    }

    #[test]
    fn schedule_without_warm_up_and_bad_schedules() {
        let s = LrSchedule::new(1e-3, 0, 10, 0.0).unwrap();
        assert_eq!(s.lr(0), 1e-3);
        assert!((s.lr(5) - 5e-4).abs() < 1e-18);
        assert_eq!(s.lr(10), 0.0);
        for (peak, warm, total, min) in [
            (1e-3, 11, 10, 0.0),
            (1e-3, 0, 0, 0.0),
            (1e-3, 1, 10, 2e-3),
            (-1.0, 1, 10, 0.0),
            (f64::NAN, 1, 10, 0.0),
            (1e-3, 1, 10, -1e-4),
        ] {
            assert!(
                LrSchedule::new(peak, warm, total, min).is_err(),
                "rejects peak {peak} warm-up {warm} total {total} min {min}"
            );
        }
    }
}
