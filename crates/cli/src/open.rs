//! Opening a model for use: resolve the argument, open the device (`--device`), read the config,
//! build the tokenizer from the same source (GGUF metadata or `tokenizer.json`), load the weights
//! onto the device, size the KV pool.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hearth_engine::{ModelRunner, RunnerParams};
use hearth_models::{LoadOptions, ModelFiles, ModelFormat, QuantizeTo};
use hearth_tokenizer::Tokenizer;

use crate::device::{ComputeDevice, DeviceChoice};
use crate::store;

pub struct OpenModel {
    pub path: PathBuf,
    pub runner: ModelRunner,
    pub tokenizer: Tokenizer,
}

/// Options shared by commands that load a model.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a .gguf file, a Hugging Face directory, a store name, or a cached repo id.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Quantize a Hugging Face model's weights while loading: q4k or q8_0.
    #[arg(long)]
    pub quant: Option<String>,
    /// Where to run: cpu, cuda or cuda:N (a GPU needs a build with --features cuda).
    #[arg(long, default_value = "cpu", env = "HEARTH_DEVICE")]
    pub device: DeviceChoice,
}

impl ModelArgs {
    pub fn quantize(&self) -> Result<Option<QuantizeTo>> {
        match &self.quant {
            None => Ok(None),
            Some(q) => match QuantizeTo::parse(q) {
                Some(q) => Ok(Some(q)),
                None => bail!("unknown --quant `{q}` (expected q4k or q8_0)"),
            },
        }
    }

    /// Opens `--device` and the load options for it.
    pub fn device_and_load_options(&self) -> Result<(ComputeDevice, LoadOptions)> {
        let compute = ComputeDevice::open(self.device)?;
        let options = LoadOptions { device: compute.device.clone(), dtype: compute.dtype, quantize: self.quantize()? };
        Ok((compute, options))
    }
}

pub fn tokenizer_for(files: &ModelFiles) -> Result<Tokenizer> {
    match (&files.gguf, files.format) {
        (Some(gguf), _) => Tokenizer::from_gguf(&gguf.content)
            .with_context(|| format!("building the tokenizer of {}", files.path.display())),
        (None, ModelFormat::HfDirectory) => {
            let json = files.path.join("tokenizer.json");
            if !json.exists() {
                bail!("{} has no tokenizer.json; hearth needs it to encode prompts", files.path.display());
            }
            let config = files.path.join("tokenizer_config.json");
            Tokenizer::from_hf_files(&json, config.exists().then_some(config.as_path()))
                .with_context(|| format!("reading {}", json.display()))
        }
        (None, ModelFormat::Gguf) => bail!("GGUF model without its file handle"),
    }
}

/// Opens `args`' model with a KV pool for `num_kv_tokens` tokens.
pub fn open(args: &ModelArgs, num_kv_tokens: usize) -> Result<OpenModel> {
    let path = store::resolve(args.model.as_deref())?;
    let files = open_files(&path)?;
    let tokenizer = tokenizer_for(&files)?;
    let (compute, options) = args.device_and_load_options()?;
    let loaded = files.load(&options).with_context(|| format!("loading {} on {}", path.display(), args.device))?;
    let kv_tokens = num_kv_tokens.min(loaded.model.config.context_length).max(1);
    let params = RunnerParams { kv_dtype: compute.kv_dtype, ..RunnerParams::for_tokens(kv_tokens) };
    let runner = ModelRunner::new(loaded.model, params, &compute.device)?;
    Ok(OpenModel { path, runner, tokenizer })
}

pub fn open_files(path: &Path) -> Result<ModelFiles> {
    ModelFiles::open(path).with_context(|| format!("opening model {}", path.display()))
}
