//! Side-by-side timing of hearth's quantized matmul (`QuantizedMatrix::forward`) against candle's
//! `QMatMul::forward` on the same random weights, for the decode matvec and a prefill batch.
//!
//! Run: `cargo run --release -p hearth-kernels --example quant_matmul_bench [-- --quick]
//! [--hearth-only] [case filter...]`.
//! Prints a table (ms per call, GB/s of weight bytes read per call, speedup) and one JSON line per
//! case. Threads: hearth's pool (`RAYON_NUM_THREADS` bounds it), candle's barrier pool for candle
//! (`CANDLE_NUM_THREADS`); both default to the physical cores.

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use hearth_kernels::QuantizedMatrix;

/// Mean time per call over each of `rounds` short rounds of `iters` calls: (best round, median
/// round). On a shared machine the best round is the uncontended figure; the median shows noise.
fn time_per_call(rounds: usize, iters: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f(); // warm up (pool start, caches)
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

/// One decode step's matmuls of SmolLM2-135M (30 layers of q, k, v, o, gate, up, down; 66 MB of
/// Q4_1 weights, twice the L3 of the dev machine, so every step streams weights from DRAM), with
/// different weights for every call as in a real forward pass. Reports ms per token, the weight
/// bandwidth achieved and the matmul-only tokens/s ceiling.
fn decode_sweep(quick: bool, hearth_only: bool) -> Result<(), Box<dyn std::error::Error>> {
    const NUM_LAYERS: usize = 30;
    // [num_rows (out), num_cols (in)] of q, k, v, o, gate, up, down.
    const SHAPES: [(usize, usize); 7] =
        [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    let device = Device::Cpu;
    let mut fast = Vec::new();
    let mut candle = Vec::new();
    for _ in 0..NUM_LAYERS {
        for &(num_rows, num_cols) in &SHAPES {
            let q = QTensor::quantize(&Tensor::randn(0f32, 1.0, (num_rows, num_cols), &device)?, GgmlDType::Q4_1)?;
            fast.push(QuantizedMatrix::from_qtensor(&q)?.ok_or("unsupported dtype")?);
            if !hearth_only {
                candle.push(QMatMul::from_qtensor(q)?);
            }
        }
    }
    let bytes: usize = fast.iter().map(|m| m.size_in_bytes()).sum();
    let x_hidden = Tensor::randn(0f32, 1.0, (1, 576), &device)?;
    let x_inter = Tensor::randn(0f32, 1.0, (1, 1536), &device)?;
    let input = |idx: usize| if idx % SHAPES.len() == 6 { &x_inter } else { &x_hidden };
    let rounds = if quick { 5 } else { 20 };
    let (t_fast, t_fast_median) = time_per_call(rounds, 3, || {
        for (idx, m) in fast.iter().enumerate() {
            drop(m.forward(input(idx)));
        }
    });
    let (t_candle, t_candle_median) = if hearth_only {
        (Duration::from_secs(1), Duration::from_secs(1))
    } else {
        time_per_call(rounds, 3, || {
            for (idx, m) in candle.iter().enumerate() {
                drop(m.forward(input(idx)));
            }
        })
    };
    let report = |who: &str, best: Duration, median: Duration| {
        println!(
            "decode sweep {who:<7}: {:.3} ms/token best ({:.3} median), {:.1} GB/s, {:.0} tok/s matmul-only ceiling",
            best.as_secs_f64() * 1e3,
            median.as_secs_f64() * 1e3,
            bytes as f64 / best.as_secs_f64() / 1e9,
            1.0 / best.as_secs_f64()
        );
    };
    println!(
        "decode sweep: SmolLM2-135M matmuls, {NUM_LAYERS} layers × 7, Q4_1, {:.1} MB of weights per token",
        bytes as f64 / 1e6
    );
    report("hearth", t_fast, t_fast_median);
    if !hearth_only {
        report("candle", t_candle, t_candle_median);
        println!("decode sweep speedup: {:.1}x", t_candle.as_secs_f64() / t_fast.as_secs_f64());
    }
    println!(
        "{{\"case\":\"decode sweep\",\"dtype\":\"Q4_1\",\"weight_bytes\":{bytes},\"hearth_ms\":{:.4},\"hearth_median_ms\":{:.4},\"candle_ms\":{:.4},\"candle_median_ms\":{:.4}}}",
        t_fast.as_secs_f64() * 1e3,
        t_fast_median.as_secs_f64() * 1e3,
        t_candle.as_secs_f64() * 1e3,
        t_candle_median.as_secs_f64() * 1e3
    );
    Ok(())
}

struct Case {
    name: &'static str,
    dtype: GgmlDType,
    num_rows: usize,
    num_cols: usize,
    num_tokens: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--hearth-only` skips candle's path (for profiling the fast path alone).
    let hearth_only = std::env::args().any(|a| a == "--hearth-only");
    // Any other argument filters cases by substring of "<name> <dtype> <num_tokens>".
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let device = Device::Cpu;
    let cases = [
        Case { name: "matvec ffn-up-like", dtype: GgmlDType::Q4_1, num_rows: 1536, num_cols: 576, num_tokens: 1 },
        Case { name: "matvec ffn-down-like", dtype: GgmlDType::Q4_1, num_rows: 576, num_cols: 1536, num_tokens: 1 },
        Case { name: "matvec lm_head (L3)", dtype: GgmlDType::Q4_1, num_rows: 49152, num_cols: 576, num_tokens: 1 },
        Case { name: "matvec", dtype: GgmlDType::Q5_0, num_rows: 1536, num_cols: 576, num_tokens: 1 },
        Case { name: "matvec", dtype: GgmlDType::Q5_1, num_rows: 1536, num_cols: 576, num_tokens: 1 },
        Case { name: "batch 512", dtype: GgmlDType::Q4_1, num_rows: 1536, num_cols: 576, num_tokens: 512 },
        Case { name: "batch 512", dtype: GgmlDType::Q5_0, num_rows: 1536, num_cols: 576, num_tokens: 512 },
        // The tied Q8_0 lm_head of SmolLM2 in batched decode (one row per sequence).
        Case { name: "lm_head", dtype: GgmlDType::Q8_0, num_rows: 49152, num_cols: 576, num_tokens: 1 },
        Case { name: "lm_head", dtype: GgmlDType::Q8_0, num_rows: 49152, num_cols: 576, num_tokens: 4 },
        Case { name: "lm_head", dtype: GgmlDType::Q8_0, num_rows: 49152, num_cols: 576, num_tokens: 16 },
        // Q8_0 of width 1536 (a multiple of 256: candle's AVX512-VNNI repacked path where the CPU
        // has it) and of width 576 (candle's generic path).
        Case { name: "q8 ffn-up-like", dtype: GgmlDType::Q8_0, num_rows: 1536, num_cols: 576, num_tokens: 1 },
        Case { name: "q8 ffn-up-like", dtype: GgmlDType::Q8_0, num_rows: 1536, num_cols: 576, num_tokens: 16 },
        Case { name: "q8 ffn-up-like", dtype: GgmlDType::Q8_0, num_rows: 1536, num_cols: 576, num_tokens: 512 },
        Case { name: "q8 ffn-down-like", dtype: GgmlDType::Q8_0, num_rows: 576, num_cols: 1536, num_tokens: 1 },
        Case { name: "q8 ffn-down-like", dtype: GgmlDType::Q8_0, num_rows: 576, num_cols: 1536, num_tokens: 16 },
        Case { name: "q8 ffn-down-like", dtype: GgmlDType::Q8_0, num_rows: 576, num_cols: 1536, num_tokens: 512 },
        Case { name: "q8 4096²", dtype: GgmlDType::Q8_0, num_rows: 4096, num_cols: 4096, num_tokens: 1 },
        Case { name: "q8 4096²", dtype: GgmlDType::Q8_0, num_rows: 4096, num_cols: 4096, num_tokens: 16 },
        Case { name: "q8 4096²", dtype: GgmlDType::Q8_0, num_rows: 4096, num_cols: 4096, num_tokens: 128 },
    ];
    println!(
        "threads: hearth {} (its work-sharing pool), candle {} (candle's barrier pool)",
        rayon::current_num_threads(),
        candle_core::utils::barrier_pool().n_workers() + 1
    );
    println!("times: best 20 ms round (median round in parentheses); GB/s = weight bytes / best time");
    println!(
        "{:<26} {:>5} {:>13} {:>6} | {:>19} {:>6} | {:>19} {:>6} | {:>7}",
        "case", "dtype", "weight", "tokens", "hearth ms", "GB/s", "candle ms", "GB/s", "speedup"
    );
    for case in &cases {
        let label = format!("{} {:?} {}", case.name, case.dtype, case.num_tokens);
        if !filters.is_empty() && !filters.iter().any(|f| label.contains(f.as_str())) {
            continue;
        }
        let w = Tensor::randn(0f32, 1.0, (case.num_rows, case.num_cols), &device)?;
        let q = QTensor::quantize(&w, case.dtype)?;
        let fast = QuantizedMatrix::from_qtensor(&q)?.ok_or("unsupported dtype")?;
        let candle = QMatMul::from_qtensor(q)?;
        let x = Tensor::randn(0f32, 1.0, (case.num_tokens, case.num_cols), &device)?;
        let flops = 2.0 * (case.num_rows * case.num_cols * case.num_tokens) as f64;
        // Rounds of ~20 ms of the fast path; candle's rounds take as many calls.
        let (probe, _) = time_per_call(1, 3, || drop(fast.forward(&x)));
        let iters = ((0.02 / probe.as_secs_f64()) as usize).clamp(1, 2_000);
        let rounds = if quick { 5 } else { 25 };
        let (t_fast, t_fast_median) = time_per_call(rounds, iters, || drop(fast.forward(&x)));
        let (t_candle, t_candle_median) = if hearth_only {
            (Duration::from_secs(1), Duration::from_secs(1))
        } else {
            time_per_call(rounds, iters, || drop(candle.forward(&x)))
        };
        let bytes = fast.size_in_bytes() as f64;
        let gbs = |t: Duration| bytes / t.as_secs_f64() / 1e9;
        let shape = format!("[{}, {}]", case.num_rows, case.num_cols);
        let ms = |best: Duration, median: Duration| {
            format!("{:.4} ({:.4})", best.as_secs_f64() * 1e3, median.as_secs_f64() * 1e3)
        };
        println!(
            "{:<26} {:>5} {:>13} {:>6} | {:>19} {:>6.1} | {:>19} {:>6.1} | {:>6.1}x",
            case.name,
            format!("{:?}", case.dtype),
            shape,
            case.num_tokens,
            ms(t_fast, t_fast_median),
            gbs(t_fast),
            ms(t_candle, t_candle_median),
            gbs(t_candle),
            t_candle.as_secs_f64() / t_fast.as_secs_f64(),
        );
        println!(
            "{{\"case\":\"{}\",\"dtype\":\"{:?}\",\"num_rows\":{},\"num_cols\":{},\"num_tokens\":{},\"weight_bytes\":{},\"hearth_ms\":{:.5},\"hearth_median_ms\":{:.5},\"candle_ms\":{:.5},\"candle_median_ms\":{:.5},\"hearth_gbps\":{:.2},\"hearth_gflops\":{:.2},\"candle_gflops\":{:.2}}}",
            case.name,
            case.dtype,
            case.num_rows,
            case.num_cols,
            case.num_tokens,
            bytes,
            t_fast.as_secs_f64() * 1e3,
            t_fast_median.as_secs_f64() * 1e3,
            t_candle.as_secs_f64() * 1e3,
            t_candle_median.as_secs_f64() * 1e3,
            gbs(t_fast),
            flops / t_fast.as_secs_f64() / 1e9,
            flops / t_candle.as_secs_f64() / 1e9,
        );
    }
    if filters.is_empty() || filters.iter().any(|f| f == "sweep") {
        decode_sweep(quick, hearth_only)?;
    }
    Ok(())
}
