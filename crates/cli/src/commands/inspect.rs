//! `hearth inspect`: what a model is and what it needs, read from headers only.

use anyhow::Result;

use crate::open::{open_files, tokenizer_for};
use crate::store;

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Model to describe (default: the default model).
    pub model: Option<String>,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let path = store::resolve(args.model.as_deref())?;
    let files = open_files(&path)?;
    let c = &files.config;
    let summary = files.weight_summary()?;
    let has_template = tokenizer_for(&files).map(|t| t.chat_template().is_some());
    println!("model           {}", path.display());
    println!("format          {:?}", files.format);
    println!("architecture    {}", c.arch.name());
    println!("parameters      {} ({:.1} M)", summary.num_params, summary.num_params as f64 / 1e6);
    println!("layers          {}  (hidden {}, mlp {}, heads {}/{} kv, head_dim {})",
        c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim);
    println!("vocabulary      {}", c.vocab_size);
    println!("context length  {}", c.context_length);
    if let Some(window) = c.sliding_window {
        let num_sliding = c.layer_kinds.iter().filter(|k| **k == hearth_models::config::LayerKind::Sliding).count();
        println!("sliding window  {window} tokens on {num_sliding} of {} layers", c.num_layers);
    }
    println!("quantization    {}", summary
        .by_type
        .iter()
        .map(|(t, (n, p))| format!("{t}: {n} tensors, {:.1}%", 100.0 * *p as f64 / summary.num_params.max(1) as f64))
        .collect::<Vec<_>>()
        .join("; "));
    match has_template {
        Ok(true) => println!("chat template   yes"),
        Ok(false) => println!("chat template   no"),
        Err(e) => println!("chat template   unknown (tokenizer: {e:#})"),
    }
    println!("weights memory  {:.1} MiB", summary.num_bytes as f64 / (1 << 20) as f64);
    println!(
        "KV cache        {:.1} MiB per 1k tokens at f16 ({:.1} MiB at f32, as on CPU)",
        (c.kv_bytes_per_token(2) * 1000) as f64 / (1 << 20) as f64,
        (c.kv_bytes_per_token(4) * 1000) as f64 / (1 << 20) as f64
    );
    Ok(())
}
