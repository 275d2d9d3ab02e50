//! `hearth`: the command line. The only crate that picks devices and wires the others together.
//!
//! Subcommands live in `commands/`, one file each; model resolution (paths, the store, the
//! Hugging Face cache) in `store`; opening a model with its tokenizer in `open`.

mod commands;
mod device;
mod open;
mod pipeline;
mod pipeline_plan;
mod replan;
mod stop_signal;
mod store;
mod tensor_parallel;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hearth", version, about = "Private AI inference on the machines you own")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, or chat interactively when no prompt is given.
    Run(commands::run::RunArgs),
    /// Describe a model: architecture, parameters, quantization, memory needs.
    Inspect(commands::inspect::InspectArgs),
    /// List the models hearth can find locally.
    Models,
    /// Serve a model over OpenAI- and Ollama-compatible HTTP APIs.
    Serve(commands::serve::ServeArgs),
    /// Download a model from the Hugging Face hub into the local cache.
    Pull(commands::pull::PullArgs),
    /// Perplexity of a text file (DESIGN.md §5 protocol).
    Perplexity(commands::perplexity::PerplexityArgs),
    /// Write a model as a Hugging Face directory (BF16 safetensors, config, tokenizer).
    Export(commands::export::ExportArgs),
    /// Write a random-weight GGUF in a real model's shape, for benchmarks (llama.cpp loads it too).
    BenchModel(commands::bench_model::BenchModelArgs),
    /// Plan where a model runs: one machine or a cluster; predicts tokens/s without loading weights.
    Plan(commands::plan::PlanArgs),
    /// Prompt and generation tokens/s, llama-bench style, against the measured bandwidth roofline.
    Bench(commands::bench::BenchArgs),
    /// Serve a layer range of a model as a pipeline stage for `hearth serve --stages`.
    Stage(commands::stage::StageArgs),
    /// Run a cluster worker node: join the coordinator, heartbeat, answer link probes.
    Node(commands::node::NodeCommandArgs),
    /// The cluster: run its coordinator, show its status, explain missing peers.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HEARTH_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Models => commands::models::run(),
        Command::Serve(args) => commands::serve::run(args),
        Command::Pull(args) => commands::pull::run(args),
        Command::Perplexity(args) => commands::perplexity::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::BenchModel(args) => commands::bench_model::run(args),
        Command::Plan(args) => commands::plan::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Stage(args) => commands::stage::run(args),
        Command::Node(args) => commands::node::run(args),
        Command::Cluster(command) => commands::cluster::run(command),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
