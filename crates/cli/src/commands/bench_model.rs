//! `hearth bench-model`: writes a random-weight GGUF in the exact shape of a real model
//! (Llama-3-8B, Llama-3.2-1B, Qwen2.5-7B) at Q4_K_M, Q8_0 or BF16, carrying a real tokenizer,
//! so hearth and llama.cpp can be benchmarked on the same file (DESIGN.md §5, issue 4).
//!
//! Owns: choosing the vocabulary source (a GGUF's `tokenizer.*` metadata copied as is, or a
//! tokenizer.json converted by `hearth_tokenizer`), progress, and checking the written file
//! opens as a model and a tokenizer. The file itself is `hearth_models::bench`'s business.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::Value;
use hearth_models::bench::{summarize, write_bench_model, BenchModelParams, BenchModelSummary, BenchQuant, ShapeName};
use hearth_models::weights::gguf::GgufFile;
use hearth_models::ModelFiles;
use hearth_tokenizer::Tokenizer;
use indicatif::{ProgressBar, ProgressStyle};

/// The default vocabulary: SmolLM2's 49,152 tokens (the file of `scripts/fetch-assets.sh`).
const DEFAULT_VOCAB_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";

#[derive(clap::Args, Debug)]
pub struct BenchModelArgs {
    /// Model shape: llama3-8b, llama3.2-1b or qwen2.5-7b.
    #[arg(long, value_parser = parse_shape)]
    pub shape: ShapeName,
    /// Storage: q4_k_m (llama.cpp's mix), q8_0 or bf16.
    #[arg(long, value_parser = parse_quant)]
    pub quant: BenchQuant,
    /// Tokenizer (and so vocabulary size) to carry: a GGUF file, or a tokenizer.json (with the
    /// tokenizer_config.json beside it, if any). Default: SmolLM2's GGUF in the asset cache
    /// ($HEARTH_ASSETS, default ~/.cache/hearth/assets).
    #[arg(long)]
    pub vocab_from: Option<PathBuf>,
    /// Output GGUF file.
    #[arg(long, required_unless_present = "dry_run")]
    pub out: Option<PathBuf>,
    /// Seed of the random weights (same seed, same bytes).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the tensor mix and the file size without writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_shape(s: &str) -> std::result::Result<ShapeName, String> {
    ShapeName::parse(s).map_err(|e| e.to_string())
}

fn parse_quant(s: &str) -> std::result::Result<BenchQuant, String> {
    BenchQuant::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: BenchModelArgs) -> Result<()> {
    let vocab_path = args.vocab_from.clone().unwrap_or_else(default_vocab_path);
    let tokenizer_metadata = tokenizer_metadata(&vocab_path)?;
    let vocab_size = match tokenizer_metadata.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
        Some((_, Value::Array(tokens))) => tokens.len(),
        _ => bail!("{}: no tokenizer.ggml.tokens array", vocab_path.display()),
    };
    let params = BenchModelParams { shape: args.shape.shape(), quant: args.quant, vocab_size, tokenizer_metadata, seed: args.seed };
    let what = format!("{} {} (vocabulary {vocab_size} from {})", args.shape.as_str(), args.quant.as_str(), vocab_path.display());
    let out = match (&args.out, args.dry_run) {
        (Some(out), false) => out,
        _ => {
            print_summary(&what, &summarize(&params)?);
            return Ok(());
        }
    };

    let start = Instant::now();
    let bar = ProgressBar::new(summarize(&params)?.num_bytes);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = write_bench_model(&params, out, &mut |p| {
        bar.set_position(p.bytes_done);
        bar.set_message(p.tensor.name.clone());
    })
    .with_context(|| format!("writing {}", out.display()))?;
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    print_summary(&what, &summary);
    println!(
        "wrote           {} in {elapsed:.1} s ({:.0} MB/s)",
        out.display(),
        summary.num_bytes as f64 / 1e6 / elapsed.max(1e-9)
    );
    check_written(out)
}

fn default_vocab_path() -> PathBuf {
    let assets = match std::env::var_os("HEARTH_ASSETS") {
        Some(dir) => PathBuf::from(dir),
        None => crate::store::hearth_home().join("assets"),
    };
    assets.join(DEFAULT_VOCAB_FILE)
}

/// `tokenizer.*` keys from a GGUF (copied, sorted by key) or a tokenizer.json (converted).
fn tokenizer_metadata(path: &Path) -> Result<Vec<(String, Value)>> {
    if !path.is_file() {
        bail!(
            "vocabulary source {} does not exist (pass --vocab-from FILE.gguf|tokenizer.json, or run scripts/fetch-assets.sh for the default)",
            path.display()
        );
    }
    let mut magic = [0u8; 4];
    let read_magic = std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
    if read_magic.is_ok() && &magic == b"GGUF" {
        let file = GgufFile::open(path)?;
        Tokenizer::from_gguf(&file.content).with_context(|| format!("tokenizer of {}", path.display()))?;
        let mut keys: Vec<(String, Value)> =
            file.content.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")).map(|(k, v)| (k.clone(), v.clone())).collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(keys);
    }
    let config = path.with_file_name("tokenizer_config.json");
    let tokenizer = Tokenizer::from_hf_files(path, config.is_file().then_some(config.as_path()))
        .with_context(|| format!("reading {}", path.display()))?;
    tokenizer.to_gguf_metadata().with_context(|| format!("converting {} to GGUF metadata", path.display()))
}

fn print_summary(what: &str, s: &BenchModelSummary) {
    println!("bench model     {what}");
    println!("parameters      {} ({:.2} B)", s.num_params, s.num_params as f64 / 1e9);
    for (ty, (num_tensors, num_params)) in &s.by_type {
        println!("  {ty:<13} {num_tensors:>4} tensors, {:>5.1}% of parameters", 100.0 * *num_params as f64 / s.num_params.max(1) as f64);
    }
    println!("file size       {} bytes ({:.3} GB, {:.3} GiB)", s.num_bytes, s.num_bytes as f64 / 1e9, s.num_bytes as f64 / (1u64 << 30) as f64);
}

/// Opens the written file as hearth would serve it: model config and tokenizer.
fn check_written(out: &Path) -> Result<()> {
    let files = ModelFiles::open(out).with_context(|| format!("re-opening {}", out.display()))?;
    let gguf = files.gguf.as_ref().context("the written file is not read as GGUF")?;
    let tokenizer = Tokenizer::from_gguf(&gguf.content).with_context(|| format!("tokenizer of {}", out.display()))?;
    let c = &files.config;
    println!(
        "check           hearth reads {} layers, hidden {}, {}/{} heads, vocabulary {}; tokenizer of {} tokens",
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.vocab_size,
        tokenizer.vocab_size()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The vocabulary sources through a tiny shape (the real ones take minutes): the written
    //! file's tokenizer encodes like the source's, from a GGUF and from a tokenizer.json.
    use hearth_models::bench::BenchShape;
    use hearth_models::Architecture;
    use hearth_tokenizer::BosPolicy;

    use super::*;

    const TEXTS: &[&str] = &[
        "The quick brown fox jumps over the lazy dog.",
        "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n",
    ];

    fn smollm2_asset() -> PathBuf {
        let path = default_vocab_path();
        assert!(path.is_file(), "{} is missing: run scripts/fetch-assets.sh", path.display());
        path
    }

    /// Writes a tiny model carrying the vocabulary of `source`; returns the file's tokenizer.
    fn written_tokenizer(source: &Path, dir: &Path) -> Tokenizer {
        let tokenizer_metadata = tokenizer_metadata(source).unwrap();
        let vocab_size = match tokenizer_metadata.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
            Some((_, Value::Array(tokens))) => tokens.len(),
            other => panic!("no token list: {other:?}"),
        };
        let params = BenchModelParams {
            shape: BenchShape::tiny(Architecture::Llama),
            quant: BenchQuant::Q4KM,
            vocab_size,
            tokenizer_metadata,
            seed: 1,
        };
        let out = dir.join("tiny.gguf");
        write_bench_model(&params, &out, &mut |_| {}).unwrap();
        check_written(&out).unwrap();
        Tokenizer::from_gguf(&GgufFile::open(&out).unwrap().content).unwrap()
    }

    fn assert_same_ids(want: &Tokenizer, got: &Tokenizer) {
        assert_eq!(got.vocab_size(), want.vocab_size());
        assert_eq!((got.bos_id(), got.eos_ids()), (want.bos_id(), want.eos_ids()));
        for text in TEXTS {
            assert_eq!(got.encode(text, BosPolicy::AddIfModelDoes).unwrap(), want.encode(text, BosPolicy::AddIfModelDoes).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn gguf_vocabulary_is_copied_and_tokenizes_like_the_source() {
        let source = smollm2_asset();
        let dir = tempfile::tempdir().unwrap();
        let got = written_tokenizer(&source, dir.path());
        let want = Tokenizer::from_gguf(&GgufFile::open(&source).unwrap().content).unwrap();
        assert_same_ids(&want, &got);
        assert_eq!(got.chat_template().map(|t| t.source()), want.chat_template().map(|t| t.source()));
    }

    #[test]
    fn tokenizer_json_vocabulary_is_converted_and_tokenizes_like_the_source() {
        let gguf_tokenizer = Tokenizer::from_gguf(&GgufFile::open(&smollm2_asset()).unwrap().content).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("tokenizer.json");
        std::fs::write(&json, gguf_tokenizer.to_hf_json().unwrap()).unwrap();
        let want = Tokenizer::from_hf_files(&json, None).unwrap();
        let got = written_tokenizer(&json, dir.path());
        assert_same_ids(&want, &got);
    }

    #[test]
    fn a_missing_vocabulary_source_says_how_to_get_the_default() {
        let err = tokenizer_metadata(Path::new("/no/such/tokenizer.json")).unwrap_err().to_string();
        assert!(err.contains("--vocab-from") && err.contains("fetch-assets.sh"), "{err}");
    }
}
