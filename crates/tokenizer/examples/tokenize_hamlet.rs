//! Times building the GGUF tokenizers and encoding/decoding the whole of Hamlet (the perplexity
//! text) with each, as a quick throughput check:
//!
//!     cargo run --release -p hearth-tokenizer --example tokenize_hamlet
//!
//! Reads `$HEARTH_ASSETS` (default `~/.cache/hearth/assets`, filled by `scripts/fetch-assets.sh`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearth_tokenizer::{BosPolicy, IncrementalDecoder, SkipSpecial, Tokenizer};

fn main() -> anyhow::Result<()> {
    let assets = std::env::var_os("HEARTH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hearth/assets"));
    let hamlet_path = assets.join("hamlet.md");
    let raw = std::fs::read_to_string(&hamlet_path)
        .map_err(|e| anyhow::anyhow!("{}: {e} (run scripts/fetch-assets.sh)", hamlet_path.display()))?;
    let text: String = raw.chars().filter(|c| !matches!(c, '#' | '*' | '_')).collect();
    println!("Hamlet: {} bytes", text.len());
    println!(
        "{:<34} {:>9} {:>8} {:>11} {:>10} {:>12}",
        "model", "build ms", "tokens", "encode ms", "MB/s", "stream ms"
    );
    for file in ["smollm2-135m-instruct-q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"] {
        let path = assets.join(file);
        let start = Instant::now();
        let mut reader = std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut reader)?;
        let tokenizer = Tokenizer::from_gguf(&content)?;
        let build = start.elapsed();

        let mut best = Duration::MAX;
        let mut ids = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            ids = tokenizer.encode(&text, BosPolicy::Never)?;
            best = best.min(start.elapsed());
        }
        let start = Instant::now();
        let mut decoder = IncrementalDecoder::with_skip_special(&tokenizer, SkipSpecial::No);
        let mut streamed = String::new();
        for &id in &ids {
            streamed.extend(decoder.push(id)?);
        }
        streamed.extend(decoder.finish()?);
        let stream = start.elapsed();
        anyhow::ensure!(streamed == text, "{file}: streamed text differs from the input");
        println!(
            "{:<34} {:>9.1} {:>8} {:>11.1} {:>10.2} {:>12.1}",
            file,
            build.as_secs_f64() * 1e3,
            ids.len(),
            best.as_secs_f64() * 1e3,
            text.len() as f64 / best.as_secs_f64() / 1e6,
            stream.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
