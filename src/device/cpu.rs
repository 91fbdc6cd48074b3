//! The CPU backend: plain `Vec<T>` storage, rayon for parallel loops, blocked GEMM split across threads.

use super::{BackendCore, DeviceKind, Element};
use crate::error::Result;
use rayon::prelude::*;
use std::marker::PhantomData;

/// The CPU reference backend over f32 (`Cpu<f32>`, normal use) or f64 (`Cpu<f64>`, gradient checks).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu<T: Element = f32>(PhantomData<T>);

impl<T: Element> Cpu<T> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

/// Below this many elements a loop runs on the calling thread: rayon's overhead would dominate.
pub(crate) const PAR_MIN: usize = 1 << 14;

impl<T: Element> BackendCore for Cpu<T> {
    type Elem = T;
    type Storage = Vec<T>;
    type Bf16Storage = Vec<half::bf16>;
    type Ids = Vec<u32>;
    type PendingRead = Vec<T>;
    /// Nothing to capture on the CPU: no value of this type exists.
    type Graph = std::convert::Infallible;

    fn kind(&self) -> DeviceKind {
        DeviceKind::Cpu
    }
    fn zeros(&self, len: usize) -> Result<Vec<T>> {
        // An allocation the system refuses is an error, not an abort.
        let mut v = Vec::new();
        v.try_reserve_exact(len).map_err(|e| {
            crate::error::Error::Config(format!("cannot allocate {len} elements on the CPU: {e}"))
        })?;
        v.resize(len, T::zero());
        Ok(v)
    }
    fn upload(&self, data: &[T]) -> Result<Vec<T>> {
        Ok(data.to_vec())
    }
    fn download(&self, storage: &Vec<T>) -> Result<Vec<T>> {
        Ok(storage.clone())
    }
    fn copy(&self, storage: &Vec<T>) -> Result<Vec<T>> {
        Ok(storage.clone())
    }
    fn storage_len(storage: &Vec<T>) -> usize {
        storage.len()
    }
    fn bf16_len(storage: &Vec<half::bf16>) -> usize {
        storage.len()
    }
    fn round_to_bf16(&self, storage: &Vec<T>) -> Result<Vec<half::bf16>> {
        Ok(map_par(storage, |&v| v.to_bf16()))
    }
    fn widen_bf16(&self, storage: &Vec<half::bf16>) -> Result<Vec<T>> {
        Ok(map_par(storage, |&v| T::from_bf16(v)))
    }
    fn add(&self, a: &Vec<T>, b: &Vec<T>) -> Result<Vec<T>> {
        let mut out = a.clone();
        self.add_assign(&mut out, b)?;
        Ok(out)
    }
    fn add_assign_from(&self, acc: &mut Vec<T>, x: &Vec<T>, offset: usize) -> Result<()> {
        let x = &x[offset..][..acc.len()];
        if acc.len() >= PAR_MIN {
            acc.par_iter_mut()
                .zip(x.par_iter())
                .for_each(|(a, &b)| *a += b);
        } else {
            acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
        }
        Ok(())
    }
    fn concat(&self, parts: &[&Vec<T>]) -> Result<Vec<T>> {
        Ok(parts.iter().flat_map(|p| p.iter().copied()).collect())
    }
    fn concat_bf16(&self, parts: &[&Vec<half::bf16>]) -> Result<Vec<half::bf16>> {
        Ok(parts.iter().flat_map(|p| p.iter().copied()).collect())
    }
    fn available_memory(&self) -> Option<u64> {
        // Linux's estimate of what can be allocated without swapping; other systems: unknown.
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }
    fn copy_range(&self, storage: &Vec<T>, start: usize, len: usize) -> Result<Vec<T>> {
        Ok(storage[start..start + len].to_vec())
    }
    fn copy_range_bf16(
        &self,
        storage: &Vec<half::bf16>,
        start: usize,
        len: usize,
    ) -> Result<Vec<half::bf16>> {
        Ok(storage[start..start + len].to_vec())
    }
    fn copy_into(&self, dst: &mut Vec<T>, offset: usize, src: &Vec<T>) -> Result<()> {
        dst[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }
    fn copy_into_bf16(
        &self,
        dst: &mut Vec<half::bf16>,
        offset: usize,
        src: &Vec<half::bf16>,
    ) -> Result<()> {
        dst[offset..offset + src.len()].copy_from_slice(src);
        Ok(())
    }
    fn fill_zero(&self, storage: &mut Vec<T>) -> Result<()> {
        storage.iter_mut().for_each(|v| *v = T::zero());
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn upload_ids(&self, ids: &[u32]) -> Result<Vec<u32>> {
        Ok(ids.to_vec())
    }
    fn ids_len(ids: &Vec<u32>) -> usize {
        ids.len()
    }
    fn write_async(&self, dst: &mut Vec<T>, offset: usize, src: &[T]) -> Result<()> {
        dst[offset..][..src.len()].copy_from_slice(src);
        Ok(())
    }
    fn write_ids_async(&self, dst: &mut Vec<u32>, src: &[u32]) -> Result<()> {
        dst.copy_from_slice(src);
        Ok(())
    }
    fn stage_seeds(&self, _seeds: &[u64]) -> Result<()> {
        Ok(())
    }
    fn read_async(&self, src: &Vec<T>) -> Result<Vec<T>> {
        Ok(src.clone())
    }
    fn finish_read(&self, read: Vec<T>) -> Result<Vec<T>> {
        Ok(read)
    }
    fn can_capture(&self) -> bool {
        false
    }
    fn begin_capture(&self) -> Result<()> {
        Err(crate::error::Error::Config(
            "capturing a step into a graph needs the CUDA backend".into(),
        ))
    }
    fn end_capture(&self) -> Result<Self::Graph> {
        self.begin_capture()
            .map(|()| unreachable!("the CPU never captures"))
    }
    fn replay(&self, graph: &Self::Graph) -> Result<()> {
        match *graph {}
    }
}

/// `f` over every element, on rayon's threads when the slice is large.
pub(crate) fn map_par<A: Sync, R: Send>(x: &[A], f: impl Fn(&A) -> R + Sync + Send) -> Vec<R> {
    if x.len() >= PAR_MIN {
        x.par_iter().map(f).collect()
    } else {
        x.iter().map(f).collect()
    }
}

/// A row-major matrix operand: `data` holds `rows x cols` (before `transposed` is applied).
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub(crate) data: &'a [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) transposed: bool,
}

impl<T> MatRef<'_, T> {
    /// Rows and columns of op(M).
    fn op_dims(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }
    /// (row stride, column stride) of op(M) in elements.
    fn op_strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// `c[m,n] = op(a)[m,k] · op(b)[k,n] + beta * c`, row-major, `c` split across rayon threads.
pub(crate) fn gemm<T: Element>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], beta: T) {
    let (m, k) = a.op_dims();
    let (kb, n) = b.op_dims();
    assert_eq!(k, kb, "gemm inner dimensions");
    assert_eq!(c.len(), m * n, "gemm output size");
    assert_eq!(a.data.len(), a.rows * a.cols);
    assert_eq!(b.data.len(), b.rows * b.cols);
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = a.op_strides();
    let (rsb, csb) = b.op_strides();
    if m <= SMALL_M {
        return small_m_gemm([k, n], a, (rsa, csa), b, (rsb, csb), c, beta);
    }
    // One block per thread, cut along C's longer side: every block packs all of the other operand, so that
    // side's operand is the one packed twice, and the smaller one. (Blocks of rows of a short-and-wide C
    // each packed all of a large B: weight gradients spent more time packing than multiplying.)
    let threads = rayon::current_num_threads().max(1);
    let by_rows = m >= n;
    let side = if by_rows { m } else { n };
    let blocks = if m * n * k.max(1) < (1 << 18) {
        1
    } else {
        threads.min(side.div_ceil(32))
    };
    let per_block = side.div_ceil(blocks);
    let (a_ptr, b_ptr, c_ptr) = (
        a.data.as_ptr() as usize,
        b.data.as_ptr() as usize,
        c.as_mut_ptr() as usize,
    );
    (0..blocks).into_par_iter().for_each(|blk| {
        let start = blk * per_block;
        let len = per_block.min(side - start);
        let (rows, cols) = if by_rows { (len, n) } else { (m, len) };
        // SAFETY: the operands' views stay inside the slices checked above; block `blk` writes only its own
        // rows (or columns) of C, which no other block touches.
        unsafe {
            let (a_blk, b_blk, c_blk) = if by_rows {
                (
                    (a_ptr as *const T).offset(start as isize * rsa),
                    b_ptr as *const T,
                    (c_ptr as *mut T).add(start * n),
                )
            } else {
                (
                    a_ptr as *const T,
                    (b_ptr as *const T).offset(start as isize * csb),
                    (c_ptr as *mut T).add(start),
                )
            };
            T::gemm_strided(
                rows,
                k,
                cols,
                T::one(),
                a_blk,
                rsa,
                csa,
                b_blk,
                rsb,
                csb,
                beta,
                c_blk,
                n as isize,
                1,
            );
        }
    });
}

/// At most this many rows of C (incremental decoding: one position a sequence) skip matrixmultiply, whose
/// packing of all of B costs more than the product when A has so few rows.
const SMALL_M: usize = 4;

/// `gemm` for a C of at most `SMALL_M` rows, on the calling thread: by rows of op(B) added in order when they
/// are contiguous, else (B transposed, a weight) by dot products along `k` in eight interleaved partial sums.
fn small_m_gemm<T: Element>(
    [k, n]: [usize; 2],
    a: MatRef<T>,
    (rsa, csa): (isize, isize),
    b: MatRef<T>,
    (rsb, csb): (isize, isize),
    c: &mut [T],
    beta: T,
) {
    for (i, c_row) in c.chunks_exact_mut(n).enumerate() {
        // Row i of op(A): borrowed when contiguous (the usual activations), gathered otherwise.
        let a_row: std::borrow::Cow<[T]> = if csa == 1 {
            (&a.data[(i as isize * rsa) as usize..][..k]).into()
        } else {
            (0..k)
                .map(|p| a.data[(i as isize * rsa + p as isize * csa) as usize])
                .collect::<Vec<T>>()
                .into()
        };
        if beta == T::zero() {
            c_row.iter_mut().for_each(|v| *v = T::zero());
        } else {
            c_row.iter_mut().for_each(|v| *v = *v * beta);
        }
        if csb == 1 {
            for (p, &x) in a_row.iter().enumerate() {
                let row = &b.data[(p as isize * rsb) as usize..][..n];
                c_row.iter_mut().zip(row).for_each(|(v, &w)| *v += x * w);
            }
        } else {
            for (j, v) in c_row.iter_mut().enumerate() {
                *v += dot(&a_row, &b.data[(j as isize * csb) as usize..][..k]);
            }
        }
    }
}

/// `Σ x[p]·y[p]` in eight partial sums (lane p mod 8), added at the end: vectorisable, a fixed order.
fn dot<T: Element>(x: &[T], y: &[T]) -> T {
    const LANES: usize = 8;
    let mut acc = [T::zero(); LANES];
    let whole = x.len() / LANES * LANES;
    for (xs, ys) in x[..whole]
        .chunks_exact(LANES)
        .zip(y[..whole].chunks_exact(LANES))
    {
        for l in 0..LANES {
            acc[l] += xs[l] * ys[l];
        }
    }
    let tail = x[whole..]
        .iter()
        .zip(&y[whole..])
        .fold(T::zero(), |s, (&a, &b)| s + a * b);
    acc.iter().fold(T::zero(), |s, &v| s + v) + tail
}

/// Rows per parallel task for reductions over rows: fixed (not thread-count dependent) so that sums are
/// added in the same order on every machine, and runs are bit-reproducible.
pub(crate) const REDUCE_ROWS: usize = 64;

/// `acc[c] += Σ_r data[r, c]`: partial sums per block of rows, then added in block order (deterministic).
pub(crate) fn col_sum_into<T: Element>(acc: &mut [T], data: &[T], rows: usize, cols: usize) {
    debug_assert_eq!(data.len(), rows * cols);
    let partials: Vec<Vec<T>> = data
        .par_chunks(REDUCE_ROWS * cols.max(1))
        .map(|block| {
            let mut part = vec![T::zero(); cols];
            for row in block.chunks(cols) {
                part.iter_mut().zip(row).for_each(|(p, &v)| *p += v);
            }
            part
        })
        .collect();
    for part in partials {
        acc.iter_mut().zip(part).for_each(|(a, p)| *a += p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive_for_every_transpose() {
        let (m, k, n) = (203, 67, 41); // large enough to split across threads
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) - 5.0).collect();
        let mut want = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        let transpose = |x: &[f64], r: usize, c: usize| -> Vec<f64> {
            (0..c * r).map(|i| x[(i % r) * c + i / r]).collect()
        };
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a_ref = if ta {
                MatRef {
                    data: &at,
                    rows: k,
                    cols: m,
                    transposed: true,
                }
            } else {
                MatRef {
                    data: &a,
                    rows: m,
                    cols: k,
                    transposed: false,
                }
            };
            let b_ref = if tb {
                MatRef {
                    data: &bt,
                    rows: n,
                    cols: k,
                    transposed: true,
                }
            } else {
                MatRef {
                    data: &b,
                    rows: k,
                    cols: n,
                    transposed: false,
                }
            };
            let mut c = vec![1.0; m * n];
            gemm(a_ref, b_ref, &mut c, 1.0);
            for (x, w) in c.iter().zip(&want) {
                assert_eq!(*x, w + 1.0, "transposes {ta} {tb}");
            }
        }
    }
}
