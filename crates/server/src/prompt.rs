//! Prompts: chat messages through the model's chat template, plain text through the
//! tokenizer, and the instruction that asks for JSON output (`response_format` / `format`).
//!
//! Owns: how a prompt becomes token ids. Chat prompts are rendered with the generation prompt
//! on and encoded with the model's BOS policy; `Tokenizer::encode` never doubles a BOS that the
//! template already printed (the same path as `hearth run`). Does not own: the template itself
//! (the model's, compiled by `hearth-tokenizer`).

use hearth_tokenizer::{BosPolicy, ChatMessage, GenerationPrompt, Tokenizer};

use crate::error::ServerError;

/// The system instruction that asks for JSON output (JSON mode is honored by instruction, not
/// by constrained decoding).
pub const JSON_INSTRUCTION: &str =
    "Respond with a single valid JSON object and nothing else: no prose, no code fences.";

/// Token ids of a conversation rendered with the model's chat template.
pub fn chat_prompt(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
) -> Result<Vec<u32>, ServerError> {
    let Some(template) = tokenizer.chat_template() else {
        return Err(ServerError::InvalidParam {
            param: Some("messages".into()),
            message:
                "this model has no chat template; use the completions endpoint with a plain prompt"
                    .into(),
        });
    };
    let text = template.render(messages, GenerationPrompt::Add)?;
    Ok(tokenizer.encode(&text, BosPolicy::AddIfModelDoes)?)
}

/// Token ids of plain text, with BOS where the model wants it.
pub fn text_prompt(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ServerError> {
    Ok(tokenizer.encode(text, BosPolicy::AddIfModelDoes)?)
}

/// Adds `instruction` to the system message (appended to the first one, or a new one first).
pub fn add_system_instruction(messages: &mut Vec<ChatMessage>, instruction: &str) {
    match messages.first_mut() {
        Some(first) if first.role == "system" => {
            if !first.content.is_empty() {
                first.content.push_str("\n\n");
            }
            first.content.push_str(instruction);
        }
        _ => messages.insert(0, ChatMessage::new("system", instruction)),
    }
}

/// The JSON instruction, naming a schema when the client gave one.
pub fn json_instruction(schema: Option<&serde_json::Value>) -> String {
    match schema {
        Some(schema) => {
            format!("{JSON_INSTRUCTION} The object must match this JSON schema: {schema}")
        }
        None => JSON_INSTRUCTION.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_instruction_joins_an_existing_system_message() {
        let mut messages = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "hi"),
        ];
        add_system_instruction(&mut messages, JSON_INSTRUCTION);
        assert_eq!(messages.len(), 2);
        assert_eq!(
            messages[0].content,
            format!("Be brief.\n\n{JSON_INSTRUCTION}")
        );
    }

    #[test]
    fn json_instruction_becomes_the_first_message_without_a_system_message() {
        let mut messages = vec![ChatMessage::new("user", "hi")];
        add_system_instruction(&mut messages, JSON_INSTRUCTION);
        assert_eq!(messages[0], ChatMessage::new("system", JSON_INSTRUCTION));
        assert_eq!(messages[1].role, "user");
    }
}
