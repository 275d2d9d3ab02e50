//! `hearth pull REPO`: download a model through `hf-hub` into the standard Hugging Face cache,
//! where `--model REPO` then finds it. Offline, it fails with a message saying so.

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::ApiBuilder;

use crate::store;

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// Hugging Face repo id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.
    pub repo: String,
    /// Download only this file (e.g. one GGUF of a repo with several).
    #[arg(long)]
    pub file: Option<String>,
}

pub fn run(args: PullArgs) -> Result<()> {
    if args.repo.split('/').count() != 2 {
        bail!("`{}` is not a repo id (expected owner/name)", args.repo);
    }
    let api = ApiBuilder::from_env()
        .with_cache_dir(store::hf_hub_dir())
        .with_progress(true)
        .build()
        .context("starting the Hugging Face client")?;
    let repo = api.model(args.repo.clone());
    let info = repo.info().map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the Hugging Face hub for `{}`: {e}\n(hearth works offline with local files: pass --model PATH)",
            args.repo
        )
    })?;
    let wanted: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|name| match &args.file {
            Some(file) => name == file,
            None => name.ends_with(".safetensors") || name.ends_with(".json") || name.ends_with(".gguf"),
        })
        .collect();
    if wanted.is_empty() {
        bail!("{} has no model files to download", args.repo);
    }
    for name in &wanted {
        let path = repo.get(name).with_context(|| format!("downloading {name}"))?;
        eprintln!("{}", path.display());
    }
    println!("pulled {} ({} files); use --model {}", args.repo, wanted.len(), args.repo);
    Ok(())
}
