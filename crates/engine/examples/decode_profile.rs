//! Times the serving engine's step on a real model: batched decode (N sequences × 1 token,
//! logits for every row, then one sampler per row, as `LocalExecutor::execute` does) and
//! chunked prefill of long prompts.
//!
//! Run: `cargo run --release -p hearth-engine --example decode_profile -- [--model PATH]
//! [--batches 1,4,16] [--context 64] [--steps 20] [--prefill 1024] [--chunks 128,512]
//! [--rounds 3] [--decode-only | --prefill-only]`.
//! Default model: `$HEARTH_ASSETS` or `~/.cache/hearth/assets` / smollm2-135m-instruct-q4_1.gguf.
//!
//! Per decode step it reports: the model forward (embedding → blocks → final norm → lm_head), the
//! logits copy to host rows (`to_vec2`), and sampling (temperature 0.7, top-p 0.9, repetition
//! penalty 1.1: the expensive common case) — median over `steps` steps, best of `rounds` rounds.
//! The lm_head alone (the tied embedding as a `Linear`, [N, hidden] → [N, vocab]) is timed on
//! the same rows. For prefill: ms per chunk and tokens/s for each chunk size.
//!
//! A profiling aid (per-phase times); throughput with rooflines is `hearth bench`, whose token
//! ids and block layout this shares (`hearth_engine::bench`).

use std::path::PathBuf;
use std::time::Instant;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hearth_engine::bench::{disjoint_block_tables, random_token_ids};
use hearth_engine::sampling::{Sampler, SamplingParams, TokenHistory};
use hearth_models::layers::Embedding;
use hearth_models::{ForwardBatch, LoadOptions, ModelFiles, PagedKvCache, SequenceInput};

const BLOCK_SIZE: usize = 16;

fn arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn list(name: &str, default: &[usize]) -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)) {
        Some(v) => v.split(',').filter_map(|s| s.parse().ok()).collect(),
        None => default.to_vec(),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model_path: PathBuf = arg::<String>("--model").map(PathBuf::from).unwrap_or_else(|| {
        let assets = std::env::var_os("HEARTH_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/hearth/assets"));
        assets.join("smollm2-135m-instruct-q4_1.gguf")
    });
    let batches = list("--batches", &[1, 4, 16]);
    let context: usize = arg("--context").unwrap_or(64);
    let steps: usize = arg("--steps").unwrap_or(20);
    let rounds: usize = arg("--rounds").unwrap_or(3);
    let prefill_len: usize = arg("--prefill").unwrap_or(1024);
    let chunks = list("--chunks", &[128, 512]);
    let decode_only = std::env::args().any(|a| a == "--decode-only");
    let prefill_only = std::env::args().any(|a| a == "--prefill-only");
    let label: String = arg("--label").unwrap_or_default();
    // `--no-head` skips the separate lm_head timing (for clean profiles of the step).
    let time_head = !std::env::args().any(|a| a == "--no-head");

    let started = Instant::now();
    let device = Device::Cpu;
    let loaded = ModelFiles::open(&model_path)?.load(&LoadOptions::default())?;
    let model = loaded.model;
    let c = model.config.clone();
    println!(
        "{label} model {} (vocab {}, hidden {}, {} layers), threads {}",
        model_path.display(),
        c.vocab_size,
        c.hidden_size,
        c.num_layers,
        candle_core::utils::get_num_threads()
    );
    // The lm_head as the model builds it for tied embeddings: the token table as a `Linear`.
    let lm_head = {
        let files = ModelFiles::open(&model_path)?;
        let gguf = files.gguf.as_ref().ok_or("--model must be a GGUF file")?;
        let q = gguf.content.tensor(&mut std::fs::File::open(&model_path)?, "token_embd.weight", &device)?;
        println!("{label} lm_head: token_embd {:?} {:?}, {:.1} MB", q.dtype(), q.shape(), q.storage_size_in_bytes() as f64 / 1e6);
        Embedding::Quantized(Arc::new(q)).as_linear()?
    };
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let per_seq_blocks = (context + steps * rounds + 2).div_ceil(BLOCK_SIZE);
    let num_blocks = (max_batch * per_seq_blocks).max(prefill_len.div_ceil(BLOCK_SIZE) + 1);
    let kv = PagedKvCache::new(&c, num_blocks, BLOCK_SIZE, DType::F32, &device)?;

    if !prefill_only {
        println!(
            "{label} decode: context {context}, median step of {steps} (best of {rounds} rounds); sampling T=0.7 top_p=0.9 rep=1.1"
        );
        println!(
            "{label} {:>5} | {:>9} {:>9} {:>9} {:>9} | {:>9} | {:>10}",
            "batch", "forward", "lm_head", "to_vec2", "sample", "step ms", "ms/seq"
        );
        for &n in &batches {
            // Sequence s owns blocks [s·per_seq_blocks, (s+1)·per_seq_blocks).
            let tables = disjoint_block_tables(n, per_seq_blocks * BLOCK_SIZE, BLOCK_SIZE);
            let prompts: Vec<Vec<u32>> = (0..n).map(|s| random_token_ids(context, c.vocab_size, s as u64 + 1)).collect();
            let inputs: Vec<SequenceInput> = (0..n)
                .map(|s| SequenceInput {
                    new_token_ids: prompts[s].clone(),
                    num_cached_tokens: 0,
                    block_table: tables[s].clone(),
                    wants_logits: true,
                })
                .collect();
            let logits = model.forward(&ForwardBatch::new(&inputs, BLOCK_SIZE, &device)?, &kv)?;
            let params = SamplingParams { temperature: 0.7, top_p: 0.9, repetition_penalty: 1.1, seed: Some(1), ..Default::default() };
            let mut samplers: Vec<Sampler> = (0..n).map(|_| Sampler::new(params.clone())).collect::<Result<_, _>>()?;
            let mut histories: Vec<TokenHistory> = prompts.iter().map(|p| TokenHistory::new(p)).collect();
            let rows = logits.to_vec2::<f32>()?;
            let mut next: Vec<u32> =
                rows.iter().zip(&mut samplers).zip(&histories).map(|((r, s), h)| s.sample(r, h)).collect::<Result<_, _>>()?;
            let mut pos = context;
            eprintln!("{label} batch {n}: decode starts {:.0} ms after start", started.elapsed().as_secs_f64() * 1e3);
            let mut best: Option<[f64; 4]> = None;
            for _ in 0..rounds {
                let (mut t_fwd, mut t_head, mut t_copy, mut t_sample) = (vec![], vec![], vec![], vec![]);
                for _ in 0..steps {
                    let inputs: Vec<SequenceInput> = (0..n)
                        .map(|s| SequenceInput {
                            new_token_ids: vec![next[s]],
                            num_cached_tokens: pos,
                            block_table: tables[s].clone(),
                            wants_logits: true,
                        })
                        .collect();
                    let t0 = Instant::now();
                    let batch = ForwardBatch::new(&inputs, BLOCK_SIZE, &device)?;
                    let logits = model.forward(&batch, &kv)?;
                    let t1 = Instant::now();
                    let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                    let t2 = Instant::now();
                    for s in 0..n {
                        next[s] = samplers[s].sample(&rows[s], &histories[s])?;
                        histories[s].push(next[s]);
                    }
                    let t3 = Instant::now();
                    // The lm_head alone on N hidden rows (same shapes as in the forward).
                    let x = Tensor::randn(0f32, 1.0, (n, c.hidden_size), &device)?;
                    let t4 = Instant::now();
                    if time_head {
                        drop(lm_head.forward(&x)?);
                    }
                    let t5 = Instant::now();
                    t_fwd.push((t1 - t0).as_secs_f64() * 1e3);
                    t_copy.push((t2 - t1).as_secs_f64() * 1e3);
                    t_sample.push((t3 - t2).as_secs_f64() * 1e3);
                    t_head.push((t5 - t4).as_secs_f64() * 1e3);
                    pos += 1;
                }
                let round = [median(t_fwd), median(t_head), median(t_copy), median(t_sample)];
                let total = |r: &[f64; 4]| r[0] + r[2] + r[3];
                if best.is_none_or(|b| total(&round) < total(&b)) {
                    best = Some(round);
                }
            }
            let [fwd, head, copy, sample] = best.unwrap();
            let step = fwd + copy + sample;
            println!(
                "{label} {n:>5} | {fwd:>9.2} {head:>9.2} {copy:>9.2} {sample:>9.2} | {step:>9.2} | {:>10.2}",
                step / n as f64
            );
            println!(
                "{{\"label\":\"{label}\",\"case\":\"decode\",\"batch\":{n},\"context\":{context},\"forward_ms\":{fwd:.3},\"lm_head_ms\":{head:.3},\"to_vec2_ms\":{copy:.3},\"sample_ms\":{sample:.3},\"step_ms\":{step:.3}}}"
            );
        }
    }

    if !decode_only {
        println!("{label} prefill: one prompt of {prefill_len} tokens in chunks (logits for the last row only), best of {rounds}");
        let table: Vec<u32> = (0..prefill_len.div_ceil(BLOCK_SIZE) as u32).collect();
        let prompt = random_token_ids(prefill_len, c.vocab_size, 99);
        for &chunk in &chunks {
            let mut best: Option<(f64, Vec<f64>)> = None;
            for _ in 0..rounds {
                let mut per_chunk = vec![];
                let start = Instant::now();
                let mut done = 0;
                while done < prefill_len {
                    let n = chunk.min(prefill_len - done);
                    let input = SequenceInput {
                        new_token_ids: prompt[done..done + n].to_vec(),
                        num_cached_tokens: done,
                        block_table: table.clone(),
                        wants_logits: done + n == prefill_len,
                    };
                    let t = Instant::now();
                    drop(model.forward(&ForwardBatch::new(&[input], BLOCK_SIZE, &device)?, &kv)?);
                    per_chunk.push(t.elapsed().as_secs_f64() * 1e3);
                    done += n;
                }
                let total = start.elapsed().as_secs_f64() * 1e3;
                if best.as_ref().is_none_or(|b| total < b.0) {
                    best = Some((total, per_chunk));
                }
            }
            let (total, per_chunk) = best.unwrap();
            let chunk_list: Vec<String> = per_chunk.iter().map(|t| format!("{t:.0}")).collect();
            println!(
                "{label} chunk {chunk:>4}: {total:>8.1} ms total, {:>7.1} tok/s; per chunk ms [{}]",
                prefill_len as f64 / total * 1e3,
                chunk_list.join(", ")
            );
            println!(
                "{{\"label\":\"{label}\",\"case\":\"prefill\",\"prompt\":{prefill_len},\"chunk\":{chunk},\"total_ms\":{total:.2},\"tok_per_s\":{:.1}}}",
                prefill_len as f64 / total * 1e3
            );
        }
    }
    Ok(())
}
