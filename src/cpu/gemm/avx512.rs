//! A packed f32 GEMM for AVX-512 (the BLIS scheme): for each block of C and each `KC` slice of the
//! inner dimension, `A` is packed into panels of `MR` rows and `B` into panels of `NR` columns, and a
//! 12 x 32 register-blocked micro-kernel (24 accumulators) multiplies a pair of panels. Blocks of C
//! run in parallel.

use rayon::prelude::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

pub const MR: usize = 12;
pub const NR: usize = 32;
/// 32 x 256 floats of B (32 KB) and 12 x 256 of A (12 KB) fit a 48 KB L1 together.
const KC: usize = 256;
const MC_MAX: usize = 20 * MR;
const NC_MAX: usize = 1024;
/// The most floats of B packed once and shared by all blocks (16 MB); larger B (weight
/// gradients over PT-RAG's 131,072 triplets) is packed per block.
const SHARED_B_MAX: usize = 1 << 22;
/// Below this many multiply-adds the `gemm` crate's lower overhead wins.
const MIN_WORK: usize = 1 << 20;

/// Element `(r, c)` of an operand is at `r * rs + c * cs`; one of the strides is 1 (an operand
/// is stored row-major or transposed).
#[derive(Clone, Copy)]
pub struct View {
    pub rs: usize,
    pub cs: usize,
}

/// Large enough to repay packing, and not so thin that padding to whole tiles wastes most of
/// the work (PT-RAG's two-logit scorer output, for one).
pub fn suits(m: usize, n: usize, k: usize) -> bool {
    m * n * k >= MIN_WORK && m >= MR && n >= NR / 2 && crate::cpu::has_avx512()
}

/// `c[m, n] (+)= a[m, k] b[k, n]` with `c` row-major; the caller checked sizes and `has_avx512()`.
/// C is cut into blocks of at most `MC_MAX x NC_MAX`, enough of them to keep every thread busy;
/// each block is one task that packs its own panels for every `KC` slice of the inner dimension,
/// so its part of C stays in cache across the slices.
///
/// # Safety
/// `c` is valid for writes of `m * n` elements and aliases neither `a` nor `b`; with `accumulate`
/// they are also initialised. Without it every element is written before any is read.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(m: usize, n: usize, k: usize, a: &[f32], av: View, b: &[f32], bv: View, c: *mut f32, accumulate: bool) {
    debug_assert!((av.rs == 1 || av.cs == 1) && (bv.rs == 1 || bv.cs == 1), "operands are row-major or transposed");
    let (mc, nc) = block_sizes(m, n, rayon::current_num_threads().max(1));
    let (row_blocks, col_blocks) = (m.div_ceil(mc), n.div_ceil(nc));
    // Every row block multiplies by the same panels of B: pack them once for all when they fit
    // (otherwise each block packs its own, which cost as much as 1/3 of the products).
    let n_padded = n.div_ceil(NR) * NR;
    let shared_b = (row_blocks > 1 && k * n_padded <= SHARED_B_MAX).then(|| {
        let mut packed = vec![0.0f32; k * n_padded];
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            packed[pc * n_padded..][..n_padded * kc].par_chunks_mut(NR * kc).enumerate().for_each(|(panel, out)| {
                let j0 = panel * NR;
                pack_b(b, bv, pc, kc, j0, NR.min(n - j0), out)
            });
        }
        packed
    });
    let c_base = SharedMut(c);
    (0..row_blocks * col_blocks).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(packed_a, own_b), task| {
            let (ic, jc) = (task / col_blocks * mc, task % col_blocks * nc);
            let block = Block { ic, rows: mc.min(m - ic), jc, cols: nc.min(n - jc) };
            let shared = shared_b.as_deref().map(|packed| (packed, n_padded));
            // SAFETY: the caller's contract on c (row stride n); blocks are disjoint, so no other
            // task touches this one's elements.
            unsafe { multiply_block(k, a, av, b, bv, shared, block, c_base.get(), n, accumulate, packed_a, own_b) };
        },
    );
}

/// `c[m, n] (+)= a[m, k] b[k, n]` on the calling thread, for small products (attention's per-head
/// blocks); `c` has row stride `ldc`. The caller checked `has_avx512()`.
///
/// # Safety
/// `c` is valid for writes of rows `0..m`, columns `0..n` at row stride `ldc`, and aliases
/// neither `a` nor `b`; with `accumulate` those elements are also initialised.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_serial(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    thread_local! {
        /// Packing buffers kept between calls: attention makes tens of thousands per step, and
        /// fresh buffers were zero-filled by `resize` every time.
        static PACKED: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    let block = Block { ic: 0, rows: m, jc: 0, cols: n };
    PACKED.with_borrow_mut(|(packed_a, packed_b)| {
        // SAFETY: the caller's contract on c, passed on.
        unsafe { multiply_block(k, a, av, b, bv, None, block, c, ldc, accumulate, packed_a, packed_b) }
    })
}

/// Rows `ic..ic + rows` and columns `jc..jc + cols` of C.
#[derive(Clone, Copy)]
struct Block {
    ic: usize,
    rows: usize,
    jc: usize,
    cols: usize,
}

/// One block of C over every `KC` slice of the inner dimension: pack this block's panels of A (and
/// of B unless `shared` holds all of B packed, with its padded width), then multiply tile by tile.
///
/// # Safety
/// The block's elements of `c` (row stride `ldc`) are valid for writes, not aliased by `a`, `b` or
/// another thread, and initialised when `accumulate`.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_block(
    k: usize,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    shared: Option<(&[f32], usize)>,
    Block { ic, rows, jc, cols }: Block,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    packed_a: &mut Vec<f32>,
    own_b: &mut Vec<f32>,
) {
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        packed_a.resize(rows.div_ceil(MR) * MR * kc, 0.0);
        pack_a(a, av, ic, rows, pc, kc, packed_a);
        // this block's panels of B: slice `pc` of the shared packing starts at pc * n_padded,
        // and its panel `jc / NR` at jc * kc (jc is a multiple of NR)
        let packed_b: &[f32] = match shared {
            Some((shared, n_padded)) => &shared[pc * n_padded + jc * kc..][..cols.div_ceil(NR) * NR * kc],
            None => {
                own_b.resize(cols.div_ceil(NR) * NR * kc, 0.0);
                pack_b(b, bv, pc, kc, jc, cols, own_b);
                own_b
            }
        };
        let overwrite = pc == 0 && !accumulate;
        for (jp, jr) in (0..cols).step_by(NR).enumerate() {
            let b_panel = &packed_b[jp * NR * kc..][..NR * kc];
            for (ip, ir) in (0..rows).step_by(MR).enumerate() {
                let a_panel = &packed_a[ip * MR * kc..][..MR * kc];
                // SAFETY: has_avx512() was checked by the caller; the panels hold kc * MR and
                // kc * NR values; the tile (ic + ir, jc + jr) of at most MR x NR lies inside this
                // block of c, which is this caller's alone (the contract above).
                unsafe {
                    let tile_base = c.add((ic + ir) * ldc + jc + jr);
                    tile(kc, a_panel, b_panel, tile_base, ldc, MR.min(rows - ir), NR.min(cols - jr), overwrite)
                };
            }
        }
    }
}

/// Rows and columns per block: at most `MC_MAX x NC_MAX`, split further (rows first where they
/// are the longer side) until there are two blocks per thread or the blocks reach one tile.
fn block_sizes(m: usize, n: usize, threads: usize) -> (usize, usize) {
    let (mut row_blocks, mut col_blocks) = (m.div_ceil(MC_MAX), n.div_ceil(NC_MAX));
    while row_blocks * col_blocks < 2 * threads {
        let (panels_per_row_block, panels_per_col_block) = (m.div_ceil(row_blocks * MR), n.div_ceil(col_blocks * NR));
        if panels_per_row_block >= 2 && panels_per_row_block >= panels_per_col_block {
            row_blocks += 1;
        } else if panels_per_col_block >= 2 {
            col_blocks += 1;
        } else {
            break;
        }
    }
    (m.div_ceil(row_blocks).div_ceil(MR) * MR, n.div_ceil(col_blocks).div_ceil(NR) * NR)
}

/// C's base pointer shared by the tasks, which write disjoint blocks.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the tasks that share it write disjoint elements (see `gemm`) and the borrow of `c` it
// comes from outlives the parallel loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[p][..W] = src[start + p * stride..][..live]` for `p < kc`, zero beyond `live`: a panel
/// whose `W`-wide rows are contiguous in the source.
#[inline(always)]
fn copy_panel<const W: usize>(src: &[f32], start: usize, stride: usize, live: usize, kc: usize, out: &mut [f32]) {
    for p in 0..kc {
        let row = &mut out[p * W..][..W];
        let base = start + p * stride;
        if live == W {
            // a constant length, so no call to memcpy
            row.copy_from_slice(&src[base..base + W]);
        } else {
            row[..live].copy_from_slice(&src[base..base + live]);
            row[live..].fill(0.0);
        }
    }
}

/// `packed[panel][p][j] = b[pc + p, jc + panel * NR + j]`, zero beyond `nc`. The caller checked
/// `has_avx512()`.
fn pack_b(b: &[f32], bv: View, pc: usize, kc: usize, jc: usize, nc: usize, packed: &mut [f32]) {
    for (panel, out) in packed.chunks_mut(NR * kc).take(nc.div_ceil(NR)).enumerate() {
        let j0 = jc + panel * NR;
        let cols = NR.min(jc + nc - j0);
        if bv.cs == 1 {
            copy_panel::<NR>(b, pc * bv.rs + j0, bv.rs, cols, kc, out);
        } else {
            // B stored transposed (a weight used as `x @ w^T`): its columns are contiguous along p.
            for half in [0, 16] {
                let live = cols.saturating_sub(half).min(16);
                // SAFETY: the caller checked has_avx512().
                unsafe { transpose_rows(b, (j0 + half) * bv.cs + pc, bv.cs, live, kc, &mut out[half..], NR, 16) };
            }
        }
    }
}

/// `packed[panel][p][i] = a[ic + panel * MR + i, pc + p]`, zero beyond `rows`. The caller checked
/// `has_avx512()`.
fn pack_a(a: &[f32], av: View, ic: usize, rows: usize, pc: usize, kc: usize, packed: &mut [f32]) {
    for (panel, out) in packed.chunks_mut(MR * kc).enumerate() {
        let i0 = ic + panel * MR;
        let live = MR.min(ic + rows - i0);
        if av.cs == 1 {
            // A row-major (the usual case): its rows are contiguous along p.
            // SAFETY: the caller checked has_avx512().
            unsafe { transpose_rows(a, i0 * av.rs + pc, av.rs, live, kc, out, MR, MR) };
        } else {
            // A stored transposed: each column is contiguous.
            copy_panel::<MR>(a, pc * av.cs + i0, av.cs, live, kc, out);
        }
    }
}

/// `dst[p * dst_stride + r] = src[start + r * ld + p]` for `r < rows` and `p < kc`, and zero for
/// `rows <= r < width` (`rows <= width <= 16`): rows that are contiguous along p become columns,
/// 16 x 16 at a time in registers (scalar packing of these cost as much as the products).
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose_rows(src: &[f32], start: usize, ld: usize, rows: usize, kc: usize, dst: &mut [f32], dst_stride: usize, width: usize) {
    assert!(rows <= width && width <= 16, "transpose_rows: {rows} rows into {width} lanes");
    assert!(rows == 0 || start + (rows - 1) * ld + kc <= src.len(), "transpose_rows: source too short");
    assert!(kc == 0 || (kc - 1) * dst_stride + width <= dst.len(), "transpose_rows: destination too short");
    let store_mask = ((1u32 << width) - 1) as __mmask16;
    for p0 in (0..kc).step_by(16) {
        let n = 16.min(kc - p0);
        let load_mask = ((1u32 << n) - 1) as __mmask16;
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, v) in r.iter_mut().enumerate().take(rows) {
            // SAFETY: lanes p0..p0 + n of row i lie inside src (asserted above); masked-off lanes
            // are not read.
            *v = unsafe { _mm512_maskz_loadu_ps(load_mask, src.as_ptr().add(start + i * ld + p0)) };
        }
        transpose16(&mut r);
        for (q, v) in r.iter().enumerate().take(n) {
            // SAFETY: (p0 + q) * dst_stride + width <= dst.len() (asserted above); only `width`
            // lanes are written.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add((p0 + q) * dst_stride), store_mask, *v) };
        }
    }
}
#[allow(clippy::too_many_arguments)]
#[cfg(not(target_arch = "x86_64"))]
unsafe fn transpose_rows(_: &[f32], _: usize, _: usize, _: usize, _: usize, _: &mut [f32], _: usize, _: usize) {
    unreachable!("has_avx512() is false off x86_64")
}

/// Transposes a 16 x 16 block held as 16 rows: unpack pairs, then shuffle 2-, 4- and 8-lane groups.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose16(r: &mut [__m512; 16]) {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        r[4 * i] = _mm512_shuffle_ps::<0x44>(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * i + 1], t[4 * i + 3]);
    }
    for h in [0, 8] {
        for i in 0..4 {
            t[h + i] = _mm512_shuffle_f32x4::<0x88>(r[h + i], r[h + i + 4]);
            t[h + i + 4] = _mm512_shuffle_f32x4::<0xDD>(r[h + i], r[h + i + 4]);
        }
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[i + 8]);
        r[i + 8] = _mm512_shuffle_f32x4::<0xDD>(t[i], t[i + 8]);
    }
}

/// One `rows x cols` (at most MR x NR) tile of C at `c` (row stride `ldc`), which the caller
/// owns; partial tiles go through a local buffer.
#[allow(clippy::too_many_arguments)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(kc: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize, rows: usize, cols: usize, overwrite: bool) {
    if rows == MR && cols == NR {
        // SAFETY: a full tile of c is the caller's (see above); the panels hold kc values per row/column.
        unsafe { micro_kernel(kc, a.as_ptr(), b.as_ptr(), c, ldc, overwrite) };
        return;
    }
    let mut local = [0.0f32; MR * NR];
    // SAFETY: `local` is a full MR x NR tile with row stride NR.
    unsafe { micro_kernel(kc, a.as_ptr(), b.as_ptr(), local.as_mut_ptr(), NR, true) };
    for r in 0..rows {
        // SAFETY: rows x cols of c from `c` with stride ldc are the caller's.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(r * ldc), cols) };
        let src = &local[r * NR..][..cols];
        if overwrite {
            dst.copy_from_slice(src);
        } else {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        }
    }
}
#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(_: usize, _: &[f32], _: &[f32], _: *mut f32, _: usize, _: usize, _: usize, _: bool) {
    unreachable!("has_avx512() is false off x86_64")
}

/// `C[12 x 32] (+)= A_panel[12 x kc] B_panel[kc x 32]`, all 24 accumulators in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, overwrite: bool) {
    // The caller's contract: the panels hold kc * MR and kc * NR floats and c addresses a full
    // MR x NR tile with row stride ldc.
    let mut acc = [_mm512_setzero_ps(); 2 * MR];
    // Fetch the tile of C for writing now, so that its misses overlap the products (C is
    // often too large for the caches, and its rows are far apart).
    for r in 0..MR {
        let row = c.wrapping_add(r * ldc) as *const i8;
        _mm_prefetch::<_MM_HINT_ET0>(row);
        _mm_prefetch::<_MM_HINT_ET0>(row.wrapping_add(64));
    }
    for p in 0..kc {
        // SAFETY: p < kc, so both 16-float loads lie inside the B panel.
        let (b0, b1) = unsafe { (_mm512_loadu_ps(b.add(p * NR)), _mm512_loadu_ps(b.add(p * NR + 16))) };
        for r in 0..MR {
            // SAFETY: p < kc and r < MR, inside the A panel.
            let av = _mm512_set1_ps(unsafe { *a.add(p * MR + r) });
            acc[2 * r] = _mm512_fmadd_ps(av, b0, acc[2 * r]);
            acc[2 * r + 1] = _mm512_fmadd_ps(av, b1, acc[2 * r + 1]);
        }
    }
    for r in 0..MR {
        // SAFETY (this block and the two below): row r < MR of the tile, 32 floats from `row`.
        let row = unsafe { c.add(r * ldc) };
        let (mut lo, mut hi) = (acc[2 * r], acc[2 * r + 1]);
        if !overwrite {
            // SAFETY: see above.
            unsafe {
                lo = _mm512_add_ps(lo, _mm512_loadu_ps(row));
                hi = _mm512_add_ps(hi, _mm512_loadu_ps(row.add(16)));
            }
        }
        // SAFETY: see above.
        unsafe {
            _mm512_storeu_ps(row, lo);
            _mm512_storeu_ps(row.add(16), hi);
        }
    }
}
