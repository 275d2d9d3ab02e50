//! `hearth export`: a model as a Hugging Face directory — `config.json`, BF16
//! `model.safetensors`, `tokenizer.json` and `tokenizer_config.json` (chat template, BOS/EOS).

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::json;

use crate::open::{open_files, tokenizer_for};
use crate::store;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Model to export (default: the default model).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Output directory (created).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let path = store::resolve(args.model.as_deref())?;
    let files = open_files(&path)?;
    let tokenizer = tokenizer_for(&files)?;
    hearth_models::export::export_hf(&files, &args.out).with_context(|| format!("exporting {}", path.display()))?;
    let write = |name: &str, text: String| -> Result<()> {
        let dest = args.out.join(name);
        std::fs::write(&dest, text).with_context(|| format!("writing {}", dest.display()))
    };
    write("tokenizer.json", tokenizer.to_hf_json()?)?;
    let token = |id: Option<u32>| id.and_then(|id| tokenizer.token_str(id)).map(str::to_string);
    let config = json!({
        "bos_token": token(tokenizer.bos_id()),
        "eos_token": token(tokenizer.eos_ids().first().copied()),
        "add_bos_token": tokenizer.adds_bos(),
        "chat_template": tokenizer.chat_template().map(|t| t.source().to_string()),
    });
    write("tokenizer_config.json", serde_json::to_string_pretty(&config)?)?;
    println!("exported {} to {}", path.display(), args.out.display());
    Ok(())
}
