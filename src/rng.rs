//! Counter-based random numbers (Philox4x32-10, Salmon et al. 2011) for dropout.
//!
//! Element `n` of a dropout mask depends only on `(seed, n)`, never on the order elements are visited in,
//! so the rayon CPU path and the CUDA kernels (`kernels/common.cuh`, the same function) draw identical masks,
//! and backward regenerates the mask instead of storing it. One Philox call gives four 32-bit words: element
//! `n` uses word `n % 4` of block `n / 4`, so a loop over four neighbours pays for one call.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32-10 (Random123's `philox4x32`, 10 rounds) of `counter` under `key`: four 32-bit words.
pub(crate) fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
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
    c
}

/// The four words of dropout block `block` (elements `4·block .. 4·block + 3`): counter `(block_lo, block_hi,
/// 0, 0)`, key `(seed_lo, seed_hi)`.
pub(crate) fn philox4(seed: u64, block: u64) -> [u32; 4] {
    philox4x32(
        [block as u32, (block >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// Dropout with probability `p` keeps element `n` iff its word (`philox4(seed, n / 4)[n % 4]`) is at least
/// `threshold(p)`: an integer compare, so CPU and GPU agree bit for bit.
pub(crate) fn keep_threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0).min(u32::MAX as f64) as u32
}

/// A dropout site's mask: which elements survive and by how much survivors are scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    pub(crate) p: f64,
    pub(crate) seed: u64,
    /// Where the CUDA kernels read `seed`: a slot of the device's seed table that a training step staged it in
    /// before the step ran (`device::cuda::seeds`), or `None`: the launch writes it there first. The CPU reads
    /// `seed`; the two agree because the staged value is this `seed`.
    pub(crate) slot: Option<u32>,
}

impl DropoutMask {
    /// A mask of drop probability `p` drawn from `seed`, which a CUDA launch writes for its kernel to read.
    pub const fn new(p: f64, seed: u64) -> Self {
        Self {
            p,
            seed,
            slot: None,
        }
    }
    pub(crate) fn threshold(&self) -> u32 {
        keep_threshold(self.p)
    }
    pub(crate) fn scale(&self) -> f64 {
        1.0 / (1.0 - self.p)
    }
    /// The factor element `n` is multiplied by: 0 if dropped, 1/(1-p) if kept.
    pub fn factor(&self, n: u64) -> f64 {
        self.factor_of(philox4(self.seed, n / 4)[(n % 4) as usize])
    }
    /// The factors of elements `4·block .. 4·block + 3`, from one Philox call.
    pub(crate) fn factors4(&self, block: u64) -> [f64; 4] {
        philox4(self.seed, block).map(|word| self.factor_of(word))
    }
    fn factor_of(&self, word: u32) -> f64 {
        if word >= self.threshold() {
            self.scale()
        } else {
            0.0
        }
    }
}

/// Dropout sites a pass may have for its seeds to be staged: the seed table (`device::cuda::seeds`) gives each
/// micro-batch of a training step this many slots.
pub(crate) const SITES_PER_PASS: usize = 1024;

/// The seed-table slot where a training step stages the seed of micro-batch `micro`'s site `site` (counted
/// from 1, as `model::Pass` counts them): slot 0 is the launches' own; `None` past `SITES_PER_PASS` sites.
pub(crate) fn staged_slot(micro: usize, site: u64) -> Option<u32> {
    let site = usize::try_from(site)
        .ok()
        .filter(|s| (1..=SITES_PER_PASS).contains(s))?;
    u32::try_from(1 + micro * SITES_PER_PASS + site - 1).ok()
}

/// A mask's scalars as the kernels take them after its seed: threshold, scale (rounded to f32, as the CPU's
/// f32 product rounds it) and whether to apply one at all (0 for `None`).
pub(crate) fn kernel_args(mask: Option<DropoutMask>) -> (u32, f32, i32) {
    match mask {
        Some(m) => (m.threshold(), m.scale() as f32, 1),
        None => (0, 1.0, 0),
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
    pub(crate) fn uniform(&mut self) -> f64 {
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

    /// Known-answer tests from the Random123 distribution (kat_vectors: philox4x32, 10 rounds).
    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(
            philox4x32([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(philox4(0, 0), philox4x32([0; 4], [0; 2]));
    }

    #[test]
    fn each_element_takes_its_own_word_of_its_block() {
        let m = DropoutMask::new(0.5, 11);
        for block in [0u64, 1, 12345, u64::MAX / 4] {
            let four = m.factors4(block);
            for (w, f) in four.iter().enumerate() {
                assert_eq!(*f, m.factor(4 * block + w as u64));
            }
        }
        // The four words differ: a block is not one draw repeated.
        let words = philox4(11, 3);
        assert!(words.iter().any(|&w| w != words[0]));
    }

    #[test]
    fn dropout_keeps_about_one_minus_p() {
        let m = DropoutMask::new(0.25, 7);
        let kept = (0..100_000u64).filter(|&n| m.factor(n) > 0.0).count();
        assert!((kept as f64 / 100_000.0 - 0.75).abs() < 0.01, "kept {kept}");
    }
}
