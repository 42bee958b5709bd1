//! Quantized matrices on the CPU: GGUF Q4_1 and 8-bit (Q8_0) weights
//! against activations quantized to 8 bits per block of 32, as in
//! llama.cpp's `Q4_1 × Q8_1` and `Q8_0 × Q8_0` dot products (AVX2).
//!
//! The layouts differ from the file's so that the inner loop does little
//! besides the multiply-adds:
//! - Q4_1 nibbles are stored two blocks per 32 bytes (block `2p` in the
//!   low nibbles, block `2p + 1` in the high ones, each in value order),
//!   so one 32-byte load and three ops unpack two blocks; the f16 scales
//!   are widened to f32.
//! - The Q4_1 min term `m·da·Σa` of each block is left out of the inner
//!   loop: each output adds `Σ_b m_b·(da·Σa)_b` as one FMA per eight
//!   blocks into its accumulator before the final horizontal sum (mins
//!   and activation sums are padded to eight blocks). As a scalar chain
//!   per output it cost as much as the dot products on 576-wide rows.
//! - A kernel call computes a tile of `W` weight rows × `A` activation
//!   rows: 4×1 for one row (decoding), 1×8 for batches, where each weight
//!   block is unpacked once for eight rows and the accumulators, unpacked
//!   weights and scales fit the sixteen AVX2 registers (2×4 spills and
//!   runs at half the speed).
//! - The f16 scales and mins stay f16 in memory (20 bytes per Q4_1 block,
//!   as in the file: decoding one row is bound by memory bandwidth) and
//!   are widened with F16C per tile; each tile prefetches the next one's
//!   rows, which a plain stream of multiply-adds does not keep the memory
//!   system busy enough to do by itself.
//!
//! Every output is computed by the same sequence of operations whatever
//! the tile, so a row's result does not depend on the other rows of its
//! batch.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Values per quantization block, as in GGML's Q8_0.
pub(crate) const Q8_BLOCK: usize = 32;

/// Bytes of GGUF's Q4_1 block: f16 scale, f16 min, 16 bytes of nibbles
/// (low nibbles hold values 0..16, high nibbles 16..32).
const Q4_1_BLOCK_BYTES: usize = 20;
/// Bytes of GGUF's Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BLOCK_BYTES: usize = 34;

/// Whether this CPU runs the kernels (AVX2 with FMA and F16C).
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Round to nearest (ties to even) for |x| < 2^22, see `kernels`.
#[inline(always)]
fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Quantizes `xs` (a multiple of 32 long) into `qs` and per-block scales,
/// rounding to nearest within [-127, 127]: -128 is avoided so that the
/// sign trick in the dot product cannot overflow.
fn quantize_blocks(xs: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    for ((x, q), d) in xs.chunks_exact(Q8_BLOCK).zip(qs.chunks_exact_mut(Q8_BLOCK)).zip(scales.iter_mut()) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (qi, &xi) in q.iter_mut().zip(x) {
            *qi = round_small(xi * inv).clamp(-127.0, 127.0) as i8;
        }
        *d = scale;
    }
}

/// IEEE half to f32 (GGUF block scales are little-endian f16); the
/// kernels convert with F16C.
#[cfg(test)]
fn f16_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exp = ((bits >> 10) & 0x1f) as u32;
    let frac = (bits & 0x3ff) as u32;
    let out = match exp {
        0 if frac == 0 => sign,
        // Subnormal: value = frac * 2^-24.
        0 => {
            let v = frac as f32 * 2f32.powi(-24);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(out)
}

/// Activations `[m, k]` quantized per block of 32, each row padded with
/// zero blocks to `kb` blocks.
struct Acts {
    qs: Vec<i8>,
    scales: Vec<f32>,
    /// `Σa · da` per block, `[m, mb]` (zero past the real blocks): the
    /// Q4_1 min term's factor.
    sums: Vec<f32>,
    /// For batches: the blocks and scales transposed, `[kb, mt, 32]` and
    /// `[kb, mt]` with `mt` = m rounded up to 8 (zero-padded), so that a
    /// batch kernel finds a block of eight rows at fixed offsets and their
    /// scales in one load.
    qs_t: Vec<i8>,
    scales_t: Vec<f32>,
    mt: usize,
}

impl Acts {
    fn new(x: &[f32], m: usize, k: usize, kb: usize, with_sums: bool) -> Self {
        let real = k / Q8_BLOCK;
        let mut qs = vec![0i8; m * kb * Q8_BLOCK];
        let mut scales = vec![0f32; m * kb];
        for r in 0..m {
            quantize_blocks(&x[r * k..(r + 1) * k], &mut qs[r * kb * Q8_BLOCK..][..k], &mut scales[r * kb..][..real]);
        }
        let mb = real.next_multiple_of(8);
        let mut sums = Vec::new();
        if with_sums {
            sums = vec![0f32; m * mb];
            for r in 0..m {
                for b in 0..real {
                    let q = &qs[(r * kb + b) * Q8_BLOCK..][..Q8_BLOCK];
                    sums[r * mb + b] = q.iter().map(|&v| v as i32).sum::<i32>() as f32 * scales[r * kb + b];
                }
            }
        }
        let mt = m.next_multiple_of(8);
        let (mut qs_t, mut scales_t) = (Vec::new(), Vec::new());
        if m > 1 {
            qs_t = vec![0i8; kb * mt * Q8_BLOCK];
            scales_t = vec![0f32; kb * mt];
            for r in 0..m {
                for b in 0..kb {
                    scales_t[b * mt + r] = scales[r * kb + b];
                    qs_t[(b * mt + r) * Q8_BLOCK..][..Q8_BLOCK]
                        .copy_from_slice(&qs[(r * kb + b) * Q8_BLOCK..][..Q8_BLOCK]);
                }
            }
        }
        Self { qs, scales, sums, qs_t, scales_t, mt }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint elements from pool workers.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

impl SendPtr {
    // A method, so closures capture the whole (Sync) wrapper rather than
    // its raw-pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Weight rows × activation rows per kernel call.
const DECODE_TILE: (usize, usize) = (4, 1);
const BATCH_TILE: (usize, usize) = (1, 8);

/// Runs `chunk(w0, w1)` over ranges of weight rows (multiples of `tw`) in
/// parallel: each task reads its rows of the weight once.
fn run_chunks<F: Fn(usize, usize) + Sync>(n: usize, tw: usize, chunk: F) {
    use rayon::prelude::*;
    let tiles = n.div_ceil(tw);
    let per = tiles.div_ceil(rayon::current_num_threads() * 4).max(1) * tw;
    let chunks = n.div_ceil(per);
    if chunks <= 1 {
        chunk(0, n);
    } else {
        (0..chunks).into_par_iter().for_each(|c| chunk(c * per, ((c + 1) * per).min(n)));
    }
}

/// Calls `tile(w, a, W, A)` over the tiles of weight rows `w0..w1` and all
/// `m` activation rows, with full tiles of the shape for this `m` and
/// smaller ones at the edges.
fn for_tiles(w0: usize, w1: usize, m: usize, mut tile: impl FnMut(usize, usize, usize, usize)) {
    let (tw, ta) = if m == 1 { DECODE_TILE } else { BATCH_TILE };
    let mut w = w0;
    while w < w1 {
        let ww = tw.min(w1 - w);
        let mut a = 0;
        while a < m {
            let aa = ta.min(m - a);
            tile(w, a, ww, aa);
            a += aa;
        }
        w += ww;
    }
}

/// Dispatches a runtime tile shape to a const-generic kernel.
macro_rules! dispatch {
    ($kernel:ident, $w:expr, $a:expr, ($($arg:expr),*)) => {
        match ($w, $a) {
            (4, 1) => $kernel::<4, 1>($($arg),*),
            (3, 1) => $kernel::<3, 1>($($arg),*),
            (2, 1) => $kernel::<2, 1>($($arg),*),
            _ => $kernel::<1, 1>($($arg),*),
        }
    };
}

/// Dispatches a batch tile (one weight row, `A` activation rows) to a
/// const-generic kernel.
macro_rules! dispatch_rows {
    ($kernel:ident, $a:expr, ($($arg:expr),*)) => {
        match $a {
            8 => $kernel::<8>($($arg),*),
            7 => $kernel::<7>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            _ => $kernel::<2>($($arg),*),
        }
    };
}

/// f32 to IEEE half, rounding to nearest even (GGML stores block scales
/// this way).
fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal: shift the mantissa (with its implicit bit) into place.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut h = m >> shift;
        if rest > half || (rest == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let mut h = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1; // may carry into the exponent, which is still correct
    }
    sign | h as u16
}

/// Blocks whose scales a kernel widens to f32 at once (on the stack).
const SCALE_CHUNK: usize = 64;

/// A weight matrix `[n, k]` in 8-bit blocks of 32 with an f16 scale per
/// block (GGUF's Q8_0). Each row is one record, `[kb × 32 bytes][kb × f16]`
/// (scales zero-padded to a multiple of 8), so a tile of rows is one
/// contiguous stream.
#[derive(Debug)]
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    kb: usize,
    /// Bytes per row record.
    rs: usize,
    data: Vec<u8>,
}

impl Q8Matrix {
    /// Whether this CPU runs the kernel (AVX2 with FMA).
    pub(crate) fn supported() -> bool {
        supported()
    }

    fn with_rows(n: usize, k: usize) -> Self {
        let kb = k / Q8_BLOCK;
        let rs = kb * Q8_BLOCK + 2 * kb.next_multiple_of(8);
        Self { n, k, kb, rs, data: vec![0u8; n * rs] }
    }

    fn set_block(&mut self, r: usize, b: usize, scale: u16, qs: impl Iterator<Item = u8>) {
        let rec = &mut self.data[r * self.rs..(r + 1) * self.rs];
        for (d, q) in rec[b * Q8_BLOCK..(b + 1) * Q8_BLOCK].iter_mut().zip(qs) {
            *d = q;
        }
        let at = self.kb * Q8_BLOCK + 2 * b;
        rec[at..at + 2].copy_from_slice(&scale.to_le_bytes());
    }

    /// Requantizes a dense weight like GGML's Q8_0 (scale `amax / 127`,
    /// stored as f16).
    pub(crate) fn from_tensor(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        if !k.is_multiple_of(Q8_BLOCK) {
            candle_core::bail!("q8: inner dimension {k} is not a multiple of {Q8_BLOCK}");
        }
        let data = w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Self::with_rows(n, k);
        let mut qs = [0i8; Q8_BLOCK];
        let mut d = [0f32; 1];
        for r in 0..n {
            for b in 0..out.kb {
                quantize_blocks(&data[r * k + b * Q8_BLOCK..][..Q8_BLOCK], &mut qs, &mut d);
                out.set_block(r, b, f32_to_f16(d[0]), qs.iter().map(|&q| q as u8));
            }
        }
        Ok(out)
    }

    /// Takes GGUF Q8_0 blocks as they are (rows in `row_order`): lossless.
    pub(crate) fn from_q8_0_blocks(raw: &[u8], n: usize, k: usize, row_order: &[usize]) -> candle_core::Result<Self> {
        let kb = k / Q8_BLOCK;
        if raw.len() != n * kb * Q8_0_BLOCK_BYTES || row_order.len() != n {
            candle_core::bail!("q8_0 data of {} bytes does not fit [{n}, {k}]", raw.len());
        }
        let mut out = Self::with_rows(n, k);
        for (r, &src) in row_order.iter().enumerate() {
            for b in 0..kb {
                let blk = &raw[(src * kb + b) * Q8_0_BLOCK_BYTES..][..Q8_0_BLOCK_BYTES];
                out.set_block(r, b, u16::from_le_bytes([blk[0], blk[1]]), blk[2..].iter().copied());
            }
        }
        Ok(out)
    }

    /// One matrix whose rows are `parts`' rows, in order (fused q/k/v).
    pub(crate) fn concat_rows(parts: &[&Self]) -> Option<Self> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.k != first.k) {
            return None;
        }
        Some(Self {
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            kb: first.kb,
            rs: first.rs,
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
        })
    }

    pub(crate) fn n(&self) -> usize {
        self.n
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// `x @ self.T` for `x: [m, k]` (CPU, f32), parallel over weight rows.
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let acts = Acts::new(x, m, k, self.kb, false);
        let mut out = vec![0f32; m * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let tw = if m == 1 { DECODE_TILE.0 } else { BATCH_TILE.0 };
        run_chunks(n, tw, |w0, w1| {
            for_tiles(w0, w1, m, |w, a, ww, aa| {
                // SAFETY: AVX2/FMA were checked before the matrix was
                // used; tiles stay inside both matrices; each output
                // element has one writer.
                unsafe {
                    if aa == 1 {
                        dispatch!(q8_tile, ww, aa, (self, &acts, w, a, n, out_ptr.get()))
                    } else {
                        dispatch_rows!(q8_rows, aa, (self, &acts, w, a, n, out_ptr.get()))
                    }
                }
            });
        });
        out
    }
}

/// A weight matrix in GGUF's Q4_1 blocks, repacked (see the module docs);
/// the values are exactly the file's. The dot product with an 8-bit
/// activation block `a` (scale `da`) is `d·da·Σq·a + m·da·Σa`. Each row is
/// one record: `[kb/2 × 32 bytes of nibble pairs][kb × f16 d][mb × f16 m]`.
#[derive(Debug)]
pub(crate) struct Q4Matrix {
    n: usize,
    k: usize,
    /// Blocks per row, rounded up to even (a padding block is all zero).
    kb: usize,
    /// Mins per row: the real blocks rounded up to 8 (zero-padded).
    mb: usize,
    /// Bytes per row record.
    rs: usize,
    data: Vec<u8>,
}

impl Q4Matrix {
    pub(crate) fn from_q4_1_blocks(raw: &[u8], n: usize, k: usize, row_order: &[usize]) -> candle_core::Result<Self> {
        let real = k / Q8_BLOCK;
        if raw.len() != n * real * Q4_1_BLOCK_BYTES || row_order.len() != n {
            candle_core::bail!("q4_1 data of {} bytes does not fit [{n}, {k}]", raw.len());
        }
        let kb = real.next_multiple_of(2);
        let mb = real.next_multiple_of(8);
        let rs = kb * 16 + 2 * kb + 2 * mb;
        let mut data = vec![0u8; n * rs];
        // Value i (0..32) of a block's nibbles.
        let value = |blk: &[u8], i: usize| if i < 16 { blk[4 + i] & 0x0f } else { blk[4 + i - 16] >> 4 };
        for (r, &src) in row_order.iter().enumerate() {
            let rec = &mut data[r * rs..(r + 1) * rs];
            for b in 0..real {
                let blk = &raw[(src * real + b) * Q4_1_BLOCK_BYTES..][..Q4_1_BLOCK_BYTES];
                rec[kb * 16 + 2 * b..][..2].copy_from_slice(&blk[0..2]);
                rec[kb * 18 + 2 * b..][..2].copy_from_slice(&blk[2..4]);
                let shift = if b % 2 == 0 { 0 } else { 4 };
                for (i, q) in rec[(b - b % 2) * 16..][..32].iter_mut().enumerate() {
                    *q |= value(blk, i) << shift;
                }
            }
        }
        Ok(Self { n, k, kb, mb, rs, data })
    }

    pub(crate) fn concat_rows(parts: &[&Self]) -> Option<Self> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.k != first.k) {
            return None;
        }
        Some(Self {
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            kb: first.kb,
            mb: first.mb,
            rs: first.rs,
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
        })
    }

    pub(crate) fn n(&self) -> usize {
        self.n
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let acts = Acts::new(x, m, k, self.kb, true);
        let mut out = vec![0f32; m * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let tw = if m == 1 { DECODE_TILE.0 } else { BATCH_TILE.0 };
        run_chunks(n, tw, |w0, w1| {
            for_tiles(w0, w1, m, |w, a, ww, aa| {
                // SAFETY: as in Q8Matrix::matmul.
                unsafe {
                    if aa == 1 {
                        dispatch!(q4_tile, ww, aa, (self, &acts, w, a, n, out_ptr.get()))
                    } else {
                        dispatch_rows!(q4_rows, aa, (self, &acts, w, a, n, out_ptr.get()))
                    }
                }
            });
        });
        out
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

/// Widens the f16 scales of blocks `c0..c0 + count` of `W` row records
/// (scales at byte `at` of each) into `out[r][..]`, eight at a time; lanes
/// past `count` are unused.
///
/// # Safety
/// AVX2/F16C present; `count.next_multiple_of(8)` f16 values from
/// `rows[r] + at + 2·c0` lie inside row `r`'s record.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn widen_scales<const W: usize>(
    rows: &[*const u8; W],
    at: usize,
    c0: usize,
    count: usize,
    out: &mut [[f32; SCALE_CHUNK]; W],
) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        for r in 0..W {
            let src = rows[r].add(at + 2 * c0);
            let mut c = 0;
            while c < count {
                let h = _mm_loadu_si128(src.add(2 * c) as *const __m128i);
                _mm256_storeu_ps(out[r].as_mut_ptr().add(c), _mm256_cvtph_ps(h));
                c += 8;
            }
        }
    }
}

/// Prefetches `lines` cache lines from `*at`, not past `end`, and moves
/// the cursor on.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn prefetch_lines(at: &mut *const u8, end: *const u8, lines: usize) {
    use std::arch::x86_64::*;
    for _ in 0..lines {
        if *at >= end {
            return;
        }
        _mm_prefetch::<_MM_HINT_T0>(*at as *const i8);
        // SAFETY: stays at most one line past `end` (compared above).
        *at = unsafe { at.add(64) };
    }
}

/// `W` weight rows from `w0` against `A` activation rows from `a0`:
/// `out[a][w] = Σ_b d·da·Σq·a + m·da·Σa`, row stride `ld`. The next
/// tile's records are prefetched on the way.
///
/// # Safety
/// AVX2, FMA and F16C are present, the tile lies inside both matrices and
/// `out` is valid for the tile's elements, which nothing else accesses.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
// Index loops over the register tile read closer to the math than iterators.
#[allow(clippy::needless_range_loop)]
unsafe fn q4_tile<const W: usize, const A: usize>(
    wm: &Q4Matrix,
    acts: &Acts,
    w0: usize,
    a0: usize,
    ld: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        let (kb, mb, rs) = (wm.kb, wm.mb, wm.rs);
        let base = wm.data.as_ptr();
        let rows: [*const u8; W] = std::array::from_fn(|r| base.add((w0 + r) * rs));
        let mut pf = base.add((w0 + W) * rs);
        let pf_end = base.add(wm.data.len());
        let pf_step = (W * rs).div_ceil(64).div_ceil(kb / 2);
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); A]; W];
        let aq = acts.qs.as_ptr().add(a0 * kb * Q8_BLOCK);
        let ad = acts.scales.as_ptr().add(a0 * kb);
        let mut d = [[0f32; SCALE_CHUNK]; W];
        let mut c0 = 0;
        while c0 < kb {
            let count = SCALE_CHUNK.min(kb - c0);
            widen_scales(&rows, kb * 16, c0, count, &mut d);
            let mut b = c0;
            while b < c0 + count {
                prefetch_lines(&mut pf, pf_end, pf_step);
                let mut w = [[_mm256_setzero_si256(); 2]; W];
                for r in 0..W {
                    let raw = _mm256_loadu_si256(rows[r].add(b * 16) as *const __m256i);
                    w[r][0] = _mm256_and_si256(raw, low);
                    w[r][1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low);
                }
                for h in 0..2 {
                    let mut dw = [_mm256_setzero_ps(); W];
                    for r in 0..W {
                        dw[r] = _mm256_broadcast_ss(&d[r][b + h - c0]);
                    }
                    for j in 0..A {
                        let av = _mm256_loadu_si256(aq.add((j * kb + b + h) * Q8_BLOCK) as *const __m256i);
                        let da = _mm256_broadcast_ss(&*ad.add(j * kb + b + h));
                        for r in 0..W {
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w[r][h], av), ones);
                            acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[r], da), acc[r][j]);
                        }
                    }
                }
                b += 2;
            }
            c0 += count;
        }
        for r in 0..W {
            let mins = rows[r].add(kb * 18);
            for j in 0..A {
                let mut v = acc[r][j];
                let sums = acts.sums.as_ptr().add((a0 + j) * mb);
                for c in (0..mb).step_by(8) {
                    let m8 = _mm256_cvtph_ps(_mm_loadu_si128(mins.add(2 * c) as *const __m128i));
                    v = _mm256_fmadd_ps(m8, _mm256_loadu_ps(sums.add(c)), v);
                }
                *out.add((a0 + j) * ld + w0 + r) = hsum(v);
            }
        }
    }
}

/// [`q4_tile`] for 8-bit weights (sign trick: `maddubs` needs one unsigned
/// operand, so |w| is paired with a·sign(w)).
///
/// # Safety
/// As for [`q4_tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn q8_tile<const W: usize, const A: usize>(
    wm: &Q8Matrix,
    acts: &Acts,
    w0: usize,
    a0: usize,
    ld: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        let (kb, rs) = (wm.kb, wm.rs);
        let base = wm.data.as_ptr();
        let rows: [*const u8; W] = std::array::from_fn(|r| base.add((w0 + r) * rs));
        let mut pf = base.add((w0 + W) * rs);
        let pf_end = base.add(wm.data.len());
        let pf_step = (W * rs).div_ceil(64).div_ceil(kb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); A]; W];
        let aq = acts.qs.as_ptr().add(a0 * kb * Q8_BLOCK);
        let ad = acts.scales.as_ptr().add(a0 * kb);
        let mut d = [[0f32; SCALE_CHUNK]; W];
        let mut c0 = 0;
        while c0 < kb {
            let count = SCALE_CHUNK.min(kb - c0);
            widen_scales(&rows, kb * Q8_BLOCK, c0, count, &mut d);
            for b in c0..c0 + count {
                prefetch_lines(&mut pf, pf_end, pf_step);
                let mut w = [_mm256_setzero_si256(); W];
                let mut wabs = [_mm256_setzero_si256(); W];
                let mut dw = [_mm256_setzero_ps(); W];
                for r in 0..W {
                    w[r] = _mm256_loadu_si256(rows[r].add(b * Q8_BLOCK) as *const __m256i);
                    wabs[r] = _mm256_sign_epi8(w[r], w[r]);
                    dw[r] = _mm256_broadcast_ss(&d[r][b - c0]);
                }
                for j in 0..A {
                    let av = _mm256_loadu_si256(aq.add((j * kb + b) * Q8_BLOCK) as *const __m256i);
                    let da = _mm256_broadcast_ss(&*ad.add(j * kb + b));
                    for r in 0..W {
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(av, w[r])), ones);
                        acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[r], da), acc[r][j]);
                    }
                }
            }
            c0 += count;
        }
        for r in 0..W {
            for j in 0..A {
                *out.add((a0 + j) * ld + w0 + r) = hsum(acc[r][j]);
            }
        }
    }
}

/// One weight row (`w0`) against `A` activation rows from `a0` (a
/// multiple of 8): [`q4_tile::<1, A>`] with the scale products `d·da` of a
/// block computed for all rows by one vector multiply and read back by
/// broadcasts, which leaves four vector ops per block and row. The
/// arithmetic per output is the same, so results match the single-row
/// kernel bit for bit.
///
/// # Safety
/// As for [`q4_tile`]; `acts` has transposed scales.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn q4_rows<const A: usize>(wm: &Q4Matrix, acts: &Acts, w0: usize, a0: usize, ld: usize, out: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        let (kb, mb, rs) = (wm.kb, wm.mb, wm.rs);
        let base = wm.data.as_ptr();
        let row = [base.add(w0 * rs)];
        let mut pf = base.add((w0 + 1) * rs);
        let pf_end = base.add(wm.data.len());
        let pf_step = rs.div_ceil(64).div_ceil(kb / 2);
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); A];
        let mt = acts.mt;
        let aq = acts.qs_t.as_ptr().add(a0 * Q8_BLOCK);
        let adt = acts.scales_t.as_ptr().add(a0);
        let mut d = [[0f32; SCALE_CHUNK]; 1];
        let mut prod = [0f32; 8];
        let mut c0 = 0;
        while c0 < kb {
            let count = SCALE_CHUNK.min(kb - c0);
            widen_scales(&row, kb * 16, c0, count, &mut d);
            let mut b = c0;
            while b < c0 + count {
                prefetch_lines(&mut pf, pf_end, pf_step);
                let raw = _mm256_loadu_si256(row[0].add(b * 16) as *const __m256i);
                let w = [_mm256_and_si256(raw, low), _mm256_and_si256(_mm256_srli_epi16::<4>(raw), low)];
                for h in 0..2 {
                    let pv =
                        _mm256_mul_ps(_mm256_broadcast_ss(&d[0][b + h - c0]), _mm256_loadu_ps(adt.add((b + h) * mt)));
                    _mm256_storeu_ps(prod.as_mut_ptr(), pv);
                    // Opaque to the optimiser, so the products are read back
                    // with memory broadcasts (loads) instead of being
                    // shuffled out of a register (two vector ops each).
                    let prod = std::hint::black_box(&prod);
                    let ab = aq.add((b + h) * mt * Q8_BLOCK);
                    for j in 0..A {
                        let av = _mm256_loadu_si256(ab.add(j * Q8_BLOCK) as *const __m256i);
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w[h], av), ones);
                        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&prod[j]), acc[j]);
                    }
                }
                b += 2;
            }
            c0 += count;
        }
        let mins = row[0].add(kb * 18);
        for j in 0..A {
            let mut v = acc[j];
            let sums = acts.sums.as_ptr().add((a0 + j) * mb);
            for c in (0..mb).step_by(8) {
                let m8 = _mm256_cvtph_ps(_mm_loadu_si128(mins.add(2 * c) as *const __m128i));
                v = _mm256_fmadd_ps(m8, _mm256_loadu_ps(sums.add(c)), v);
            }
            *out.add((a0 + j) * ld + w0) = hsum(v);
        }
    }
}

/// [`q4_rows`] for 8-bit weights.
///
/// # Safety
/// As for [`q4_rows`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn q8_rows<const A: usize>(wm: &Q8Matrix, acts: &Acts, w0: usize, a0: usize, ld: usize, out: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        let (kb, rs) = (wm.kb, wm.rs);
        let base = wm.data.as_ptr();
        let row = [base.add(w0 * rs)];
        let mut pf = base.add((w0 + 1) * rs);
        let pf_end = base.add(wm.data.len());
        let pf_step = rs.div_ceil(64).div_ceil(kb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); A];
        let mt = acts.mt;
        let aq = acts.qs_t.as_ptr().add(a0 * Q8_BLOCK);
        let adt = acts.scales_t.as_ptr().add(a0);
        let mut d = [[0f32; SCALE_CHUNK]; 1];
        let mut prod = [0f32; 8];
        let mut c0 = 0;
        while c0 < kb {
            let count = SCALE_CHUNK.min(kb - c0);
            widen_scales(&row, kb * Q8_BLOCK, c0, count, &mut d);
            for b in c0..c0 + count {
                prefetch_lines(&mut pf, pf_end, pf_step);
                let w = _mm256_loadu_si256(row[0].add(b * Q8_BLOCK) as *const __m256i);
                let wabs = _mm256_sign_epi8(w, w);
                let pv = _mm256_mul_ps(_mm256_broadcast_ss(&d[0][b - c0]), _mm256_loadu_ps(adt.add(b * mt)));
                _mm256_storeu_ps(prod.as_mut_ptr(), pv);
                let prod = std::hint::black_box(&prod);
                let ab = aq.add(b * mt * Q8_BLOCK);
                for j in 0..A {
                    let av = _mm256_loadu_si256(ab.add(j * Q8_BLOCK) as *const __m256i);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, w)), ones);
                    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&prod[j]), acc[j]);
                }
            }
            c0 += count;
        }
        for j in 0..A {
            *out.add((a0 + j) * ld + w0) = hsum(acc[j]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q4_rows<const A: usize>(_: &Q4Matrix, _: &Acts, _: usize, _: usize, _: usize, _: *mut f32) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q8_rows<const A: usize>(_: &Q8Matrix, _: &Acts, _: usize, _: usize, _: usize, _: *mut f32) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q4_tile<const W: usize, const A: usize>(_: &Q4Matrix, _: &Acts, _: usize, _: usize, _: usize, _: *mut f32) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q8_tile<const W: usize, const A: usize>(_: &Q8Matrix, _: &Acts, _: usize, _: usize, _: usize, _: *mut f32) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

/// Shared body of the two candle ops below.
fn apply(
    name: &str,
    k: usize,
    n: usize,
    storage: &CpuStorage,
    layout: &Layout,
    matmul: impl FnOnce(&[f32], usize) -> Vec<f32>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let CpuStorage::F32(src) = storage else {
        candle_core::bail!("{name}: f32 input only");
    };
    let Some((o1, o2)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: input must be contiguous");
    };
    let mut dims = layout.shape().dims().to_vec();
    let kx = dims.pop().unwrap_or(0);
    if kx != k {
        candle_core::bail!("{name}: input has {kx} features, weight {k}");
    }
    let m = (o2 - o1) / k.max(1);
    let out = matmul(&src[o1..o2], m);
    dims.push(n);
    Ok((CpuStorage::F32(out), Shape::from_dims(&dims)))
}

/// `x @ W.T` for a [`Q8Matrix`] as a candle op on `x: [.., k]`.
pub(crate) struct Q8MatMul(pub Arc<Q8Matrix>);

impl CustomOp1 for Q8MatMul {
    fn name(&self) -> &'static str {
        "q8-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        apply(self.name(), self.0.k, self.0.n, storage, layout, |x, m| self.0.matmul(x, m))
    }
}

/// `x @ W.T` for a [`Q4Matrix`] as a candle op on `x: [.., k]`.
pub(crate) struct Q4MatMul(pub Arc<Q4Matrix>);

impl CustomOp1 for Q4MatMul {
    fn name(&self) -> &'static str {
        "q4-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        apply(self.name(), self.0.k, self.0.n, storage, layout, |x, m| self.0.matmul(x, m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_core::quantized::{GgmlDType, QTensor};

    #[test]
    fn f16_conversion() {
        for (bits, v) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x0000, 0.0),
            (0x3555, 0.33325195),
            (0x0001, 5.9604645e-8),
            (0x7bff, 65504.0),
        ] {
            assert_eq!(f16_to_f32(bits), v, "{bits:#x}");
        }
    }

    #[test]
    fn f16_rounding_round_trips() {
        for bits in (0u16..=0xffff).step_by(7) {
            let v = f16_to_f32(bits);
            if v.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16(v), bits, "{bits:#x} = {v}");
        }
        // Halfway cases round to even; overflow goes to infinity.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(1e6), 0x7c00);
        assert_eq!(f32_to_f16(-3.0e-8), 0x8001);
    }

    #[test]
    fn q8_matmul_matches_f32() {
        if !supported() {
            return;
        }
        let dev = Device::Cpu;
        for (m, n, k) in [(1, 7, 64), (3, 10, 96), (16, 33, 576), (9, 5, 32)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let q = Arc::new(Q8Matrix::from_tensor(&w).unwrap());
            let got = x.apply_op1_no_bwd(&Q8MatMul(q)).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 0.02 * scale, "m{m} n{n} k{k}: err {err} scale {scale}");
        }
    }

    #[test]
    fn q4_1_and_q8_0_blocks_match_candle_dequantization() {
        if !supported() {
            return;
        }
        let dev = Device::Cpu;
        // 3 blocks per row: an odd count exercises the padding block.
        for (n, k, m) in [(12, 96, 5), (9, 64, 1), (7, 32, 6), (10, 160, 9)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let order: Vec<usize> = (0..n).rev().collect();
            let idx = Tensor::new(order.iter().map(|&i| i as u32).collect::<Vec<_>>(), &dev).unwrap();
            for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let exact = q.dequantize(&dev).unwrap().index_select(&idx, 0).unwrap();
                let want = x.matmul(&exact.t().unwrap()).unwrap();
                let raw = q.data().unwrap();
                let got = match dtype {
                    GgmlDType::Q4_1 => {
                        let mat = Arc::new(Q4Matrix::from_q4_1_blocks(&raw, n, k, &order).unwrap());
                        x.apply_op1_no_bwd(&Q4MatMul(mat)).unwrap()
                    }
                    _ => {
                        let mat = Arc::new(Q8Matrix::from_q8_0_blocks(&raw, n, k, &order).unwrap());
                        x.apply_op1_no_bwd(&Q8MatMul(mat)).unwrap()
                    }
                };
                // Only the activations are quantized (8-bit), so the error is small.
                let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(err < 0.02 * scale, "{dtype:?} n{n} k{k} m{m}: err {err} vs scale {scale}");
            }
        }
    }

    #[test]
    fn q4_concat_rows_and_batch_invariance() {
        if !supported() {
            return;
        }
        let dev = Device::Cpu;
        let (k, m) = (96, 7);
        let parts: Vec<Tensor> =
            [5usize, 8, 3].iter().map(|&n| Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap()).collect();
        let mats: Vec<Q4Matrix> = parts
            .iter()
            .map(|w| {
                let n = w.dim(0).unwrap();
                let raw = QTensor::quantize(w, GgmlDType::Q4_1).unwrap().data().unwrap().to_vec();
                Q4Matrix::from_q4_1_blocks(&raw, n, k, &(0..n).collect::<Vec<_>>()).unwrap()
            })
            .collect();
        let joined = Q4Matrix::concat_rows(&mats.iter().collect::<Vec<_>>()).unwrap();
        let x: Vec<f32> = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let all = joined.matmul(&x, m);
        let mut col = 0;
        for part in &mats {
            let y = part.matmul(&x, m);
            for r in 0..m {
                for c in 0..part.n {
                    assert_eq!(y[r * part.n + c], all[r * joined.n + col + c]);
                }
            }
            col += part.n;
        }
        // A row alone gives bit for bit what it gives inside the batch.
        for r in 0..m {
            let alone = joined.matmul(&x[r * k..(r + 1) * k], 1);
            assert_eq!(alone[..], all[r * joined.n..(r + 1) * joined.n]);
        }
    }
}
