//! `hearth plan`: where a model runs — this machine, described hardware, or a cluster of them —
//! at which quantization, and the predicted tokens/s and time to first token, from headers only
//! (no weights are loaded).
//!
//! Owns: the command line (`--model/--shape`, `--quant`, `--ctx`, `--hardware`, `--nodes`,
//! `--link`, `--json`), building nodes (the hardware table, custom specs, or this machine:
//! `plan/this_machine.rs`), building the model's shape (`plan/shape.rs`) and printing. Does not
//! own any planning rule or formula: those are `hearth-planner`'s. `--hardware 2xh100-sxm` is one
//! machine with two GPUs joined by NVLink (a planner host, where tensor parallelism is
//! considered); separate entries, and `--nodes`, are separate machines joined by `--link`.

pub(crate) mod shape;
pub(crate) mod this_machine;

use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{bail, Context, Result};
use hearth_planner::hardware::{parse_hardware_cluster, HARDWARE};
use hearth_planner::units::{
    format_bandwidth, format_bytes, format_seconds, parse_link, parse_node_specs,
};
use hearth_planner::{
    best_prefill_split, choose_among, Cluster, Host, Link, ModelShape, NodeSpec, Placement, Plan,
    PlanError, PlanOptions, PrefillSplit, Quant, QuantChoice,
};
use serde::Serialize;

use self::shape::{ModelSource, Target};
use self::this_machine::ThisMachine;
use crate::store;

/// `--ctx` when not given: the model's context, capped here.
const DEFAULT_MAX_CONTEXT: usize = 8192;
/// `--prompt` when not given (capped at the context).
const DEFAULT_PROMPT_TOKENS: usize = 512;

/// `writeln!` into the report text (writing to a `String` cannot fail).
macro_rules! out {
    ($out:expr) => {{
        let _ = writeln!($out);
    }};
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Model: a .gguf file, a Hugging Face directory, a store name, or a cached repo id
    /// (default: the default model). Only headers are read.
    #[arg(long, short, conflicts_with = "shape")]
    pub model: Option<String>,
    /// A real model's shape instead of a file: llama3-8b, llama3.2-1b, qwen2.5-7b, llama3-70b,
    /// llama3.1-405b. Planned at the highest-quality quantization that fits unless --quant.
    #[arg(long)]
    pub shape: Option<String>,
    /// What if the model were stored as: q4_k_m, q5_k_m, q6_k, q8_0 or bf16.
    #[arg(long)]
    pub quant: Option<String>,
    /// Context tokens per sequence whose KV cache must fit (default: the model's, at most 8192).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Sequences whose full-context KV cache must fit at once.
    #[arg(long, default_value_t = 1)]
    pub sequences: usize,
    /// Prompt length for the time-to-first-token prediction (default: 512, at most --ctx).
    #[arg(long)]
    pub prompt: Option<usize>,
    /// Machines from the built-in table, comma-separated (see --list-hardware). `2xh100-sxm` is
    /// one machine with two GPUs (NVLink or PCIe between them: tensor parallelism is considered);
    /// `h100-sxm,h100-sxm` is two machines joined by --link.
    #[arg(long)]
    pub hardware: Option<String>,
    /// Custom machines: "name:mem=64GiB,bw=400GB/s,tflops=30[,power=300W];name2:…". `mem` is
    /// the memory the model may use, `bw` memory bandwidth, `tflops` dense 16-bit compute.
    /// Planned like GPUs and Macs (BF16 dense weights and KV cache).
    #[arg(long)]
    pub nodes: Option<String>,
    /// The link between every two machines, e.g. "latency=0.2ms,bw=10Gbit/s"
    /// (default: 10 GbE, 0.2 ms one way and 9.4 Gbit/s of TCP goodput). The GPUs of one
    /// `--hardware Nx…` machine use their interconnect (NVLink, PCIe) instead.
    #[arg(long)]
    pub link: Option<String>,
    /// Predict this placement instead of searching for one: layer ranges in order, e.g.
    /// `0..12,12..24`. Stage i runs on node i; with one node every stage runs on it (several
    /// processes on one machine, e.g. on loopback described by --link). Not refused when slower.
    #[arg(long, value_delimiter = ',')]
    pub stages: Vec<String>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Print the built-in hardware table and exit.
    #[arg(long)]
    pub list_hardware: bool,
}

/// Everything `--json` prints.
#[derive(Serialize)]
struct PlanReport<'a> {
    model: ModelReport,
    nodes_are_this_machine: bool,
    this_machine: Option<ThisMachineReport>,
    nodes: &'a [NodeSpec],
    /// Groups of nodes that are GPUs of one machine, with their interconnect.
    hosts: &'a [Host],
    link: Link,
    options: &'a PlanOptions,
    plan: Option<&'a Plan>,
    /// Why there is no plan (the model fits nowhere).
    refusal: Option<String>,
    reasons: Vec<String>,
    quantization: &'a QuantChoice,
    prefill_split: Option<&'a PrefillSplit>,
    prefill_split_text: Option<String>,
}

#[derive(Serialize)]
struct ModelReport {
    name: String,
    origin: String,
    storage: String,
    num_layers: usize,
    num_params: u64,
    weight_bytes: u64,
    kv_bytes_per_token: u64,
    context_length: usize,
}

#[derive(Serialize)]
struct ThisMachineReport {
    num_cores: usize,
    copy_bytes: usize,
    memory_source: &'static str,
    compute_estimate: String,
}

pub fn run(args: PlanArgs) -> Result<()> {
    if args.list_hardware {
        let mut text = String::new();
        print_hardware_table(&mut text);
        return write_stdout(&text);
    }
    let link = match &args.link {
        Some(text) => parse_link(text)?,
        None => Link::TEN_GIGABIT_ETHERNET,
    };
    let (cluster, machine) = cluster_from_args(&args, link)?;
    let target = if machine.is_some() {
        Target::ThisMachineCpu
    } else {
        Target::Accelerator
    };
    let source = match &args.shape {
        Some(name) => shape::from_shape_name(name, target)?,
        None => {
            let path = store::resolve(args.model.as_deref())?;
            shape::from_file(&path, store::served_name(args.model.as_deref()), target)?
        }
    };
    let quant = args.quant.as_deref().map(Quant::parse).transpose()?;
    let context_tokens = args
        .ctx
        .unwrap_or(source.context_length.min(DEFAULT_MAX_CONTEXT));
    if context_tokens > source.context_length {
        bail!(
            "--ctx {context_tokens} exceeds the model's context length ({})",
            source.context_length
        );
    }
    let options = PlanOptions {
        context_tokens,
        concurrent_sequences: args.sequences,
        prompt_tokens: args
            .prompt
            .unwrap_or(DEFAULT_PROMPT_TOKENS.min(context_tokens)),
        ..PlanOptions::default()
    };
    let quantization = choose_among(&source.what_ifs, &cluster, &options)?;
    let (shape, storage) = planned_shape(&source, quant, &quantization);
    let (plan, refusal) = if !args.stages.is_empty() {
        (Some(given_placement(&args.stages, &shape, &cluster, &options)?), None)
    } else {
        match hearth_planner::plan(&shape, &cluster, &options) {
            Ok(plan) => (Some(plan), None),
            Err(err @ PlanError::DoesNotFit { .. }) => (None, Some(err.to_string())),
            Err(err) => return Err(err.into()),
        }
    };
    let prefill_split = match plan.as_ref().map(|p| &p.placement) {
        Some(Placement::SingleNode { stage }) if cluster.nodes.len() > 1 => {
            best_prefill_split(&shape, &cluster, &options, stage.node)?
        }
        _ => None,
    };
    let report = PlanReport {
        model: ModelReport {
            name: source.name.clone(),
            origin: source.origin.clone(),
            storage,
            num_layers: shape.num_layers(),
            num_params: shape.num_params(),
            weight_bytes: shape.weight_bytes(),
            kv_bytes_per_token: shape.kv_bytes_per_token(),
            context_length: source.context_length,
        },
        nodes_are_this_machine: machine.is_some(),
        this_machine: machine.as_ref().map(|m| ThisMachineReport {
            num_cores: m.num_cores,
            copy_bytes: m.copy_bytes,
            memory_source: "MemAvailable in /proc/meminfo",
            compute_estimate: format!(
                "{} cores x {:.0} GFLOP/s (an estimate, not a measurement)",
                m.num_cores,
                this_machine::CPU_FLOPS_PER_CORE / 1e9
            ),
        }),
        nodes: &cluster.nodes,
        hosts: &cluster.hosts,
        link,
        options: &options,
        plan: plan.as_ref(),
        refusal,
        reasons: plan
            .iter()
            .flat_map(|p| p.notes.iter().map(ToString::to_string))
            .chain((!args.stages.is_empty()).then(|| "placement given by --stages (predicted, not searched or refused)".to_string()))
            .collect(),
        quantization: &quantization,
        prefill_split: prefill_split.as_ref(),
        prefill_split_text: prefill_split.as_ref().map(ToString::to_string),
    };
    let mut text = String::new();
    if args.json {
        text = serde_json::to_string_pretty(&report)? + "\n";
    } else {
        print_report(&mut text, &report);
    }
    write_stdout(&text)
}

/// The prediction for `--stages`: stage i on node i, or every stage on the only node.
fn given_placement(stages: &[String], shape: &ModelShape, cluster: &Cluster, options: &PlanOptions) -> Result<hearth_planner::Plan> {
    let num_nodes = cluster.nodes.len();
    if num_nodes > 1 && stages.len() > num_nodes {
        bail!("--stages lists {} stages for {num_nodes} nodes (give one node per stage, or one node for all)", stages.len());
    }
    let placement = stages
        .iter()
        .enumerate()
        .map(|(stage_idx, text)| {
            let layers = crate::commands::stage::parse_layers(text).with_context(|| format!("--stages `{text}`"))?;
            Ok((hearth_planner::NodeId(stage_idx.min(num_nodes - 1)), layers))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(hearth_planner::evaluate_placement(shape, cluster, options, &placement)?)
}

/// Prints `text`; a closed pipe (`hearth plan | head`) is not an error.
fn write_stdout(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Nodes from --hardware (with its multi-GPU machines as hosts) and --nodes (each its own
/// machine; both may be given), joined by `link`; or this machine.
fn cluster_from_args(args: &PlanArgs, link: Link) -> Result<(Cluster, Option<ThisMachine>)> {
    let mut cluster = match &args.hardware {
        Some(list) => parse_hardware_cluster(list, link)?,
        None => Cluster::new(Vec::new(), link),
    };
    if let Some(specs) = &args.nodes {
        cluster.nodes.extend(parse_node_specs(specs)?);
    }
    if !cluster.nodes.is_empty() {
        return Ok((cluster, None));
    }
    let machine = this_machine::describe()?;
    Ok((
        Cluster::new(vec![machine.node.clone()], link),
        Some(machine),
    ))
}

/// The shape to plan and how it is stored: the --quant what-if; for a named shape the best
/// quantization that fits (or the smallest, to say why nothing does); a file as stored.
fn planned_shape(
    source: &ModelSource,
    quant: Option<Quant>,
    quantization: &QuantChoice,
) -> (ModelShape, String) {
    match (quant, source.quant) {
        (Some(quant), _) => (
            source.at(quant),
            format!("{} — what if, from --quant", source.describe_storage(quant)),
        ),
        (None, Some(_)) => match quantization.chosen {
            Some(best) => (
                source.at(best),
                format!(
                    "{} — the highest quality that fits (--quant to choose)",
                    source.describe_storage(best)
                ),
            ),
            None => (
                source.at(Quant::Q4KM),
                format!(
                    "{} — nothing fits, not even this",
                    source.describe_storage(Quant::Q4KM)
                ),
            ),
        },
        (None, None) => (
            source.shape.clone(),
            format!("as stored: {}", source.storage),
        ),
    }
}

/// `8.03 B`, `135.0 M`, `90.1 K`.
fn format_count(count: u64) -> String {
    match count as f64 {
        n if n >= 1e9 => format!("{:.2} B", n / 1e9),
        n if n >= 1e6 => format!("{:.1} M", n / 1e6),
        n => format!("{:.1} K", n / 1e3),
    }
}

fn print_hardware_table(out: &mut String) {
    out!(
        out,
        "{:<16} {:>9} {:>7} {:>10} {:>7} {:>6}  description",
        "name",
        "memory",
        "usable",
        "bandwidth",
        "TFLOPS",
        "power"
    );
    for spec in HARDWARE {
        out!(
            out,
            "{:<16} {:>5.0} GiB {:>6.0}% {:>5.0} GB/s {:>7.1} {:>4.0} W  {}",
            spec.name,
            spec.memory_gib,
            spec.usable_fraction * 100.0,
            spec.bandwidth_gb_per_s,
            spec.tflops,
            spec.power_watts,
            spec.description
        );
    }
}

fn print_report(out: &mut String, report: &PlanReport) {
    let model = &report.model;
    out!(out, "model       {} ({})", model.name, model.origin);
    out!(out, "storage     {}", model.storage);
    out!(
        out,
        "size        {} of weights, {} parameters, {} layers; KV cache {} per token",
        format_bytes(model.weight_bytes),
        format_count(model.num_params),
        model.num_layers,
        format_bytes(model.kv_bytes_per_token)
    );
    let options = report.options;
    out!(out,
        "serving     {} tokens of context x {} sequence(s); TTFT for a {}-token prompt; {:.0}% of each node's memory kept free",
        options.context_tokens,
        options.concurrent_sequences,
        options.prompt_tokens,
        options.memory_headroom * 100.0
    );
    match &report.this_machine {
        Some(machine) => out!(out,
            "nodes       this machine: free memory from {}, bandwidth measured by copying {} on {} threads, compute {}",
            machine.memory_source,
            format_bytes(machine.copy_bytes as u64),
            machine.num_cores,
            machine.compute_estimate
        ),
        None => out!(out, "nodes       described (not measured)"),
    }
    out!(
        out,
        "  {:<20} {:>11} {:>10} {:>9} {:>7}",
        "node",
        "memory",
        "bandwidth",
        "TFLOPS",
        "power"
    );
    for node in report.nodes {
        let power = node
            .power_watts
            .map_or_else(|| "-".to_string(), |w| format!("{w:.0} W"));
        out!(
            out,
            "  {:<20} {:>11} {:>10} {:>9.1} {:>7}",
            node.name,
            format_bytes(node.memory_bytes),
            format_bandwidth(node.bandwidth_bytes_per_s),
            node.flops_per_s / 1e12,
            power
        );
    }
    for host in report.hosts {
        let gpus: Vec<&str> = host
            .nodes
            .iter()
            .map(|n| report.nodes[n.0].name.as_str())
            .collect();
        let tensor_parallel = if host.allows_tensor_parallel() {
            "tensor parallelism considered"
        } else {
            "too slow for tensor parallelism"
        };
        out!(
            out,
            "host        {}: {} on one machine, joined at {}, {} per collective ({tensor_parallel})",
            host.name,
            gpus.join(", "),
            format_bandwidth(host.interconnect.bandwidth_bytes_per_s),
            format_seconds(host.interconnect.latency_s)
        );
    }
    let machines = report.nodes.len() + report.hosts.len()
        - report.hosts.iter().map(|h| h.nodes.len()).sum::<usize>();
    if machines > 1 {
        out!(
            out,
            "link        {} one way, {} between every two machines",
            format_seconds(report.link.latency_s),
            format_bandwidth(report.link.bandwidth_bytes_per_s)
        );
    }
    out!(out);
    match (report.plan, &report.refusal) {
        (Some(plan), _) => print_plan(out, plan),
        (None, Some(refusal)) => out!(out, "placement   none: {refusal}"),
        (None, None) => out!(out, "placement   none"),
    }
    if let Some(text) = &report.prefill_split_text {
        out!(out, "split       {text}");
    }
    out!(out);
    print_quantization(out, report.quantization);
}

fn print_plan(out: &mut String, plan: &Plan) {
    out!(out, "placement   {}", plan.placement.describe());
    if let Placement::TensorParallel { .. } = &plan.placement {
        print_tensor_parallel(out, plan);
    } else {
        print_stages(out, plan);
    }
    let prediction = &plan.prediction;
    let energy = prediction
        .joules_per_token
        .map_or_else(String::new, |j| format!(", {j:.2} J/token at full power"));
    out!(out,
        "predicted   {:.1} tok/s generating ({:.2} ms/token, memory-bandwidth roofline), TTFT {} for a {}-token prompt{energy}",
        prediction.tokens_per_second,
        prediction.seconds_per_token * 1e3,
        format_seconds(prediction.ttft_seconds),
        prediction.prompt_tokens
    );
    for (idx, note) in plan.notes.iter().enumerate() {
        out!(out, "{:<11} {note}", if idx == 0 { "why" } else { "" });
    }
}

/// The ranks of a tensor-parallel placement and its collectives.
fn print_tensor_parallel(out: &mut String, plan: &Plan) {
    let Placement::TensorParallel {
        host,
        ranks,
        interconnect,
        all_reduces_per_token,
    } = &plan.placement
    else {
        return;
    };
    out!(
        out,
        "  {:<5} {:<20} {:<15} {:>25} {:>10} {:>10}",
        "rank",
        "node",
        "heads / kv",
        "memory used / usable",
        "ms/token",
        "prompt ms"
    );
    for rank in ranks {
        out!(
            out,
            "  {:<5} {:<20} {:<15} {:>25} {:>10.2} {:>10.1}",
            rank.rank,
            rank.node_name,
            format!("{} / {}", rank.attention_heads, rank.kv_heads),
            format!(
                "{} / {}",
                format_bytes(rank.memory_bytes),
                format_bytes(rank.usable_memory_bytes)
            ),
            rank.predicted_seconds * 1e3,
            rank.prefill_seconds * 1e3
        );
    }
    out!(
        out,
        "  {:<5} {:<20} {:<15} {:>25} {:>10.2}",
        "",
        "all-reduces",
        format!("{all_reduces_per_token}/token"),
        format!(
            "{host} at {}",
            format_bandwidth(interconnect.bandwidth_bytes_per_s)
        ),
        plan.prediction.link_seconds_per_token * 1e3
    );
}

/// The stages of a single-node or pipeline placement and its links.
fn print_stages(out: &mut String, plan: &Plan) {
    out!(
        out,
        "  {:<5} {:<20} {:<15} {:>25} {:>10} {:>10}",
        "stage",
        "node",
        "layers",
        "memory used / usable",
        "ms/token",
        "prompt ms"
    );
    for (idx, stage) in plan.placement.stages().iter().enumerate() {
        let mut layers = format!("{}..{}", stage.layers.start, stage.layers.end);
        if stage.holds_embedding && !stage.holds_head {
            layers.push_str(" +emb");
        } else if stage.holds_head && !stage.holds_embedding {
            layers.push_str(" +head");
        }
        out!(
            out,
            "  {:<5} {:<20} {:<15} {:>25} {:>10.2} {:>10.1}",
            idx,
            stage.node_name,
            layers,
            format!(
                "{} / {}",
                format_bytes(stage.memory_bytes),
                format_bytes(stage.usable_memory_bytes)
            ),
            stage.predicted_seconds * 1e3,
            stage.prefill_seconds * 1e3
        );
    }
    let prediction = &plan.prediction;
    if prediction.link_seconds_per_token > 0.0 {
        out!(
            out,
            "  {:<5} {:<20} {:<15} {:>25} {:>10.2}",
            "",
            "links",
            "",
            "",
            prediction.link_seconds_per_token * 1e3
        );
    }
}

fn print_quantization(out: &mut String, choice: &QuantChoice) {
    out!(
        out,
        "quantization (highest quality that fits: {})",
        choice.chosen.map_or("none".to_string(), |q| q.to_string())
    );
    out!(
        out,
        "  {:<8} {:>11} {:<5} {:<18} {:>9} {:>10}",
        "quant",
        "weights",
        "fits",
        "placement",
        "tok/s",
        "TTFT"
    );
    for option in &choice.options {
        let (fits, placement, speed, ttft) = match &option.plan {
            Some(plan) => (
                "yes",
                plan.placement.describe(),
                format!("{:.1}", plan.prediction.tokens_per_second),
                format_seconds(plan.prediction.ttft_seconds),
            ),
            None => ("no", "-".to_string(), "-".to_string(), "-".to_string()),
        };
        out!(
            out,
            "  {:<8} {:>11} {:<5} {:<18} {:>9} {:>10}",
            option.quant.name(),
            format_bytes(option.weight_bytes),
            fits,
            placement,
            speed,
            ttft
        );
    }
}
