//! Side-by-side timing of the CPU paged-attention op (`hearth_kernels::paged_attention`) against
//! the previous kernel (one rayon task per (query row, head), a scalar online softmax per
//! position; kept here, verbatim in its arithmetic, as the baseline), on SmolLM2-135M shapes
//! (9 query heads over 3 KV heads, head_dim 64, blocks of 16, f32 pool): decode batches at short
//! and long contexts and prefill chunks late in a long prompt. One layer per call.
//!
//! Run: `cargo run --release -p hearth-kernels --example paged_attention_bench [-- --quick]`.
//! Prints ms per call (best round, median round) and GFLOP/s (2 FLOPs per multiply-add of q·k and
//! p·v over the visible positions).

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use hearth_kernels::{paged_attention, write_kv, AttentionLayout, SequenceSpan};
use rayon::prelude::*;

const NUM_HEADS: usize = 9;
const NUM_KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const BLOCK_SIZE: usize = 16;

struct Case {
    name: &'static str,
    /// (query tokens, context length) per sequence
    seqs: Vec<(usize, usize)>,
}

fn time_per_call(rounds: usize, iters: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    let mut means: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            start.elapsed() / iters as u32
        })
        .collect();
    means.sort();
    (means[0], means[rounds / 2])
}

/// The previous CPU kernel, on raw slices.
fn previous_kernel(layout: &AttentionLayout, q: &[f32], k_cache: &[f32], v_cache: &[f32], num_tokens: usize) -> Vec<f32> {
    let (num_heads, num_kv_heads, head_dim) = (NUM_HEADS, NUM_KV_HEADS, HEAD_DIM);
    let group = num_heads / num_kv_heads;
    let mut row_info = Vec::with_capacity(num_tokens);
    for seq in &layout.sequences {
        let first_pos = seq.context_len - seq.num_query_tokens;
        row_info.extend((0..seq.num_query_tokens).map(|i| (seq, first_pos + i)));
    }
    let slot = |seq: &SequenceSpan, p: usize| seq.block_table[p / layout.block_size] as usize * layout.block_size + p % layout.block_size;
    let first_visible = |p: usize| layout.sliding_window.map_or(0, |w| (p + 1).saturating_sub(w));
    let dot = |a: &[f32], b: &[f32]| {
        let mut acc = [0f32; 4];
        let chunks = a.len() / 4 * 4;
        for i in (0..chunks).step_by(4) {
            for lane in 0..4 {
                acc[lane] += a[i + lane] * b[i + lane];
            }
        }
        let mut sum = acc[0] + acc[1] + acc[2] + acc[3];
        for i in chunks..a.len() {
            sum += a[i] * b[i];
        }
        sum
    };
    let mut out = vec![0f32; num_tokens * num_heads * head_dim];
    out.par_chunks_mut(head_dim).enumerate().for_each(|(row_head_idx, out_row)| {
        let row_idx = row_head_idx / num_heads;
        let head_idx = row_head_idx % num_heads;
        let kv_head_idx = head_idx / group;
        let (seq, pos) = row_info[row_idx];
        let q_row = &q[row_head_idx * head_dim..(row_head_idx + 1) * head_dim];
        let mut running_max = f32::NEG_INFINITY;
        let mut running_sum = 0f32;
        for p in first_visible(pos)..=pos {
            let base = (slot(seq, p) * num_kv_heads + kv_head_idx) * head_dim;
            let score = dot(q_row, &k_cache[base..base + head_dim]) * layout.scale;
            let v_row = &v_cache[base..base + head_dim];
            if score > running_max {
                let correction = (running_max - score).exp();
                running_sum *= correction;
                out_row.iter_mut().for_each(|o| *o *= correction);
                running_max = score;
            }
            let weight = (score - running_max).exp();
            running_sum += weight;
            out_row.iter_mut().zip(v_row).for_each(|(o, &v)| *o += weight * v);
        }
        let inv = 1.0 / running_sum;
        out_row.iter_mut().for_each(|o| *o *= inv);
    });
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let device = Device::Cpu;
    let cases = [
        Case { name: "decode b1 ctx 64", seqs: vec![(1, 64)] },
        Case { name: "decode b16 ctx 64", seqs: vec![(1, 64); 16] },
        Case { name: "decode b1 ctx 1024", seqs: vec![(1, 1024)] },
        Case { name: "decode b16 ctx 1024", seqs: vec![(1, 1024); 16] },
        Case { name: "prefill 128 @ 0", seqs: vec![(128, 128)] },
        Case { name: "prefill 128 @ 896", seqs: vec![(128, 1024)] },
        Case { name: "prefill 512 @ 0", seqs: vec![(512, 512)] },
        Case { name: "prefill 512 @ 512", seqs: vec![(512, 1024)] },
    ];
    println!("threads: {} (rayon for the previous kernel; hearth's pool for the current one)", rayon::current_num_threads());
    println!("{:<22} | {:>19} {:>7} | {:>19} {:>7} | {:>7} | {:>9}", "case", "current ms", "GFLOP/s", "previous ms", "GFLOP/s", "speedup", "max diff");
    for case in &cases {
        let num_blocks: usize = case.seqs.iter().map(|&(_, c)| c.div_ceil(BLOCK_SIZE)).sum::<usize>() + 1;
        let mut next_block = 0u32;
        let mut start = 0;
        let mut sequences = Vec::new();
        let mut flops = 0f64;
        for &(num_query_tokens, context_len) in &case.seqs {
            let n = context_len.div_ceil(BLOCK_SIZE) as u32;
            // Every other block, in reverse: tables are not contiguous.
            let block_table: Vec<u32> = (0..n).map(|i| (next_block + n - 1 - i) % num_blocks as u32).collect();
            next_block += n;
            let first_pos = context_len - num_query_tokens;
            flops += (0..num_query_tokens).map(|i| (first_pos + i + 1) as f64).sum::<f64>() * (NUM_HEADS * HEAD_DIM * 4) as f64;
            sequences.push(SequenceSpan { query_start_idx: start, num_query_tokens, context_len, block_table });
            start += num_query_tokens;
        }
        let layout = AttentionLayout { sequences, block_size: BLOCK_SIZE, scale: (HEAD_DIM as f32).powf(-0.5), sliding_window: None, device_metadata: None };
        let shape = (num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM);
        let k_cache = Tensor::zeros(shape, candle_core::DType::F32, &device)?;
        let v_cache = Tensor::zeros(shape, candle_core::DType::F32, &device)?;
        for seq in &layout.sequences {
            let slots: Vec<u32> = (0..seq.context_len)
                .map(|p| seq.block_table[p / BLOCK_SIZE] * BLOCK_SIZE as u32 + (p % BLOCK_SIZE) as u32)
                .collect();
            let k = Tensor::randn(0f32, 1.0, (seq.context_len, NUM_KV_HEADS, HEAD_DIM), &device)?;
            let v = Tensor::randn(0f32, 1.0, (seq.context_len, NUM_KV_HEADS, HEAD_DIM), &device)?;
            write_kv(&k_cache, &v_cache, &k, &v, &Tensor::new(slots.as_slice(), &device)?)?;
        }
        let q = Tensor::randn(0f32, 1.0, (start, NUM_HEADS, HEAD_DIM), &device)?;
        let (q_host, k_host, v_host) =
            (q.flatten_all()?.to_vec1::<f32>()?, k_cache.flatten_all()?.to_vec1::<f32>()?, v_cache.flatten_all()?.to_vec1::<f32>()?);

        let current = paged_attention(&q, &k_cache, &v_cache, &layout)?.flatten_all()?.to_vec1::<f32>()?;
        let previous = previous_kernel(&layout, &q_host, &k_host, &v_host, start);
        let max_diff = current.iter().zip(&previous).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);

        let (probe, _) = time_per_call(1, 1, || drop(paged_attention(&q, &k_cache, &v_cache, &layout)));
        let iters = ((0.05 / probe.as_secs_f64()) as usize).clamp(1, 1000);
        let rounds = if quick { 3 } else { 7 };
        let (t_cur, t_cur_med) = time_per_call(rounds, iters, || drop(paged_attention(&q, &k_cache, &v_cache, &layout)));
        let (t_prev, t_prev_med) = time_per_call(rounds, iters, || drop(previous_kernel(&layout, &q_host, &k_host, &v_host, start)));
        let ms = |best: Duration, median: Duration| format!("{:.3} ({:.3})", best.as_secs_f64() * 1e3, median.as_secs_f64() * 1e3);
        let gflops = |t: Duration| flops / t.as_secs_f64() / 1e9;
        println!(
            "{:<22} | {:>19} {:>7.1} | {:>19} {:>7.1} | {:>6.1}x | {:>9.2e}",
            case.name,
            ms(t_cur, t_cur_med),
            gflops(t_cur),
            ms(t_prev, t_prev_med),
            gflops(t_prev),
            t_prev.as_secs_f64() / t_cur.as_secs_f64(),
            max_diff
        );
    }
    Ok(())
}
