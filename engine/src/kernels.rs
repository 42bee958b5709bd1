//! Fused CPU kernels for inference in f32. Each replaces a chain of
//! candle ops that would make several passes over a large buffer (scale,
//! mask, max, exp, sum, divide); none has a backward pass, so training
//! graphs use the plain-op versions in `model` and `logprobs` instead.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// `exp` for the whole slice, in place. A degree-6 polynomial for 2^f on
/// [-0.5, 0.5] plus exponent bits: relative error about 1e-6 + 1e-7·|x|
/// (x·log2(e) is rounded in f32; softmax inputs far below the maximum
/// barely count) and, unlike libm's `expf`, vectorised by the compiler.
/// Round to nearest (ties to even) for |x| < 2^22 by adding and removing
/// 1.5·2^23: plain adds, so loops around it vectorise, where `f32::round`
/// is a libm call on baseline x86-64.
#[inline(always)]
fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

#[inline(always)]
fn exp_in_place_portable(xs: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    for x in xs.iter_mut() {
        // Below -87 the result is a denormal or zero; clamp keeps the
        // exponent arithmetic in range and yields ~0.
        let v = x.clamp(-87.3, 88.0) * LOG2E;
        let n = round_small(v);
        let f = v - n;
        // 2^f by its Taylor series in f*ln2 (Horner form).
        let p = 1.0
            + f * (std::f32::consts::LN_2
                + f * (0.240_226_5
                    + f * (0.055_504_11 + f * (0.009_618_129 + f * (0.001_333_355_8 + f * 0.000_154_035_3)))));
        let bits = ((n as i32 + 127) as u32) << 23;
        *x = p * f32::from_bits(bits);
    }
}

/// Eight lanes of the same `exp` as [`exp_in_place_portable`] (FMA in the
/// polynomial, so the last bit can differ).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.0));
    let v = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    let f = _mm256_sub_ps(v, n);
    let mut p = _mm256_set1_ps(0.000_154_035_3);
    for c in [0.001_333_355_8, 0.009_618_129, 0.055_504_11, 0.240_226_5, std::f32::consts::LN_2, 1.0] {
        p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

/// `dst[i] = exp((src[i] - shift) * scale)` for `len` elements (no store
/// when `dst` is null; `dst` may equal `src`), returning the sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sum_avx2(src: *const f32, dst: *mut f32, len: usize, shift: f32, scale: f32) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: the caller passes `len` readable floats at `src` and, unless
    // null, `len` writable ones at `dst`.
    unsafe {
        let (vs, vm) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= len {
            let e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(src.add(i)), vs), vm));
            if !dst.is_null() {
                _mm256_storeu_ps(dst.add(i), e);
            }
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        // The last few values through one padded `exp8` too: one vector
        // pass instead of up to seven scalar ones, which in decoding
        // attention's short rows of scores (tens of keys) cost as much
        // as the vector part. Every value is then `exp8`'s bits.
        let rest = len - i;
        let mut tail = [0f32; 8];
        std::ptr::copy_nonoverlapping(src.add(i), tail.as_mut_ptr(), rest);
        let e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), vs), vm));
        _mm256_storeu_ps(tail.as_mut_ptr(), e);
        if !dst.is_null() {
            std::ptr::copy_nonoverlapping(tail.as_ptr(), dst.add(i), rest);
        }
        lanes.iter().sum::<f32>() + tail[..rest].iter().sum::<f32>()
    }
}

/// Sixteen lanes of [`exp8`]'s operations, so each value is the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
#[inline]
unsafe fn exp16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3)), _mm512_set1_ps(88.0));
    let v = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
    let f = _mm512_sub_ps(v, n);
    let mut p = _mm512_set1_ps(0.000_154_035_3);
    for c in [0.001_333_355_8, 0.009_618_129, 0.055_504_11, 0.240_226_5, std::f32::consts::LN_2, 1.0] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
    _mm512_mul_ps(p, _mm512_castsi512_ps(bits))
}

/// [`exp_sum_avx2`] sixteen values at a time: every value is the same
/// bits as there (the last fifteen or fewer go through that function
/// itself); the sum adds them in another
/// order. The softmax over a 49,152-token vocabulary is a pass like this
/// per scored position and per sampled token.
///
/// # Safety
/// As for [`exp_sum_avx2`], and the CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn exp_sum_avx512(src: *const f32, dst: *mut f32, len: usize, shift: f32, scale: f32) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: as for exp_sum_avx2.
    unsafe {
        let (vs, vm) = (_mm512_set1_ps(shift), _mm512_set1_ps(scale));
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= len {
            let e = exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(src.add(i)), vs), vm));
            if !dst.is_null() {
                _mm512_storeu_ps(dst.add(i), e);
            }
            acc = _mm512_add_ps(acc, e);
            i += 16;
        }
        let sum = _mm512_reduce_add_ps(acc);
        let rest = if dst.is_null() {
            exp_sum_avx2(src.add(i), dst, len - i, shift, scale)
        } else {
            exp_sum_avx2(src.add(i), dst.add(i), len - i, shift, scale)
        };
        sum + rest
    }
}

/// Whether [`exp_sum`] runs sixteen lanes: the CPU has AVX-512 F and the
/// 16-lane `exp` gave the 8-lane one's bits on a test range (checked
/// once).
#[cfg(target_arch = "x86_64")]
fn wide_exp() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| self_checked(avx512_present(), wide_exp_agrees, "the 16-lane exp"))
}

/// Whether a kernel that the CPU can run (`present`) may be used: only if
/// its self-check (`agrees`, run only then) passes; a failed check is
/// logged and the caller keeps the kernel it would otherwise use.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the x86-64 kernels use it
pub(crate) fn self_checked(present: bool, agrees: impl FnOnce() -> bool, what: &str) -> bool {
    if present {
        if agrees() {
            return true;
        }
        tracing::warn!("{what} disagrees with the AVX2 kernel on this CPU; not using it");
    }
    false
}

/// Whether the CPU has AVX-512 F besides the AVX2 and FMA every vector
/// kernel needs: where the 512-bit f32 kernels (the matmul, `exp`,
/// decoding attention) may run, once their self-checks pass.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512_present() -> bool {
    fast_exp() && std::is_x86_feature_detected!("avx512f")
}

/// Compares [`exp_sum_avx512`] with [`exp_sum_avx2`] on values from far
/// below the clamp to the top of the range, at lengths around the vector
/// widths: the values bit for bit, the sums to rounding. False where the
/// CPU lacks AVX-512 F.
#[cfg(target_arch = "x86_64")]
fn wide_exp_agrees() -> bool {
    if !avx512_present() {
        return false;
    }
    // From below the lower clamp (-87.3 after shift and scale) to e^62,
    // shuffled so that short prefixes span the range too, and one value
    // past the upper clamp (e^88): the sums stay finite.
    let mut xs: Vec<f32> = (0..301).map(|i| ((i * 37) % 301) as f32 * 0.5 - 100.0).collect();
    xs[20] = 80.0;
    [0, 7, 8, 15, 16, 17, 24, 31, 40, 301].iter().all(|&len| {
        let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
        // SAFETY: AVX2, FMA and AVX-512 F were checked above; `xs` holds
        // `len` values, `a` and `b` room for them.
        let (sa, sb) = unsafe {
            (
                exp_sum_avx2(xs.as_ptr(), a.as_mut_ptr(), len, 0.5, 1.25),
                exp_sum_avx512(xs.as_ptr(), b.as_mut_ptr(), len, 0.5, 1.25),
            )
        };
        // The sums add the same values in another order.
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()) && (sa - sb).abs() <= 1e-4 * sa.abs()
    })
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the x86-64 kernels use it
fn fast_exp() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn exp_in_place(xs: &mut [f32]) {
    exp_sum(xs, 0.0, 1.0);
}

/// `dst[i] = exp((src[i] - shift) * scale)` for `len` values (nothing
/// stored when `dst` is null; `dst` may be `src`) on the vector kernels,
/// and their sum; `None` where the CPU has none.
///
/// # Safety
/// `src` is readable for `len` floats and `dst`, unless null, writable
/// for as many.
unsafe fn exp_sum_vector(src: *const f32, dst: *mut f32, len: usize, shift: f32, scale: f32) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if fast_exp() {
        // SAFETY: the features the functions were compiled for are
        // present; the buffers as the caller promised.
        return Some(unsafe {
            if wide_exp() {
                exp_sum_avx512(src, dst, len, shift, scale)
            } else {
                exp_sum_avx2(src, dst, len, shift, scale)
            }
        });
    }
    let _ = (src, dst, len, shift, scale);
    None
}

/// `xs[i] = exp((xs[i] - shift) * scale)` in place; returns the sum (a
/// softmax's numerator and denominator in one pass).
pub(crate) fn exp_sum(xs: &mut [f32], shift: f32, scale: f32) -> f32 {
    let p = xs.as_mut_ptr();
    // SAFETY: source and destination are `xs`.
    if let Some(sum) = unsafe { exp_sum_vector(p, p, xs.len(), shift, scale) } {
        return sum;
    }
    for x in xs.iter_mut() {
        *x = (*x - shift) * scale;
    }
    exp_in_place_portable(xs);
    sum_of(xs)
}

/// [`exp_sum`] of `src` written to the front of `dst` (a sampler's
/// probabilities from the logits, without copying them first).
pub(crate) fn exp_sum_to(src: &[f32], dst: &mut [f32], shift: f32, scale: f32) -> f32 {
    let dst = &mut dst[..src.len()];
    // SAFETY: `src` and `dst` hold `src.len()` floats each.
    if let Some(sum) = unsafe { exp_sum_vector(src.as_ptr(), dst.as_mut_ptr(), src.len(), shift, scale) } {
        return sum;
    }
    dst.copy_from_slice(src);
    exp_sum(dst, shift, scale)
}

/// `Σ exp((x - shift) * scale)` over `xs`, which is only read.
pub(crate) fn sum_exp(xs: &[f32], shift: f32, scale: f32) -> f32 {
    // SAFETY: `xs` holds its length in floats; nothing is stored.
    if let Some(sum) = unsafe { exp_sum_vector(xs.as_ptr(), std::ptr::null_mut(), xs.len(), shift, scale) } {
        return sum;
    }
    let mut tmp: Vec<f32> = xs.to_vec();
    exp_sum(&mut tmp, shift, scale)
}

/// The largest value of `xs` (NaNs skipped, like `f32::max`; `-inf` when
/// empty). Every softmax over the vocabulary starts with it.
pub(crate) fn max_of(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fast_exp() {
        // SAFETY: AVX2 is present.
        return unsafe { max_of_avx2(xs) };
    }
    // Eight lanes so the compiler keeps independent maxima in registers.
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] = lanes[i].max(c[i]);
        }
    }
    let mut m = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for l in lanes {
        m = m.max(l);
    }
    m
}

/// [`max_of`] with AVX2: `f32::max` compiles to a compare and a blend
/// per vector for its NaN rule, `maxps(x, m)` gives `m` when `x` is NaN.
///
/// # Safety
/// AVX2 is present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_of_avx2(xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
    let mut chunks = xs.chunks_exact(32);
    for c in &mut chunks {
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: the chunk holds 32 values.
            *a = _mm256_max_ps(unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * i)) }, *a);
        }
    }
    let mut eights = chunks.remainder().chunks_exact(8);
    for c in &mut eights {
        // SAFETY: the chunk holds 8 values.
        acc[0] = _mm256_max_ps(unsafe { _mm256_loadu_ps(c.as_ptr()) }, acc[0]);
    }
    let m = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
    lanes.into_iter().chain(eights.remainder().iter().copied()).fold(f32::NEG_INFINITY, f32::max)
}

/// `Σ x²` in eight interleaved partial sums (a plain sum is one long
/// chain of dependent adds).
pub(crate) fn sum_sq(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] += c[i] * c[i];
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|v| v * v).sum::<f32>()
}

pub(crate) fn sum_of(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Below this many elements a kernel runs on the calling thread: a decode
/// step's few short rows finish before work could be handed out.
const PARALLEL_MIN_ELEMS: usize = 1 << 16;

/// Runs `f(first_row, rows)` over blocks of rows with rayon. Work stealing
/// matters on a busy machine: a spin barrier waits for a descheduled
/// worker, while rayon lets the calling thread take the work back.
fn parallel_rows<F>(out: &mut [f32], row_len: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    use rayon::prelude::*;
    let rows = out.len() / row_len.max(1);
    if out.len() < PARALLEL_MIN_ELEMS || rows < 2 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
    out.par_chunks_mut(per * row_len).enumerate().for_each(|(i, block)| f(i * per, block));
}

/// Softmax of attention scores `[.., rows, keys]` with the scale and the
/// causal/padding mask applied inside. Row `r` belongs to batch row
/// `r / rows_per_batch` and query column `query_start + r % queries`; it
/// sees keys `min(pad, col)..=col` (a padding query sees only itself, so
/// no row is empty).
#[derive(Debug, Clone)]
pub(crate) struct CausalSoftmax {
    pub scale: f32,
    pub rows_per_batch: usize,
    pub queries: usize,
    pub query_start: usize,
    pub left_pad: Vec<usize>,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(src) = storage else {
            candle_core::bail!("causal-softmax: f32 only");
        };
        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("causal-softmax: input must be contiguous");
        };
        let src = &src[o1..o2];
        let dims = layout.shape().dims();
        let keys = *dims.last().unwrap_or(&1);
        let mut dst = vec![0f32; src.len()];
        parallel_rows(&mut dst, keys, |first, block| {
            for (i, out) in block.chunks_mut(keys).enumerate() {
                let r = first + i;
                let batch = r / self.rows_per_batch;
                let col = self.query_start + r % self.queries;
                let pad = self.left_pad.get(batch).copied().unwrap_or(0);
                let lo = pad.min(col);
                let hi = (col + 1).min(keys);
                let s = &src[r * keys + lo..r * keys + hi];
                let o = &mut out[lo..hi];
                let max = max_of(s) * self.scale;
                for (d, &x) in o.iter_mut().zip(s) {
                    *d = x * self.scale - max;
                }
                exp_in_place(o);
                let inv = 1.0 / sum_of(o);
                for d in o.iter_mut() {
                    *d *= inv;
                }
            }
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// `log_softmax(logits / τ)[target]` for each row of `logits: [n, vocab]`
/// (CPU, f32), in one pass over the logits.
pub(crate) fn select_logprobs_cpu(logits: &Tensor, targets: &[u32], temperature: f32) -> candle_core::Result<Vec<f32>> {
    let logits = logits.contiguous()?;
    let (n, vocab) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!("{} targets for {n} rows", targets.len());
    }
    let (storage, layout) = logits.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("select_logprobs_cpu: f32 CPU logits only");
    };
    let data = &data[layout.start_offset()..layout.start_offset() + n * vocab];
    let inv_t = 1.0 / temperature;
    let mut out = vec![0f32; n];
    use rayon::prelude::*;
    out.par_iter_mut().enumerate().for_each_init(
        || vec![0f32; vocab],
        |scratch, (r, o)| {
            let row = &data[r * vocab..(r + 1) * vocab];
            let max = max_of(row) * inv_t;
            for (d, &x) in scratch.iter_mut().zip(row) {
                *d = x * inv_t - max;
            }
            exp_in_place(scratch);
            let log_norm = (sum_of(scratch) as f64).ln() as f32;
            *o = row[targets[r] as usize] * inv_t - max - log_norm;
        },
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_lane_exp_runs_only_where_it_agrees() {
        #[cfg(target_arch = "x86_64")]
        {
            let present = avx512_present();
            if present {
                assert!(wide_exp_agrees(), "the 16-lane exp differs from the 8-lane one");
            }
            assert_eq!(wide_exp(), present);
        }
    }

    #[test]
    fn max_of_matches_a_fold_and_skips_nans() {
        let xs: Vec<f32> = (0..203).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37).collect();
        for len in [0, 1, 7, 8, 9, 31, 32, 33, 70, 203] {
            let want = xs[..len].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_of(&xs[..len]), want, "len {len}");
        }
        // The largest value in each position class (vector body, tail of
        // eights, scalar tail), next to NaNs.
        for at in [3, 40, 200] {
            let mut v = xs.clone();
            v[at] = 1e9;
            let next = (at + 1) % v.len();
            v[next] = f32::NAN;
            v[0] = f32::NAN;
            assert_eq!(max_of(&v), 1e9, "max at {at}");
        }
        assert_eq!(max_of(&[f32::NAN; 9]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_sum_to_is_exp_sum_of_a_copy() {
        let xs: Vec<f32> = (0..203).map(|i| (i as f32 * 0.37).sin() * 20.0).collect();
        for len in [0, 5, 8, 16, 37, 203] {
            let mut copy = xs[..len].to_vec();
            let want = exp_sum(&mut copy, 3.0, 1.5);
            let mut dst = vec![f32::NAN; len + 3];
            assert_eq!(exp_sum_to(&xs[..len], &mut dst, 3.0, 1.5).to_bits(), want.to_bits());
            assert_eq!(dst[..len], copy[..]);
            assert!(dst[len..].iter().all(|v| v.is_nan()), "nothing past the source's length");
        }
    }

    #[test]
    fn sum_sq_matches_f64() {
        let xs: Vec<f32> = (0..577).map(|i| (i as f32 * 0.61).sin() * 3.0).collect();
        for len in [0, 5, 8, 576, 577] {
            let want: f64 = xs[..len].iter().map(|&v| v as f64 * v as f64).sum();
            assert!((sum_sq(&xs[..len]) as f64 - want).abs() <= 1e-5 * want.max(1.0), "len {len}");
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut xs: Vec<f32> = (-2000..=800).map(|i| i as f32 * 0.05).collect();
        let expected: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        exp_in_place(&mut xs);
        for (got, want) in xs.iter().zip(&expected) {
            if *want > 1e-30 {
                let x = want.ln();
                let tol = 1e-6 + 1e-7 * x.abs();
                assert!(((got - want) / want).abs() < tol, "exp({x}): {got} vs {want}");
            } else {
                assert!(*got < 1e-30);
            }
        }
    }

    #[test]
    fn causal_softmax_matches_plain_ops() {
        use candle_core::{D, Device};
        let dev = Device::Cpu;
        // batch 2 (pads 0 and 2), 2 heads, 3 queries after 1 cached column.
        let (b, h, t, past) = (2, 2, 3, 1);
        let total = past + t;
        let scores = Tensor::randn(0f32, 3.0, (b, h * t, total), &dev).unwrap();
        let op =
            CausalSoftmax { scale: 0.5, rows_per_batch: h * t, queries: t, query_start: past, left_pad: vec![0, 2] };
        let fused = scores.apply_op1_no_bwd(&op).unwrap().to_vec3::<f32>().unwrap();
        let plain = candle_nn::ops::softmax(&(scores * 0.5).unwrap(), D::Minus1).unwrap();
        let s = (scores_plain_mask(&plain, &[0, 2], h, t, past)).unwrap();
        for (bi, rows) in fused.iter().enumerate() {
            for (ri, row) in rows.iter().enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    assert!((v - s[bi][ri][k]).abs() < 1e-5, "b{bi} r{ri} k{k}: {v} vs {}", s[bi][ri][k]);
                }
            }
        }

        // Reference: renormalise the plain softmax over the visible keys.
        fn scores_plain_mask(
            p: &Tensor,
            pads: &[usize],
            h: usize,
            t: usize,
            past: usize,
        ) -> candle_core::Result<Vec<Vec<Vec<f32>>>> {
            let mut v = p.to_vec3::<f32>()?;
            for (bi, rows) in v.iter_mut().enumerate() {
                for (ri, row) in rows.iter_mut().enumerate() {
                    let col = past + ri % t;
                    let lo = pads[bi].min(col);
                    for (k, x) in row.iter_mut().enumerate() {
                        if k < lo || k > col {
                            *x = 0.0;
                        }
                    }
                    let s: f32 = row.iter().sum();
                    row.iter_mut().for_each(|x| *x /= s);
                }
                let _ = h;
            }
            Ok(v)
        }
    }
}

pub(crate) use crate::quant::{Q4MatMul, Q4Matrix, Q8MatMul, Q8Matrix};

/// Attention for one new query column per row (decoding), CPU f32:
/// `q: [b, heads, 1, d]` contiguous, `k`, `v`: `[b, kv_heads, T, d]` with
/// any outer strides (views into the KV cache). Row `r` sees keys
/// `left_pad[r]..T`. One pass per head instead of two tiny gemm calls, a
/// softmax op and the reshapes around them.
#[derive(Debug, Clone)]
pub(crate) struct DecodeAttention {
    pub scale: f32,
    pub left_pad: Vec<usize>,
}

impl candle_core::CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (sq, sk, sv) else {
            candle_core::bail!("decode-attention: f32 only");
        };
        let (b, nh, one, d) = lq.shape().dims4()?;
        let (kb, nkv, total, kd) = lk.shape().dims4()?;
        if one != 1 || kb != b || kd != d || lv.shape() != lk.shape() || nh % nkv != 0 {
            candle_core::bail!("decode-attention: bad shapes {:?} {:?} {:?}", lq.shape(), lk.shape(), lv.shape());
        }
        let Some((q0, _)) = lq.contiguous_offsets() else {
            candle_core::bail!("decode-attention: q must be contiguous");
        };
        let ks = lk.stride();
        let vs = lv.stride();
        // A length-1 axis may carry any stride.
        let rows_packed = |st: &[usize]| st[3] == 1 && (total == 1 || st[2] == d);
        if !rows_packed(ks) || !rows_packed(vs) {
            candle_core::bail!("decode-attention: k/v rows must be contiguous");
        }
        let groups = nh / nkv;
        let mut out = vec![0f32; b * nh * d];
        let head = |bh: usize, o: &mut [f32], scores: &mut Vec<f32>| {
            let (bi, h) = (bh / nh, bh % nh);
            let kvh = h / groups;
            let qrow = &q[q0 + bh * d..q0 + (bh + 1) * d];
            let kbase = lk.start_offset() + bi * ks[0] + kvh * ks[1];
            let vbase = lv.start_offset() + bi * vs[0] + kvh * vs[1];
            let lo = self.left_pad.get(bi).copied().unwrap_or(0).min(total - 1);
            scores.clear();
            for j in lo..total {
                let krow = &k[kbase + j * d..kbase + (j + 1) * d];
                scores.push(dot(qrow, krow) * self.scale);
            }
            let max = max_of(scores);
            for s in scores.iter_mut() {
                *s -= max;
            }
            exp_in_place(scores);
            let inv = 1.0 / sum_of(scores);
            o.fill(0.0);
            for (j, &p) in (lo..total).zip(scores.iter()) {
                let vrow = &v[vbase + j * d..vbase + (j + 1) * d];
                let w = p * inv;
                for (oi, &vi) in o.iter_mut().zip(vrow) {
                    *oi += w * vi;
                }
            }
        };
        if b * nh * total * d < PARALLEL_MIN_ELEMS * 4 {
            let mut scores = Vec::with_capacity(total);
            for (bh, o) in out.chunks_mut(d).enumerate() {
                head(bh, o, &mut scores);
            }
        } else {
            use rayon::prelude::*;
            out.par_chunks_mut(d)
                .enumerate()
                .for_each_init(|| Vec::with_capacity(total), |scores, (bh, o)| head(bh, o, scores));
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[b, nh, 1, d])))
    }
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}
