//! `hearth bench`'s output: one [`BenchReport`] holding everything (hardware, commit, model
//! shape and quantization, settings, the bandwidth measurement and its convention, energy
//! source, one row per test), written as JSON with serde and printed as a llama-bench-like
//! markdown table from the same values, with a legend saying what each column means.
//!
//! Owns: the report's schema and formatting. Does not own: any measurement or accounting rule
//! (`hearth_engine::bench`).

use std::path::Path;

use hearth_engine::bench::{BenchTest, CopyBandwidth, ModelCost, RunSettings, TestMeasurement};
use hearth_models::{ModelFiles, WeightSummary};
use serde::Serialize;

use super::hardware;
use crate::device::ComputeDevice;

/// Written into the report (and its legend) so readers need not guess.
const BANDWIDTH_CONVENTION: &str = "bandwidth = 2 × bytes copied ÷ best copy time (read + write both counted); \
     the roofline uses this figure as the device's achievable DRAM throughput";
const SAMPLING: &str = "greedy argmax of every sampling row, through the serving engine's samplers: on a GPU \
     chosen on the device (hearth_kernels::greedy) and only token ids copied to the host; on the CPU by the host sampler";

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub hearth_version: &'static str,
    pub commit: String,
    pub unix_time_seconds: u64,
    pub hardware: Hardware,
    pub model: ModelInfo,
    pub settings: Settings,
    pub bandwidth: Bandwidth,
    pub energy: EnergyInfo,
    /// What each table column means.
    pub legend: Vec<LegendEntry>,
    pub results: Vec<ResultRow>,
}

#[derive(Debug, Serialize)]
pub struct LegendEntry {
    pub column: &'static str,
    pub meaning: String,
}

#[derive(Debug, Serialize)]
pub struct Hardware {
    pub cpu_model: String,
    pub num_cpus: usize,
    /// Threads candle and hearth's kernels compute with.
    pub num_compute_threads: usize,
    pub memory_total_bytes: Option<u64>,
    pub last_level_cache_bytes: Option<u64>,
    pub device: String,
    pub gpu: Option<GpuInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    pub name: String,
    pub memory_total_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub path: String,
    /// llama-bench style: architecture, size, main storage type.
    pub label: String,
    pub architecture: String,
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub tied_embeddings: bool,
    /// From the file's tensor headers.
    pub num_params: u64,
    pub file_weight_bytes: u64,
    /// Storage type → (tensors, parameters).
    pub quant: Vec<QuantShare>,
    /// Bytes as loaded on the device (what the roofline counts).
    pub loaded: LoadedWeights,
}

#[derive(Debug, Serialize)]
pub struct QuantShare {
    pub storage_type: String,
    pub num_tensors: usize,
    pub num_params: u64,
}

#[derive(Debug, Serialize)]
pub struct LoadedWeights {
    pub block_bytes: u64,
    pub lm_head_bytes: u64,
    pub lm_head_tied_to_embedding: bool,
    pub embedding_bytes: u64,
    pub kv_bytes_per_token: u64,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub device: String,
    pub compute_dtype: String,
    pub kv_dtype: String,
    pub kv_block_size: usize,
    pub warmup_runs: usize,
    pub timed_runs: usize,
    pub prompt_chunk: usize,
    pub prompt_chunk_source: &'static str,
    /// Tokens each generating sequence holds before its timed steps.
    pub tg_context: usize,
    pub sampling: &'static str,
    /// Ranks of the tensor-parallel group (1: one device). The roofline then uses this many
    /// times the measured (one-device) bandwidth: each rank reads its share of the weights.
    pub tensor_parallel: usize,
    /// `HEARTH_BATCH_INVARIANT=1`: one kernel per operation whatever the batch (GPU; slower).
    pub batch_invariant: bool,
}

#[derive(Debug, Serialize)]
pub struct Bandwidth {
    pub method: String,
    pub bytes_per_copy: u64,
    pub timed_copies: usize,
    pub best_seconds: f64,
    pub bytes_per_second: f64,
    pub convention: &'static str,
}

#[derive(Debug, Serialize)]
pub struct EnergyInfo {
    pub source: Option<String>,
    pub unavailable_reason: Option<String>,
}

impl EnergyInfo {
    pub fn source(what: &str) -> Self {
        Self { source: Some(what.into()), unavailable_reason: None }
    }

    pub fn unavailable(reason: String) -> Self {
        Self { source: None, unavailable_reason: Some(reason) }
    }
}

#[derive(Debug, Serialize)]
pub struct ResultRow {
    pub test: String,
    /// "prompt" or "generation".
    pub kind: &'static str,
    pub batch_size: usize,
    pub num_prompt_tokens: usize,
    pub num_generated_tokens_per_sequence: usize,
    pub tokens_per_run: usize,
    pub run_seconds: Vec<f64>,
    pub tokens_per_second_mean: f64,
    pub tokens_per_second_stddev: f64,
    pub bytes_per_token: Option<f64>,
    pub roofline_tokens_per_second: Option<f64>,
    pub roofline_fraction: Option<f64>,
    pub flops_per_run: f64,
    pub achieved_tflops: f64,
    pub joules_per_token: Option<f64>,
}

/// Everything a report is built from.
pub struct ReportInputs<'a> {
    pub model_path: &'a Path,
    pub files: &'a ModelFiles,
    pub summary: &'a WeightSummary,
    pub cost: &'a ModelCost,
    pub compute: &'a ComputeDevice,
    /// `--device` as given (cpu, cuda:0).
    pub device: String,
    pub gpu: Option<GpuInfo>,
    pub settings: &'a RunSettings,
    pub prompt_chunk_source: &'static str,
    pub tg_context: usize,
    pub block_size: usize,
    pub bandwidth: &'a CopyBandwidth,
    pub energy: EnergyInfo,
    pub measurements: &'a [TestMeasurement],
    pub tensor_parallel: usize,
}

impl BenchReport {
    pub fn build(inputs: ReportInputs<'_>) -> Self {
        let c = &inputs.files.config;
        let summary = inputs.summary;
        // Every rank reads its share of the weights through its own device's bandwidth.
        let bandwidth_bytes_per_second = inputs.bandwidth.bytes_per_second() * inputs.tensor_parallel.max(1) as f64;
        let results =
            inputs.measurements.iter().map(|m| result_row(m, inputs.cost, bandwidth_bytes_per_second)).collect();
        let w = &inputs.cost.weights;
        let dominant_type =
            summary.by_type.iter().max_by_key(|(_, (_, params))| *params).map_or("?", |(t, _)| t.as_str());
        let device = inputs.device.clone();
        Self {
            hearth_version: env!("CARGO_PKG_VERSION"),
            commit: hardware::commit(),
            unix_time_seconds: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            hardware: Hardware {
                cpu_model: hardware::cpu_model(),
                num_cpus: hardware::num_cpus(),
                num_compute_threads: candle_core::utils::get_num_threads(),
                memory_total_bytes: hardware::memory_total_bytes(),
                last_level_cache_bytes: hardware::last_level_cache_bytes(),
                device: device.clone(),
                gpu: inputs.gpu,
            },
            model: ModelInfo {
                path: inputs.model_path.display().to_string(),
                label: format!("{} {} {dominant_type}", c.arch.name(), short_count(summary.num_params)),
                architecture: c.arch.name().to_string(),
                num_layers: c.num_layers,
                hidden_size: c.hidden_size,
                intermediate_size: c.intermediate_size,
                num_heads: c.num_heads,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                vocab_size: c.vocab_size,
                context_length: c.context_length,
                tied_embeddings: w.lm_head_tied,
                num_params: summary.num_params,
                file_weight_bytes: summary.num_bytes,
                quant: summary
                    .by_type
                    .iter()
                    .map(|(t, (tensors, params))| QuantShare {
                        storage_type: t.clone(),
                        num_tensors: *tensors,
                        num_params: *params,
                    })
                    .collect(),
                loaded: LoadedWeights {
                    block_bytes: w.block_bytes,
                    lm_head_bytes: w.lm_head_bytes,
                    lm_head_tied_to_embedding: w.lm_head_tied,
                    embedding_bytes: w.embedding_bytes,
                    kv_bytes_per_token: inputs.cost.kv_bytes_per_token_per_layer * c.num_layers as u64,
                },
            },
            settings: Settings {
                device,
                compute_dtype: format!("{:?}", inputs.compute.dtype),
                kv_dtype: format!("{:?}", inputs.compute.kv_dtype),
                kv_block_size: inputs.block_size,
                warmup_runs: inputs.settings.num_warmup_runs,
                timed_runs: inputs.settings.num_timed_runs,
                prompt_chunk: inputs.settings.prompt_chunk,
                prompt_chunk_source: inputs.prompt_chunk_source,
                tg_context: inputs.tg_context,
                sampling: SAMPLING,
                tensor_parallel: inputs.tensor_parallel,
                batch_invariant: hearth_models::numerics::batch_invariant(),
            },
            bandwidth: Bandwidth {
                method: inputs.bandwidth.method.clone(),
                bytes_per_copy: inputs.bandwidth.bytes_per_copy,
                timed_copies: inputs.bandwidth.num_timed_copies,
                best_seconds: inputs.bandwidth.best_seconds,
                bytes_per_second: bandwidth_bytes_per_second,
                convention: BANDWIDTH_CONVENTION,
            },
            legend: legend(inputs.settings, inputs.prompt_chunk_source, inputs.energy.unavailable_reason.as_deref()),
            energy: inputs.energy,
            results,
        }
    }

    /// Header, markdown table and legend.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, key: &str, value: String| out.push_str(&format!("{key:<10}{value}\n"));
        let h = &self.hardware;
        let gpu =
            h.gpu.as_ref().map_or(String::new(), |g| format!("; GPU {}, {}", g.name, bytes(g.memory_total_bytes)));
        let ram = h.memory_total_bytes.map_or(String::new(), |b| format!(", {} RAM", bytes(b)));
        line(&mut out, "hearth", format!("{} (commit {})", self.hearth_version, self.commit));
        line(
            &mut out,
            "hardware",
            format!("{}, {} CPUs ({} compute threads){ram}{gpu}", h.cpu_model, h.num_cpus, h.num_compute_threads),
        );
        let m = &self.model;
        line(
            &mut out,
            "model",
            format!(
                "{} ({}: {} layers, hidden {}, mlp {}, heads {}/{} kv × {}, vocab {}, context {})",
                m.path,
                m.architecture,
                m.num_layers,
                m.hidden_size,
                m.intermediate_size,
                m.num_heads,
                m.num_kv_heads,
                m.head_dim,
                m.vocab_size,
                m.context_length
            ),
        );
        let shares: Vec<String> = m
            .quant
            .iter()
            .map(|q| {
                let percent = 100.0 * q.num_params as f64 / m.num_params.max(1) as f64;
                let plural = if q.num_tensors == 1 { "" } else { "s" };
                format!("{}: {} tensor{plural}, {percent:.1}% of params", q.storage_type, q.num_tensors)
            })
            .collect();
        line(&mut out, "quant", shares.join("; "));
        let l = &m.loaded;
        line(
            &mut out,
            "loaded",
            format!(
                "blocks {}, lm_head {}{}, embedding {}; KV {} per token",
                bytes(l.block_bytes),
                bytes(l.lm_head_bytes),
                if l.lm_head_tied_to_embedding { " (the embedding table, tied)" } else { "" },
                bytes(l.embedding_bytes),
                bytes(l.kv_bytes_per_token)
            ),
        );
        let s = &self.settings;
        line(
            &mut out,
            "settings",
            format!(
                "device {}{}, compute {}, KV {} in blocks of {}; warm-up {}, timed runs {}; prompt chunk {} ({}); tg from {} token(s) of context{}",
                s.device,
                match s.tensor_parallel {
                    0 | 1 => String::new(),
                    n => format!(" × {n} ranks (tensor parallel; roofline at {n} × the measured bandwidth)"),
                },
                s.compute_dtype,
                s.kv_dtype,
                s.kv_block_size,
                s.warmup_runs,
                s.timed_runs,
                s.prompt_chunk,
                s.prompt_chunk_source,
                s.tg_context,
                if s.batch_invariant { "; batch-invariant mode (HEARTH_BATCH_INVARIANT=1)" } else { "" }
            ),
        );
        let b = &self.bandwidth;
        line(
            &mut out,
            "bandwidth",
            format!(
                "{:.2} GB/s: {}, best of {} ({:.3} ms)",
                b.bytes_per_second / 1e9,
                b.method,
                b.timed_copies,
                b.best_seconds * 1e3
            ),
        );
        let energy = match (&self.energy.source, &self.energy.unavailable_reason) {
            (Some(source), _) => source.clone(),
            (None, Some(reason)) => format!("n/a: {reason}"),
            (None, None) => "n/a".into(),
        };
        line(&mut out, "energy", energy);
        out.push('\n');

        let header = [
            "model",
            "size",
            "params",
            "backend",
            "test",
            "batch",
            "t/s",
            "bytes/tok",
            "roofline t/s",
            "% roofline",
            "TFLOP/s",
            "J/tok",
        ];
        let backend = if self.settings.device == "cpu" { "CPU" } else { "CUDA" };
        let rows: Vec<Vec<String>> = self
            .results
            .iter()
            .map(|r| {
                vec![
                    m.label.clone(),
                    bytes(m.file_weight_bytes),
                    short_count(m.num_params),
                    backend.to_string(),
                    r.test.clone(),
                    r.batch_size.to_string(),
                    format!("{:.2} ± {:.2}", r.tokens_per_second_mean, r.tokens_per_second_stddev),
                    r.bytes_per_token.map_or("-".into(), |b| format!("{:.2} MB", b / 1e6)),
                    r.roofline_tokens_per_second.map_or("-".into(), |t| format!("{t:.2}")),
                    r.roofline_fraction.map_or("-".into(), |f| format!("{:.1} %", 100.0 * f)),
                    format!("{:.3}", r.achieved_tflops),
                    r.joules_per_token.map_or("n/a".into(), |j| format!("{j:.4}")),
                ]
            })
            .collect();
        out.push_str(&markdown_table(&header, &rows));
        out.push('\n');
        for entry in &self.legend {
            out.push_str(&format!("{}: {}\n", entry.column, entry.meaning));
        }
        out
    }
}

fn result_row(m: &TestMeasurement, cost: &ModelCost, bandwidth_bytes_per_second: f64) -> ResultRow {
    let tokens_per_second = m.tokens_per_second();
    let roofline = cost.row(&m.test, m.mean_seconds(), tokens_per_second.mean, bandwidth_bytes_per_second);
    let (kind, num_prompt_tokens, num_generated) = match m.test {
        BenchTest::Prompt { num_tokens } => ("prompt", num_tokens, 0),
        BenchTest::Generation { num_steps, num_context_tokens, .. } => ("generation", num_context_tokens, num_steps),
    };
    ResultRow {
        test: m.test.label(),
        kind,
        batch_size: m.test.batch_size(),
        num_prompt_tokens,
        num_generated_tokens_per_sequence: num_generated,
        tokens_per_run: m.test.tokens_per_run(),
        run_seconds: m.run_seconds.clone(),
        tokens_per_second_mean: tokens_per_second.mean,
        tokens_per_second_stddev: tokens_per_second.stddev,
        bytes_per_token: roofline.bytes_per_token,
        roofline_tokens_per_second: roofline.roofline_tokens_per_second,
        roofline_fraction: roofline.roofline_fraction,
        flops_per_run: roofline.flops_per_run,
        achieved_tflops: roofline.achieved_tflops,
        joules_per_token: m.joules_per_token(),
    }
}

fn legend(settings: &RunSettings, prompt_chunk_source: &str, energy_unavailable: Option<&str>) -> Vec<LegendEntry> {
    let entries: [(&'static str, String); 7] = [
        (
            "t/s",
            format!(
                "tokens per second, mean ± sample stddev over {} timed runs after {} warm-up run(s); \
                 ppN: N prompt tokens of one sequence ÷ time, in chunks of {} ({prompt_chunk_source}), logits for the \
                 last row only; tgN: batch × N generated tokens ÷ time of N steps (prompts computed untimed before), {SAMPLING}",
                settings.num_timed_runs, settings.num_warmup_runs, settings.prompt_chunk
            ),
        ),
        (
            "bytes/tok",
            "tg rows: bytes read per generated token = (weights one step reads ÷ batch) + K/V read per token at its \
             context, averaged over the steps; weights as loaded on the device (every block matrix, bias and norm, the \
             lm_head, and one embedding row per token unless the lm_head is the tied embedding table); activations and \
             K/V writes not counted. pp rows: compute-bound, see TFLOP/s"
                .into(),
        ),
        ("roofline t/s", format!("measured bandwidth ÷ bytes/tok; {BANDWIDTH_CONVENTION}")),
        ("% roofline", "t/s ÷ roofline t/s".into()),
        (
            "TFLOP/s",
            "(2 × matrix elements × tokens through them + attention 4 × heads × head_dim per visible position) ÷ mean \
             run time; the lm_head counts only rows with logits"
                .into(),
        ),
        (
            "J/tok",
            match energy_unavailable {
                None => "energy counter difference over all timed runs ÷ their tokens (the whole device, idle parts \
                         included)"
                    .into(),
                Some(reason) => format!("n/a: {reason}"),
            },
        ),
        ("size, params", "from the file's tensor headers (as llama-bench); the roofline uses bytes as loaded".into()),
    ];
    entries.into_iter().map(|(column, meaning)| LegendEntry { column, meaning }).collect()
}

/// A markdown table with columns padded to their widest cell.
fn markdown_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = header
        .iter()
        .enumerate()
        .map(|(i, h)| rows.iter().map(|r| r[i].chars().count()).chain([h.chars().count()]).max().unwrap_or(0))
        .collect();
    let render = |cells: Vec<&str>| -> String {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = render(header.to_vec());
    out.push_str(&format!("|{}|\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|")));
    for row in rows {
        out.push_str(&render(row.iter().map(String::as_str).collect()));
    }
    out
}

/// 84.07 MiB, 4.58 GiB.
fn bytes(n: u64) -> String {
    let n = n as f64;
    if n >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", n / (1u64 << 30) as f64)
    } else if n >= (1u64 << 20) as f64 {
        format!("{:.2} MiB", n / (1u64 << 20) as f64)
    } else {
        format!("{:.2} KiB", n / 1024.0)
    }
}

/// 134.52 M, 8.03 B.
fn short_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2} M", n / 1e6)
    } else {
        format!("{:.2} K", n / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_table_pads_columns() {
        let table = markdown_table(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(table, "| a   | bb |\n|-----|----|\n| xxx | y  |\n");
    }

    #[test]
    fn sizes_and_counts_read_like_llama_bench() {
        assert_eq!(bytes(88 << 20), "88.00 MiB");
        assert_eq!(bytes(4_466_639_616), "4.16 GiB");
        assert_eq!(short_count(134_515_008), "134.52 M");
        assert_eq!(short_count(8_030_261_248), "8.03 B");
    }
}
