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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_in_place_avx2(xs: &mut [f32]) {
    exp_in_place_portable(xs)
}

pub(crate) fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features the function was compiled for are present.
            unsafe { exp_in_place_avx2(xs) };
            return;
        }
    }
    exp_in_place_portable(xs)
}

fn max_of(xs: &[f32]) -> f32 {
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

fn sum_of(xs: &[f32]) -> f32 {
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

/// Values per quantization block, as in GGML's Q8_0.
pub(crate) const Q8_BLOCK: usize = 32;

/// A weight matrix `[n, k]` in 8-bit blocks of 32 with one f32 scale per
/// block: the Q8_0 format with its scales widened, so the inner loop needs
/// no f16 conversion. candle's Q8_0 kernel converts two f16 scales per
/// block through a function call and runs one accumulator chain; this one
/// reads each activation block once for four weight rows.
#[derive(Debug)]
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
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

impl Q8Matrix {
    /// Whether this CPU runs the kernel (AVX2 with FMA).
    pub(crate) fn supported() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    pub(crate) fn from_tensor(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        if !k.is_multiple_of(Q8_BLOCK) {
            candle_core::bail!("q8: inner dimension {k} is not a multiple of {Q8_BLOCK}");
        }
        let data = w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut qs = vec![0i8; n * k];
        let mut scales = vec![0f32; n * k / Q8_BLOCK];
        quantize_blocks(&data, &mut qs, &mut scales);
        Ok(Self { n, k, qs, scales })
    }

    /// `x @ self.T` for `x: [m, k]` (CPU, f32), parallel over weight rows.
    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let kb = k / Q8_BLOCK;
        let mut aq = vec![0i8; m * k];
        let mut ad = vec![0f32; m * kb];
        quantize_blocks(x, &mut aq, &mut ad);
        let mut out = vec![0f32; m * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let acts = ActBlocks { qs: &aq, scales: &ad, sums: &[], kb };
        run_tiles(n, m, |w0, a0, full| {
            // SAFETY: as in Q4Matrix::matmul.
            unsafe {
                match (full, m) {
                    (false, _) => q8_tile::<1, 1>(&self.qs, &self.scales, &acts, w0, n, a0, m, n, out_ptr.get()),
                    (true, 1) => q8_tile::<{ DECODE_TILE.0 }, { DECODE_TILE.1 }>(
                        &self.qs,
                        &self.scales,
                        &acts,
                        w0,
                        n,
                        a0,
                        m,
                        n,
                        out_ptr.get(),
                    ),
                    (true, _) => q8_tile::<{ BATCH_TILE.0 }, { BATCH_TILE.1 }>(
                        &self.qs,
                        &self.scales,
                        &acts,
                        w0,
                        n,
                        a0,
                        m,
                        n,
                        out_ptr.get(),
                    ),
                }
            }
        });
        out
    }
}

struct SendPtr(*mut f32);

impl SendPtr {
    // A method, so closures capture the whole (Sync) wrapper rather than
    // its raw-pointer field.
    fn get(&self) -> *mut f32 {
        self.0
    }
}
// SAFETY: used only to write disjoint elements from pool workers.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// `x @ W.T` for a [`Q8Matrix`] as a candle op on `x: [.., k]`.
pub(crate) struct Q8MatMul(pub std::sync::Arc<Q8Matrix>);

impl CustomOp1 for Q8MatMul {
    fn name(&self) -> &'static str {
        "q8-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(src) = storage else {
            candle_core::bail!("q8-matmul: f32 input only");
        };
        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("q8-matmul: input must be contiguous");
        };
        let mut dims = layout.shape().dims().to_vec();
        let k = dims.pop().unwrap_or(0);
        if k != self.0.k {
            candle_core::bail!("q8-matmul: input has {k} features, weight {}", self.0.k);
        }
        let m = (o2 - o1) / k.max(1);
        let out = self.0.matmul(&src[o1..o2], m);
        dims.push(self.0.n);
        Ok((CpuStorage::F32(out), Shape::from_dims(&dims)))
    }
}

#[cfg(test)]
mod q8_tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn q8_matmul_matches_f32() {
        if !Q8Matrix::supported() {
            return;
        }
        let dev = Device::Cpu;
        for (m, n, k) in [(1, 7, 64), (3, 10, 96), (16, 33, 576)] {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let q = std::sync::Arc::new(Q8Matrix::from_tensor(&w).unwrap());
            let got = x.apply_op1_no_bwd(&Q8MatMul(q)).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 0.02 * scale, "m{m} n{n} k{k}: err {err} scale {scale}");
        }
    }
}

/// IEEE half to f32 (GGUF block scales are little-endian f16).
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

/// Bytes of GGUF's Q4_1 block: f16 scale, f16 min, 16 bytes of nibbles
/// (low nibbles hold values 0..16, high nibbles 16..32).
const Q4_1_BLOCK_BYTES: usize = 20;
/// Bytes of GGUF's Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BLOCK_BYTES: usize = 34;

impl Q8Matrix {
    /// Takes GGUF Q8_0 blocks as they are (rows in `row_order`): lossless,
    /// only the scales are widened to f32.
    pub(crate) fn from_q8_0_blocks(raw: &[u8], n: usize, k: usize, row_order: &[usize]) -> candle_core::Result<Self> {
        let kb = k / Q8_BLOCK;
        if raw.len() != n * kb * Q8_0_BLOCK_BYTES || row_order.len() != n {
            candle_core::bail!("q8_0 data of {} bytes does not fit [{n}, {k}]", raw.len());
        }
        let mut qs = Vec::with_capacity(n * k);
        let mut scales = Vec::with_capacity(n * kb);
        for &src in row_order {
            for b in 0..kb {
                let blk = &raw[(src * kb + b) * Q8_0_BLOCK_BYTES..][..Q8_0_BLOCK_BYTES];
                scales.push(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                qs.extend(blk[2..].iter().map(|&x| x as i8));
            }
        }
        Ok(Self { n, k, qs, scales })
    }

    /// One matrix whose rows are `parts`' rows, in order (fused q/k/v).
    pub(crate) fn concat_rows(parts: &[&Self]) -> Option<Self> {
        let k = parts.first()?.k;
        if parts.iter().any(|p| p.k != k) {
            return None;
        }
        Some(Self {
            n: parts.iter().map(|p| p.n).sum(),
            k,
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
        })
    }
}

/// A weight matrix in GGUF's Q4_1 blocks, unpacked into separate arrays:
/// nibbles, f32 scales and f32 mins. The values are exactly the file's.
/// The dot product with an 8-bit activation block `a` (scale `da`) is
/// `d·da·Σq·a + m·da·Σa`, so unsigned nibbles feed `maddubs` directly and
/// the min term needs one precomputed sum per activation block, as in
/// llama.cpp's Q4_1×Q8_1 kernel.
#[derive(Debug)]
pub(crate) struct Q4Matrix {
    n: usize,
    k: usize,
    qs: Vec<u8>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

impl Q4Matrix {
    pub(crate) fn from_q4_1_blocks(raw: &[u8], n: usize, k: usize, row_order: &[usize]) -> candle_core::Result<Self> {
        let kb = k / Q8_BLOCK;
        if raw.len() != n * kb * Q4_1_BLOCK_BYTES || row_order.len() != n {
            candle_core::bail!("q4_1 data of {} bytes does not fit [{n}, {k}]", raw.len());
        }
        let mut qs = Vec::with_capacity(n * k / 2);
        let mut scales = Vec::with_capacity(n * kb);
        let mut mins = Vec::with_capacity(n * kb);
        for &src in row_order {
            for b in 0..kb {
                let blk = &raw[(src * kb + b) * Q4_1_BLOCK_BYTES..][..Q4_1_BLOCK_BYTES];
                scales.push(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                mins.push(f16_to_f32(u16::from_le_bytes([blk[2], blk[3]])));
                qs.extend_from_slice(&blk[4..]);
            }
        }
        Ok(Self { n, k, qs, scales, mins })
    }

    pub(crate) fn concat_rows(parts: &[&Self]) -> Option<Self> {
        let k = parts.first()?.k;
        if parts.iter().any(|p| p.k != k) {
            return None;
        }
        Some(Self {
            n: parts.iter().map(|p| p.n).sum(),
            k,
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
            mins: parts.iter().flat_map(|p| p.mins.iter().copied()).collect(),
        })
    }

    fn matmul(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let kb = k / Q8_BLOCK;
        let mut aq = vec![0i8; m * k];
        let mut ad = vec![0f32; m * kb];
        quantize_blocks(x, &mut aq, &mut ad);
        // Σa per activation block, pre-scaled: the min term's factor.
        let asum: Vec<f32> = aq
            .chunks_exact(Q8_BLOCK)
            .zip(&ad)
            .map(|(q, d)| q.iter().map(|&v| v as i32).sum::<i32>() as f32 * d)
            .collect();
        let mut out = vec![0f32; m * n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let blocks = Q4Blocks { qs: &self.qs, scales: &self.scales, mins: &self.mins, kb };
        let acts = ActBlocks { qs: &aq, scales: &ad, sums: &asum, kb };
        run_tiles(n, m, |w0, a0, full| {
            // SAFETY: AVX2/FMA were checked before the matrix was used;
            // run_tiles keeps every tile inside the matrices; each output
            // element has one writer.
            unsafe {
                match (full, m) {
                    (false, _) => q4_tile::<1, 1>(&blocks, &acts, w0, n, a0, m, n, out_ptr.get()),
                    (true, 1) => {
                        q4_tile::<{ DECODE_TILE.0 }, { DECODE_TILE.1 }>(&blocks, &acts, w0, n, a0, m, n, out_ptr.get())
                    }
                    (true, _) => {
                        q4_tile::<{ BATCH_TILE.0 }, { BATCH_TILE.1 }>(&blocks, &acts, w0, n, a0, m, n, out_ptr.get())
                    }
                }
            }
        });
        out
    }
}

/// Weight rows × activation rows per kernel call: four weight rows for
/// decode (one activation row); for batches a tile whose accumulators,
/// activations and unpacked weights fit the 16 AVX2 registers.
const DECODE_TILE: (usize, usize) = (4, 1);
const BATCH_TILE: (usize, usize) = (1, 4);

/// Runs `tile(first_weight_row, first_activation_row, full)` over the
/// output in parallel, weight-row tiles outermost so each weight tile is
/// read from memory once. `full` is false for the ragged edge, which the
/// caller computes one element at a time.
fn run_tiles<F: Fn(usize, usize, bool) + Sync>(n: usize, m: usize, tile: F) {
    use rayon::prelude::*;
    let (tw, ta) = if m == 1 { DECODE_TILE } else { BATCH_TILE };
    let wtiles = n.div_ceil(tw);
    let chunk = wtiles.div_ceil(rayon::current_num_threads() * 4).max(1);
    (0..wtiles.div_ceil(chunk)).into_par_iter().for_each(|c| {
        for wt in c * chunk..((c + 1) * chunk).min(wtiles) {
            let w0 = wt * tw;
            for a0 in (0..m).step_by(ta) {
                if w0 + tw <= n && a0 + ta <= m {
                    tile(w0, a0, true);
                } else {
                    for w in w0..(w0 + tw).min(n) {
                        for a in a0..(a0 + ta).min(m) {
                            tile(w, a, false);
                        }
                    }
                }
            }
        }
    });
}

struct Q4Blocks<'a> {
    qs: &'a [u8],
    scales: &'a [f32],
    mins: &'a [f32],
    kb: usize,
}

struct ActBlocks<'a> {
    qs: &'a [i8],
    scales: &'a [f32],
    sums: &'a [f32],
    kb: usize,
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

/// Up to `W` weight rows from `w0` (of `n`) against up to `A` activation
/// rows from `a0` (of `m`): each weight block is unpacked once for all `A`
/// activation rows and each activation block loaded once for all `W`
/// weight rows. Results go to `out[a][w]` (row stride `ld`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
// Index loops over the register tile read closer to the math than iterators.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn q4_tile<const W: usize, const A: usize>(
    wb: &Q4Blocks,
    ab: &ActBlocks,
    w0: usize,
    n: usize,
    a0: usize,
    m: usize,
    ld: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: guaranteed by the caller (see run_tiles' callers).
    unsafe {
        let kb = wb.kb;
        debug_assert!(w0 + W <= n && a0 + A <= m);
        let ones = _mm256_set1_epi16(1);
        let low = _mm_set1_epi8(0x0f);
        let mut acc = [[_mm256_setzero_ps(); A]; W];
        let mut a = [_mm256_setzero_si256(); A];
        for b in 0..kb {
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = _mm256_loadu_si256(ab.qs.as_ptr().add(((a0 + j) * kb + b) * Q8_BLOCK) as *const __m256i);
            }
            for r in 0..W {
                let row = w0 + r;
                let raw = _mm_loadu_si128(wb.qs.as_ptr().add((row * kb + b) * 16) as *const __m128i);
                let w = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low), _mm_and_si128(raw, low));
                // Scales broadcast straight from memory (a load, not a
                // shuffle) and multiplied as vectors.
                let wd = _mm256_broadcast_ss(wb.scales.get_unchecked(row * kb + b));
                for j in 0..A {
                    let ai = (a0 + j) * kb + b;
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, a[j]), ones);
                    let scale = _mm256_mul_ps(wd, _mm256_broadcast_ss(ab.scales.get_unchecked(ai)));
                    acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r][j]);
                }
            }
        }
        // The min terms Σ_b m·da·Σa, as one short dot product per output:
        // accumulating them inside the block loop would make a serial
        // chain of scalar adds that stalls it.
        for r in 0..W {
            let mins = &wb.mins[(w0 + r) * kb..(w0 + r + 1) * kb];
            for j in 0..A {
                let sums = &ab.sums[(a0 + j) * kb..(a0 + j + 1) * kb];
                let mut v = _mm256_setzero_ps();
                let mut b = 0;
                while b + 8 <= kb {
                    v = _mm256_fmadd_ps(
                        _mm256_loadu_ps(mins.as_ptr().add(b)),
                        _mm256_loadu_ps(sums.as_ptr().add(b)),
                        v,
                    );
                    b += 8;
                }
                let mut min_term = hsum(v);
                while b < kb {
                    min_term += mins[b] * sums[b];
                    b += 1;
                }
                *out.add((a0 + j) * ld + w0 + r) = hsum(acc[r][j]) + min_term;
            }
        }
    }
}

/// [`q4_tile`] for 8-bit weights (sign trick: `maddubs` needs one unsigned
/// operand, so |w| is paired with a·sign(w)).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn q8_tile<const W: usize, const A: usize>(
    wq: &[i8],
    wd: &[f32],
    ab: &ActBlocks,
    w0: usize,
    n: usize,
    a0: usize,
    m: usize,
    ld: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let kb = ab.kb;
        debug_assert!(w0 + W <= n && a0 + A <= m);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); A]; W];
        let mut a = [_mm256_setzero_si256(); A];
        for b in 0..kb {
            for (j, aj) in a.iter_mut().enumerate() {
                *aj = _mm256_loadu_si256(ab.qs.as_ptr().add(((a0 + j) * kb + b) * Q8_BLOCK) as *const __m256i);
            }
            for r in 0..W {
                let row = w0 + r;
                let w = _mm256_loadu_si256(wq.as_ptr().add((row * kb + b) * Q8_BLOCK) as *const __m256i);
                let wabs = _mm256_sign_epi8(w, w);
                let d = _mm256_broadcast_ss(wd.get_unchecked(row * kb + b));
                for j in 0..A {
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(a[j], w)), ones);
                    let scale = _mm256_mul_ps(d, _mm256_broadcast_ss(ab.scales.get_unchecked((a0 + j) * kb + b)));
                    acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, acc[r][j]);
                }
            }
        }
        for r in 0..W {
            for j in 0..A {
                *out.add((a0 + j) * ld + w0 + r) = hsum(acc[r][j]);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn q4_tile<const W: usize, const A: usize>(
    _: &Q4Blocks,
    _: &ActBlocks,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: *mut f32,
) {
    unreachable!("Q8Matrix::supported() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn q8_tile<const W: usize, const A: usize>(
    _: &[i8],
    _: &[f32],
    _: &ActBlocks,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: usize,
    _: *mut f32,
) {
    unreachable!("Q8Matrix::supported() is false off x86_64")
}

/// `x @ W.T` for a [`Q4Matrix`] as a candle op on `x: [.., k]`.
pub(crate) struct Q4MatMul(pub std::sync::Arc<Q4Matrix>);

impl CustomOp1 for Q4MatMul {
    fn name(&self) -> &'static str {
        "q4-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(src) = storage else {
            candle_core::bail!("q4-matmul: f32 input only");
        };
        let Some((o1, o2)) = layout.contiguous_offsets() else {
            candle_core::bail!("q4-matmul: input must be contiguous");
        };
        let mut dims = layout.shape().dims().to_vec();
        let k = dims.pop().unwrap_or(0);
        if k != self.0.k {
            candle_core::bail!("q4-matmul: input has {k} features, weight {}", self.0.k);
        }
        let m = (o2 - o1) / k.max(1);
        let out = self.0.matmul(&src[o1..o2], m);
        dims.push(self.0.n);
        Ok((CpuStorage::F32(out), Shape::from_dims(&dims)))
    }
}

#[cfg(test)]
mod q4_tests {
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
    fn q4_1_and_q8_0_blocks_match_candle_dequantization() {
        if !Q8Matrix::supported() {
            return;
        }
        let dev = Device::Cpu;
        let (n, k, m) = (12, 96, 5);
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
                    let mat = std::sync::Arc::new(Q4Matrix::from_q4_1_blocks(&raw, n, k, &order).unwrap());
                    x.apply_op1_no_bwd(&Q4MatMul(mat)).unwrap()
                }
                _ => {
                    let mat = std::sync::Arc::new(Q8Matrix::from_q8_0_blocks(&raw, n, k, &order).unwrap());
                    x.apply_op1_no_bwd(&Q8MatMul(mat)).unwrap()
                }
            };
            // Only the activations are quantized (8-bit), so the error is small.
            let err = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(err < 0.02 * scale, "{dtype:?}: err {err} vs scale {scale}");
        }
    }
}

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

fn dot(a: &[f32], b: &[f32]) -> f32 {
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
