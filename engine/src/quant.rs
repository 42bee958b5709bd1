//! Quantized matrices on the CPU: GGUF Q4_1 and 8-bit (Q8_0) weights
//! against activations quantized to 8 bits per block of 32, the arithmetic
//! of llama.cpp's `Q4_1 × Q8_1` and `Q8_0 × Q8_0` dot products (AVX2).
//!
//! The weights are repacked from the file's row-by-row blocks into panels
//! of eight weight rows (eight outputs), so that a vector lane holds one
//! output instead of a slice of one dot product:
//! - a 32-byte vector holds four consecutive inputs of each of the eight
//!   rows (`[row][4]`), the layout `maddubs` multiplies against four bytes
//!   of an activation row broadcast to every lane. One multiply then
//!   serves eight outputs, and nothing is summed across lanes.
//! - Q4_1 values are 0..15, so the 16-bit pair sums of `maddubs` (at most
//!   2·15·127) can be added up over a whole block of 32 without overflow;
//!   a block costs one multiply and one add per four inputs of eight
//!   outputs, and the exact integer dot product is scaled once per block
//!   (`d·da·Σq·a + m·da·Σa`). Two steps share one byte (low and high
//!   nibble), so the panels are as small as the file's blocks.
//! - 8-bit values use the sign trick (`|w|` against `a·sign(w)`, as
//!   `maddubs` needs one unsigned operand), whose pair sums fill 16 bits,
//!   so they are widened to 32 bits at every step.
//! - A kernel call computes a tile of activation rows × panels: one row
//!   of up to four panels (decoding one sequence), up to eight rows of one
//!   panel (batches; each unpacked weight vector serves all eight), or four
//!   rows of two. The per-block integer sums stay in the sixteen AVX2
//!   registers; the float accumulators of the larger tiles spill to L1.
//! - On CPUs with AVX512-VNNI the same panels also go through 512-bit
//!   kernels: one vector holds a step of two adjacent panels, and a tile
//!   of up to eight rows (32 registers) unpacks each weight vector once
//!   for all of them. They check themselves against the AVX2 kernels at
//!   first use, like the 256-bit VNNI ones.
//!
//! Every output goes through the same operations in the same order
//! whatever the tile, so a row's result does not depend on the other rows
//! of its batch (a completion sampled alone or in a group is the same).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

/// Values per quantization block, as in GGML's Q8_0.
pub(crate) const Q8_BLOCK: usize = 32;
/// Weight rows (outputs) per panel: one AVX2 vector of f32 results.
const PANEL: usize = 8;
/// Activation rows per pass over a task's panels: their 8-bit blocks
/// (`ROW_BLOCK × k` bytes) stay in L2 while the panels go by.
const ROW_BLOCK: usize = 128;

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

/// Activations `[m, k]` quantized per block of 32, stored block-major:
/// block `b` of every row, then block `b + 1`. A tile's rows of one block
/// then sit at fixed offsets from one pointer, so the kernels address
/// them with displacements instead of a register per row (which cost
/// address arithmetic in the inner loop, bound by instruction issue).
#[derive(Default)]
pub(crate) struct Acts {
    /// Rows.
    m: usize,
    /// `[kb, m, 32]`.
    qs: Vec<i8>,
    /// `da` per block, `[kb, m]`.
    scales: Vec<f32>,
    /// `da·Σa` per block, `[kb, m]`: the Q4_1 min term's factor (empty
    /// for formats without one).
    sums: Vec<f32>,
    /// `Σa` per block, `[kb, m]`, exact: the 512-bit 8-bit kernel's offset
    /// correction (see [`q8_tile_wide`]).
    isums: Vec<i32>,
}

impl Acts {
    /// No rows yet (see [`Acts::fill`]).
    const fn empty() -> Self {
        Self { m: 0, qs: Vec::new(), scales: Vec::new(), sums: Vec::new(), isums: Vec::new() }
    }

    #[cfg(test)]
    fn new(x: &[f32], m: usize, k: usize, with_sums: bool) -> Self {
        let mut acts = Self::empty();
        acts.fill(x, m, k, with_sums);
        acts
    }

    /// Quantizes `x [m, k]` into these buffers.
    fn fill(&mut self, x: &[f32], m: usize, k: usize, with_sums: bool) {
        let kb = k / Q8_BLOCK;
        let Self { m: rows, qs, scales, sums, isums } = self;
        *rows = m;
        qs.resize(m * k, 0);
        scales.resize(m * kb, 0.0);
        isums.resize(m * kb, 0);
        for (r, xr) in x.chunks_exact(k).take(m).enumerate() {
            #[cfg(target_arch = "x86_64")]
            if supported() {
                // SAFETY: AVX2 was just checked; `x` holds whole blocks and
                // the buffers `m·kb` of them.
                unsafe { quantize_row_avx2(xr, qs, scales, isums, r, m) };
                continue;
            }
            for (b, xb) in xr.chunks_exact(Q8_BLOCK).enumerate() {
                let at = b * m + r;
                let q = &mut qs[at * Q8_BLOCK..][..Q8_BLOCK];
                quantize_blocks(xb, q, std::slice::from_mut(&mut scales[at]));
                isums[at] = q.iter().map(|&v| v as i32).sum();
            }
        }
        sums.clear();
        if with_sums {
            sums.extend(isums[..m * kb].iter().zip(&scales[..m * kb]).map(|(&s, &d)| s as f32 * d));
        }
    }
}

/// [`quantize_blocks`] with AVX2, bit for bit (the same multiply, and
/// `cvtps` rounds to nearest even like `round_small`), plus each block's
/// `Σq`, for row `row` of `m` in [`Acts`]' block-major buffers.
/// Activations are quantized before every matrix product, on one thread,
/// so the scalar loop showed in profiles.
///
/// # Safety
/// AVX2 is present; `xs.len()` is a multiple of 32, `row < m` and the
/// buffers hold `m` rows of its blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(xs: &[f32], qs: &mut [i8], scales: &mut [f32], sums: &mut [i32], row: usize, m: usize) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract; every access is inside one
    // 32-value block of the slices.
    unsafe {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
        // `packs` interleaves 128-bit lanes; this puts the bytes back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, x) in xs.chunks_exact(Q8_BLOCK).enumerate() {
            let at = b * m + row;
            let q = &mut qs[at * Q8_BLOCK..][..Q8_BLOCK];
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
            let mut amax = _mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask));
            amax = _mm256_max_ps(amax, _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
            let m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
            let scale = amax / 127.0;
            let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let i: [__m256i; 4] = std::array::from_fn(|j| {
                _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv)), lo), hi)
            });
            let packed = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
            _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, _mm256_permutevar8x32_epi32(packed, order));
            scales[at] = scale;
            let t = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            let t2 = _mm_add_epi32(t4, _mm_unpackhi_epi64(t4, t4));
            sums[at] = _mm_cvtsi128_si32(_mm_add_epi32(t2, _mm_shuffle_epi32(t2, 1)));
        }
    }
}

/// One block of one weight row as the file stores it: 32 codes (Q4_1:
/// 0..15; Q8_0: signed bytes), the f16 scale and (Q4_1) the f16 min.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowBlock {
    codes: [u8; Q8_BLOCK],
    d: u16,
    min: u16,
}

/// A block format's panel layout and kernel.
pub(crate) trait Format: Sized {
    /// Bytes of one block (32 inputs) of one panel (eight rows).
    const PANEL_BLOCK: usize;
    /// 32-byte weight vectors at the start of a panel block.
    const VECTORS: usize;
    /// Whether the dot product has a min term (`m·da·Σa`).
    const MINS: bool;
    /// Writes row `row` (0..8) of a panel block.
    fn put(blk: &mut [u8], row: usize, b: &RowBlock);
    /// Reads row `row` of a panel block back.
    fn get(blk: &[u8], row: usize) -> RowBlock;
    /// `out[r][p·8 + j] = Σ_k W[p·8 + j, k]·a[r, k]` (or `+=` when `add`)
    /// for `R` activation rows from `r0` and `C` panels from `p0`, row
    /// stride `ld`; columns past `n` are not written.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; the tile lies inside the matrix and
    /// the activations; `out` is valid for its elements, which nothing else
    /// accesses meanwhile.
    unsafe fn tile<const R: usize, const C: usize>(w: &PanelMatrix<Self>, acts: &Acts, at: TileAt);
    /// [`Format::tile`] for `2·P` panels with 512-bit AVX512-VNNI (see
    /// [`wide`]), bit for bit the same.
    ///
    /// # Safety
    /// As for [`Format::tile`], and the CPU has AVX-512 F, BW and VNNI.
    unsafe fn tile_wide<const R: usize, const P: usize>(w: &PanelMatrix<Self>, acts: &Acts, at: TileAt);
}

/// GGUF's Q4_1. A panel block is four 32-byte vectors of nibbles (vector
/// `v` holds steps `2v` in the low and `2v + 1` in the high nibbles; a
/// step is four inputs of each of the eight rows, `[row][4]`), then the
/// eight f16 scales and the eight f16 mins: 160 bytes, as in the file.
#[derive(Debug)]
pub(crate) struct Q4;

/// 8-bit blocks (GGUF's Q8_0): eight 32-byte steps `[row][4]` of signed
/// bytes, then the eight f16 scales: 272 bytes.
#[derive(Debug)]
pub(crate) struct Q8;

impl Format for Q4 {
    const PANEL_BLOCK: usize = 4 * 32 + 2 * 16;
    const VECTORS: usize = 4;
    const MINS: bool = true;

    fn put(blk: &mut [u8], row: usize, b: &RowBlock) {
        for (i, &q) in b.codes.iter().enumerate() {
            let (step, lane) = (i / 4, i % 4);
            let byte = &mut blk[(step / 2) * 32 + row * 4 + lane];
            let shift = 4 * (step % 2);
            *byte = (*byte & !(0x0f << shift)) | ((q & 0x0f) << shift);
        }
        blk[128 + 2 * row..][..2].copy_from_slice(&b.d.to_le_bytes());
        blk[144 + 2 * row..][..2].copy_from_slice(&b.min.to_le_bytes());
    }

    fn get(blk: &[u8], row: usize) -> RowBlock {
        let codes = std::array::from_fn(|i| {
            let (step, lane) = (i / 4, i % 4);
            (blk[(step / 2) * 32 + row * 4 + lane] >> (4 * (step % 2))) & 0x0f
        });
        let half = |at: usize| u16::from_le_bytes([blk[at], blk[at + 1]]);
        RowBlock { codes, d: half(128 + 2 * row), min: half(144 + 2 * row) }
    }

    unsafe fn tile<const R: usize, const C: usize>(w: &PanelMatrix<Self>, acts: &Acts, at: TileAt) {
        // SAFETY: forwarded contract; `vnni` only where [`vnni`] said so.
        unsafe { if at.vnni { q4_tile_vnni::<R, C>(w, acts, at) } else { q4_tile::<R, C>(w, acts, at) } }
    }

    unsafe fn tile_wide<const R: usize, const P: usize>(w: &PanelMatrix<Self>, acts: &Acts, at: TileAt) {
        // SAFETY: forwarded contract.
        unsafe { q4_tile_wide::<R, P>(w, acts, at) }
    }
}

impl Format for Q8 {
    const PANEL_BLOCK: usize = 8 * 32 + 16;
    const VECTORS: usize = 8;
    const MINS: bool = false;

    fn put(blk: &mut [u8], row: usize, b: &RowBlock) {
        for (i, &q) in b.codes.iter().enumerate() {
            blk[(i / 4) * 32 + row * 4 + i % 4] = q;
        }
        blk[256 + 2 * row..][..2].copy_from_slice(&b.d.to_le_bytes());
    }

    fn get(blk: &[u8], row: usize) -> RowBlock {
        let codes = std::array::from_fn(|i| blk[(i / 4) * 32 + row * 4 + i % 4]);
        RowBlock { codes, d: u16::from_le_bytes([blk[256 + 2 * row], blk[257 + 2 * row]]), min: 0 }
    }

    unsafe fn tile<const R: usize, const C: usize>(w: &PanelMatrix<Self>, acts: &Acts, at: TileAt) {
        // SAFETY: forwarded contract; `vnni` only where [`vnni`] said so.
        unsafe { if at.vnni { q8_tile_vnni::<R, C>(w, acts, at) } else { q8_tile::<R, C>(w, acts, at) } }
    }

    unsafe fn tile_wide<const R: usize, const P: usize>(w: &PanelMatrix<Self>, acts: &Acts, at: TileAt) {
        // SAFETY: forwarded contract.
        unsafe { q8_tile_wide::<R, P>(w, acts, at) }
    }
}

/// A quantized weight `[n, k]` in panels of eight rows (see the module
/// docs), panel-major: panel `p`'s blocks are one contiguous stream. The
/// last panel is zero-padded past row `n`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // fields only the x86-64 kernels read
pub(crate) struct PanelMatrix<F> {
    n: usize,
    k: usize,
    kb: usize,
    panels: usize,
    /// 32-byte weight vectors per panel block (4 or 8), as a field so the
    /// kernels' step loops are not unrolled whole.
    vectors: usize,
    data: Vec<u8>,
    format: std::marker::PhantomData<fn() -> F>,
}

// Shape only, not the megabytes of blocks.
impl<F> std::fmt::Debug for PanelMatrix<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PanelMatrix<{}>[{}, {}]",
            std::any::type_name::<F>().rsplit("::").next().unwrap_or("?"),
            self.n,
            self.k
        )
    }
}

/// GGUF Q4_1 weights; the values are exactly the file's.
pub(crate) type Q4Matrix = PanelMatrix<Q4>;
/// 8-bit weights: GGUF Q8_0 as it is, or a dense weight requantized.
pub(crate) type Q8Matrix = PanelMatrix<Q8>;

impl<F: Format> PanelMatrix<F> {
    /// Whether this CPU runs the kernels (AVX2 with FMA and F16C).
    pub(crate) fn supported() -> bool {
        supported()
    }

    fn zeroed(n: usize, k: usize) -> candle_core::Result<Self> {
        if !k.is_multiple_of(Q8_BLOCK) || k == 0 {
            candle_core::bail!("quantized matrix: inner dimension {k} is not a positive multiple of {Q8_BLOCK}");
        }
        let (kb, panels) = (k / Q8_BLOCK, n.div_ceil(PANEL));
        let data = vec![0u8; panels * kb * F::PANEL_BLOCK];
        Ok(Self { n, k, kb, panels, vectors: F::VECTORS, data, format: std::marker::PhantomData })
    }

    fn block_at(&self, row: usize, b: usize) -> usize {
        ((row / PANEL) * self.kb + b) * F::PANEL_BLOCK
    }

    fn set(&mut self, row: usize, b: usize, blk: &RowBlock) {
        let at = self.block_at(row, b);
        F::put(&mut self.data[at..at + F::PANEL_BLOCK], row % PANEL, blk);
    }

    fn get(&self, row: usize, b: usize) -> RowBlock {
        let at = self.block_at(row, b);
        F::get(&self.data[at..at + F::PANEL_BLOCK], row % PANEL)
    }

    /// Builds a matrix from the file's blocks (`bytes` per block), taking
    /// row `row_order[r]` of the file as row `r`.
    fn from_file_blocks(
        raw: &[u8],
        n: usize,
        k: usize,
        row_order: &[usize],
        bytes: usize,
        parse: impl Fn(&[u8]) -> RowBlock,
    ) -> candle_core::Result<Self> {
        let mut out = Self::zeroed(n, k)?;
        let kb = out.kb;
        if raw.len() != n * kb * bytes || row_order.len() != n || row_order.iter().any(|&r| r >= n) {
            candle_core::bail!("quantized data of {} bytes does not fit [{n}, {k}]", raw.len());
        }
        for (r, &src) in row_order.iter().enumerate() {
            for b in 0..kb {
                out.set(r, b, &parse(&raw[(src * kb + b) * bytes..][..bytes]));
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
        let mut out = Self::zeroed(parts.iter().map(|p| p.n).sum(), first.k).ok()?;
        let mut row = 0;
        for part in parts {
            for r in 0..part.n {
                for b in 0..part.kb {
                    out.set(row, b, &part.get(r, b));
                }
                row += 1;
            }
        }
        Some(out)
    }

    pub(crate) fn n(&self) -> usize {
        self.n
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// `x @ self.T` for `x: [m, k]` (CPU, f32).
    pub(crate) fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * self.n];
        self.matmul_into(x, m, &mut out, false);
        out
    }

    /// `out [m, n] = x @ self.T` (or `+=` when `add`), parallel over
    /// panels: each task reads its panels once per block of activation
    /// rows, and writes its columns straight into `out`.
    pub(crate) fn matmul_into(&self, x: &[f32], m: usize, out: &mut [f32], add: bool) {
        assert!(x.len() >= m * self.k && out.len() >= m * self.n, "quantized matmul: buffers too small");
        let (vnni, wide) = (vnni(), wide());
        with_acts(x, m, self.k, F::MINS, |acts| {
            let out_ptr = SendPtr(out.as_mut_ptr());
            // One row (decoding) is bound by memory: more panels per call
            // keep more streams in flight. Batches reuse each unpacked
            // weight vector for up to eight rows (a thread's share of a
            // group of 16): in the 512-bit kernels two panels at a time,
            // in the 256-bit ones one (a 4×2 tile, which reuses each
            // broadcast twice, measured ~7 % slower on one thread).
            let (tr, tc) = if m == 1 {
                (1, 4)
            } else if wide {
                (8, 2)
            } else if m >= 8 {
                (8, 1)
            } else {
                (4, 2)
            };
            // Software prefetch of the next panels keeps memory busy while a
            // thin tile computes; an AVX2 tile of eight rows is bound by
            // arithmetic, the hardware prefetcher keeps up with its one
            // stream, and the prefetch loop measured ~3 % of its time.
            let prefetch = wide || tr < 8;
            run_chunks(self.panels, tc, |p0, p1| {
                for rb in (0..m).step_by(ROW_BLOCK) {
                    let re = (rb + ROW_BLOCK).min(m);
                    let mut p = p0;
                    while p < p1 {
                        let c = tc.min(p1 - p);
                        let mut r = rb;
                        while r < re {
                            let rr = tr.min(re - r);
                            // SAFETY: AVX2/FMA/F16C were checked before the
                            // matrix was used (`supported`); the tile lies
                            // inside the panels, rows and `out` (checked
                            // above); each output element belongs to one
                            // tile of one task.
                            let at = TileAt {
                                p0: p,
                                r0: r,
                                out: out_ptr.get(),
                                ld: self.n,
                                add,
                                prefetch: prefetch && r == rb,
                                vnni,
                            };
                            unsafe { run_tile::<F>(rr, c, self, acts, at, wide) };
                            r += rr;
                        }
                        p += c;
                    }
                }
            });
        });
    }
}

thread_local! {
    /// Quantized activations, reused across calls.
    static ACTS: std::cell::RefCell<Acts> = const { std::cell::RefCell::new(Acts::empty()) };
}

/// Runs `f` on `x` quantized, in this thread's reused buffers.
fn with_acts<R>(x: &[f32], m: usize, k: usize, with_sums: bool, f: impl FnOnce(&Acts) -> R) -> R {
    crate::sgemm::with_local(&ACTS, |acts| {
        acts.fill(x, m, k, with_sums);
        f(acts)
    })
}

impl PanelMatrix<Q4> {
    /// Takes GGUF Q4_1 blocks (rows in `row_order`): lossless.
    pub(crate) fn from_q4_1_blocks(raw: &[u8], n: usize, k: usize, row_order: &[usize]) -> candle_core::Result<Self> {
        Self::from_file_blocks(raw, n, k, row_order, Q4_1_BLOCK_BYTES, |blk| RowBlock {
            d: u16::from_le_bytes([blk[0], blk[1]]),
            min: u16::from_le_bytes([blk[2], blk[3]]),
            codes: std::array::from_fn(|i| if i < 16 { blk[4 + i] & 0x0f } else { blk[4 + i - 16] >> 4 }),
        })
    }
}

impl PanelMatrix<Q8> {
    /// Takes GGUF Q8_0 blocks (rows in `row_order`): lossless.
    pub(crate) fn from_q8_0_blocks(raw: &[u8], n: usize, k: usize, row_order: &[usize]) -> candle_core::Result<Self> {
        Self::from_file_blocks(raw, n, k, row_order, Q8_0_BLOCK_BYTES, |blk| RowBlock {
            d: u16::from_le_bytes([blk[0], blk[1]]),
            min: 0,
            codes: std::array::from_fn(|i| blk[2 + i]),
        })
    }

    /// Requantizes a dense weight like GGML's Q8_0 (scale `amax / 127`,
    /// stored as f16).
    pub(crate) fn from_tensor(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        let mut out = Self::zeroed(n, k)?;
        let data = w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut qs = [0i8; Q8_BLOCK];
        let mut d = [0f32; 1];
        for r in 0..n {
            for b in 0..out.kb {
                quantize_blocks(&data[r * k + b * Q8_BLOCK..][..Q8_BLOCK], &mut qs, &mut d);
                out.set(r, b, &RowBlock { codes: qs.map(|q| q as u8), d: f32_to_f16(d[0]), min: 0 });
            }
        }
        Ok(out)
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

/// Runs `chunk(p0, p1)` over ranges of panels (multiples of `step`) in
/// parallel, about four per thread.
fn run_chunks<F: Fn(usize, usize) + Sync>(n: usize, step: usize, chunk: F) {
    use rayon::prelude::*;
    let per = n.div_ceil(step).div_ceil(rayon::current_num_threads() * 4).max(1) * step;
    let chunks = n.div_ceil(per);
    if chunks <= 1 {
        chunk(0, n);
    } else {
        (0..chunks).into_par_iter().for_each(|c| chunk(c * per, ((c + 1) * per).min(n)));
    }
}

/// Where a kernel call writes: `R` activation rows from `r0` against `C`
/// panels from `p0`, into `out` (row stride `ld`), overwriting or adding;
/// `prefetch` on the first row tile of a pass; `vnni` to run the
/// AVX512-VNNI variant (see [`vnni`]).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // fields only the x86-64 kernels read
#[derive(Clone, Copy)]
pub(crate) struct TileAt {
    p0: usize,
    r0: usize,
    out: *mut f32,
    ld: usize,
    add: bool,
    prefetch: bool,
    vnni: bool,
}

#[cfg(target_arch = "x86_64")]
impl TileAt {
    /// Asks for the lines of the tile's outputs while it computes: the
    /// weights streaming through each decoding step evict them, and the
    /// final stores (loads too, when adding) otherwise wait for them.
    #[inline(always)]
    fn prefetch_out(&self, rows: usize, panels: usize) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        for r in 0..rows {
            for c in 0..panels {
                let at = self.out.wrapping_add((self.r0 + r) * self.ld + (self.p0 + c) * PANEL);
                // SAFETY: a prefetch only hints, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(at as *const i8) };
            }
        }
    }
}

/// Whether the AVX512-VNNI kernels run here: the CPU has them and they
/// gave bit for bit what the AVX2 kernels give (checked once, see
/// [`vnni_agrees`]; they cannot be exercised on a CPU without them).
fn vnni() -> bool {
    static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let on = crate::kernels::self_checked(vnni_present(), vnni_agrees, "the AVX512-VNNI quantized kernel");
        #[cfg(not(target_arch = "x86_64"))]
        let on = false;
        on
    })
}

/// Whether the 512-bit kernels ([`q4_tile_wide`], [`q8_tile_wide`]) run
/// here: the CPU has AVX-512 F, BW and VNNI, and they gave bit for bit
/// what the AVX2 kernels give (checked once, see [`wide_agrees`]).
fn wide() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let on = crate::kernels::self_checked(wide_present(), wide_agrees, "the 512-bit quantized kernel");
        #[cfg(not(target_arch = "x86_64"))]
        let on = false;
        on
    })
}

/// Whether this CPU has what the 256-bit VNNI kernels need.
#[cfg(target_arch = "x86_64")]
fn vnni_present() -> bool {
    supported() && std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl")
}

/// Whether this CPU has what the 512-bit kernels need.
#[cfg(target_arch = "x86_64")]
fn wide_present() -> bool {
    supported()
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// Runs every 512-bit tile shape of both formats, at each panel pair of a
/// matrix whose last panel is partial, against the AVX2 kernel one row
/// and panel at a time, overwriting and adding, and compares the bits.
#[cfg(target_arch = "x86_64")]
fn wide_agrees() -> bool {
    if !wide_present() {
        return false;
    }
    let (q4, q8, acts, m) = check_inputs();
    fn agree_on<F: Format>(w: &PanelMatrix<F>, acts: &Acts, m: usize) -> bool {
        let start: Vec<f32> = (0..m * w.n).map(|i| i as f32 * 0.25 - 7.0).collect();
        WIDE_SHAPES.iter().all(|&(rows, pairs)| {
            (0..w.panels / (2 * pairs)).all(|at| {
                let p0 = at * 2 * pairs;
                [false, true].into_iter().all(|add| {
                    let tile = |p0: usize, r0: usize, out: &mut Vec<f32>| TileAt {
                        p0,
                        r0,
                        out: out.as_mut_ptr(),
                        ld: w.n,
                        add,
                        prefetch: true,
                        vnni: false,
                    };
                    let mut wide = start.clone();
                    let mut plain = start.clone();
                    // SAFETY: this CPU has AVX-512 F/BW/VNNI and AVX2
                    // (`wide_present`, checked above); every tile lies
                    // inside `w`, `acts` and the output.
                    unsafe {
                        dispatch_wide::<F>(rows, pairs, w, acts, tile(p0, 0, &mut wide));
                        for r in 0..rows {
                            for p in p0..p0 + 2 * pairs {
                                dispatch::<F>(1, 1, w, acts, tile(p, r, &mut plain));
                            }
                        }
                    }
                    plain.iter().zip(&wide).all(|(x, y)| x.to_bits() == y.to_bits())
                })
            })
        })
    }
    agree_on(&q4, &acts, m) && agree_on(&q8, &acts, m)
}

/// Runs every tile shape of both formats through the AVX2 and the VNNI
/// kernels on random weights (codes -128 and 15 included) and
/// activations, overwriting and adding, and compares the bits.
#[cfg(target_arch = "x86_64")]
fn vnni_agrees() -> bool {
    kernels_agree(true)
}

/// The self-checks' inputs: random Q4_1 and 8-bit weights of four panels,
/// the last one partial (codes -128 and 15 included), and eight rows of
/// quantized activations.
#[cfg(target_arch = "x86_64")]
fn check_inputs() -> (Q4Matrix, Q8Matrix, Acts, usize) {
    use rand::{Rng, SeedableRng};
    let (n, k, m) = (4 * PANEL - 3, 3 * Q8_BLOCK, 8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
    let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let mut q4 = Q4Matrix::zeroed(n, k).expect("k is a multiple of 32");
    let mut q8 = Q8Matrix::zeroed(n, k).expect("k is a multiple of 32");
    for row in 0..n {
        for b in 0..k / Q8_BLOCK {
            let mut codes: [u8; Q8_BLOCK] = rng.random();
            if row == 0 && b == 0 {
                // The extremes: -128 (|w| = 128 in the sign trick) and 15.
                codes[..2].copy_from_slice(&[0x80, 0x0f]);
            }
            let d = f32_to_f16(rng.random_range(0.001f32..0.1));
            let min = f32_to_f16(rng.random_range(-1.0f32..0.0));
            q4.set(row, b, &RowBlock { codes: codes.map(|c| c & 0x0f), d, min });
            q8.set(row, b, &RowBlock { codes, d, min: 0 });
        }
    }
    let mut acts = Acts::empty();
    acts.fill(&x, m, k, true);
    (q4, q8, acts, m)
}

/// [`vnni_agrees`] against the kernels chosen by `vnni` (which this CPU
/// must run).
#[cfg(target_arch = "x86_64")]
fn kernels_agree(vnni: bool) -> bool {
    if !supported() || (vnni && !vnni_present()) {
        return false;
    }
    let (q4, q8, acts, m) = check_inputs();
    fn agree_on<F: Format>(w: &PanelMatrix<F>, acts: &Acts, m: usize, vnni: bool) -> bool {
        let start: Vec<f32> = (0..m * w.n).map(|i| i as f32 * 0.25 - 7.0).collect();
        SHAPES.iter().all(|&(rows, panels)| {
            [false, true].into_iter().all(|add| {
                let run = |use_vnni: bool| {
                    let mut out = start.clone();
                    let at =
                        TileAt { p0: 0, r0: 0, out: out.as_mut_ptr(), ld: w.n, add, prefetch: true, vnni: use_vnni };
                    // SAFETY: this CPU runs the AVX2 kernels and the ones
                    // `vnni` selects (checked above); the tile (at most 8
                    // rows of one panel or 4 rows of up to 4) lies inside
                    // `w`, `acts` (8 rows) and `out`.
                    unsafe { dispatch::<F>(rows, panels, w, acts, at) };
                    out
                };
                let (plain, other) = (run(false), run(vnni));
                plain.iter().zip(&other).all(|(x, y)| x.to_bits() == y.to_bits())
            })
        })
    }
    agree_on(&q4, &acts, m, vnni) && agree_on(&q8, &acts, m, vnni)
}

/// Defines `$name`, which calls `F::$kernel` for a runtime tile shape,
/// and `$list`, the shapes it knows (the self-checks run each), from one
/// list of shapes.
macro_rules! shape_dispatch {
    ($(#[$attr:meta])* $name:ident, $list:ident, $kernel:ident: $(($a:literal, $b:literal)),*) => {
        $(#[$attr])*
        ///
        /// # Safety
        /// As for the kernel it calls.
        unsafe fn $name<F: Format>(a: usize, b: usize, w: &PanelMatrix<F>, acts: &Acts, at: TileAt) {
            match (a, b) {
                // SAFETY: forwarded contract.
                $(($a, $b) => unsafe { F::$kernel::<$a, $b>(w, acts, at) },)*
                _ => unreachable!("{}: no kernel for the shape {a}×{b}", stringify!($name)),
            }
        }

        #[cfg(target_arch = "x86_64")]
        const $list: &[(usize, usize)] = &[$(($a, $b)),*];
    };
}

shape_dispatch!(
    /// Calls the 256-bit kernel for `(rows, panels)`: up to eight rows of
    /// one panel, four of two, or one row of up to four.
    dispatch, SHAPES, tile: (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (3, 2), (4, 1), (4, 2), (5, 1), (6, 1), (7, 1), (8, 1)
);

shape_dispatch!(
    /// Calls the 512-bit kernel for `(rows, panel pairs)`: up to eight rows
    /// of one pair (batches), or one row of two (decoding).
    dispatch_wide, WIDE_SHAPES, tile_wide: (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 1), (1, 2)
);

/// Runs a tile that [`PanelMatrix::matmul_into`] makes (up to 8 rows of
/// 1 or 2 panels, 4 rows of 2, or 1 row of up to 4): through the 512-bit
/// kernels when `wide` and the panels pair up, else through the 256-bit
/// ones (whole for one panel, four rows at a time for more).
///
/// # Safety
/// As for [`Format::tile`]; `wide` only where [`wide`] said so.
unsafe fn run_tile<F: Format>(rows: usize, panels: usize, w: &PanelMatrix<F>, acts: &Acts, at: TileAt, wide: bool) {
    // SAFETY: forwarded contract.
    unsafe {
        if wide && panels.is_multiple_of(2) {
            dispatch_wide::<F>(rows, panels / 2, w, acts, at);
            return;
        }
        if panels == 1 {
            dispatch::<F>(rows, 1, w, acts, at);
            return;
        }
        for r in (0..rows).step_by(4) {
            let part = TileAt { r0: at.r0 + r, prefetch: at.prefetch && r == 0, ..at };
            dispatch::<F>((rows - r).min(4), panels, w, acts, part);
        }
    }
}

/// The activations a tile reads, from its first row on: row `r` of the
/// tile, block `b` (see [`Acts`]' layout).
#[cfg(target_arch = "x86_64")]
struct TileRows {
    qs: *const u8,
    scales: *const f32,
    sums: *const f32,
    isums: *const i32,
    /// Rows in `acts`: the stride from one block to the next.
    m: usize,
}

#[cfg(target_arch = "x86_64")]
impl TileRows {
    /// # Safety
    /// Row `r0` exists in `acts`.
    unsafe fn new(acts: &Acts, r0: usize) -> Self {
        // SAFETY: the row exists (contract); `sums` is only read for Q4_1,
        // where it has the same shape as `scales`.
        unsafe {
            Self {
                qs: acts.qs.as_ptr().add(r0 * Q8_BLOCK) as *const u8,
                scales: acts.scales.as_ptr().add(r0),
                sums: acts.sums.as_ptr().wrapping_add(r0),
                isums: acts.isums.as_ptr().add(r0),
                m: acts.m,
            }
        }
    }

    /// Four activation bytes of row `r`, block `b`, from input `at` of the
    /// block, as one broadcast lane.
    ///
    /// # Safety
    /// The row and block exist; `at + 4 <= 32`.
    #[inline(always)]
    unsafe fn four(&self, r: usize, b: usize, at: usize) -> i32 {
        // SAFETY: inside the buffer (contract).
        unsafe { (self.qs.add((b * self.m + r) * Q8_BLOCK + at) as *const i32).read_unaligned() }
    }

    /// # Safety
    /// The row and block exist.
    #[inline(always)]
    unsafe fn scale(&self, r: usize, b: usize) -> f32 {
        // SAFETY: inside the buffer (contract).
        unsafe { *self.scales.add(b * self.m + r) }
    }

    /// # Safety
    /// The row and block exist, and the activations have sums (Q4_1).
    #[inline(always)]
    unsafe fn sum(&self, r: usize, b: usize) -> f32 {
        // SAFETY: inside the buffer (contract).
        unsafe { *self.sums.add(b * self.m + r) }
    }

    /// # Safety
    /// The row and block exist.
    #[inline(always)]
    unsafe fn isum(&self, r: usize, b: usize) -> i32 {
        // SAFETY: inside the buffer (contract).
        unsafe { *self.isums.add(b * self.m + r) }
    }
}

#[cfg(target_arch = "x86_64")]
impl<F: Format> PanelMatrix<F> {
    /// A tile's panel pointers, activation rows and prefetch of the panels
    /// after it.
    ///
    /// # Safety
    /// Panels `p0..p0 + C` and rows `r0..r0 + R` exist.
    unsafe fn tile_inputs<const R: usize, const C: usize>(
        &self,
        acts: &Acts,
        p0: usize,
        r0: usize,
        prefetch: bool,
    ) -> ([*const u8; C], TileRows, Prefetch) {
        let per_panel = self.kb * F::PANEL_BLOCK;
        // SAFETY: the panels and rows exist (contract).
        unsafe {
            (
                std::array::from_fn(|c| self.data.as_ptr().add((p0 + c) * per_panel)),
                TileRows::new(acts, r0),
                Prefetch::new(&self.data, (p0 + C) * per_panel, C * F::PANEL_BLOCK, prefetch),
            )
        }
    }
}

/// Defines a Q4_1 tile kernel (see [`Format::tile`]) for the target
/// features `$features`. `step` adds the products of one vector of
/// weight codes `w` (0..15) and four broadcast activation bytes `a` into
/// a block accumulator `dot`; `total` turns a block accumulator into the
/// eight outputs' 32-bit dot products. Every variant computes the same
/// exact integers, so they agree bit for bit.
macro_rules! q4_kernel {
    ($(#[$attr:meta])* $name:ident, $features:literal,
     step: |$dot:ident, $w:ident, $a:ident| $step:expr, total: |$t:ident| $total:expr) => {
        $(#[$attr])*
        ///
        /// # Safety
        /// As for [`Format::tile`], and the CPU has `
        #[doc = $features]
        /// `.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        // Index loops over the register tile read closer to the math than
        // iterators.
        #[allow(clippy::needless_range_loop)]
        unsafe fn $name<const R: usize, const C: usize>(w: &PanelMatrix<Q4>, acts: &Acts, at: TileAt) {
            use std::arch::x86_64::*;
            let TileAt { p0, r0, prefetch, .. } = at;
            at.prefetch_out(R, C);
            // SAFETY: see the function's contract.
            unsafe {
                let (kb, pb) = (w.kb, Q4::PANEL_BLOCK);
                let (panels, rows, next) = w.tile_inputs::<R, C>(acts, p0, r0, prefetch);
                let low = _mm256_set1_epi8(0x0f);
                let mut acc = [[_mm256_setzero_ps(); C]; R];
                for b in 0..kb {
                    next.block(b);
                    let mut dot = [[_mm256_setzero_si256(); C]; R];
                    // A trip count the optimiser cannot see: fully unrolled,
                    // the loop keeps every unpacked weight vector alive and
                    // spills.
                    for v in 0..w.vectors {
                        let raw: [__m256i; C] = std::array::from_fn(|c| {
                            _mm256_loadu_si256(panels[c].add(b * pb + v * 32) as *const __m256i)
                        });
                        for half in 0..2 {
                            let wv: [__m256i; C] = std::array::from_fn(|c| {
                                if half == 0 {
                                    _mm256_and_si256(raw[c], low)
                                } else {
                                    _mm256_and_si256(_mm256_srli_epi16::<4>(raw[c]), low)
                                }
                            });
                            let at = 4 * (2 * v + half);
                            for r in 0..R {
                                let $a = _mm256_set1_epi32(rows.four(r, b, at));
                                for c in 0..C {
                                    let ($dot, $w) = (dot[r][c], wv[c]);
                                    dot[r][c] = $step;
                                }
                            }
                        }
                    }
                    let d: [__m256; C] = std::array::from_fn(|c| {
                        _mm256_cvtph_ps(_mm_loadu_si128(panels[c].add(b * pb + 128) as *const __m128i))
                    });
                    let mins: [__m256; C] = std::array::from_fn(|c| {
                        _mm256_cvtph_ps(_mm_loadu_si128(panels[c].add(b * pb + 144) as *const __m128i))
                    });
                    for r in 0..R {
                        let da = _mm256_set1_ps(rows.scale(r, b));
                        let sa = _mm256_set1_ps(rows.sum(r, b));
                        for c in 0..C {
                            let $t = dot[r][c];
                            let x = _mm256_cvtepi32_ps($total);
                            acc[r][c] = _mm256_fmadd_ps(x, _mm256_mul_ps(d[c], da), acc[r][c]);
                            acc[r][c] = _mm256_fmadd_ps(mins[c], sa, acc[r][c]);
                        }
                    }
                }
                store_tile(&acc, w.n, at);
            }
        }
    };
}

/// Defines an 8-bit tile kernel like [`q4_kernel`]: `step` adds the
/// products of `|w|` (unsigned) and `a·sign(w)` into `dot` as 32-bit sums.
macro_rules! q8_kernel {
    ($(#[$attr:meta])* $name:ident, $features:literal, step: |$dot:ident, $w:ident, $a:ident| $step:expr) => {
        $(#[$attr])*
        ///
        /// # Safety
        /// As for [`Format::tile`], and the CPU has `
        #[doc = $features]
        /// `.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::needless_range_loop)]
        unsafe fn $name<const R: usize, const C: usize>(w: &PanelMatrix<Q8>, acts: &Acts, at: TileAt) {
            use std::arch::x86_64::*;
            let TileAt { p0, r0, prefetch, .. } = at;
            at.prefetch_out(R, C);
            // SAFETY: see the function's contract.
            unsafe {
                let (kb, pb) = (w.kb, Q8::PANEL_BLOCK);
                let (panels, rows, next) = w.tile_inputs::<R, C>(acts, p0, r0, prefetch);
                let mut acc = [[_mm256_setzero_ps(); C]; R];
                for b in 0..kb {
                    next.block(b);
                    let mut dot = [[_mm256_setzero_si256(); C]; R];
                    // See q4_kernel.
                    for step in 0..w.vectors {
                        let wv: [__m256i; C] = std::array::from_fn(|c| {
                            _mm256_loadu_si256(panels[c].add(b * pb + step * 32) as *const __m256i)
                        });
                        let wabs: [__m256i; C] = std::array::from_fn(|c| _mm256_sign_epi8(wv[c], wv[c]));
                        for r in 0..R {
                            let a = _mm256_set1_epi32(rows.four(r, b, 4 * step));
                            for c in 0..C {
                                let ($dot, $w, $a) = (dot[r][c], wabs[c], _mm256_sign_epi8(a, wv[c]));
                                dot[r][c] = $step;
                            }
                        }
                    }
                    let d: [__m256; C] = std::array::from_fn(|c| {
                        _mm256_cvtph_ps(_mm_loadu_si128(panels[c].add(b * pb + 256) as *const __m128i))
                    });
                    for r in 0..R {
                        let da = _mm256_set1_ps(rows.scale(r, b));
                        for c in 0..C {
                            acc[r][c] =
                                _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r][c]), _mm256_mul_ps(d[c], da), acc[r][c]);
                        }
                    }
                }
                store_tile(&acc, w.n, at);
            }
        }
    };
}

q4_kernel!(
    /// Q4_1 tile with AVX2: pair sums of at most 2·15·127, eight steps a
    /// block, are added up exactly in 16 bits and widened once a block.
    q4_tile, "avx2,fma,f16c",
    step: |dot, w, a| _mm256_add_epi16(dot, _mm256_maddubs_epi16(w, a)),
    total: |t| _mm256_madd_epi16(t, _mm256_set1_epi16(1))
);

q4_kernel!(
    /// Q4_1 tile with AVX512-VNNI: `vpdpbusd` multiplies and adds four
    /// bytes into 32 bits in one instruction.
    q4_tile_vnni, "avx2,fma,f16c,avx512vnni,avx512vl",
    step: |dot, w, a| _mm256_dpbusd_epi32(dot, w, a),
    total: |t| t
);

q8_kernel!(
    /// 8-bit tile with AVX2: `maddubs` pair sums fill 16 bits, so they are
    /// widened at every step.
    q8_tile, "avx2,fma,f16c",
    step: |dot, w, a| _mm256_add_epi32(dot, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)))
);

q8_kernel!(
    /// 8-bit tile with AVX512-VNNI.
    q8_tile_vnni, "avx2,fma,f16c,avx512vnni,avx512vl",
    step: |dot, w, a| _mm256_dpbusd_epi32(dot, w, a)
);

/// The pointers a 512-bit tile reads: pair `j` is panels `p0 + 2j` and
/// `p0 + 2j + 1`, one in each 256-bit half of a vector.
#[cfg(target_arch = "x86_64")]
struct WideInputs<const P: usize> {
    lo: [*const u8; P],
    hi: [*const u8; P],
    rows: TileRows,
    next: Prefetch,
}

#[cfg(target_arch = "x86_64")]
impl<F: Format> PanelMatrix<F> {
    /// # Safety
    /// Panels `p0..p0 + 2P` and row `r0` exist.
    unsafe fn wide_inputs<const P: usize>(&self, acts: &Acts, at: TileAt) -> WideInputs<P> {
        let per_panel = self.kb * F::PANEL_BLOCK;
        let panel = |c: usize| self.data.as_ptr().wrapping_add((at.p0 + c) * per_panel);
        // SAFETY: the rows exist (contract).
        let rows = unsafe { TileRows::new(acts, at.r0) };
        WideInputs {
            lo: std::array::from_fn(|j| panel(2 * j)),
            hi: std::array::from_fn(|j| panel(2 * j + 1)),
            rows,
            next: Prefetch::new(&self.data, (at.p0 + 2 * P) * per_panel, 2 * P * F::PANEL_BLOCK, at.prefetch),
        }
    }
}

/// 32 bytes from each of two panels as one vector.
///
/// # Safety
/// AVX-512 F; both pointers are valid for 32 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
#[inline]
unsafe fn load_pair(lo: *const u8, hi: *const u8) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(lo as *const __m256i)),
            _mm256_loadu_si256(hi as *const __m256i),
        )
    }
}

/// Eight f16 values from each of two panels as sixteen f32.
///
/// # Safety
/// AVX-512 F; both pointers are valid for 16 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c,avx512f")]
#[inline]
unsafe fn load_pair_f16(lo: *const u8, hi: *const u8) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(lo as *const __m128i)),
            _mm_loadu_si128(hi as *const __m128i),
        ))
    }
}

/// Writes (or adds) a 512-bit tile's outputs, pair `j` of row `r` at
/// columns `(p0 + 2j)·8..` of row `r0 + r`, none past column `n`.
///
/// # Safety
/// AVX-512 F; the tile lies inside `at.out` (row stride `at.ld`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
#[inline]
unsafe fn store_tile_wide<const R: usize, const P: usize>(
    acc: &[[std::arch::x86_64::__m512; P]; R],
    n: usize,
    at: TileAt,
) {
    use std::arch::x86_64::*;
    for (r, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let col = (at.p0 + 2 * j) * PANEL;
            let valid = n - col;
            // Masked loads and stores leave the lanes past `valid` alone,
            // and do not fault there.
            let mask: __mmask16 = if valid >= 2 * PANEL { !0 } else { (1u16 << valid) - 1 };
            // SAFETY: see the function's contract.
            unsafe {
                let dst = at.out.add((at.r0 + r) * at.ld + col);
                let v = if at.add { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), v) } else { v };
                _mm512_mask_storeu_ps(dst, mask, v);
            }
        }
    }
}

/// Q4_1 tile over `2·P` panels with 512-bit AVX512-VNNI: a vector holds
/// a step of two panels (sixteen outputs), so each weight vector is
/// unpacked once for up to eight rows and each instruction does twice
/// the work of [`q4_tile_vnni`]'s. Every lane goes through the AVX2
/// kernel's operations in its order (exact integer dot product per block,
/// then `fma(x, d·da, acc)` and `fma(m, da·Σa, acc)`), so the results are
/// the same bits.
///
/// # Safety
/// As for [`Format::tile_wide`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)]
unsafe fn q4_tile_wide<const R: usize, const P: usize>(w: &PanelMatrix<Q4>, acts: &Acts, at: TileAt) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        let (kb, pb) = (w.kb, Q4::PANEL_BLOCK);
        let WideInputs { lo, hi, rows, next } = w.wide_inputs::<P>(acts, at);
        at.prefetch_out(R, 2 * P);
        let low = _mm512_set1_epi8(0x0f);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for b in 0..kb {
            next.block(b);
            let mut dot = [[_mm512_setzero_si512(); P]; R];
            // See q4_kernel on the opaque trip count.
            for v in 0..w.vectors {
                let at = b * pb + v * 32;
                let raw: [__m512i; P] = std::array::from_fn(|j| load_pair(lo[j].add(at), hi[j].add(at)));
                for half in 0..2 {
                    let wv: [__m512i; P] = std::array::from_fn(|j| {
                        if half == 0 {
                            _mm512_and_si512(raw[j], low)
                        } else {
                            _mm512_and_si512(_mm512_srli_epi16::<4>(raw[j]), low)
                        }
                    });
                    let q = 4 * (2 * v + half);
                    for r in 0..R {
                        let a = _mm512_set1_epi32(rows.four(r, b, q));
                        for j in 0..P {
                            dot[r][j] = _mm512_dpbusd_epi32(dot[r][j], wv[j], a);
                        }
                    }
                }
            }
            let d: [__m512; P] =
                std::array::from_fn(|j| load_pair_f16(lo[j].add(b * pb + 128), hi[j].add(b * pb + 128)));
            let mins: [__m512; P] =
                std::array::from_fn(|j| load_pair_f16(lo[j].add(b * pb + 144), hi[j].add(b * pb + 144)));
            for r in 0..R {
                let da = _mm512_set1_ps(rows.scale(r, b));
                let sa = _mm512_set1_ps(rows.sum(r, b));
                for j in 0..P {
                    let x = _mm512_cvtepi32_ps(dot[r][j]);
                    acc[r][j] = _mm512_fmadd_ps(x, _mm512_mul_ps(d[j], da), acc[r][j]);
                    acc[r][j] = _mm512_fmadd_ps(mins[j], sa, acc[r][j]);
                }
            }
        }
        store_tile_wide(&acc, w.n, at);
    }
}

/// 8-bit tile over `2·P` panels with 512-bit AVX512-VNNI. `vpdpbusd`
/// wants unsigned weights, and AVX-512 has no `vpsignb` for the sign
/// trick, so the weights go in offset by 128 (`w ^ 0x80`, 0..255) and
/// the block's `128·Σa` comes off the exact 32-bit sum afterwards: the
/// same integer as the AVX2 kernel's, then the same `fma(x, d·da, acc)`.
///
/// # Safety
/// As for [`Format::tile_wide`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)]
unsafe fn q8_tile_wide<const R: usize, const P: usize>(w: &PanelMatrix<Q8>, acts: &Acts, at: TileAt) {
    use std::arch::x86_64::*;
    // SAFETY: see the function's contract.
    unsafe {
        let (kb, pb) = (w.kb, Q8::PANEL_BLOCK);
        let WideInputs { lo, hi, rows, next } = w.wide_inputs::<P>(acts, at);
        at.prefetch_out(R, 2 * P);
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for b in 0..kb {
            next.block(b);
            let mut dot = [[_mm512_setzero_si512(); P]; R];
            // See q4_kernel on the opaque trip count.
            for step in 0..w.vectors {
                let at = b * pb + step * 32;
                let wv: [__m512i; P] =
                    std::array::from_fn(|j| _mm512_xor_si512(load_pair(lo[j].add(at), hi[j].add(at)), flip));
                for r in 0..R {
                    let a = _mm512_set1_epi32(rows.four(r, b, 4 * step));
                    for j in 0..P {
                        dot[r][j] = _mm512_dpbusd_epi32(dot[r][j], wv[j], a);
                    }
                }
            }
            let d: [__m512; P] =
                std::array::from_fn(|j| load_pair_f16(lo[j].add(b * pb + 256), hi[j].add(b * pb + 256)));
            for r in 0..R {
                let da = _mm512_set1_ps(rows.scale(r, b));
                let offset = _mm512_set1_epi32(128 * rows.isum(r, b));
                for j in 0..P {
                    let x = _mm512_cvtepi32_ps(_mm512_sub_epi32(dot[r][j], offset));
                    acc[r][j] = _mm512_fmadd_ps(x, _mm512_mul_ps(d[j], da), acc[r][j]);
                }
            }
        }
        store_tile_wide(&acc, w.n, at);
    }
}

/// Prefetches the panels after a tile's while the tile runs: `per` bytes
/// (one block of each of its panels) for each block, the first row tile
/// of a pass only. The hardware prefetcher does not run ahead across the
/// row tiles that reread a panel, and the next panels come from L3 or
/// memory.
#[cfg(target_arch = "x86_64")]
struct Prefetch {
    from: *const u8,
    per: usize,
    end: *const u8,
}

#[cfg(target_arch = "x86_64")]
impl Prefetch {
    fn new(data: &[u8], at: usize, per: usize, on: bool) -> Self {
        let end = data.as_ptr_range().end;
        let from = if on && at < data.len() { data.as_ptr().wrapping_add(at) } else { end };
        Self { from, per, end }
    }

    #[inline(always)]
    fn block(&self, b: usize) {
        use std::arch::x86_64::*;
        let mut line = self.from.wrapping_add(b * self.per);
        let stop = self.from.wrapping_add((b + 1) * self.per);
        while line < stop && line < self.end {
            // SAFETY: a prefetch is only a hint; the address is inside the
            // panel data (checked against its end).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line = line.wrapping_add(64);
        }
    }
}

/// Writes (or adds) a 256-bit tile's outputs, panel `c` of row `r` at
/// columns `(p0 + c)·8..` of row `r0 + r`, none past column `n`.
///
/// # Safety
/// AVX2 is present; the tile lies inside `at.out` (row stride `at.ld`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_tile<const R: usize, const C: usize>(acc: &[[std::arch::x86_64::__m256; C]; R], n: usize, at: TileAt) {
    use std::arch::x86_64::*;
    for (r, row) in acc.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let col = (at.p0 + c) * PANEL;
            let valid = n - col;
            // SAFETY: see the function's contract.
            unsafe {
                let dst = at.out.add((at.r0 + r) * at.ld + col);
                if valid >= PANEL {
                    let v = if at.add { _mm256_add_ps(_mm256_loadu_ps(dst), v) } else { v };
                    _mm256_storeu_ps(dst, v);
                } else {
                    let mut lanes = [0f32; PANEL];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                    for (i, &x) in lanes[..valid].iter().enumerate() {
                        *dst.add(i) = if at.add { *dst.add(i) + x } else { x };
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q4_tile<const R: usize, const C: usize>(_: &PanelMatrix<Q4>, _: &Acts, _: TileAt) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q8_tile<const R: usize, const C: usize>(_: &PanelMatrix<Q8>, _: &Acts, _: TileAt) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q4_tile_vnni<const R: usize, const C: usize>(_: &PanelMatrix<Q4>, _: &Acts, _: TileAt) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q8_tile_vnni<const R: usize, const C: usize>(_: &PanelMatrix<Q8>, _: &Acts, _: TileAt) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q4_tile_wide<const R: usize, const P: usize>(_: &PanelMatrix<Q4>, _: &Acts, _: TileAt) {
    unreachable!("the quantized kernels need x86-64 (supported() is false here)")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q8_tile_wide<const R: usize, const P: usize>(_: &PanelMatrix<Q8>, _: &Acts, _: TileAt) {
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

    /// Roughly normal values of standard deviation `std` from a fixed
    /// seed (candle's CPU generator cannot be seeded), so the tolerances
    /// below are checked on the same numbers every run.
    fn randn(std: f32, shape: (usize, usize), seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut uniform = || rng.random_range(-1.0f32..1.0);
        // A sum of four uniforms on [-1, 1] has variance 4/3.
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (uniform() + uniform() + uniform() + uniform()) * std * 0.75f32.sqrt())
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

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
    fn vnni_kernels_run_only_where_they_agree_with_avx2() {
        #[cfg(target_arch = "x86_64")]
        {
            let present =
                supported() && std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl");
            // The check itself, on the AVX2 kernels every such CPU runs.
            if supported() {
                assert!(kernels_agree(false));
            }
            if present {
                assert!(vnni_agrees(), "AVX512-VNNI kernels differ from the AVX2 ones");
            }
            assert_eq!(vnni(), present);
        }
    }

    #[test]
    fn wide_kernels_run_only_where_they_agree_with_avx2() {
        #[cfg(target_arch = "x86_64")]
        {
            if wide_present() {
                assert!(wide_agrees(), "the 512-bit kernels differ from the AVX2 ones");
            }
            assert_eq!(wide(), wide_present());
        }
    }

    #[test]
    fn vector_quantization_matches_scalar() {
        let mut x: Vec<f32> = randn(3.0, (5, 96), 1).flatten_all().unwrap().to_vec1().unwrap();
        x[32..64].fill(0.0); // an all-zero block
        x[7] = 0.5 * (x[3].abs() / 127.0); // a value halfway between steps
        let acts = Acts::new(&x, 5, 96, true);
        let (mut qs, mut scales) = (vec![0i8; 5 * 96], vec![0f32; 15]);
        for r in 0..5 {
            quantize_blocks(&x[r * 96..(r + 1) * 96], &mut qs[r * 96..(r + 1) * 96], &mut scales[r * 3..(r + 1) * 3]);
        }
        // Block-major: block b of row r is slot b·5 + r.
        for r in 0..5 {
            for b in 0..3 {
                let (row_major, at) = (r * 3 + b, b * 5 + r);
                let blk = &qs[row_major * 32..][..32];
                assert_eq!(acts.qs[at * 32..][..32], *blk, "row {r} block {b}");
                assert_eq!(acts.scales[at], scales[row_major]);
                let total = blk.iter().map(|&v| v as i32).sum::<i32>();
                assert_eq!(acts.isums[at], total);
                assert_eq!(acts.sums[at], total as f32 * scales[row_major]);
            }
        }
        assert!(acts.qs[5 * 32..6 * 32].iter().all(|&q| q == 0) && acts.scales[5] == 0.0);
    }

    #[test]
    fn q8_matmul_matches_f32() {
        if !supported() {
            return;
        }
        for (m, n, k) in [(1, 7, 64), (3, 10, 96), (16, 33, 576), (9, 5, 32)] {
            let w = randn(1.0, (n, k), 2);
            let x = randn(1.0, (m, k), 3);
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
            let w = randn(1.0, (n, k), 4);
            let x = randn(1.0, (m, k), 5);
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
    fn matmul_into_adds_to_what_is_there() {
        if !supported() {
            return;
        }
        // 12 outputs: one whole panel and one of four rows.
        for (m, n, k) in [(1, 12, 64), (6, 12, 96), (16, 16, 32)] {
            let w = randn(1.0, (n, k), 6);
            let x: Vec<f32> = randn(1.0, (m, k), 7).flatten_all().unwrap().to_vec1().unwrap();
            let mat = Q8Matrix::from_tensor(&w).unwrap();
            let y = mat.matmul(&x, m);
            let base: Vec<f32> = (0..m * n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut out = base.clone();
            // A longer buffer: nothing past `m × n` is touched.
            out.push(42.0);
            mat.matmul_into(&x, m, &mut out, true);
            for i in 0..m * n {
                assert_eq!(out[i], base[i] + y[i], "m{m} n{n} element {i}");
            }
            assert_eq!(out[m * n], 42.0);
            mat.matmul_into(&x, m, &mut out, false);
            assert_eq!(out[..m * n], y[..]);
        }
    }

    #[test]
    fn q4_concat_rows_and_batch_invariance() {
        if !supported() {
            return;
        }
        // Nine rows: a tile of eight and one alone on AVX2, of eight and
        // one over two-panel pairs with AVX-512.
        let (k, m) = (96, 9);
        let parts: Vec<Tensor> = [5usize, 8, 3].iter().map(|&n| randn(1.0, (n, k), 8)).collect();
        let mats: Vec<Q4Matrix> = parts
            .iter()
            .map(|w| {
                let n = w.dim(0).unwrap();
                let raw = QTensor::quantize(w, GgmlDType::Q4_1).unwrap().data().unwrap().to_vec();
                Q4Matrix::from_q4_1_blocks(&raw, n, k, &(0..n).collect::<Vec<_>>()).unwrap()
            })
            .collect();
        let joined = Q4Matrix::concat_rows(&mats.iter().collect::<Vec<_>>()).unwrap();
        let x: Vec<f32> = randn(1.0, (m, k), 9).flatten_all().unwrap().to_vec1().unwrap();
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
