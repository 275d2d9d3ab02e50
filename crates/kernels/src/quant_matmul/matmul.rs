//! The fast CPU driver: quantize every activation row once, then compute all (token, output row)
//! dot products in register tiles, shared between the calling thread and the pool's helpers.
//!
//! Owns: activation quantization over many rows, work splitting, output writes.
//! Does not own: block formats (`format.rs`), SIMD (`avx2.rs`), shape validation (`mod.rs`).
//!
//! Invariants: a work item is a chunk of [`ROWS_PER_ITEM`] consecutive output rows for *all*
//! tokens, so items write disjoint output elements; inside an item, token tiles are the outer
//! loop so one tile of quantized activations and the item's weight rows stay in L1.
//!
//! Threads: the work-sharing pool in `pool.rs` (see there why not rayon or candle's pool).

use super::format::{ActivationKind, BlockFormat, QK};

/// Below this many block dot products (≈ 3 µs on one core) a call runs on the calling thread:
/// sharing it would cost about as much as it saves.
const MIN_PARALLEL_BLOCK_DOTS: usize = 2 * 1024;

/// Runs `f` over `[0, num_items)` in contiguous ranges, shared with the pool's helpers (about 8
/// ranges per thread, so a slow thread's share is picked up by the others), or inline when `work`
/// (in block dot products) is too small to share.
fn parallel_for(num_items: usize, work: usize, f: impl Fn(std::ops::Range<usize>) + Sync) {
    if work < MIN_PARALLEL_BLOCK_DOTS {
        f(0..num_items);
        return;
    }
    let chunk = num_items.div_ceil(rayon::current_num_threads() * 8).max(1);
    super::pool::global().run(num_items, chunk, &f);
}

/// Output rows per work item (a multiple of every row tile).
const ROWS_PER_ITEM: usize = 16;
/// Tokens quantized per work item when quantizing many activation rows.
const TOKENS_PER_QUANT_ITEM: usize = 8;

/// Activation rows quantized to Q8_0/Q8_1, split into quants and per-block `[d, s]`.
pub(crate) struct QuantizedActivations {
    pub num_blocks: usize,
    /// `[num_tokens, num_blocks · QK]`
    pub qs: Vec<i8>,
    /// `[num_tokens, num_blocks]` of `[d, s]`
    pub ds: Vec<[f32; 2]>,
    /// `s` again, transposed to `[num_blocks, num_tokens]` (empty for a single token), so a
    /// tile of tokens loads the `s` of one block with one vector load. SIMD builds only.
    #[cfg_attr(
        not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")),
        allow(dead_code)
    )]
    pub s_by_block: Vec<f32>,
}

impl QuantizedActivations {
    pub fn num_tokens(&self) -> usize {
        self.ds.len() / self.num_blocks.max(1)
    }
}

/// A raw pointer shared by workers that write provably disjoint elements.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);

impl<T> SharedMut<T> {
    /// Closures must capture the wrapper (which is `Sync`), not its raw-pointer field.
    fn ptr(self) -> *mut T {
        self.0
    }
}
// SAFETY: the pointer is only dereferenced at indices that exactly one work item owns (see the
// call sites), and the pool joins all workers before the pointee is used again.
unsafe impl<T: Send> Sync for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SharedMut<T> {}

fn quantize_row(kind: ActivationKind, xs: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    // SAFETY: compiled only when AVX2, FMA and F16C are enabled for the whole build.
    unsafe {
        super::avx2::quantize_row(kind, xs, qs, ds)
    };
    #[cfg(not(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    )))]
    super::format::quantize_row_scalar(kind, xs, qs, ds);
}

/// Quantizes `num_tokens` rows of `num_blocks · QK` floats. `xs.len() == num_tokens · num_blocks · QK`.
pub(crate) fn quantize_activations(
    kind: ActivationKind,
    xs: &[f32],
    num_tokens: usize,
    num_blocks: usize,
) -> QuantizedActivations {
    let row_len = num_blocks * QK;
    assert_eq!(xs.len(), num_tokens * row_len);
    let mut qs = vec![0i8; num_tokens * row_len];
    let mut ds = vec![[0f32; 2]; num_tokens * num_blocks];
    if num_tokens <= TOKENS_PER_QUANT_ITEM {
        let rows = xs.chunks_exact(row_len).zip(qs.chunks_exact_mut(row_len)).zip(ds.chunks_exact_mut(num_blocks));
        for ((x, q), d) in rows {
            quantize_row(kind, x, q, d);
        }
    } else {
        let qs_ptr = SharedMut(qs.as_mut_ptr());
        let ds_ptr = SharedMut(ds.as_mut_ptr());
        let num_items = num_tokens.div_ceil(TOKENS_PER_QUANT_ITEM);
        parallel_for(num_items, 4 * num_tokens * num_blocks, |items| {
            for item in items {
                let token_start = item * TOKENS_PER_QUANT_ITEM;
                let token_end = num_tokens.min(token_start + TOKENS_PER_QUANT_ITEM);
                let n = token_end - token_start;
                // SAFETY: items cover disjoint token ranges inside `[0, num_tokens)`, so these
                // slices lie inside `qs`/`ds` and no two workers alias them.
                let (q, d) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qs_ptr.ptr().add(token_start * row_len), n * row_len),
                        std::slice::from_raw_parts_mut(ds_ptr.ptr().add(token_start * num_blocks), n * num_blocks),
                    )
                };
                let x = &xs[token_start * row_len..token_end * row_len];
                let rows = x.chunks_exact(row_len).zip(q.chunks_exact_mut(row_len)).zip(d.chunks_exact_mut(num_blocks));
                for ((x, q), d) in rows {
                    quantize_row(kind, x, q, d);
                }
            }
        });
    }
    let mut s_by_block = Vec::new();
    let simd =
        cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"));
    if simd && num_tokens > 1 {
        s_by_block = vec![0f32; num_blocks * num_tokens];
        for (token_idx, row) in ds.chunks_exact(num_blocks).enumerate() {
            for (block_idx, &[_, s]) in row.iter().enumerate() {
                s_by_block[block_idx * num_tokens + token_idx] = s;
            }
        }
    }
    QuantizedActivations { num_blocks, qs, ds, s_by_block }
}

/// `out[token, row] = Σ_k w[row, k] · x[token, k]` for all tokens and rows.
/// `weights.len() == num_rows · num_blocks · F::BLOCK_BYTES`, `out.len() == num_tokens · num_rows`.
pub(crate) fn matmul<F: RowKernels>(weights: &[u8], num_rows: usize, acts: &QuantizedActivations, out: &mut [f32]) {
    let num_blocks = acts.num_blocks;
    let row_bytes = num_blocks * F::BLOCK_BYTES;
    let num_tokens = acts.num_tokens();
    assert_eq!(weights.len(), num_rows * row_bytes);
    assert_eq!(out.len(), num_tokens * num_rows);
    if num_rows == 0 || num_tokens == 0 {
        return;
    }
    let out_ptr = SharedMut(out.as_mut_ptr());
    let num_items = num_rows.div_ceil(ROWS_PER_ITEM);
    parallel_for(num_items, num_rows * num_blocks * num_tokens, |items| {
        for item in items {
            let row_start = item * ROWS_PER_ITEM;
            let row_end = num_rows.min(row_start + ROWS_PER_ITEM);
            let chunk = ChunkArgs { weights, row_bytes, row_start, row_end, acts };
            F::rows_chunk(&chunk, &mut |token_idx, row_idx, value| {
                // SAFETY: token_idx < num_tokens and row_idx in [row_start, row_end); this item
                // is the only one owning rows [row_start, row_end), so the write is in bounds
                // and unaliased.
                unsafe { *out_ptr.ptr().add(token_idx * num_rows + row_idx) = value };
            });
        }
    });
}

/// One work item: rows `[row_start, row_end)` of the weights against every activation row.
pub(crate) struct ChunkArgs<'a> {
    pub weights: &'a [u8],
    pub row_bytes: usize,
    pub row_start: usize,
    pub row_end: usize,
    pub acts: &'a QuantizedActivations,
}

/// Computes one work item, reporting each `(token_idx, row_idx, value)` to `emit`.
pub(crate) trait RowKernels: BlockFormat {
    fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32));
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
mod simd_tiles {
    use super::super::avx2::{dot_tile, dot_token_tile, SimdFormat, TileArgs, TokenTileArgs};
    use super::super::format::{Q4_1, Q5_0, Q5_1, Q8_0, QK};
    use super::{ChunkArgs, RowKernels};

    /// Row tile when decoding a single token (weights read once, four rows share each load of y).
    const DECODE_ROWS: usize = 4;
    /// Token tile for many tokens: each decoded weight block serves `BATCH_TOKENS` tokens.
    const BATCH_TOKENS: usize = 8;

    #[target_feature(enable = "avx2,fma,f16c")]
    fn tile<F: SimdFormat, const R: usize, const T: usize>(
        chunk: &ChunkArgs<'_>,
        row_idx: usize,
        token_idx: usize,
        emit: &mut impl FnMut(usize, usize, f32),
    ) {
        let nb = chunk.acts.num_blocks;
        let args = TileArgs {
            weights: &chunk.weights[row_idx * chunk.row_bytes..],
            row_bytes: chunk.row_bytes,
            act_qs: &chunk.acts.qs[token_idx * nb * QK..],
            act_ds: &chunk.acts.ds[token_idx * nb..],
            num_blocks: nb,
        };
        let out = dot_tile::<F, R, T>(&args);
        for (t, row) in out.iter().enumerate() {
            for (r, &value) in row.iter().enumerate() {
                emit(token_idx + t, row_idx + r, value);
            }
        }
    }

    /// Rows `[row_start, row_end)` for tokens `[token_idx, token_idx + T)`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn row_sweep<F: SimdFormat, const R: usize, const T: usize>(
        chunk: &ChunkArgs<'_>,
        token_idx: usize,
        emit: &mut impl FnMut(usize, usize, f32),
    ) {
        let mut row_idx = chunk.row_start;
        while row_idx + R <= chunk.row_end {
            tile::<F, R, T>(chunk, row_idx, token_idx, emit);
            row_idx += R;
        }
        while row_idx < chunk.row_end {
            tile::<F, 1, T>(chunk, row_idx, token_idx, emit);
            row_idx += 1;
        }
    }

    /// One weight row at a time against tokens `[token_idx, token_idx + T)`, for every row of
    /// the chunk (the chunk's rows and the token tile both stay in L1).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn token_sweep<F: SimdFormat, const T: usize>(
        chunk: &ChunkArgs<'_>,
        token_idx: usize,
        emit: &mut impl FnMut(usize, usize, f32),
    ) {
        let acts = chunk.acts;
        let nb = acts.num_blocks;
        for row_idx in chunk.row_start..chunk.row_end {
            let args = TokenTileArgs {
                row: &chunk.weights[row_idx * chunk.row_bytes..(row_idx + 1) * chunk.row_bytes],
                act_qs: &acts.qs[token_idx * nb * QK..],
                act_ds: &acts.ds[token_idx * nb..],
                s_by_block: &acts.s_by_block[token_idx..],
                num_tokens: acts.num_tokens(),
                num_blocks: nb,
            };
            let out = dot_token_tile::<F, T>(&args);
            for (t, &value) in out.iter().enumerate() {
                emit(token_idx + t, row_idx, value);
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows_chunk_simd<F: SimdFormat>(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
        let num_tokens = chunk.acts.num_tokens();
        let mut token_idx = 0;
        if num_tokens > 1 {
            while token_idx + BATCH_TOKENS <= num_tokens {
                token_sweep::<F, BATCH_TOKENS>(chunk, token_idx, emit);
                token_idx += BATCH_TOKENS;
            }
            if token_idx + 4 <= num_tokens {
                token_sweep::<F, 4>(chunk, token_idx, emit);
                token_idx += 4;
            }
        }
        while token_idx < num_tokens {
            row_sweep::<F, DECODE_ROWS, 1>(chunk, token_idx, emit);
            token_idx += 1;
        }
    }

    impl RowKernels for Q4_1 {
        fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
            // SAFETY: compiled only when AVX2, FMA and F16C are enabled for the whole build.
            unsafe { rows_chunk_simd::<Self>(chunk, emit) }
        }
    }
    impl RowKernels for Q5_0 {
        fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
            // SAFETY: compiled only when AVX2, FMA and F16C are enabled for the whole build.
            unsafe { rows_chunk_simd::<Self>(chunk, emit) }
        }
    }
    impl RowKernels for Q5_1 {
        fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
            // SAFETY: compiled only when AVX2, FMA and F16C are enabled for the whole build.
            unsafe { rows_chunk_simd::<Self>(chunk, emit) }
        }
    }
    impl RowKernels for Q8_0 {
        fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
            // SAFETY: compiled only when AVX2, FMA and F16C are enabled for the whole build.
            unsafe { rows_chunk_simd::<Self>(chunk, emit) }
        }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
mod scalar_rows {
    use super::super::format::{dot_row_scalar, BlockFormat, Q4_1, Q5_0, Q5_1, Q8_0, QK};
    use super::{ChunkArgs, RowKernels};

    fn rows_chunk_scalar<F: BlockFormat>(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
        let nb = chunk.acts.num_blocks;
        let num_tokens = chunk.acts.num_tokens();
        for token_idx in 0..num_tokens {
            let qs = &chunk.acts.qs[token_idx * nb * QK..(token_idx + 1) * nb * QK];
            let ds = &chunk.acts.ds[token_idx * nb..(token_idx + 1) * nb];
            for row_idx in chunk.row_start..chunk.row_end {
                let row = &chunk.weights[row_idx * chunk.row_bytes..(row_idx + 1) * chunk.row_bytes];
                emit(token_idx, row_idx, dot_row_scalar::<F>(row, qs, ds));
            }
        }
    }

    impl RowKernels for Q4_1 {
        fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
            rows_chunk_scalar::<Self>(chunk, emit)
        }
    }
    impl RowKernels for Q5_0 {
        fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
            rows_chunk_scalar::<Self>(chunk, emit)
        }
    }
    impl RowKernels for Q5_1 {
        fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
            rows_chunk_scalar::<Self>(chunk, emit)
        }
    }
    impl RowKernels for Q8_0 {
        fn rows_chunk(chunk: &ChunkArgs<'_>, emit: &mut impl FnMut(usize, usize, f32)) {
            rows_chunk_scalar::<Self>(chunk, emit)
        }
    }
}
