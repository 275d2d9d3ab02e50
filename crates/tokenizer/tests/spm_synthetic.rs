//! A tiny SentencePiece (`llama`) vocabulary with `add_space_prefix = true`, the Llama-2 style
//! the real test models do not cover: a `▁` is prepended to each text fragment, decoding strips
//! it again, unknown characters fall back to `<0xNN>` bytes, and streaming decode still equals
//! `decode` of everything (proptest).

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use hearth_tokenizer::{BosPolicy, IncrementalDecoder, SkipSpecial, Tokenizer};
use proptest::prelude::*;

const PIECES: &[&str] = &[
    "▁", "H", "e", "l", "o", "w", "r", "d", "ll", "He", "▁w", "or", "ld", "llo", "Hello", "▁Hello", "orld", "▁world",
];

fn tokenizer() -> Tokenizer {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    types.extend(std::iter::repeat_n(6, 256));
    tokens.extend(PIECES.iter().map(|s| s.to_string()));
    types.extend(std::iter::repeat_n(1, PIECES.len()));
    let scores: Vec<Value> = (0..tokens.len()).map(|id| Value::F32(-(id as f32))).collect();
    let metadata = HashMap::from([
        ("tokenizer.ggml.model".to_string(), Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens".to_string(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.scores".to_string(), Value::Array(scores)),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
    ]);
    let content = Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    };
    Tokenizer::from_gguf(&content).unwrap()
}

fn texts(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&id| t.token_str(id).unwrap().to_string()).collect()
}

#[test]
fn space_prefix_is_added_to_each_fragment_and_stripped_on_decode() {
    let t = tokenizer();
    assert!(
        t.adds_bos(),
        "SentencePiece vocabularies add BOS unless the file says otherwise"
    );
    let ids = t.encode("Hello world", BosPolicy::AddIfModelDoes).unwrap();
    assert_eq!(texts(&t, &ids), ["<s>", "▁Hello", "▁world"]);
    assert_eq!(t.decode(&ids, SkipSpecial::Yes).unwrap(), "Hello world");
    // llama.cpp prefixes every raw fragment, including the one after a special token.
    let ids = t.encode("Hello</s>world", BosPolicy::Never).unwrap();
    assert_eq!(texts(&t, &ids), ["▁Hello", "</s>", "▁world"]);
}

#[test]
fn unknown_characters_fall_back_to_bytes() {
    let t = tokenizer();
    let ids = t.encode("Hé", BosPolicy::Never).unwrap();
    assert_eq!(texts(&t, &ids), ["▁", "H", "<0xC3>", "<0xA9>"]);
    assert_eq!(t.decode(&ids, SkipSpecial::No).unwrap(), "Hé");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn stream_concatenates_to_decode_with_space_stripping(
        ids in prop::collection::vec(0u32..(3 + 256 + PIECES.len() as u32), 0..32),
        skip in prop_oneof![Just(SkipSpecial::Yes), Just(SkipSpecial::No)],
    ) {
        let t = tokenizer();
        let mut decoder = IncrementalDecoder::with_skip_special(&t, skip);
        let mut text = String::new();
        for &id in &ids {
            text.extend(decoder.push(id).unwrap());
        }
        text.extend(decoder.finish().unwrap());
        prop_assert_eq!(text, t.decode(&ids, skip).unwrap(), "ids {:?}", ids);
    }
}
