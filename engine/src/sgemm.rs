//! Single-precision matrix multiplication for CPU inference.
//!
//! `C = A · B` where `A [m, k]` is row-major with any row stride (the
//! activations) and `B [k, n]` is packed ahead of time into panels of
//! [`NR`] columns (a weight `W [n, k]` packed as `Wᵀ` once at load time,
//! or keys and values packed once per attention layer). The structure is
//! the usual one of BLIS and of the `gemm` crate candle uses: `A` is
//! repacked per block into micro-panels of [`MR`] rows that stay in L2
//! (all of it once, up front, when several tasks share a row block),
//! one `B` micro-panel (`kc × NR`, at most 20 KB) stays in L1 while all
//! of the block's row panels stream past it, and a 6×16 register tile of
//! twelve AVX2 accumulators does the arithmetic (two loads and six
//! broadcasts per twelve FMAs).
//!
//! What this adds over calling `gemm` through candle: the weights are
//! packed once instead of on every call, the work is split into tasks
//! sized for two cores (rayon), and a task can hand its finished block of
//! `C` to a closure while it is still in cache. The lm_head's
//! log-softmax and the MLP's SiLU·up use that to never write their large
//! intermediate outputs to memory.
//!
//! The AVX2/FMA kernel is chosen at run time ([`supported`]); a portable
//! kernel with the same packing keeps the code correct elsewhere (the
//! model only uses this path where the fast kernel runs). On CPUs with
//! AVX-512 two adjacent panels of `B` go through one 6×32 tile of twelve
//! 512-bit accumulators (Intel's server cores have two 512-bit FMA units,
//! so AVX2 would leave half the machine idle). It adds in exactly the
//! AVX2 kernel's order, and is only used after it has given bit-identical
//! results to the AVX2 kernel on this CPU (see [`kernels`]).

use std::cell::RefCell;

use rayon::prelude::*;

/// Rows of the register tile.
pub(crate) const MR: usize = 6;
/// Columns of the register tile and width of a packed `B` panel.
pub(crate) const NR: usize = 16;
/// Largest slice of the inner dimension per pass: `KC_MAX × NR` floats of
/// `B` (20 KB) plus an `A` micro-panel fit the 32 KB L1.
const KC_MAX: usize = 320;
/// Rows of `A` per block (a multiple of `MR`): `MC × KC_MAX` floats
/// (180 KB) sit in L2 while every panel of the task's columns passes.
pub(crate) const MC: usize = 144;
/// 64-byte alignment, in floats: a packed `B` row of 16 floats is then
/// exactly one cache line.
const ALIGN: usize = 16;

/// Whether this CPU runs the AVX2/FMA kernel.
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

/// The register kernels a product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    Portable,
    Avx2,
    /// AVX2 on single panels, AVX-512 on pairs of panels.
    Avx512,
    /// Pairs of panels, each pair done by two AVX2 tiles: tests the
    /// pairing on CPUs without AVX-512.
    #[cfg(test)]
    Avx2Pairs,
}

impl Kernels {
    fn fast(self) -> bool {
        self != Kernels::Portable
    }

    fn pairs(self) -> bool {
        #[cfg(test)]
        if self == Kernels::Avx2Pairs {
            return true;
        }
        self == Kernels::Avx512
    }
}

/// The best kernels this CPU runs correctly, decided once.
fn kernels() -> Kernels {
    static KERNELS: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
    *KERNELS.get_or_init(|| {
        if !supported() {
            return Kernels::Portable;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::self_checked(crate::kernels::avx512_present(), avx512_agrees, "the AVX-512 matmul kernel") {
            return Kernels::Avx512;
        }
        Kernels::Avx2
    })
}

/// A growable f32 buffer whose contents start on a 64-byte boundary.
#[derive(Default)]
pub(crate) struct AlignedBuf {
    raw: Vec<f32>,
    off: usize,
    len: usize,
}

// Sizes only: a loaded model's Debug output (in a panic message, say) would
// otherwise print every weight.
impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} floats)", self.len)
    }
}

impl AlignedBuf {
    pub(crate) fn zeroed(len: usize) -> Self {
        let mut b = Self::default();
        b.resize(len);
        b
    }

    /// Makes room for `len` floats. Contents are unspecified after a
    /// resize (callers overwrite what they use).
    pub(crate) fn resize(&mut self, len: usize) {
        if self.raw.len() < len + ALIGN {
            self.raw = vec![0f32; len + ALIGN];
            let addr = self.raw.as_ptr() as usize;
            self.off = ((64 - addr % 64) % 64) / 4;
        }
        self.len = len;
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.raw[self.off..self.off + self.len]
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// Writes `B = Wᵀ` for `W [n, k]` (row stride `ldw`) into `out` as panels.
fn pack_rows(w: &[f32], n: usize, k: usize, ldw: usize, out: &mut [f32]) {
    for (p, panel) in out.chunks_exact_mut(k * NR).enumerate() {
        let rows = NR.min(n - p * NR);
        if rows < NR {
            panel.fill(0.0);
        }
        for j in 0..rows {
            let row = &w[(p * NR + j) * ldw..][..k];
            for (kk, &v) in row.iter().enumerate() {
                panel[kk * NR + j] = v;
            }
        }
    }
}

/// Writes `B [k, n]` (row stride `ldb`) into `out` as panels.
fn pack_cols(b: &[f32], k: usize, n: usize, ldb: usize, out: &mut [f32]) {
    for (p, panel) in out.chunks_exact_mut(k * NR).enumerate() {
        let cols = NR.min(n - p * NR);
        for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
            let src = &b[kk * ldb + p * NR..][..cols];
            dst[..cols].copy_from_slice(src);
            dst[cols..].fill(0.0);
        }
    }
}

/// A right operand packed for [`gemm`]: `n.div_ceil(NR)` panels, each
/// `k × NR` floats, k-major (`panel[kk * NR + j] = B[kk, p * NR + j]`),
/// zero-padded past column `n`.
#[derive(Debug)]
pub(crate) struct PackedB {
    n: usize,
    k: usize,
    buf: AlignedBuf,
}

impl PackedB {
    /// `B = Wᵀ` for a row-major weight `W [n, k]`.
    pub(crate) fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        let mut buf = AlignedBuf::zeroed(n.div_ceil(NR) * k * NR);
        buf.as_mut_slice()
            .par_chunks_mut(k * NR * 16)
            .enumerate()
            .for_each(|(c, out)| pack_rows(&w[c * 16 * NR * k..], n - c * 16 * NR, k, k, out));
        Self { n, k, buf }
    }

    /// `Aᵀ` and `Bᵀ` for two weights `A`, `B` `[n, k]` with their panels
    /// alternating (`a₀ b₀ a₁ b₁ …`), for two projections of the same
    /// input whose outputs are combined column by column (gate and up): a
    /// task that owns an even run of panels sees matching columns of both.
    /// `n` must be a multiple of [`NR`].
    pub(crate) fn interleaved(a: &[f32], b: &[f32], n: usize, k: usize) -> Option<Self> {
        if !n.is_multiple_of(NR) || a.len() < n * k || b.len() < n * k {
            return None;
        }
        let len = k * NR;
        let mut buf = AlignedBuf::zeroed(2 * n * k);
        buf.as_mut_slice().par_chunks_mut(2 * len).enumerate().for_each(|(p, pair)| {
            let (pa, pb) = pair.split_at_mut(len);
            pack_rows(&a[p * NR * k..], NR, k, k, pa);
            pack_rows(&b[p * NR * k..], NR, k, k, pb);
        });
        Some(Self { n: 2 * n, k, buf })
    }

    pub(crate) fn n(&self) -> usize {
        self.n
    }

    pub(crate) fn k(&self) -> usize {
        self.k
    }

    pub(crate) fn view(&self) -> BView<'_> {
        BView { n: self.n, k: self.k, ps: self.k * NR, data: self.buf.as_slice() }
    }

    /// Row `i` of the original `W` (column `i` of `B`).
    pub(crate) fn row(&self, i: usize, out: &mut [f32]) {
        let panel = &self.buf.as_slice()[(i / NR) * self.k * NR..][..self.k * NR];
        for (o, chunk) in out.iter_mut().zip(panel.chunks_exact(NR)) {
            *o = chunk[i % NR];
        }
    }
}

/// Packs `B = Wᵀ` for `W [n, k]` (row stride `ldw`) into a reusable buffer.
pub(crate) fn pack_rows_into<'a>(buf: &'a mut AlignedBuf, w: &[f32], n: usize, k: usize, ldw: usize) -> BView<'a> {
    buf.resize(n.div_ceil(NR) * k * NR);
    pack_rows(w, n, k, ldw, buf.as_mut_slice());
    BView { n, k, ps: k * NR, data: buf.as_slice() }
}

/// Packs `B [k, n]` (row stride `ldb`) into a reusable buffer.
pub(crate) fn pack_cols_into<'a>(buf: &'a mut AlignedBuf, b: &[f32], k: usize, n: usize, ldb: usize) -> BView<'a> {
    buf.resize(n.div_ceil(NR) * k * NR);
    pack_cols(b, k, n, ldb, buf.as_mut_slice());
    BView { n, k, ps: k * NR, data: buf.as_slice() }
}

/// A packed right operand (see [`PackedB`]): panel `p` starts at
/// `data[p * ps]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BView<'a> {
    pub n: usize,
    pub k: usize,
    ps: usize,
    data: &'a [f32],
}

impl<'a> BView<'a> {
    /// Panels already packed (by [`pack_rows_into`] or [`pack_cols_into`])
    /// for a `[k, n]` operand.
    pub(crate) fn packed(data: &'a [f32], n: usize, k: usize) -> Self {
        assert!(data.len() >= n.div_ceil(NR) * k * NR, "packed operand too small");
        Self { n, k, ps: k * NR, data }
    }

    /// The first `n` columns (whole panels are kept, so any `n` works).
    pub(crate) fn first_cols(self, n: usize) -> Self {
        Self { n: n.min(self.n), ..self }
    }

    /// The first `k` rows: `A·B` over a prefix of the inner dimension.
    pub(crate) fn first_rows(self, k: usize) -> Self {
        Self { k: k.min(self.k), ..self }
    }
}

/// A row-major left operand: row `i` is `data[i * lda..][..k]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AView<'a> {
    pub data: &'a [f32],
    pub m: usize,
    pub k: usize,
    pub lda: usize,
}

impl<'a> AView<'a> {
    pub(crate) fn new(data: &'a [f32], m: usize, k: usize, lda: usize) -> Self {
        debug_assert!(m == 0 || data.len() >= (m - 1) * lda + k);
        Self { data, m, k, lda }
    }
}

/// Packs rows `i0..i0 + mc`, columns `k0..k0 + kc` of `a` into
/// micro-panels of [`MR`] rows, k-major, zero-padding the last panel.
fn pack_a(a: AView, i0: usize, mc: usize, k0: usize, kc: usize, out: &mut [f32]) {
    for (ip, dst) in out.chunks_exact_mut(kc * MR).take(mc.div_ceil(MR)).enumerate() {
        let rows = MR.min(mc - ip * MR);
        let first = i0 + ip * MR;
        if rows == MR {
            let r: [&[f32]; MR] = std::array::from_fn(|r| &a.data[(first + r) * a.lda + k0..][..kc]);
            for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
                for i in 0..MR {
                    d[i] = r[i][kk];
                }
            }
        } else {
            dst.fill(0.0);
            for r in 0..rows {
                for (kk, &v) in a.data[(first + r) * a.lda + k0..][..kc].iter().enumerate() {
                    dst[kk * MR + r] = v;
                }
            }
        }
    }
}

/// Where [`prepack_a`] puts the slice `k0..k0 + kc` of the row block at
/// `i0` of an `A` with `m` rows: after the `k0` columns of every row (`m`
/// rounded up to [`MR`]), that slice's blocks in row order.
fn prepacked_at(m: usize, i0: usize, k0: usize, kc: usize) -> usize {
    m.next_multiple_of(MR) * k0 + i0 * kc
}

/// Floats of `A` from which [`prepack_a`] packs in parallel.
const PARALLEL_PACK: usize = 1 << 16;

/// Packs all of `A` once, for a product whose row blocks (of `mc` rows)
/// are each shared by several column chunks, whose tasks would otherwise
/// each pack their rows again. Each slice of a row block lands at
/// [`prepacked_at`], laid out as [`pack_a`] lays out one block.
fn prepack_a(a: AView, mc: usize, buf: &mut AlignedBuf) {
    let (kc_max, m_pad) = (kc_for(a.k), a.m.next_multiple_of(MR));
    buf.resize(m_pad * a.k);
    let dst = SendPtr(buf.as_mut_slice().as_mut_ptr());
    let jobs: Vec<(usize, usize)> =
        (0..a.k).step_by(kc_max).flat_map(|k0| (0..a.m).step_by(mc).map(move |i0| (k0, i0))).collect();
    let job = |&(k0, i0): &(usize, usize)| {
        let (kc, rows) = (kc_max.min(a.k - k0), mc.min(a.m - i0));
        // SAFETY: slice `k0` spans `m_pad·kc` floats from `m_pad·k0`, and
        // row block `i0` (a multiple of MR) the `rows` rounded up to MR
        // times `kc` from `i0·kc` inside it: the jobs' regions are
        // disjoint and inside the buffer of `m_pad·k` floats.
        let out = unsafe {
            std::slice::from_raw_parts_mut(dst.get().add(prepacked_at(a.m, i0, k0, kc)), rows.next_multiple_of(MR) * kc)
        };
        pack_a(a, i0, rows, k0, kc, out);
    };
    if a.m * a.k >= PARALLEL_PACK {
        jobs.par_iter().for_each(job);
    } else {
        jobs.iter().for_each(job);
    }
}

/// Floats of packed `A` a thread keeps between products (16 MB): a
/// 2,048-token scoring pass fits; a longer prefill's buffer is freed.
const KEEP_PREPACKED: usize = 1 << 22;

thread_local! {
    /// [`prepack_a`]'s buffer, reused across calls.
    static PREPACKED: RefCell<AlignedBuf> = RefCell::default();
}

/// Runs `f` with `A` packed once ([`prepack_a`]) when the plan splits its
/// row blocks between column chunks, else with `None` (each task packs
/// its own rows).
fn with_prepacked<R>(a: AView, plan: &Plan, f: impl FnOnce(Option<&[f32]>) -> R) -> R {
    if plan.nchunks <= 1 || a.k == 0 {
        return f(None);
    }
    with_local(&PREPACKED, |buf| {
        prepack_a(a, plan.mc, buf);
        let r = f(Some(buf.as_slice()));
        // Kept for the next product, unless a long prefill made it large.
        if a.m * a.k > KEEP_PREPACKED {
            *buf = AlignedBuf::default();
        }
        r
    })
}

/// The inner-dimension slice per pass: `k` split into equal parts of at
/// most [`KC_MAX`].
fn kc_for(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC_MAX).max(1)).max(1)
}

/// One task's share of `C`: rows `i0..i0 + rows`, columns `j0..j0 + cols`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub i0: usize,
    pub rows: usize,
    pub j0: usize,
    pub cols: usize,
}

/// How [`gemm`] and [`map_blocks`] split their work into tasks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub mc: usize,
    /// Panels per task, a multiple of the group size.
    pub per: usize,
    pub mblocks: usize,
    pub nchunks: usize,
    /// Task order: all row blocks of one column chunk before the next
    /// (the chunk of `B` is reused from cache), else all chunks of one
    /// row block before the next.
    pub chunk_major: bool,
}

impl Plan {
    /// Tasks of at most `mc` rows (rounded to a multiple of [`MR`]) and a
    /// multiple of `group` panels, about four per thread when `parallel`.
    pub(crate) fn new(m: usize, n: usize, mc: usize, group: usize, parallel: bool) -> Self {
        let mc = mc.max(MR).next_multiple_of(MR);
        let group = group.max(1);
        let panels = n.div_ceil(NR);
        let mblocks = m.div_ceil(mc).max(1);
        let target = if parallel { rayon::current_num_threads() * 4 } else { 1 };
        let per = if mblocks >= target { panels } else { panels.div_ceil(target.div_ceil(mblocks)) };
        let per = per.max(1).next_multiple_of(group).min(panels.next_multiple_of(group));
        Self { mc, per, mblocks, nchunks: panels.div_ceil(per).max(1), chunk_major: false }
    }

    /// At most `max` panels per task (rounded down to the group size
    /// `group`), for callers whose per-task block of `C` must stay small.
    pub(crate) fn max_panels(mut self, n: usize, max: usize, group: usize) -> Self {
        let group = group.max(1);
        let max = (max / group).max(1) * group;
        if self.per > max {
            self.per = max;
            self.nchunks = n.div_ceil(NR).div_ceil(max).max(1);
        }
        self
    }

    pub(crate) fn chunk_major(mut self) -> Self {
        self.chunk_major = true;
        self
    }

    pub(crate) fn chunk_cols(&self) -> usize {
        self.per * NR
    }

    pub(crate) fn tasks(&self) -> usize {
        self.mblocks * self.nchunks
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only to write disjoint parts of one buffer from rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Packed `A` and a task's block of `C`, reused across calls.
    static SCRATCH: RefCell<(AlignedBuf, AlignedBuf)> = RefCell::default();
}

/// Runs `f` on this thread's value of `key`, reused across calls, or on a
/// fresh default one if a caller further up this thread's stack holds it
/// (a pool thread waiting for its tasks may run another product
/// meanwhile).
pub(crate) fn with_local<T: Default, R>(
    key: &'static std::thread::LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut f = Some(f);
    let r = key.with(|cell| cell.try_borrow_mut().ok().map(|mut v| (f.take().expect("once"))(&mut v)));
    r.unwrap_or_else(|| (f.take().expect("once"))(&mut T::default()))
}

/// Runs `f` with this thread's scratch buffers.
fn with_scratch<R>(f: impl FnOnce(&mut AlignedBuf, &mut AlignedBuf) -> R) -> R {
    with_local(&SCRATCH, |(a, c)| f(a, c))
}

/// Computes one task's block of `C` into `c` (row stride `ldc`):
/// `C = A·B`, or `C += A·B` when `accumulate`. Its rows of `A` come from
/// `pre` when all of `A` was packed up front ([`prepack_a`]), else they
/// are packed into `abuf`.
#[allow(clippy::too_many_arguments)]
fn run_block(
    a: AView,
    b: BView,
    blk: Block,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    pre: Option<&[f32]>,
    abuf: &mut AlignedBuf,
    kern: Kernels,
) {
    let k = a.k;
    let kc_max = kc_for(k);
    let panels = b.n.div_ceil(NR);
    let p0 = blk.j0 / NR;
    let p1 = (blk.j0 + blk.cols).div_ceil(NR).min(panels);
    let rows_pad = blk.rows.next_multiple_of(MR);
    if pre.is_none() {
        abuf.resize(rows_pad * kc_max);
    }
    let mut k0 = 0;
    while k0 < k {
        let kc = kc_max.min(k - k0);
        let ap: &[f32] = match pre {
            Some(all) => &all[prepacked_at(a.m, blk.i0, k0, kc)..][..rows_pad * kc],
            None => {
                pack_a(a, blk.i0, blk.rows, k0, kc, abuf.as_mut_slice());
                abuf.as_slice()
            }
        };
        let mut p = p0;
        while p < p1 {
            // Blocks end on a panel boundary or at `n`, so a second full
            // panel before `p1` lies inside the block.
            let pair = kern.pairs() && p + 1 < p1 && (p + 2) * NR <= b.n;
            let bp = &b.data[p * b.ps + k0 * NR..][..kc * NR];
            let jc = p * NR - blk.j0;
            let cols = NR.min(b.n - p * NR);
            let mut ip = 0;
            while ip * MR < blk.rows {
                // AVX-512 pairs take two full row slivers at once when
                // there are: each panel step loaded then feeds 24 FMAs
                // instead of 12.
                let rows = if pair && kern == Kernels::Avx512 && (ip + 2) * MR <= blk.rows {
                    2 * MR
                } else {
                    MR.min(blk.rows - ip * MR)
                };
                let ai = &ap[ip * kc * MR..][..rows.div_ceil(MR) * kc * MR];
                // SAFETY: the tile lies inside the caller's block of C (rows
                // < blk.rows, columns < blk.cols), which only this task
                // writes; `ai` holds kc steps of MR floats per sliver of
                // rows (two for twelve rows), `bp` (and `bq`)
                // kc steps of NR.
                unsafe {
                    let cp = c.add(ip * MR * ldc + jc);
                    let acc = accumulate || k0 > 0;
                    if pair {
                        let bq = &b.data[(p + 1) * b.ps + k0 * NR..][..kc * NR];
                        tile_pair(kern, kc, ai.as_ptr(), bp.as_ptr(), bq.as_ptr(), cp, ldc, rows, acc);
                    } else {
                        tile(kern.fast(), kc, ai.as_ptr(), bp.as_ptr(), cp, ldc, rows, cols, acc);
                    }
                }
                ip += rows.div_ceil(MR);
            }
            p += if pair { 2 } else { 1 };
        }
        k0 += kc;
    }
}

/// `C [m, n] = A·B` (or `C += A·B` when `accumulate`), `C` row-major with
/// row stride `ldc`. Parallel over tasks when `parallel`.
pub(crate) fn gemm(a: AView, b: BView, c: &mut [f32], ldc: usize, accumulate: bool, parallel: bool) {
    let (m, n) = (a.m, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: output too small");
    // SAFETY: C is a live, exclusive buffer of the size just checked.
    unsafe { gemm_ptr(a, b, c.as_mut_ptr(), ldc, accumulate, parallel) }
}

/// [`gemm`] into a raw output, for callers that fill disjoint parts of
/// one buffer from several threads.
///
/// # Safety
/// `c` must be valid for writes of rows `0..a.m`, columns `0..b.n` at row
/// stride `ldc`, and nothing else may access those elements meanwhile.
pub(crate) unsafe fn gemm_ptr(a: AView, b: BView, c: *mut f32, ldc: usize, accumulate: bool, parallel: bool) {
    // SAFETY: forwarded.
    unsafe { gemm_with(kernels(), a, b, c, ldc, accumulate, parallel) }
}

/// [`gemm_ptr`] on the given kernels.
///
/// # Safety
/// As for [`gemm_ptr`].
unsafe fn gemm_with(kern: Kernels, a: AView, b: BView, c: *mut f32, ldc: usize, accumulate: bool, parallel: bool) {
    assert_eq!(a.k, b.k, "gemm: inner dimensions differ");
    let (m, n) = (a.m, b.n);
    if m == 0 || n == 0 {
        return;
    }
    if a.k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: inside the output (caller's contract).
                unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), n).fill(0.0) };
            }
        }
        return;
    }
    let plan = Plan::new(m, n, MC, 1, parallel);
    let cptr = SendPtr(c);
    with_prepacked(a, &plan, |pre| {
        let task = |t: usize| {
            let blk = block(&plan, m, n, t);
            with_scratch(|abuf, _| {
                // SAFETY: blocks of different tasks are disjoint and inside C.
                let cp = unsafe { cptr.get().add(blk.i0 * ldc + blk.j0) };
                run_block(a, b, blk, cp, ldc, accumulate, pre, abuf, kern)
            })
        };
        let tasks = plan.tasks();
        if parallel && tasks > 1 {
            (0..tasks).into_par_iter().for_each(task);
        } else {
            (0..tasks).for_each(task);
        }
    })
}

fn block(plan: &Plan, m: usize, n: usize, t: usize) -> Block {
    let (mb, ch) =
        if plan.chunk_major { (t % plan.mblocks, t / plan.mblocks) } else { (t / plan.nchunks, t % plan.nchunks) };
    let i0 = mb * plan.mc;
    let j0 = ch * plan.chunk_cols();
    Block { i0, rows: plan.mc.min(m - i0), j0, cols: plan.chunk_cols().min(n - j0) }
}

/// Computes `A·B` block by block and hands each finished block (row
/// stride `cols`, in this thread's scratch) to `f`, in parallel; returns
/// `f`'s results in task order. Blocks follow `plan`.
pub(crate) fn map_blocks<R, F>(a: AView, b: BView, plan: Plan, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(Block, &[f32]) -> R + Sync,
{
    assert_eq!(a.k, b.k, "gemm: inner dimensions differ");
    let (m, n) = (a.m, b.n);
    if m == 0 || n == 0 {
        return Vec::new();
    }
    with_prepacked(a, &plan, |pre| {
        let task = |t: usize| {
            let blk = block(&plan, m, n, t);
            with_scratch(|abuf, cbuf| {
                cbuf.resize(blk.rows * blk.cols);
                if a.k == 0 {
                    cbuf.as_mut_slice().fill(0.0);
                } else {
                    let c = cbuf.as_mut_slice().as_mut_ptr();
                    run_block(a, b, blk, c, blk.cols, false, pre, abuf, kernels());
                }
                f(blk, cbuf.as_slice())
            })
        };
        let tasks = plan.tasks();
        if tasks > 1 { (0..tasks).into_par_iter().map(task).collect() } else { (0..tasks).map(task).collect() }
    })
}

/// One register tile: `rows × cols` (at most `MR × NR`) of `C` at `c`.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile(
    fast: bool,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    acc: bool,
) {
    // SAFETY: the caller guarantees the tile's extent (see run_block).
    unsafe {
        if cols == NR {
            kernel_rows(fast, rows, kc, a, b, c, ldc, acc);
        } else {
            let mut tmp = [0f32; MR * NR];
            if acc {
                for r in 0..rows {
                    for j in 0..cols {
                        tmp[r * NR + j] = *c.add(r * ldc + j);
                    }
                }
            }
            kernel_rows(fast, rows, kc, a, b, tmp.as_mut_ptr(), NR, acc);
            for r in 0..rows {
                for j in 0..cols {
                    *c.add(r * ldc + j) = tmp[r * NR + j];
                }
            }
        }
    }
}

/// Two full register tiles side by side: `rows × 2·NR` of `C` at `c`
/// from the adjacent panels `b0` and `b1`. Twelve rows (AVX-512 only) are
/// two consecutive slivers of packed `A`.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile_pair(
    kern: Kernels,
    kc: usize,
    a: *const f32,
    b0: *const f32,
    b1: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    acc: bool,
) {
    // SAFETY: the caller guarantees both tiles' extent (see run_block).
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if kern == Kernels::Avx512 {
            match rows {
                12 => kernel_avx512::<12>(kc, a, b0, b1, c, ldc, acc),
                6 => kernel_avx512::<6>(kc, a, b0, b1, c, ldc, acc),
                5 => kernel_avx512::<5>(kc, a, b0, b1, c, ldc, acc),
                4 => kernel_avx512::<4>(kc, a, b0, b1, c, ldc, acc),
                3 => kernel_avx512::<3>(kc, a, b0, b1, c, ldc, acc),
                2 => kernel_avx512::<2>(kc, a, b0, b1, c, ldc, acc),
                _ => kernel_avx512::<1>(kc, a, b0, b1, c, ldc, acc),
            }
            return;
        }
        debug_assert!(rows <= MR, "only the AVX-512 pairs take two slivers");
        kernel_rows(kern.fast(), rows, kc, a, b0, c, ldc, acc);
        kernel_rows(kern.fast(), rows, kc, a, b1, c.add(NR), ldc, acc);
    }
}

/// `R × 32` of `C` from `kc` steps of packed `A` (stride `MR`) and two
/// panels of `B` (stride `NR`): each output is the same chain of FMAs in
/// the same order as in [`kernel_avx2`], so the results are identical.
/// `R = 12` reads rows 6.. from the next sliver (`kc·MR` floats on): 24
/// accumulators of the 32 registers, and each panel step loaded serves
/// twice the FMAs (measured on a Xeon: scoring 2,048 tokens 511 -> 555
/// tok/s, means of three alternating runs).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const R: usize>(
    kc: usize,
    mut a: *const f32,
    mut b0: *const f32,
    mut b1: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY: see `tile_pair`; unaligned loads, so any panel start works.
    unsafe {
        let next = kc * MR;
        let mut c0 = [_mm512_setzero_ps(); R];
        let mut c1 = [_mm512_setzero_ps(); R];
        for _ in 0..kc {
            let x0 = _mm512_loadu_ps(b0);
            let x1 = _mm512_loadu_ps(b1);
            for i in 0..R {
                let ai = _mm512_set1_ps(*a.add(if i < MR { i } else { next + i - MR }));
                c0[i] = _mm512_fmadd_ps(ai, x0, c0[i]);
                c1[i] = _mm512_fmadd_ps(ai, x1, c1[i]);
            }
            a = a.add(MR);
            b0 = b0.add(NR);
            b1 = b1.add(NR);
        }
        for i in 0..R {
            let p = c.add(i * ldc);
            if acc {
                c0[i] = _mm512_add_ps(c0[i], _mm512_loadu_ps(p));
                c1[i] = _mm512_add_ps(c1[i], _mm512_loadu_ps(p.add(NR)));
            }
            _mm512_storeu_ps(p, c0[i]);
            _mm512_storeu_ps(p.add(NR), c1[i]);
        }
    }
}

/// Whether the AVX-512 kernel gives bit for bit what two AVX2 tiles give,
/// for every row count, overwriting and accumulating. Run once before the
/// kernel is trusted: it cannot be exercised on a CPU without AVX-512, so
/// a CPU that has it checks it against the kernel every CPU runs.
#[cfg(target_arch = "x86_64")]
fn avx512_agrees() -> bool {
    pairs_agree(Kernels::Avx512)
}

/// Whether `kern`'s pair tiles equal two AVX2 tiles bit for bit, on random
/// operands laid out as real panels. False where this CPU cannot run them.
#[cfg(target_arch = "x86_64")]
fn pairs_agree(kern: Kernels) -> bool {
    use rand::{Rng, SeedableRng};
    if !supported() || (kern == Kernels::Avx512 && !crate::kernels::avx512_present()) {
        return false;
    }
    let kc = 37;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
    let mut next = || rng.random_range(-1.0f32..1.0);
    // Two slivers of packed A, for the twelve-row tile.
    let a: Vec<f32> = (0..2 * kc * MR).map(|_| next()).collect();
    // Laid out like real panels: 64-byte aligned (a panel of `kc·NR` floats
    // is 37 cache lines, so the second is too).
    let mut b = AlignedBuf::zeroed(2 * kc * NR);
    b.as_mut_slice().iter_mut().for_each(|x| *x = next());
    let b = b.as_slice();
    let ldc = 2 * NR + 3;
    let start: Vec<f32> = (0..2 * MR * ldc).map(|_| next()).collect();
    let twelve = (kern == Kernels::Avx512).then_some(2 * MR);
    (1..=MR).chain(twelve).all(|rows| {
        [false, true].into_iter().all(|acc| {
            let (mut wide, mut narrow) = (start.clone(), start.clone());
            let (b0, b1) = (b.as_ptr(), b[kc * NR..].as_ptr());
            // SAFETY: this CPU runs `kern` and AVX2/FMA (checked above);
            // both outputs hold `rows` rows of `2·NR` at `ldc`, `a` two
            // slivers of `kc` steps of `MR`, the panels `kc` steps of `NR`,
            // aligned.
            unsafe {
                tile_pair(kern, kc, a.as_ptr(), b0, b1, wide.as_mut_ptr(), ldc, rows, acc);
                for (s, r) in (0..rows).step_by(MR).enumerate() {
                    let (a, c) = (a[s * kc * MR..].as_ptr(), narrow[r * ldc..].as_mut_ptr());
                    tile_pair(Kernels::Avx2, kc, a, b0, b1, c, ldc, MR.min(rows - r), acc);
                }
            }
            wide.iter().zip(&narrow).all(|(x, y)| x.to_bits() == y.to_bits())
        })
    })
}

#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn kernel_rows(
    fast: bool,
    rows: usize,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    // SAFETY: forwarded from `tile`.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if fast {
            match rows {
                6 => kernel_avx2::<6>(kc, a, b, c, ldc, acc),
                5 => kernel_avx2::<5>(kc, a, b, c, ldc, acc),
                4 => kernel_avx2::<4>(kc, a, b, c, ldc, acc),
                3 => kernel_avx2::<3>(kc, a, b, c, ldc, acc),
                2 => kernel_avx2::<2>(kc, a, b, c, ldc, acc),
                _ => kernel_avx2::<1>(kc, a, b, c, ldc, acc),
            }
            return;
        }
        let _ = fast;
        kernel_portable(rows, kc, a, b, c, ldc, acc)
    }
}

/// `R × 16` of `C` from `kc` steps of packed `A` (stride `MR`) and `B`
/// (stride `NR`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const R: usize>(
    kc: usize,
    mut a: *const f32,
    mut b: *const f32,
    c: *mut f32,
    ldc: usize,
    acc: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY: see `tile`; unaligned loads, so any panel start works (real
    // panels start on 64-byte boundaries anyway).
    unsafe {
        let mut c0 = [_mm256_setzero_ps(); R];
        let mut c1 = [_mm256_setzero_ps(); R];
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for i in 0..R {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
                c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        for i in 0..R {
            let p = c.add(i * ldc);
            if acc {
                c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(p));
                c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(p.add(8)));
            }
            _mm256_storeu_ps(p, c0[i]);
            _mm256_storeu_ps(p.add(8), c1[i]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn kernel_portable(rows: usize, kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool) {
    let mut t = [[0f32; NR]; MR];
    // SAFETY: see `tile`.
    unsafe {
        for kk in 0..kc {
            let bk = std::slice::from_raw_parts(b.add(kk * NR), NR);
            for (i, ti) in t.iter_mut().enumerate().take(rows) {
                let ai = *a.add(kk * MR + i);
                for (x, &bv) in ti.iter_mut().zip(bk) {
                    *x += ai * bv;
                }
            }
        }
        for (i, ti) in t.iter().enumerate().take(rows) {
            for (j, &v) in ti.iter().enumerate() {
                let p = c.add(i * ldc + j);
                *p = if acc { *p + v } else { v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn reference(a: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|q| a[i * k + q] as f64 * w[j * k + q] as f64).sum::<f64>() as f32;
            }
        }
        c
    }

    #[test]
    fn matches_a_plain_matmul_on_ragged_shapes() {
        for &(m, n, k) in &[(1, 16, 8), (7, 33, 70), (13, 16, 576), (150, 100, 700), (5, 5, 1), (200, 48, 333)] {
            let a = rnd(m * k, 1);
            let w = rnd(n * k, 2);
            let want = reference(&a, &w, m, n, k);
            let b = PackedB::from_rows(&w, n, k);
            for parallel in [false, true] {
                let mut c = vec![0f32; m * n];
                gemm(AView::new(&a, m, k, k), b.view(), &mut c, n, false, parallel);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-4 * (k as f32).sqrt(), "{m}x{n}x{k}: {x} vs {y}");
                }
                // Accumulating adds to what is there.
                gemm(AView::new(&a, m, k, k), b.view(), &mut c, n, true, parallel);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 2.0 * y).abs() < 2e-4 * (k as f32).sqrt());
                }
            }
        }
    }

    #[test]
    fn paired_panels_give_what_single_panels_give() {
        if !supported() {
            return;
        }
        // Odd panel counts, a ragged last panel, several row blocks and
        // column chunks; on an AVX-512 CPU `kernels()` pairs for real.
        for &(m, n, k) in
            &[(7, 33, 70), (9, 56, 40), (13, 48, 576), (150, 120, 700), (5, 16, 3), (6, 64, 1), (200, 1000, 64)]
        {
            let a = rnd(m * k, 7);
            let b = PackedB::from_rows(&rnd(n * k, 8), n, k);
            for (accumulate, parallel) in [(false, false), (true, true), (false, true)] {
                let start = rnd(m * n, 9);
                let (mut single, mut paired) = (start.clone(), start);
                // SAFETY: both outputs are `m × n` at stride `n`.
                unsafe {
                    gemm_with(
                        Kernels::Avx2,
                        AView::new(&a, m, k, k),
                        b.view(),
                        single.as_mut_ptr(),
                        n,
                        accumulate,
                        parallel,
                    );
                    gemm_with(
                        kernels(),
                        AView::new(&a, m, k, k),
                        b.view(),
                        paired.as_mut_ptr(),
                        n,
                        accumulate,
                        parallel,
                    );
                }
                assert!(single.iter().zip(&paired).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{n}x{k}");
                let mut emulated = vec![0f32; m * n];
                // SAFETY: as above.
                unsafe {
                    gemm_with(
                        Kernels::Avx2Pairs,
                        AView::new(&a, m, k, k),
                        b.view(),
                        emulated.as_mut_ptr(),
                        n,
                        false,
                        parallel,
                    );
                    gemm_with(
                        Kernels::Avx2,
                        AView::new(&a, m, k, k),
                        b.view(),
                        single.as_mut_ptr(),
                        n,
                        false,
                        parallel,
                    );
                }
                assert!(single.iter().zip(&emulated).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{n}x{k}");
            }
        }
    }

    #[test]
    fn avx512_kernel_runs_where_the_cpu_has_it() {
        #[cfg(target_arch = "x86_64")]
        {
            // The check itself, on the emulated pairs every AVX2 CPU runs.
            if supported() {
                assert!(pairs_agree(Kernels::Avx2Pairs));
            }
            let present = crate::kernels::avx512_present();
            if present {
                assert!(avx512_agrees(), "the AVX-512 kernel differs from the AVX2 one");
            }
            assert_eq!(kernels() == Kernels::Avx512, present);
        }
    }

    #[test]
    fn strided_operands_and_blocks() {
        let (m, n, k) = (20, 40, 24);
        // A with row stride 30, B given column-major-ish as [k, n] stride 50.
        let a_big = rnd(m * 30, 3);
        let a: Vec<f32> = (0..m).flat_map(|i| a_big[i * 30..i * 30 + k].to_vec()).collect();
        let b_big = rnd(k * 50, 4);
        let w: Vec<f32> = (0..n).flat_map(|j| (0..k).map(move |q| (j, q))).map(|(j, q)| b_big[q * 50 + j]).collect();
        let want = reference(&a, &w, m, n, k);
        let mut buf = AlignedBuf::default();
        let bv = pack_cols_into(&mut buf, &b_big, k, n, 50);
        let mut c = vec![0f32; m * 60];
        gemm(AView::new(&a_big, m, k, 30), bv, &mut c, 60, false, false);
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * 60 + j] - want[i * n + j]).abs() < 1e-4);
            }
        }
        // Blocks see the same values.
        let plan = Plan::new(m, n, 12, 2, true);
        let blocks = map_blocks(AView::new(&a_big, m, k, 30), bv, plan, |blk, data| {
            let mut worst = 0f32;
            for r in 0..blk.rows {
                for j in 0..blk.cols {
                    worst = worst.max((data[r * blk.cols + j] - want[(blk.i0 + r) * n + blk.j0 + j]).abs());
                }
            }
            (blk.rows * blk.cols, worst)
        });
        assert_eq!(blocks.iter().map(|b| b.0).sum::<usize>(), m * n);
        assert!(blocks.iter().all(|b| b.1 < 1e-4));
        // Rows of W come back out of the packing.
        let packed = PackedB::from_rows(&w, n, k);
        let mut row = vec![0f32; k];
        packed.row(37, &mut row);
        assert_eq!(row, w[37 * k..38 * k]);
    }

    #[test]
    fn portable_kernel_agrees() {
        let (m, n, k) = (9, 32, 50);
        let a = rnd(m * k, 5);
        let w = rnd(n * k, 6);
        let b = PackedB::from_rows(&w, n, k);
        let mut abuf = AlignedBuf::zeroed(2 * MR * k);
        pack_a(AView::new(&a, m, k, k), 0, m, 0, k, abuf.as_mut_slice());
        let mut fast = vec![0f32; m * n];
        let mut slow = vec![0f32; m * n];
        for p in 0..2 {
            for ip in 0..2 {
                let rows = MR.min(m - ip * MR);
                let ap = abuf.as_slice()[ip * k * MR..].as_ptr();
                let bp = b.view().data[p * b.view().ps..].as_ptr();
                // SAFETY: tiles inside the buffers.
                unsafe {
                    tile(supported(), k, ap, bp, fast.as_mut_ptr().add(ip * MR * n + p * NR), n, rows, NR, false);
                    tile(false, k, ap, bp, slow.as_mut_ptr().add(ip * MR * n + p * NR), n, rows, NR, false);
                }
            }
        }
        for (x, y) in fast.iter().zip(&slow) {
            assert!((x - y).abs() < 1e-4);
        }
    }
}
