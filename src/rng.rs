//! Counter-based random numbers (Philox4x32-10, Salmon et al. 2011) for dropout.
//!
//! Element `n` of a dropout mask depends only on `(seed, n)`, never on the order elements are visited in,
//! so the rayon CPU path and the CUDA kernels (`kernels/common.cuh`, the same function) draw identical masks,
//! and backward regenerates the mask instead of storing it.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The first 32-bit output of Philox4x32-10 for counter `(n_lo, n_hi, 0, 0)` and key `(seed_lo, seed_hi)`.
pub fn philox(seed: u64, n: u64) -> u32 {
    let mut c = [n as u32, (n >> 32) as u32, 0u32, 0u32];
    let mut k = [seed as u32, (seed >> 32) as u32];
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c[0]
}

/// Dropout with probability `p` keeps element `n` iff `philox(seed, n) >= threshold(p)`: an integer compare,
/// so CPU and GPU agree bit for bit.
pub fn keep_threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// A dropout site's mask: which elements survive and by how much survivors are scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    pub p: f64,
    pub seed: u64,
}

impl DropoutMask {
    pub fn threshold(&self) -> u32 {
        keep_threshold(self.p)
    }
    pub fn scale(&self) -> f64 {
        1.0 / (1.0 - self.p)
    }
    /// The factor element `n` is multiplied by: 0 if dropped, 1/(1-p) if kept.
    pub fn factor(&self, n: u64) -> f64 {
        if philox(self.seed, n) >= self.threshold() {
            self.scale()
        } else {
            0.0
        }
    }
}

/// SplitMix64: derives independent seeds for each dropout site and step from one model seed.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small seeded generator for initialisation and test data (uniform in [0,1) with 53-bit precision).
#[derive(Clone, Debug)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.state)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer test from the Random123 distribution (kat_vectors: philox4x32 10 rounds, all-zero input).
    #[test]
    fn philox_matches_random123_known_answer() {
        assert_eq!(philox(0, 0), 0x6627_e8d5);
    }

    #[test]
    fn dropout_keeps_about_one_minus_p() {
        let m = DropoutMask { p: 0.25, seed: 7 };
        let kept = (0..100_000u64).filter(|&n| m.factor(n) > 0.0).count();
        assert!((kept as f64 / 100_000.0 - 0.75).abs() < 0.01, "kept {kept}");
    }
}
