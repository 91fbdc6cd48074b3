//! CPU throughput of the whole HourGlass for the seed's configuration (n_heads 4, d_model 512, d_ff 2048,
//! factors [2, 3], x of shape [10, 32, 512]): forward and forward+backward tokens/s, median of several runs.
//!
//! `cargo bench --bench cpu_model`

use hourglass::rng::SeededRng;
use hourglass::{Cpu, HourGlass, HourGlassConfig, Parameters, Tensor};
use std::time::Instant;

fn median_ms(mut f: impl FnMut(), warmup: usize, runs: usize) -> f64 {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let config = HourGlassConfig::reference(4, 512, 0.1, 2048, &[2, 3]);
    let (seq, batch) = (10, 32);
    let cpu = Cpu::<f32>::new();
    let mut model = HourGlass::from_config(&cpu, &config, 0).expect("model");
    let mut rng = SeededRng::new(1);
    let data: Vec<f64> = (0..seq * batch * config.d_model)
        .map(|_| rng.normal())
        .collect();
    let x = Tensor::from_f64(&cpu, &[seq, batch, config.d_model], &data).expect("x");
    let gy = x.try_clone().expect("gy");
    let tokens = (seq * batch) as f64;
    println!(
        "CPU HourGlass {config:?}, x [{seq}, {batch}, {}], {} threads",
        config.d_model,
        rayon::current_num_threads()
    );
    println!("{:<28} {:>10} {:>14}", "pass", "median ms", "tokens/s");
    let fwd = median_ms(
        || {
            model.forward(&x).expect("forward");
        },
        2,
        9,
    );
    println!(
        "{:<28} {:>10.2} {:>14.0}",
        "forward (train mode)",
        fwd,
        tokens / fwd * 1e3
    );
    let fwd_bwd = median_ms(
        || {
            model.forward(&x).expect("forward");
            model.backward(&gy).expect("backward");
            model.zero_grad().expect("zero_grad");
        },
        2,
        9,
    );
    println!(
        "{:<28} {:>10.2} {:>14.0}",
        "forward+backward",
        fwd_bwd,
        tokens / fwd_bwd * 1e3
    );
}
