//! What the comparison examples share (`mod common;` in each; not an example of its own): models trained in
//! turn for the same wall-clock time.

use hourglass::train::data::Corpus;
use hourglass::train::Trainer;
use hourglass::{Backend, Result};
use std::time::Instant;

/// Trains every model for `seconds` of its own training time, one step of each in turn, so that a machine that
/// gets slower or faster during the run slows them alike; the seconds count training steps only, not the
/// validations. `validate(trainer, run, seconds)` runs at the start, every `eval_seconds` of a model's training
/// and at its end; `progress(done, models)` after each round, with the training seconds all models have done.
/// Returns each model's training seconds.
pub fn train_in_turns<B: Backend, R>(
    backend: &B,
    corpus: &Corpus,
    models: &mut [(Trainer<B>, R)],
    (seconds, eval_seconds): (f64, f64),
    mut validate: impl FnMut(&mut Trainer<B>, &mut R, f64) -> Result<()>,
    mut progress: impl FnMut(f64, &[(Trainer<B>, R)]),
) -> Result<Vec<f64>> {
    for (trainer, run) in models.iter_mut() {
        validate(trainer, run, 0.0)?;
    }
    let mut trained = vec![0.0f64; models.len()];
    while trained.iter().any(|&s| s < seconds) {
        for ((trainer, run), spent) in models.iter_mut().zip(&mut trained) {
            if *spent >= seconds {
                continue;
            }
            backend.synchronize()?;
            let t = Instant::now();
            trainer.train_step(corpus)?;
            backend.synchronize()?;
            let before = *spent;
            *spent += t.elapsed().as_secs_f64();
            let marks = |s: f64| (s / eval_seconds).floor();
            if marks(*spent) > marks(before) || *spent >= seconds {
                validate(trainer, run, *spent)?;
            }
        }
        progress(trained.iter().map(|s| s.min(seconds)).sum(), models);
    }
    Ok(trained)
}
