//! Building a [`Tokenizer`] from Hugging Face files: `tokenizer.json` (the pipeline, loaded by the
//! `tokenizers` crate as is) and `tokenizer_config.json` (chat template, `bos_token`, `eos_token`,
//! `add_bos_token`). A `chat_template.jinja` next to the config is used when the config has no
//! template (newer `transformers` save it there).
//!
//! Invariants: a config value of the wrong shape is an error naming the file and key; BOS/EOS
//! strings that are not in the vocabulary are errors, not silently dropped stop tokens.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::chat::ChatTemplate;
use crate::error::{Result, TokenizerError};
use crate::specials::{Specials, END_OF_TURN_TOKENS};
use crate::tokenizer::Tokenizer;

pub(crate) fn build(tokenizer_json: &Path, tokenizer_config_json: Option<&Path>) -> Result<Tokenizer> {
    let bytes = std::fs::read(tokenizer_json).map_err(|source| TokenizerError::ReadFile {
        path: tokenizer_json.to_path_buf(),
        source,
    })?;
    // Parse as JSON first so malformed JSON gets serde's line/column message.
    serde_json::from_slice::<Json>(&bytes).map_err(|source| TokenizerError::Json {
        path: tokenizer_json.to_path_buf(),
        source,
    })?;
    let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::InvalidTokenizerJson {
        path: tokenizer_json.to_path_buf(),
        message: e.to_string(),
    })?;
    let config = match tokenizer_config_json {
        Some(path) => Some(Config::read(path)?),
        None => None,
    };

    let token_id = |text: &str, key: &str, path: &Path| -> Result<u32> {
        inner.token_to_id(text).ok_or_else(|| TokenizerError::InvalidConfig {
            path: path.to_path_buf(),
            reason: format!(
                "{key} \"{text}\" is not in the vocabulary of {}",
                tokenizer_json.display()
            ),
        })
    };
    let mut specials = Specials::default();
    let (mut bos_text, mut eos_text) = (String::new(), String::new());
    if let Some(config) = &config {
        if let Some(bos) = &config.bos_token {
            specials.bos_id = Some(token_id(bos, "bos_token", &config.path)?);
            bos_text = bos.clone();
        }
        if let Some(eos) = &config.eos_token {
            specials.push_eos(token_id(eos, "eos_token", &config.path)?);
            eos_text = eos.clone();
        }
    }
    let added = inner.get_added_vocabulary();
    for name in END_OF_TURN_TOKENS {
        if added.is_special_token(name) {
            if let Some(id) = inner.token_to_id(name) {
                specials.push_eos(id);
            }
        }
    }
    specials.add_bos = match config.as_ref().and_then(|c| c.add_bos_token) {
        Some(add) => add,
        None => post_processor_adds(&inner, specials.bos_id),
    };
    if specials.add_bos && specials.bos_id.is_none() {
        specials.bos_id = first_added_id(&inner);
    }

    let chat_template = match config.as_ref().and_then(|c| c.chat_template.as_deref()) {
        Some(source) => Some(ChatTemplate::new(source, &bos_text, &eos_text)?),
        None => None,
    };
    Ok(Tokenizer::assemble(inner, specials, chat_template))
}

/// Whether the tokenizer's post-processor puts `bos_id` (or, with no declared BOS, any token)
/// in front of the text.
fn post_processor_adds(inner: &tokenizers::Tokenizer, bos_id: Option<u32>) -> bool {
    let (Ok(with), Ok(without)) = (inner.encode_fast("a", true), inner.encode_fast("a", false)) else {
        return false;
    };
    let (with, without) = (with.get_ids(), without.get_ids());
    match bos_id {
        Some(bos) => with.first() == Some(&bos) && without.first() != Some(&bos),
        None => with.len() > without.len() && with.ends_with(without),
    }
}

/// The id the post-processor puts in front of the text (for configs that name no BOS).
fn first_added_id(inner: &tokenizers::Tokenizer) -> Option<u32> {
    inner.encode_fast("a", true).ok()?.get_ids().first().copied()
}

/// The parts of `tokenizer_config.json` hearth uses.
struct Config {
    path: PathBuf,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos_token: Option<bool>,
}

impl Config {
    fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Json = serde_json::from_slice(&bytes).map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| TokenizerError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        };
        let Json::Object(map) = &json else {
            return Err(invalid("expected a JSON object".into()));
        };
        let add_bos_token = match map.get("add_bos_token") {
            None | Some(Json::Null) => None,
            Some(Json::Bool(b)) => Some(*b),
            Some(other) => return Err(invalid(format!("add_bos_token must be a bool, found {other}"))),
        };
        let mut chat_template = match map.get("chat_template") {
            None | Some(Json::Null) => None,
            Some(value) => Some(template_from_json(value).map_err(invalid)?),
        };
        if chat_template.is_none() {
            let sibling = path.with_file_name("chat_template.jinja");
            if sibling.is_file() {
                chat_template = Some(
                    std::fs::read_to_string(&sibling).map_err(|source| TokenizerError::ReadFile {
                        path: sibling.clone(),
                        source,
                    })?,
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            chat_template,
            bos_token: token_from_json(map.get("bos_token"), "bos_token").map_err(invalid)?,
            eos_token: token_from_json(map.get("eos_token"), "eos_token").map_err(invalid)?,
            add_bos_token,
        })
    }
}

/// `"<s>"`, `{"content": "<s>", ...}` (an AddedToken) or null.
fn token_from_json(value: Option<&Json>, key: &str) -> std::result::Result<Option<String>, String> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(obj)) => match obj.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(format!("{key} object has no string \"content\"")),
        },
        Some(other) => Err(format!(
            "{key} must be a string or an object with \"content\", found {other}"
        )),
    }
}

/// A template string, or a list of `{name, template}` from which "default" is taken (a list of
/// one is taken whatever its name).
fn template_from_json(value: &Json) -> std::result::Result<String, String> {
    match value {
        Json::String(s) => Ok(s.clone()),
        Json::Array(items) => {
            let mut named = Vec::new();
            for item in items {
                let name = item.get("name").and_then(Json::as_str);
                let template = item.get("template").and_then(Json::as_str);
                match (name, template) {
                    (Some(name), Some(template)) => named.push((name, template)),
                    _ => return Err("chat_template list entries must be {\"name\": ..., \"template\": ...}".into()),
                }
            }
            match named.iter().find(|(name, _)| *name == "default") {
                Some((_, template)) => Ok(template.to_string()),
                None if named.len() == 1 => Ok(named[0].1.to_string()),
                None => {
                    let names: Vec<&str> = named.iter().map(|(name, _)| *name).collect();
                    Err(format!(
                        "chat_template list has no \"default\" entry (has: {})",
                        names.join(", ")
                    ))
                }
            }
        }
        other => Err(format!("chat_template must be a string or a list, found {other}")),
    }
}
