//! `hearth run`: one prompt, or an interactive chat with history when no prompt is given.
//! Text streams to stdout as it is generated; token rates go to stderr.

use std::io::{BufRead, Write};

use anyhow::Result;
use hearth_engine::generate::generate;
use hearth_engine::sampling::SamplingParams;
use hearth_engine::{GenerateParams, Generation, Sequence};
use hearth_tokenizer::{BosPolicy, ChatMessage};

use crate::open::{open, ModelArgs, OpenModel};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt; without one, an interactive chat starts.
    pub prompt: Option<String>,
    /// Send the prompt as is, without the model's chat template.
    #[arg(long)]
    pub raw: bool,
    /// System message for chat models.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate (default: until the model stops or the context is full).
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Context size in tokens (KV cache capacity), capped at the model's context length.
    #[arg(long, default_value_t = 4096)]
    pub ctx_size: usize,
    /// 0 means greedy (deterministic).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed; the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl RunArgs {
    fn generate_params(&self, model: &OpenModel) -> GenerateParams {
        GenerateParams {
            max_new_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repeat_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: self.seed,
            },
            stop_token_ids: model.tokenizer.eos_ids().to_vec(),
            prefill_chunk: 512,
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let mut model = open(&args.model, args.ctx_size)?;
    let params = args.generate_params(&model);
    params.sampling.validate()?;
    let mut seq = model.runner.new_sequence()?;
    let use_template = !args.raw && model.tokenizer.chat_template().is_some();
    let mut history: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage { role: "system".into(), content: s.clone() })
        .collect();
    match &args.prompt {
        Some(prompt) => {
            let text = if use_template {
                history.push(ChatMessage { role: "user".into(), content: prompt.clone() });
                render(&model, &history)?
            } else {
                prompt.clone()
            };
            turn(&mut model, &mut seq, &text, &params)?;
        }
        None => {
            eprintln!("hearth chat with {} — empty line or Ctrl-D to quit", model.path.display());
            let stdin = std::io::stdin();
            loop {
                eprint!("> ");
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
                    break;
                }
                history.push(ChatMessage { role: "user".into(), content: line.trim_end().to_string() });
                let text = if use_template { render(&model, &history)? } else { line };
                let generation = turn(&mut model, &mut seq, &text, &params)?;
                history.push(ChatMessage { role: "assistant".into(), content: generation.text });
            }
        }
    }
    Ok(())
}

fn render(model: &OpenModel, messages: &[ChatMessage]) -> Result<String> {
    match model.tokenizer.chat_template() {
        Some(template) => Ok(template.render(messages, true)?),
        None => Ok(messages.last().map(|m| m.content.clone()).unwrap_or_default()),
    }
}

/// Generates a reply to the full conversation `text`, reusing the K/V of the longest prefix
/// the sequence already holds.
fn turn(model: &mut OpenModel, seq: &mut Sequence, text: &str, params: &GenerateParams) -> Result<Generation> {
    let prompt_ids = model.tokenizer.encode(text, BosPolicy::AddIfModelDoes)?;
    if prompt_ids.is_empty() {
        anyhow::bail!("the prompt is empty after tokenization");
    }
    let num_shared = seq.token_ids.iter().zip(&prompt_ids).take_while(|(a, b)| a == b).count();
    // The last prompt token is always recomputed so the step yields logits.
    seq.truncate(num_shared.min(prompt_ids.len() - 1));
    seq.token_ids.extend_from_slice(&prompt_ids[seq.token_ids.len()..]);
    let mut stdout = std::io::stdout();
    let generation = generate(&mut model.runner, seq, &model.tokenizer, params, |piece| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    let s = &generation.stats;
    eprintln!(
        "[prompt: {} tokens ({} cached), {:.1} tok/s | generation: {} tokens, {:.1} tok/s | {:?}]",
        s.num_prompt_tokens,
        s.num_cached_tokens,
        s.prompt_tokens_per_sec(),
        s.num_generated_tokens,
        s.generation_tokens_per_sec(),
        generation.finish_reason
    );
    Ok(generation)
}
