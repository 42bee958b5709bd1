//! The CPU inference backend: the decoder's whole forward pass on plain
//! f32 buffers, for inference on x86-64 CPUs with AVX2 and FMA.
//!
//! candle runs a forward pass as a few hundred small ops per layer, each
//! allocating its output and handing work to rayon; on a 2-core CPU that
//! overhead, the extra passes over memory and candle's matmul (which packs
//! the weights again on every call) cost as much as the arithmetic. Here a
//! layer is eight steps on reused buffers:
//!
//! 1. RMSNorm;
//! 2. the fused q/k/v projection ([`sgemm`] on weights packed at load
//!    time, or the engine's Q4_1/Q8 kernels for quantized weights);
//! 3. RoPE on q and k in place;
//! 4. attention: for a prefill, keys and values are packed once per layer
//!    and each block of queries runs `QKᵀ`, a fused causal softmax and
//!    `PV` on its own scratch; for one new token, a fused pass per head;
//! 5. the output projection, accumulated straight into the residual;
//! 6. RMSNorm;
//! 7. gate and up in one matmul with SiLU·up applied to each block as it
//!    leaves the kernel (the `[rows, 2·intermediate]` product is never
//!    written out);
//! 8. the down projection, accumulated into the residual.
//!
//! Teacher-forced log-probs ([`CpuModel::logprobs`]) fuse the lm_head with
//! the log-softmax in the same way: each task reduces its block of logits
//! to a running max and sum per row, so the `[tokens, vocab]` logits are
//! never materialised.
//!
//! The whole pass runs inside rayon's pool, so the many parallel steps of
//! a decoding step are cheap joins between the pool's threads instead of
//! hand-offs from the caller's thread.
//!
//! Nothing here has a backward pass: training graphs, GPUs and other CPUs
//! use the candle ops in `model`.

use std::sync::Arc;

use rayon::prelude::*;

use crate::decode_attention::Group;
use crate::error::{Error, Result};
use crate::kernels::{self, Q4Matrix, Q8Matrix};
use crate::sgemm::{self, AView, AlignedBuf, BView, PackedB, Plan, SendPtr};

/// A projection `x·Wᵀ + b` on the CPU.
#[derive(Debug)]
pub(crate) enum CpuLinear {
    /// f32 weights packed for [`sgemm`].
    Packed { w: Arc<PackedB>, bias: Option<Vec<f32>> },
    /// GGUF Q4_1 blocks (see `kernels::Q4Matrix`).
    Q4 { w: Arc<Q4Matrix>, bias: Option<Vec<f32>> },
    /// 8-bit blocks (see `kernels::Q8Matrix`).
    Q8 { w: Arc<Q8Matrix>, bias: Option<Vec<f32>> },
}

impl CpuLinear {
    fn n(&self) -> usize {
        match self {
            CpuLinear::Packed { w, .. } => w.n(),
            CpuLinear::Q4 { w, .. } => w.n(),
            CpuLinear::Q8 { w, .. } => w.n(),
        }
    }

    fn k(&self) -> usize {
        match self {
            CpuLinear::Packed { w, .. } => w.k(),
            CpuLinear::Q4 { w, .. } => w.k(),
            CpuLinear::Q8 { w, .. } => w.k(),
        }
    }

    fn bias(&self) -> Option<&[f32]> {
        match self {
            CpuLinear::Packed { bias, .. } | CpuLinear::Q4 { bias, .. } | CpuLinear::Q8 { bias, .. } => bias.as_deref(),
        }
    }

    /// `out [m, n] = x·Wᵀ + b` for `x [m, k]`, or `out += x·Wᵀ + b` when
    /// `add` (a residual connection).
    fn forward(&self, x: &[f32], m: usize, out: &mut [f32], add: bool) {
        let (n, k) = (self.n(), self.k());
        debug_assert!(x.len() >= m * k && out.len() >= m * n);
        let out = &mut out[..m * n];
        match self {
            CpuLinear::Packed { w, .. } => sgemm::gemm(AView::new(x, m, k, k), w.view(), out, n, add, true),
            CpuLinear::Q4 { w, .. } => w.matmul_into(&x[..m * k], m, out, add),
            CpuLinear::Q8 { w, .. } => w.matmul_into(&x[..m * k], m, out, add),
        }
        if let Some(b) = self.bias() {
            for row in out.chunks_exact_mut(n) {
                for (o, &bi) in row.iter_mut().zip(b) {
                    *o += bi;
                }
            }
        }
    }
}

thread_local! {
    /// A quantized MLP's gate and up outputs, `[m, 2·inter]`.
    static GATE_UP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Floats of [`GATE_UP`] kept per thread (4 MiB: a decoding step of 16
/// rows of a 7B model, not a long prefill's).
const KEEP_GATE_UP: usize = 1 << 20;

/// The MLP's gate and up projections, producing `SiLU(gate)·up`.
#[derive(Debug)]
pub(crate) enum GateUp {
    /// f32: gate and up panels interleaved ([`PackedB::interleaved`]), so
    /// each task's block holds matching gate and up columns.
    Packed(Arc<PackedB>),
    /// Quantized: one matrix whose rows are gate's then up's.
    Fused(CpuLinear),
}

impl GateUp {
    /// `act [m, inter] = SiLU(x·Gᵀ)·(x·Uᵀ)`.
    fn forward(&self, x: &[f32], m: usize, inter: usize, act: &mut [f32]) {
        match self {
            GateUp::Packed(w) => {
                let n = w.n();
                let pair = 2 * sgemm::NR;
                let plan = Plan::new(m, n, sgemm::MC, 2, true).max_panels(n, 32, 2);
                let out = SendPtr(act.as_mut_ptr());
                sgemm::map_blocks(AView::new(x, m, w.k(), w.k()), w.view(), plan, |blk, data| {
                    let mut neg = [0f32; 32 * sgemm::NR / 2];
                    let half = blk.cols / 2;
                    for r in 0..blk.rows {
                        let row = &data[r * blk.cols..][..blk.cols];
                        for (q, chunk) in row.chunks_exact(pair).enumerate() {
                            for j in 0..sgemm::NR {
                                neg[q * sgemm::NR + j] = -chunk[j];
                            }
                        }
                        kernels::exp_in_place(&mut neg[..half]);
                        // SAFETY: row i0 + r, columns j0/2 .. j0/2 + half of
                        // act belong to this block alone.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(out.get().add((blk.i0 + r) * inter + blk.j0 / 2), half)
                        };
                        for (q, chunk) in row.chunks_exact(pair).enumerate() {
                            for j in 0..sgemm::NR {
                                let (g, u) = (chunk[j], chunk[sgemm::NR + j]);
                                dst[q * sgemm::NR + j] = g / (1.0 + neg[q * sgemm::NR + j]) * u;
                            }
                        }
                    }
                });
            }
            GateUp::Fused(lin) => {
                let mut run = |gu: &mut Vec<f32>| {
                    gu.resize(m * 2 * inter, 0.0);
                    lin.forward(x, m, gu, false);
                    for (row, dst) in gu.chunks_exact(2 * inter).zip(act.chunks_exact_mut(inter)) {
                        let (g, u) = row.split_at(inter);
                        for (d, &gi) in dst.iter_mut().zip(g) {
                            *d = -gi;
                        }
                        kernels::exp_in_place(dst);
                        for ((d, &gi), &ui) in dst.iter_mut().zip(g).zip(u) {
                            *d = gi / (1.0 + *d) * ui;
                        }
                    }
                };
                // Decoding steps reuse this thread's buffer (a fresh zeroed
                // one per layer and step showed as allocation and memset in
                // their profiles); a long prefill's is not kept.
                if m * 2 * inter <= KEEP_GATE_UP {
                    sgemm::with_local(&GATE_UP, run);
                } else {
                    run(&mut Vec::new());
                }
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct CpuLayer {
    pub attn_norm: Vec<f32>,
    pub qkv: CpuLinear,
    pub o: CpuLinear,
    pub mlp_norm: Vec<f32>,
    pub gate_up: GateUp,
    pub down: CpuLinear,
}

/// Where token embeddings come from.
#[derive(Debug)]
pub(crate) enum Embedding {
    /// A row-major `[vocab, hidden]` table.
    Table(Vec<f32>),
    /// The rows of the (tied, packed) lm_head: no second copy.
    LmHead,
}

pub(crate) struct CpuModel {
    pub layers: Vec<CpuLayer>,
    pub norm: Vec<f32>,
    pub eps: f32,
    pub lm_head: CpuLinear,
    pub embed: Embedding,
    /// `[positions, head_dim / 2]`.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub hidden: usize,
    pub inter: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
}

// Dimensions only: the weights and RoPE tables are megabytes.
impl std::fmt::Debug for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuModel")
            .field("layers", &self.layers.len())
            .field("hidden", &self.hidden)
            .field("inter", &self.inter)
            .field("heads", &self.heads)
            .field("kv_heads", &self.kv_heads)
            .field("head_dim", &self.head_dim)
            .field("vocab", &self.vocab)
            .field("lm_head", &self.lm_head)
            .finish_non_exhaustive()
    }
}

/// Keys and values of one layer on the host, `[rows, kv_heads, cap, d]`,
/// for the positions from `prefix.len` on; the positions before are the
/// shared `prefix` (see [`HostKv::select_rows`]).
#[derive(Clone)]
pub(crate) struct HostKv {
    k: Vec<f32>,
    v: Vec<f32>,
    rows: usize,
    kv_heads: usize,
    cap: usize,
    d: usize,
    prefix: Option<Arc<Prefix>>,
}

/// The first `len` positions of keys and values that every row of a cache
/// has in common, `[kv_heads, len, d]`: the prompt of a group of
/// completions, stored and read once instead of once per completion.
#[derive(Debug)]
struct Prefix {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
}

impl std::fmt::Debug for HostKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKv")
            .field("rows", &self.rows)
            .field("kv_heads", &self.kv_heads)
            .field("cap", &self.cap)
            .field("d", &self.d)
            .field("shared", &self.shared())
            .finish()
    }
}

impl HostKv {
    fn new(rows: usize, kv_heads: usize, cap: usize, d: usize) -> Self {
        let len = rows * kv_heads * cap * d;
        Self { k: vec![0f32; len], v: vec![0f32; len], rows, kv_heads, cap, d, prefix: None }
    }

    /// Positions held in the shared prefix.
    fn shared(&self) -> usize {
        shared_len(self.prefix.as_deref())
    }

    /// Rows `rows` of a cache holding `len` positions. Several copies of
    /// one row (a prompt fanned out into a group) share its positions as
    /// a prefix instead of copying them; otherwise rows are copied whole,
    /// and a shared prefix stays shared.
    pub(crate) fn select_rows(&self, rows: &[usize], len: usize) -> Self {
        let (nkv, d) = (self.kv_heads, self.d);
        let own = len.saturating_sub(self.shared());
        if self.prefix.is_none() && rows.len() > 1 && rows.iter().all(|&r| r == rows[0]) && own > 0 {
            let gather = |src: &[f32]| {
                (0..nkv)
                    .flat_map(|g| src[((rows[0] * nkv + g) * self.cap) * d..][..own * d].iter().copied())
                    .collect::<Vec<f32>>()
            };
            let prefix = Prefix { k: gather(&self.k), v: gather(&self.v), len: own };
            return Self { prefix: Some(Arc::new(prefix)), ..HostKv::new(rows.len(), nkv, 0, d) };
        }
        let per = nkv * self.cap * d;
        let gather = |src: &[f32]| rows.iter().flat_map(|&r| src[r * per..(r + 1) * per].iter().copied()).collect();
        Self { k: gather(&self.k), v: gather(&self.v), rows: rows.len(), prefix: self.prefix.clone(), ..*self }
    }

    /// The cache as consecutive runs of `per` rows (the last may hold
    /// fewer), each writable on its own.
    fn rows_mut(&mut self, per: usize) -> impl Iterator<Item = RowsKv<'_>> {
        let (n, cap, prefix) = (per * self.kv_heads * self.cap * self.d, self.cap, self.prefix.as_deref());
        self.k.chunks_mut(n).zip(self.v.chunks_mut(n)).map(move |(k, v)| RowsKv { k, v, cap, prefix })
    }

    /// Room for `needed` positions in all, keeping the first `len`.
    fn reserve(&mut self, len: usize, needed: usize, max_len: usize) {
        let shared = self.shared();
        let (len, needed) = (len - shared, needed - shared);
        if needed <= self.cap {
            return;
        }
        let cap = capacity_for(needed, max_len);
        let mut grown = HostKv { prefix: self.prefix.clone(), ..HostKv::new(self.rows, self.kv_heads, cap, self.d) };
        for rh in 0..self.rows * self.kv_heads {
            let n = len * self.d;
            grown.k[rh * cap * self.d..][..n].copy_from_slice(&self.k[rh * self.cap * self.d..][..n]);
            grown.v[rh * cap * self.d..][..n].copy_from_slice(&self.v[rh * self.cap * self.d..][..n]);
        }
        *self = grown;
    }

    /// The same cache with the prefix copied into every row (for the
    /// prefill attention, which reads one contiguous run of keys per row).
    fn unshare(&mut self, len: usize, max_len: usize) {
        let Some(prefix) = self.prefix.take() else { return };
        let (p, own, d) = (prefix.len, len - prefix.len, self.d);
        let cap = capacity_for(len, max_len);
        let mut full = HostKv::new(self.rows, self.kv_heads, cap, d);
        for r in 0..self.rows {
            for g in 0..self.kv_heads {
                let (dst, src) = ((r * self.kv_heads + g) * cap * d, (r * self.kv_heads + g) * self.cap * d);
                full.k[dst..][..p * d].copy_from_slice(&prefix.k[g * p * d..][..p * d]);
                full.v[dst..][..p * d].copy_from_slice(&prefix.v[g * p * d..][..p * d]);
                full.k[dst + p * d..][..own * d].copy_from_slice(&self.k[src..][..own * d]);
                full.v[dst + p * d..][..own * d].copy_from_slice(&self.v[src..][..own * d]);
            }
        }
        *self = full;
    }
}

/// Some rows of one layer's cache, `[rows, kv_heads, cap, d]` (see
/// [`HostKv`]), for a forward pass over those rows.
struct RowsKv<'a> {
    k: &'a mut [f32],
    v: &'a mut [f32],
    cap: usize,
    prefix: Option<&'a Prefix>,
}

impl RowsKv<'_> {
    fn shared(&self) -> usize {
        shared_len(self.prefix)
    }
}

/// Positions in a shared prefix, if there is one.
fn shared_len(prefix: Option<&Prefix>) -> usize {
    prefix.map_or(0, |p| p.len)
}

/// Rows per independent forward pass when a batch decodes one column.
///
/// Decoding a group splits each step's matrix products across threads
/// about 150 times per step, and those products are short (30–170 µs
/// for 16 rows), so the threads spend a quarter of their time handing
/// work over. Whole passes over disjoint rows need no hand-over until the
/// end; each pass reads all the weights, which costs little once it has
/// enough rows to be bound by arithmetic rather than by memory.
fn rows_per_part(b: usize, t: usize) -> usize {
    const MIN_ROWS: usize = 4;
    if t > 1 || b < 2 * MIN_ROWS {
        return b.max(1);
    }
    b.div_ceil(rayon::current_num_threads()).max(MIN_ROWS)
}

/// Room for `needed` positions: doubling (from 64), so a long generation
/// does not copy the cache on every token, but never past the context.
fn capacity_for(needed: usize, max_len: usize) -> usize {
    needed.max(64).next_power_of_two().min(max_len.max(needed))
}

/// Keys and values as attention reads them: key `j` of batch row `b`, kv
/// head `g` is `k[b * batch + g * head + (j - shared) * row..][..d]` (same
/// for `v`) from `shared` on, and key `j` of the shared prefix before.
#[derive(Clone, Copy)]
struct Kv<'a> {
    k: &'a [f32],
    v: &'a [f32],
    batch: usize,
    head: usize,
    row: usize,
    len: usize,
    prefix: Option<&'a Prefix>,
}

/// Queries per attention block in a prefill: the block's scores
/// (`QUERY_BLOCK × keys`) stay in L2 between the passes over them.
const QUERY_BLOCK: usize = 48;

/// Rows of `A` per lm_head task: the packed activations (`MC × 320`
/// floats) in L2 while a chunk of the vocabulary streams past.
const LM_HEAD_MC: usize = 144;

/// Runs `f` on a rayon worker: nested parallel loops are then joins
/// inside the pool rather than a hand-off from this thread each time.
pub(crate) fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() { f() } else { rayon::scope(|_| f()) }
}

/// Rows above which element-wise passes are split between threads.
const PARALLEL_ROWS: usize = 32;

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let h = w.len();
    let one = |(xr, or): (&[f32], &mut [f32])| {
        let ss = kernels::sum_sq(xr);
        let inv = 1.0 / (ss / h as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    };
    if x.len() / h >= PARALLEL_ROWS {
        x.par_chunks_exact(h).zip(out.par_chunks_exact_mut(h)).for_each(one);
    } else {
        x.chunks_exact(h).zip(out.chunks_exact_mut(h)).for_each(one);
    }
}

impl CpuModel {
    fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    fn embed_rows(&self, ids: &[u32], x: &mut [f32]) -> Result<()> {
        let h = self.hidden;
        for (&id, row) in ids.iter().zip(x.chunks_exact_mut(h)) {
            let id = id as usize;
            if id >= self.vocab {
                return Err(Error::InvalidInput(format!("token id {id} outside the vocabulary of {}", self.vocab)));
            }
            match (&self.embed, &self.lm_head) {
                (Embedding::Table(t), _) => row.copy_from_slice(&t[id * h..(id + 1) * h]),
                (Embedding::LmHead, CpuLinear::Packed { w, .. }) => w.row(id, row),
                (Embedding::LmHead, _) => unreachable!("LmHead embeddings need a packed lm_head"),
            }
        }
        Ok(())
    }

    /// RoPE on the q and k heads of `qkv` rows (row `r` at position
    /// `pos[r]`), in place.
    fn rope(&self, qkv: &mut [f32], pos: &[usize]) {
        let (d, w) = (self.head_dim, self.qkv_width());
        let half = d / 2;
        let heads = self.heads + self.kv_heads;
        let one = |(row, &p): (&mut [f32], &usize)| {
            let cos = &self.cos[p * half..(p + 1) * half];
            let sin = &self.sin[p * half..(p + 1) * half];
            for head in row[..heads * d].chunks_exact_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i] + a * sin[i];
                }
            }
        };
        if pos.len() >= PARALLEL_ROWS {
            qkv.par_chunks_exact_mut(w).zip(pos.par_iter()).for_each(one);
        } else {
            qkv.chunks_exact_mut(w).zip(pos.iter()).for_each(one);
        }
    }

    /// Final (normed) hidden states `[b·t, hidden]` for the next `t`
    /// columns of a left-padded batch. With a cache, `past` columns are
    /// already in it and the new keys and values are appended.
    pub(crate) fn forward(
        &self,
        ids: &[u32],
        b: usize,
        t: usize,
        left_pad: &[usize],
        cache: Option<(&mut [Option<HostKv>], usize)>,
        max_len: usize,
    ) -> Result<Vec<f32>> {
        let Some((layers, past)) = cache else {
            return self.forward_rows(ids, b, t, left_pad, 0, None);
        };
        if b == 0 || t == 0 {
            return Ok(Vec::new());
        }
        for slot in layers.iter_mut() {
            let store = slot.get_or_insert_with(|| HostKv::new(b, self.kv_heads, 0, self.head_dim));
            if t > 1 {
                store.unshare(past, max_len);
            }
            store.reserve(past, past + t, max_len);
        }
        let per = rows_per_part(b, t);
        let mut parts: Vec<Vec<RowsKv>> = (0..b.div_ceil(per)).map(|_| Vec::with_capacity(layers.len())).collect();
        for store in layers.iter_mut().flatten() {
            for (part, rows) in parts.iter_mut().zip(store.rows_mut(per)) {
                part.push(rows);
            }
        }
        if parts.len() == 1 {
            return self.forward_rows(ids, b, t, left_pad, past, parts.pop());
        }
        let hidden = parts
            .into_par_iter()
            .enumerate()
            .map(|(p, kv)| {
                let rows = p * per..((p + 1) * per).min(b);
                let ids = &ids[rows.start * t..rows.end * t];
                self.forward_rows(ids, rows.len(), t, &left_pad[rows.clone()], past, Some(kv))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(hidden.concat())
    }

    /// [`CpuModel::forward`] for `b` rows whose caches (one per layer) are
    /// `cache`, holding `past` columns.
    fn forward_rows(
        &self,
        ids: &[u32],
        b: usize,
        t: usize,
        left_pad: &[usize],
        past: usize,
        mut cache: Option<Vec<RowsKv>>,
    ) -> Result<Vec<f32>> {
        let rows = b * t;
        let (h, d, nh, nkv) = (self.hidden, self.head_dim, self.heads, self.kv_heads);
        let w = self.qkv_width();
        let total = past + t;
        let pos: Vec<usize> =
            (0..b).flat_map(|bi| (past..total).map(move |col| col.saturating_sub(left_pad[bi]))).collect();
        if pos.iter().any(|&p| p * (d / 2) >= self.cos.len()) {
            return Err(Error::InvalidInput("position beyond the rotary table".into()));
        }
        let mut x = vec![0f32; rows * h];
        self.embed_rows(ids, &mut x)?;
        let mut normed = vec![0f32; rows * h];
        let mut qkv = vec![0f32; rows * w];
        let mut attn = vec![0f32; rows * nh * d];
        let mut act = vec![0f32; rows * self.inter];
        let mut packs: Vec<(AlignedBuf, AlignedBuf)> = Vec::new();
        let scale = 1.0 / (d as f32).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, self.eps, &mut normed);
            layer.qkv.forward(&normed, rows, &mut qkv, false);
            self.rope(&mut qkv, &pos);
            let kv = match cache.as_mut() {
                Some(layers) => {
                    let store = &mut layers[li];
                    let own = past - store.shared();
                    for bi in 0..b {
                        for j in 0..t {
                            let src = &qkv[(bi * t + j) * w..][..w];
                            for g in 0..nkv {
                                let at = ((bi * nkv + g) * store.cap + own + j) * d;
                                store.k[at..at + d].copy_from_slice(&src[(nh + g) * d..][..d]);
                                store.v[at..at + d].copy_from_slice(&src[(nh + nkv + g) * d..][..d]);
                            }
                        }
                    }
                    Kv {
                        k: &*store.k,
                        v: &*store.v,
                        batch: nkv * store.cap * d,
                        head: store.cap * d,
                        row: d,
                        len: total,
                        prefix: store.prefix,
                    }
                }
                None => Kv {
                    k: &qkv[nh * d..],
                    v: &qkv[(nh + nkv) * d..],
                    batch: t * w,
                    head: d,
                    row: w,
                    len: t,
                    prefix: None,
                },
            };
            let shape = Shape { b, t, past, nh, nkv, d, ldq: w };
            if t == 1 {
                attend_one(&qkv, shape, kv, left_pad, scale, &mut attn);
            } else {
                attend_blocks(&qkv, shape, kv, left_pad, scale, &mut packs, &mut attn);
            }
            layer.o.forward(&attn, rows, &mut x, true);
            rms_norm(&x, &layer.mlp_norm, self.eps, &mut normed);
            layer.gate_up.forward(&normed, rows, self.inter, &mut act);
            layer.down.forward(&act, rows, &mut x, true);
        }
        rms_norm(&x, &self.norm, self.eps, &mut normed);
        Ok(normed)
    }

    /// Logits `[m, vocab]` of hidden states `[m, hidden]`.
    pub(crate) fn logits(&self, hidden: &[f32], m: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * self.vocab];
        self.logits_into(hidden, m, &mut out);
        out
    }

    /// [`CpuModel::logits`] into `out` (at least `m × vocab`).
    pub(crate) fn logits_into(&self, hidden: &[f32], m: usize, out: &mut [f32]) {
        self.lm_head.forward(hidden, m, out, false);
    }

    /// `log_softmax(logits / τ)[targets[r]]` for each row of hidden states
    /// `[m, hidden]`, without materialising the logits.
    pub(crate) fn logprobs(&self, hidden: &[f32], targets: &[u32], inv_t: f32) -> Vec<f32> {
        let m = targets.len();
        match &self.lm_head {
            CpuLinear::Packed { w, bias } => {
                let n = w.n();
                let plan = Plan::new(m, n, LM_HEAD_MC, 1, true).max_panels(n, 64, 1).chunk_major();
                let parts = sgemm::map_blocks(AView::new(hidden, m, w.k(), w.k()), w.view(), plan, |blk, data| {
                    let mut scaled = [0f32; 64 * sgemm::NR];
                    let mut out = Vec::with_capacity(blk.rows);
                    for r in 0..blk.rows {
                        let row = &data[r * blk.cols..][..blk.cols];
                        let s: &[f32] = match bias {
                            Some(b) => {
                                for ((o, &x), &bi) in scaled.iter_mut().zip(row).zip(&b[blk.j0..]) {
                                    *o = x + bi;
                                }
                                &scaled[..blk.cols]
                            }
                            None => row,
                        };
                        let target = targets[blk.i0 + r] as usize;
                        let picked = if (blk.j0..blk.j0 + blk.cols).contains(&target) {
                            s[target - blk.j0] * inv_t
                        } else {
                            f32::NAN
                        };
                        // max(x)·τ⁻¹ = max(x·τ⁻¹) for τ > 0.
                        let max = kernels::max_of(s);
                        out.push((max * inv_t, kernels::sum_exp(s, max, inv_t), picked));
                    }
                    (blk, out)
                });
                let mut max = vec![f32::NEG_INFINITY; m];
                let mut sum = vec![0f64; m];
                let mut picked = vec![f32::NAN; m];
                for (blk, rows) in parts {
                    for (r, (mx, s, p)) in rows.into_iter().enumerate() {
                        let i = blk.i0 + r;
                        if mx > max[i] {
                            sum[i] = sum[i] * ((max[i] - mx) as f64).exp() + s as f64;
                            max[i] = mx;
                        } else {
                            sum[i] += s as f64 * ((mx - max[i]) as f64).exp();
                        }
                        if !p.is_nan() {
                            picked[i] = p;
                        }
                    }
                }
                (0..m).map(|i| picked[i] - max[i] - sum[i].ln() as f32).collect()
            }
            _ => {
                // Quantized lm_head: logits a few rows at a time.
                const ROWS: usize = 32;
                let mut out = Vec::with_capacity(m);
                for (c, tg) in targets.chunks(ROWS).enumerate() {
                    let logits = self.logits(&hidden[c * ROWS * self.hidden..], tg.len());
                    out.extend(select_rows(&logits, self.vocab, tg, inv_t));
                }
                out
            }
        }
    }
}

/// `log_softmax(row / τ)[target]` for each row of `logits [n, vocab]`.
fn select_rows(logits: &[f32], vocab: usize, targets: &[u32], inv_t: f32) -> Vec<f32> {
    logits
        .par_chunks_exact(vocab)
        .zip(targets.par_iter())
        .map(|(row, &t)| {
            let max = kernels::max_of(row);
            let log_norm = (kernels::sum_exp(row, max, inv_t) as f64).ln() as f32;
            (row[t as usize] - max) * inv_t - log_norm
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Shape {
    b: usize,
    t: usize,
    past: usize,
    nh: usize,
    nkv: usize,
    d: usize,
    /// Row stride of the queries (the q/k/v buffer).
    ldq: usize,
}

/// Attention of one new column per row (decoding) over `kv.len` keys.
/// The query heads that share a kv head are done together, so each key
/// and value row is read once per group rather than once per head.
fn attend_one(q: &[f32], s: Shape, kv: Kv, left_pad: &[usize], scale: f32, out: &mut [f32]) {
    let Shape { b, nh, nkv, d, ldq, .. } = s;
    let groups = nh / nkv;
    let group = |bg: usize, o: &mut [f32], scores: &mut Vec<f32>| {
        let (bi, g) = (bg / nkv, bg % nkv);
        let lo = left_pad.get(bi).copied().unwrap_or(0).min(kv.len - 1);
        let n = kv.len - lo;
        let q = &q[bi * ldq + g * groups * d..][..groups * d];
        // The keys in order: the shared prefix's, then the row's own.
        let shared = shared_len(kv.prefix);
        let from = lo.max(shared);
        let parts = [
            kv.prefix.filter(|_| lo < shared).map(|p| {
                let at = (g * shared + lo) * d;
                Group { q, k: &p.k[at..], v: &p.v[at..], stride: d, n: shared - lo, d }
            }),
            (from < kv.len).then(|| {
                let at = bi * kv.batch + g * kv.head + (from - shared) * kv.row;
                Group { q, k: &kv.k[at..], v: &kv.v[at..], stride: kv.row, n: kv.len - from, d }
            }),
        ];
        // The next row's own keys for this kv head (the next task): their
        // first lines are a cold start the hardware prefetcher cannot see.
        if bi + 1 < b && from < kv.len {
            let at = (bi + 1) * kv.batch + g * kv.head;
            crate::decode_attention::prefetch_rows(&kv.k[at..], 0..(kv.len - from).min(4), kv.row, d);
        }
        scores.clear();
        scores.resize(groups * n, 0.0);
        let mut col = 0;
        for part in parts.iter().flatten() {
            part.scores(scale, scores, n, col);
            col += part.n;
        }
        for sc in scores.chunks_exact_mut(n) {
            let max = kernels::max_of(sc);
            let inv = 1.0 / kernels::exp_sum(sc, max, 1.0);
            sc.iter_mut().for_each(|p| *p *= inv);
        }
        let mut col = 0;
        for part in parts.iter().flatten() {
            // The second run of keys adds to the first's sums.
            part.mix(scores, n, col, o, col > 0);
            col += part.n;
        }
    };
    // Heads of one kv head are adjacent in `out [b, nh, d]`.
    let out = &mut out[..b * nh * d];
    if b * nh * kv.len * d < (1 << 16) {
        let mut scores = Vec::with_capacity(groups * kv.len);
        for (bg, o) in out.chunks_exact_mut(groups * d).enumerate() {
            group(bg, o, &mut scores);
        }
    } else {
        // Kv head by kv head, so the rows that share a prompt prefix read
        // the same keys and values one after another (from L2, not L3).
        let optr = SendPtr(out.as_mut_ptr());
        (0..b * nkv).into_par_iter().for_each_init(
            || Vec::with_capacity(groups * kv.len),
            |scores, task| {
                let bg = (task % b) * nkv + task / b;
                // SAFETY: `out` holds `b·nkv` chunks of `groups·d` values and
                // each task writes only its own chunk `bg`.
                let o = unsafe { std::slice::from_raw_parts_mut(optr.get().add(bg * groups * d), groups * d) };
                group(bg, o, scores);
            },
        );
    }
}

thread_local! {
    static SCORES: std::cell::RefCell<AlignedBuf> = std::cell::RefCell::default();
}

/// Attention for `t > 1` new columns per row: per (row, kv head), keys
/// packed as `Kᵀ` and values as `V` once; per (row, head, block of
/// queries) `S = QKᵀ` over the keys the block can see, the causal softmax
/// in place, and `O = SV` into `out [b·t, nh·d]`.
fn attend_blocks(
    q: &[f32],
    s: Shape,
    kv: Kv,
    left_pad: &[usize],
    scale: f32,
    packs: &mut Vec<(AlignedBuf, AlignedBuf)>,
    out: &mut [f32],
) {
    let Shape { b, t, past, nh, nkv, d, ldq } = s;
    let groups = nh / nkv;
    packs.resize_with(b * nkv, Default::default);
    packs.par_iter_mut().enumerate().for_each(|(i, (kbuf, vbuf))| {
        let base = (i / nkv) * kv.batch + (i % nkv) * kv.head;
        sgemm::pack_rows_into(kbuf, &kv.k[base..], kv.len, d, kv.row);
        sgemm::pack_cols_into(vbuf, &kv.v[base..], kv.len, d, kv.row);
    });
    let views: Vec<(BView, BView)> = packs
        .iter()
        .map(|(kb, vb)| (BView::packed(kb.as_slice(), kv.len, d), BView::packed(vb.as_slice(), d, kv.len)))
        .collect();
    let blocks = t.div_ceil(QUERY_BLOCK);
    let ldo = nh * d;
    let optr = SendPtr(out.as_mut_ptr());
    (0..b * nh * blocks).into_par_iter().for_each(|task| {
        let (bh, blk) = (task / blocks, task % blocks);
        let (bi, h) = (bh / nh, bh % nh);
        let (kt, v) = views[bi * nkv + h / groups];
        let q0 = blk * QUERY_BLOCK;
        let c = QUERY_BLOCK.min(t - q0);
        let keys = past + q0 + c;
        let pad = left_pad.get(bi).copied().unwrap_or(0);
        sgemm::with_local(&SCORES, |sbuf| {
            sbuf.resize(c * keys);
            let scores = sbuf.as_mut_slice();
            let qa = AView::new(&q[(bi * t + q0) * ldq + h * d..], c, d, ldq);
            sgemm::gemm(qa, kt.first_cols(keys), scores, keys, false, false);
            // Unnormalised: each output row is divided by its sum after
            // `S·V` (d values instead of one per key).
            let mut inv = [0f32; QUERY_BLOCK];
            for (r, row) in scores.chunks_exact_mut(keys).enumerate() {
                let col = past + q0 + r;
                let lo = pad.min(col);
                row[..lo].fill(0.0);
                row[col + 1..].fill(0.0);
                let vis = &mut row[lo..=col];
                let max = kernels::max_of(vis);
                inv[r] = 1.0 / kernels::exp_sum(vis, max, scale);
            }
            // SAFETY: rows bi·t + q0 .. + c, columns h·d .. + d of `out`
            // belong to this task alone.
            unsafe {
                let dst = optr.get().add((bi * t + q0) * ldo + h * d);
                sgemm::gemm_ptr(AView::new(scores, c, keys, keys), v.first_rows(keys), dst, ldo, false, false);
                for (r, &f) in inv[..c].iter().enumerate() {
                    for x in std::slice::from_raw_parts_mut(dst.add(r * ldo), d) {
                        *x *= f;
                    }
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache of `rows` rows holding `len` positions, value = row·1000 +
    /// kv head·100 + position (plus 0.5 in `v`).
    fn filled(rows: usize, len: usize) -> HostKv {
        let (nkv, d) = (2, 4);
        let mut kv = HostKv::new(rows, nkv, 8, d);
        for r in 0..rows {
            for g in 0..nkv {
                for j in 0..len {
                    let at = ((r * nkv + g) * kv.cap + j) * d;
                    let x = (r * 1000 + g * 100 + j) as f32;
                    kv.k[at..at + d].fill(x);
                    kv.v[at..at + d].fill(x + 0.5);
                }
            }
        }
        kv
    }

    #[test]
    fn a_fanned_out_row_is_shared_and_unshared_whole() {
        let kv = filled(2, 5);
        let group = kv.select_rows(&[1, 1, 1], 5);
        assert_eq!(group.shared(), 5);
        assert!(group.k.is_empty(), "no per-row copies of the prompt");
        // Dropping rows keeps the prefix shared.
        let mut kept = group.select_rows(&[2, 0], 5);
        assert_eq!((kept.rows, kept.shared()), (2, 5));
        // Two more positions per row, then back to whole rows.
        kept.reserve(5, 7, 64);
        for r in 0..2 {
            for g in 0..2 {
                for j in 0..2 {
                    let at = ((r * 2 + g) * kept.cap + j) * 4;
                    kept.k[at..at + 4].fill(-((r * 10 + j) as f32));
                }
            }
        }
        kept.unshare(7, 64);
        assert_eq!(kept.shared(), 0);
        for r in 0..2 {
            for g in 0..2 {
                let key = |j: usize| kept.k[((r * 2 + g) * kept.cap + j) * 4];
                let value = |j: usize| kept.v[((r * 2 + g) * kept.cap + j) * 4];
                for j in 0..5 {
                    assert_eq!(key(j), (1000 + g * 100 + j) as f32);
                    assert_eq!(value(j), (1000 + g * 100 + j) as f32 + 0.5);
                }
                assert_eq!((key(5), key(6)), (-((r * 10) as f32), -((r * 10 + 1) as f32)));
            }
        }
        // Distinct rows are copied, not shared.
        assert_eq!(kv.select_rows(&[1, 0], 5).shared(), 0);
    }
}
