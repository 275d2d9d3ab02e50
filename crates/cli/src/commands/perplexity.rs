//! `hearth perplexity`: perplexity of a text file by the DESIGN.md §5 protocol.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hearth_engine::perplexity::{clean_text, perplexity, WindowBos};
use hearth_tokenizer::BosPolicy;

use crate::open::{open, ModelArgs};

#[derive(clap::Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score (`#`, `*` and `_` are removed first).
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub window: usize,
    /// Score only the first this many text tokens.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens: usize,
    /// Start each window with BOS (then BOS + window-1 text tokens).
    #[arg(long)]
    pub bos: bool,
    /// Also write the greedy (top-1) prediction at every scored position to this file.
    #[arg(long)]
    pub top1_out: Option<PathBuf>,
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    if args.window < 2 {
        bail!("--window must be at least 2");
    }
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let mut model = open(&args.model, args.window)?;
    let tokens = model.tokenizer.encode(&clean_text(&text), BosPolicy::Never)?;
    let bos = match (args.bos, model.tokenizer.bos_id()) {
        (true, Some(id)) => WindowBos::Prepend(id),
        (true, None) => bail!("--bos: the model has no BOS token"),
        (false, _) => WindowBos::None,
    };
    let start = std::time::Instant::now();
    let report = perplexity(&mut model.runner, &tokens, args.window, args.max_tokens, bos)?;
    eprintln!(
        "{} windows, {} scored positions, {:.1} s",
        report.num_windows,
        report.num_scored,
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.top1_out {
        let text: Vec<String> = report.top1.iter().map(u32::to_string).collect();
        std::fs::write(path, text.join("\n")).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("perplexity: {:.4}", report.perplexity);
    Ok(())
}
