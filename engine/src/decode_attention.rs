//! Decoding attention's inner kernels: one row's query heads that share a
//! kv head against a run of that head's keys (`scores`) and values
//! (`mix`). Every kernel gives each score and output the same bits
//! wherever its run of keys starts and whichever width runs it, so a
//! completion decodes to the same tokens alone and in a group, and on any
//! x86-64 CPU with AVX2.

use crate::kernels;

/// Defines a `mix` kernel for one register width (`$lanes` floats of
/// `$v`): up to three heads and `4·$lanes` outputs per pass over the
/// values; each output adds its keys in key order, continuing from `out`
/// when `add`. Both widths run the same chain per output, so they agree
/// bit for bit.
macro_rules! mix_kernel {
    ($(#[$attr:meta])* $name:ident, $features:literal, $v:ident, $lanes:literal,
     $load:ident, $store:ident, $zero:ident, $set1:ident, $fma:ident) => {
        $(#[$attr])*
        ///
        /// # Safety
        /// The CPU has `
        #[doc = $features]
        /// `; `d` is a multiple of four vectors.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $name(&self, p: &[f32], width: usize, col: usize, out: &mut [f32], add: bool) {
            use std::arch::x86_64::*;
            let (n, d, st) = (self.n, self.d, self.stride);
            let heads = out.len() / d;
            assert!(self.v.len() >= (n - 1) * st + d && col + n <= width && p.len() >= heads * width);
            // SAFETY: values `j < n`, dims `c < d` lie inside `self.v` and
            // the weights inside `p` (asserted above), the outputs inside
            // `out`.
            unsafe {
                let (v, o) = (self.v.as_ptr(), out.as_mut_ptr());
                macro_rules! pass {
                    ($hs:literal, $h0:expr, $c:expr) => {{
                        let (h0, c): (usize, usize) = ($h0, $c);
                        let at = |h: usize, i: usize| o.add((h0 + h) * d + c + $lanes * i);
                        let mut acc: [[$v; 4]; $hs] = std::array::from_fn(|h| {
                            std::array::from_fn(|i| if add { $load(at(h, i)) } else { $zero() })
                        });
                        let w = |h: usize, j: usize| *p.get_unchecked((h0 + h) * width + col + j);
                        for j in 0..n {
                            let wv: [$v; $hs] = std::array::from_fn(|h| $set1(w(h, j)));
                            for i in 0..4 {
                                let x = $load(v.add(j * st + c + $lanes * i));
                                for h in 0..$hs {
                                    acc[h][i] = $fma(wv[h], x, acc[h][i]);
                                }
                            }
                        }
                        for h in 0..$hs {
                            for i in 0..4 {
                                $store(at(h, i), acc[h][i]);
                            }
                        }
                        $hs
                    }};
                }
                for c in (0..d).step_by(4 * $lanes) {
                    let mut h0 = 0;
                    while h0 < heads {
                        h0 += match heads - h0 {
                            1 => pass!(1, h0, c),
                            2 => pass!(2, h0, c),
                            _ => pass!(3, h0, c),
                        };
                    }
                }
            }
        }
    };
}

/// One row's query heads that share a kv head, and that kv head's `n`
/// keys and values (row `j` at `j * stride`).
pub(crate) struct Group<'a> {
    /// `[heads, d]`.
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub stride: usize,
    pub n: usize,
    pub d: usize,
}

impl Group<'_> {
    /// `scores[h·width + col + j] = q_h · k_j · scale`.
    pub(crate) fn scores(&self, scale: f32, scores: &mut [f32], width: usize, col: usize) {
        #[cfg(target_arch = "x86_64")]
        if self.d.is_multiple_of(8) && crate::sgemm::supported() {
            // SAFETY: AVX2/FMA (and AVX-512 F where `wide`) present; shapes
            // as documented on `Group`.
            return unsafe { self.scores_simd(scale, scores, width, col, wide()) };
        }
        let d = self.d;
        for (qh, sh) in self.q.chunks_exact(d).zip(scores.chunks_exact_mut(width)) {
            for (j, s) in sh[col..col + self.n].iter_mut().enumerate() {
                *s = kernels::dot(qh, &self.k[j * self.stride..][..d]) * scale;
            }
        }
    }

    /// `out[h] (+)= Σ_j p[h·width + col + j] · v_j`, adding to `out` when
    /// `add` (the second run of keys).
    pub(crate) fn mix(&self, p: &[f32], width: usize, col: usize, out: &mut [f32], add: bool) {
        #[cfg(target_arch = "x86_64")]
        if self.d.is_multiple_of(64) && crate::sgemm::supported() && wide() {
            // SAFETY: AVX2/FMA/AVX-512 F present; shapes as documented on
            // `Group`.
            return unsafe { self.mix_avx512(p, width, col, out, add) };
        }
        #[cfg(target_arch = "x86_64")]
        if self.d.is_multiple_of(32) && crate::sgemm::supported() {
            // SAFETY: AVX2/FMA present; shapes as documented on `Group`.
            return unsafe { self.mix_avx2(p, width, col, out, add) };
        }
        let d = self.d;
        if !add {
            out.fill(0.0);
        }
        for (oh, ph) in out.chunks_exact_mut(d).zip(p.chunks_exact(width)) {
            for (j, &w) in ph[col..col + self.n].iter().enumerate() {
                for (o, &v) in oh.iter_mut().zip(&self.v[j * self.stride..][..d]) {
                    *o += w * v;
                }
            }
        }
    }

    /// [`Group::scores`] with SIMD, the heads in runs of up to three
    /// through [`Group::scores_heads`] (AVX2) or, when `wide`,
    /// [`Group::scores_heads_wide`] (AVX-512), after checking every access
    /// they make.
    ///
    /// # Safety
    /// AVX2 and FMA are present, and AVX-512 F when `wide`; `d` is a
    /// multiple of 8.
    #[cfg(target_arch = "x86_64")]
    unsafe fn scores_simd(&self, scale: f32, scores: &mut [f32], width: usize, col: usize, wide: bool) {
        let (n, d, st) = (self.n, self.d, self.stride);
        let heads = self.q.len() / d;
        assert!(self.k.len() >= (n - 1) * st + d && col + n <= width && scores.len() >= heads * width);
        let mut h0 = 0;
        while h0 < heads {
            // SAFETY: as asserted above; heads h0.. exist; the features as
            // the caller promised.
            unsafe {
                h0 += match (heads - h0, wide) {
                    (1, false) => self.scores_heads::<1>(h0, scale, scores, width, col),
                    (2, false) => self.scores_heads::<2>(h0, scale, scores, width, col),
                    (_, false) => self.scores_heads::<3>(h0, scale, scores, width, col),
                    (1, true) => self.scores_heads_wide::<1>(h0, scale, scores, width, col),
                    (2, true) => self.scores_heads_wide::<2>(h0, scale, scores, width, col),
                    (_, true) => self.scores_heads_wide::<3>(h0, scale, scores, width, col),
                };
            }
        }
    }

    /// Heads `h0..h0 + H` against four keys at a time (twelve multiply-adds
    /// per four key loads), one accumulator per head and key, each key's
    /// lanes added up in one fixed order (see [`reduce4`]), so a score
    /// does not depend on where its run of four keys starts; returns `H`.
    ///
    /// # Safety
    /// AVX2 and FMA are present; `scores_simd`'s assertion covers every
    /// access.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn scores_heads<const H: usize>(
        &self,
        h0: usize,
        scale: f32,
        scores: &mut [f32],
        width: usize,
        col: usize,
    ) -> usize {
        use std::arch::x86_64::*;
        let (n, d, st) = (self.n, self.d, self.stride);
        // SAFETY: keys `j < n` and dims `c < d` are inside `self.k`, heads
        // `h0 + h` inside `self.q`, writes inside their head's row.
        unsafe {
            let (k, q, sp) = (self.k.as_ptr(), self.q.as_ptr().add(h0 * d), scores.as_mut_ptr());
            let out = |h: usize, j: usize| sp.add((h0 + h) * width + col + j);
            let mut j = 0;
            while j < n {
                let keys = (n - j).min(4);
                // These keys' values, for `mix` after the softmax (once,
                // in the first run of heads).
                if h0 == 0 {
                    prefetch_rows(self.v, j..j + keys, st, d);
                }
                let mut a = [[_mm256_setzero_ps(); 4]; H];
                for c in (0..d).step_by(8) {
                    let qv: [__m256; H] = std::array::from_fn(|h| _mm256_loadu_ps(q.add(h * d + c)));
                    // Past the last key, the last key again (computed,
                    // never stored): the loop keeps a fixed trip count.
                    for r in 0..4 {
                        let kv = _mm256_loadu_ps(k.add((j + r).min(n - 1) * st + c));
                        for h in 0..H {
                            a[h][r] = _mm256_fmadd_ps(qv[h], kv, a[h][r]);
                        }
                    }
                }
                for h in 0..H {
                    store_scores(_mm_mul_ps(reduce4(a[h]), _mm_set1_ps(scale)), out(h, j), keys);
                }
                j += keys;
            }
        }
        H
    }

    mix_kernel!(
        /// Up to three heads and 32 outputs per pass over the values (twelve
        /// multiply-adds per four value loads). Each output adds its keys in
        /// key order, continuing from the earlier run's sums when `add`, so
        /// the order is that of one run over all keys.
        mix_avx2, "avx2,fma", __m256, 8,
        _mm256_loadu_ps, _mm256_storeu_ps, _mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps
    );

    mix_kernel!(
        /// [`Group::mix_avx2`] with 512-bit registers, 64 outputs per pass:
        /// each output lane goes through the same chain of FMAs, so the
        /// same bits in half the instructions.
        mix_avx512, "avx2,fma,avx512f", __m512, 16,
        _mm512_loadu_ps, _mm512_storeu_ps, _mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps
    );

    /// [`Group::scores_heads`] with 512-bit registers: two keys per
    /// register (eight dimensions of each), eight keys at a time. Each
    /// key's eight lanes are the AVX2 kernel's chains, added up in
    /// [`reduce4`]'s order by [`reduce4_wide`], so every score has the same
    /// bits.
    ///
    /// # Safety
    /// As for `scores_heads`, and AVX-512 F is present.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn scores_heads_wide<const H: usize>(
        &self,
        h0: usize,
        scale: f32,
        scores: &mut [f32],
        width: usize,
        col: usize,
    ) -> usize {
        use std::arch::x86_64::*;
        let (n, d, st) = (self.n, self.d, self.stride);
        // SAFETY: keys `j < n` and dims `c < d` are inside `self.k`, heads
        // `h0 + h` inside `self.q`, writes inside their head's row.
        unsafe {
            let (k, q, sp) = (self.k.as_ptr(), self.q.as_ptr().add(h0 * d), scores.as_mut_ptr());
            let out = |h: usize, j: usize| sp.add((h0 + h) * width + col + j);
            // Past the last key, the last key again (computed, never
            // stored), as in the AVX2 kernel.
            let key = |j: usize, c: usize| _mm256_loadu_ps(k.add(j.min(n - 1) * st + c));
            // Eight floats twice / two runs of eight as one register
            // (AVX-512 F has these only for 64-bit lanes).
            let both = |x: __m256| _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(x)));
            let pair = |lo: __m256, hi: __m256| {
                _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                    _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
                    _mm256_castps_pd(hi),
                ))
            };
            let mut j = 0;
            while j < n {
                let keys = (n - j).min(8);
                if h0 == 0 {
                    prefetch_rows(self.v, j..j + keys, st, d);
                }
                let mut a = [[_mm512_setzero_ps(); 4]; H];
                for c in (0..d).step_by(8) {
                    let qv: [__m512; H] = std::array::from_fn(|h| both(_mm256_loadu_ps(q.add(h * d + c))));
                    for r in 0..4 {
                        let kv = pair(key(j + 2 * r, c), key(j + 2 * r + 1, c));
                        for h in 0..H {
                            a[h][r] = _mm512_fmadd_ps(qv[h], kv, a[h][r]);
                        }
                    }
                }
                for h in 0..H {
                    for g in 0..2 {
                        let s = _mm_mul_ps(reduce4_wide(a[h][2 * g], a[h][2 * g + 1]), _mm_set1_ps(scale));
                        if keys > 4 * g {
                            store_scores(s, out(h, j + 4 * g), keys - 4 * g);
                        }
                    }
                }
                j += keys;
            }
        }
        H
    }
}

/// Asks for rows `rows` of `x` (row `j` at `j·stride`, `d` floats each)
/// in L1. The scores prefetch the values `mix` reads next: each (row, kv
/// head)'s values are one short pass that the hardware prefetcher does
/// not get ahead of, and the weights streaming through every step have
/// evicted them from the caches since the last. (Prefetching the next
/// keys as well cost the scores more than it saved.)
#[inline(always)]
pub(crate) fn prefetch_rows(x: &[f32], rows: std::ops::Range<usize>, stride: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // Rows past the end are dropped by one clamp up front: a test per
        // line was a fifth of the scores kernel's time on short contexts.
        let rows = rows.start..rows.end.min((x.len() + stride).saturating_sub(d) / stride.max(1));
        let lines = d.div_ceil(16);
        if stride == d {
            // Adjacent rows: one run of lines.
            let (from, to) = (rows.start * d, (rows.end * d).min(x.len()));
            for at in (from..to).step_by(16) {
                // SAFETY: a prefetch only hints; `at < x.len()`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().add(at).cast()) };
            }
            return;
        }
        for j in rows {
            for l in 0..lines {
                // SAFETY: a prefetch only hints; row `j` lies inside `x`
                // (clamped above), so every line of it does.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().add(j * stride + 16 * l).cast()) };
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (x, rows, stride, d);
}

/// Writes the first `count` (at most four, then all) of four scores.
///
/// # Safety
/// SSE is present (it is on x86-64); `dst` has room for `count.min(4)`.
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn store_scores(s: std::arch::x86_64::__m128, dst: *mut f32, count: usize) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        if count >= 4 {
            _mm_storeu_ps(dst, s);
        } else {
            let mut lanes = [0f32; 4];
            _mm_storeu_ps(lanes.as_mut_ptr(), s);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), dst, count);
        }
    }
}

/// The four scores of four keys' accumulators: each key's eight lanes
/// added as `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`.
///
/// # Safety
/// AVX2 is present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn reduce4(a: [std::arch::x86_64::__m256; 4]) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    let u = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1))
}

/// [`reduce4`] of the four keys in `x` (keys 0 and 1, eight lanes each)
/// and `y` (keys 2 and 3), in the same order of additions, so with the
/// same bits (floating-point addition commutes exactly). It stays in
/// 512-bit registers: `reduce4`'s `vhaddps` has no EVEX form, so feeding it
/// the halves would hold the accumulators to the first 16 registers, and
/// three heads' twelve would spill one to the stack on every step.
///
/// # Safety
/// AVX-512 F is present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn reduce4_wide(x: std::arch::x86_64::__m512, y: std::arch::x86_64::__m512) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    // Per 128-bit lane, as `hadd`: [x0+x1, x2+x3, y0+y1, y2+y3]. The lanes
    // hold keys 0|2, 0|2, 1|3, 1|3 (dims 0-3, 4-7 of each).
    let pairs = _mm512_add_ps(_mm512_shuffle_ps::<0b10_00_10_00>(x, y), _mm512_shuffle_ps::<0b11_01_11_01>(x, y));
    // (l0+l1)+(l2+l3) and (l4+l5)+(l6+l7) of each key, twice per lane.
    let quads = _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(pairs, pairs),
        _mm512_shuffle_ps::<0b11_01_11_01>(pairs, pairs),
    );
    // Each lane plus its neighbour: low dims + high dims of each key.
    let sums = _mm512_add_ps(quads, _mm512_shuffle_f32x4::<0b10_11_00_01>(quads, quads));
    // Keys 0, 1, 2, 3 sit in lanes 0, 2, 0, 2 at positions 0, 0, 1, 1.
    let order = _mm512_setr_epi32(0, 8, 1, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_castps512_ps128(_mm512_permutexvar_ps(order, sums))
}

/// Whether decoding attention runs its 512-bit kernels: where the CPU has
/// AVX-512 F and they gave the AVX2 kernels' bits on it, checked once.
#[cfg(target_arch = "x86_64")]
fn wide() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE
        .get_or_init(|| kernels::self_checked(kernels::avx512_present(), wide_agrees, "the 512-bit decoding attention"))
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only the x86-64 kernels use it
#[cfg(not(target_arch = "x86_64"))]
fn wide() -> bool {
    false
}

/// Runs both widths on the same random heads, keys and values, at key
/// counts around the vector widths, head dims of one and two passes, a
/// key stride wider than a key and both `add` modes, and compares bits.
/// False where the CPU lacks AVX-512 F.
#[cfg(target_arch = "x86_64")]
fn wide_agrees() -> bool {
    use rand::{Rng, SeedableRng};
    if !kernels::avx512_present() {
        return false;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x51f1_5eed_0bad_cafe);
    [64usize, 128].iter().all(|&d| {
        [1usize, 3, 4, 7, 8, 9, 17, 40].iter().all(|&n| {
            (1..=4usize).all(|heads| {
                let st = d + 16;
                let mut fill = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
                let (q, k, v) = (fill(heads * d), fill(n * st), fill(n * st));
                let group = Group { q: &q, k: &k, v: &v, stride: st, n, d };
                let (width, col) = (n + 5, 3);
                let (mut narrow, mut wide) = (vec![0f32; heads * width], vec![0f32; heads * width]);
                let start = fill(heads * d);
                // SAFETY: AVX2, FMA and AVX-512 F checked above; `d` is a
                // multiple of 64, the buffers sized as `Group` documents.
                unsafe {
                    group.scores_simd(0.125, &mut narrow, width, col, false);
                    group.scores_simd(0.125, &mut wide, width, col, true);
                }
                let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                same(&narrow, &wide)
                    && [false, true].into_iter().all(|add| {
                        let (mut o1, mut o2) = (start.clone(), start.clone());
                        // SAFETY: as above.
                        unsafe {
                            group.mix_avx2(&narrow, width, col, &mut o1, add);
                            group.mix_avx512(&narrow, width, col, &mut o2, add);
                        }
                        same(&o1, &o2)
                    })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_kernels_run_only_where_they_agree() {
        #[cfg(target_arch = "x86_64")]
        {
            let present = kernels::avx512_present();
            if present {
                assert!(wide_agrees(), "the 512-bit decoding attention differs from the AVX2 one");
            }
            assert_eq!(wide(), present);
        }
    }

    #[test]
    fn scores_and_mix_match_plain_sums() {
        // Three heads of 64 over 11 keys at a stride wider than a key.
        let (heads, d, n, st) = (3usize, 64usize, 11usize, 80usize);
        let val = |i: usize, s: usize| ((i * 37 + s * 11) % 23) as f32 / 23.0 - 0.5;
        let q: Vec<f32> = (0..heads * d).map(|i| val(i, 1)).collect();
        let k: Vec<f32> = (0..n * st).map(|i| val(i, 2)).collect();
        let v: Vec<f32> = (0..n * st).map(|i| val(i, 3)).collect();
        let group = Group { q: &q, k: &k, v: &v, stride: st, n, d };
        let (width, col) = (n + 2, 1);
        let mut scores = vec![0f32; heads * width];
        group.scores(0.5, &mut scores, width, col);
        let mut out = vec![1f32; heads * d];
        group.mix(&scores, width, col, &mut out, true);
        for h in 0..heads {
            let mut want_out = vec![1f64; d];
            for j in 0..n {
                let s: f64 = (0..d).map(|c| q[h * d + c] as f64 * k[j * st + c] as f64).sum::<f64>() * 0.5;
                assert!((scores[h * width + col + j] as f64 - s).abs() < 1e-5, "head {h} key {j}");
                for c in 0..d {
                    want_out[c] += scores[h * width + col + j] as f64 * v[j * st + c] as f64;
                }
            }
            for c in 0..d {
                assert!((out[h * d + c] as f64 - want_out[c]).abs() < 1e-5, "head {h} dim {c}");
            }
        }
    }
}
