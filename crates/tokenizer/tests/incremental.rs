//! Streaming detokenization: the pieces an `IncrementalDecoder` emits concatenate to exactly
//! `decode(all ids)`, and a multi-byte character is never emitted half-done (no U+FFFD from
//! cut emoji / CJK / byte-fallback tokens) — checked on real text and with proptest on random
//! id sequences for both vocabulary kinds.

mod common;

use std::sync::Arc;

use common::{fixture, gemma3, smollm2};
use hearth_tokenizer::{BosPolicy, IncrementalDecoder, SkipSpecial, Tokenizer};
use proptest::prelude::*;

/// All pieces emitted for `ids`, in order (`finish` last).
fn stream(tokenizer: &Tokenizer, ids: &[u32], skip: SkipSpecial) -> Vec<String> {
    let mut decoder = IncrementalDecoder::with_skip_special(tokenizer, skip);
    let mut pieces: Vec<String> = ids.iter().filter_map(|&id| decoder.push(id).unwrap()).collect();
    pieces.extend(decoder.finish().unwrap());
    pieces
}

fn check_stream_equals_decode(tokenizer: &Tokenizer, ids: &[u32], skip: SkipSpecial) -> Result<(), TestCaseError> {
    let pieces = stream(tokenizer, ids, skip);
    let expected = tokenizer.decode(ids, skip).unwrap();
    prop_assert_eq!(pieces.concat(), expected, "ids {:?} pieces {:?}", ids, pieces);
    prop_assert!(pieces.iter().all(|p| !p.is_empty()), "empty piece in {:?}", pieces);
    Ok(())
}

fn check_real_text(tokenizer: &Tokenizer, name: &str) {
    let fixture = fixture(name);
    let texts = fixture
        .cases
        .iter()
        .map(|c| c.text.clone())
        .chain(fixture.chats.iter().map(|c| c.text.clone()));
    for text in texts {
        let ids = tokenizer.encode(&text, BosPolicy::Never).unwrap();
        let pieces = stream(tokenizer, &ids, SkipSpecial::No);
        assert_eq!(pieces.concat(), text, "streamed text differs; pieces {pieces:?}");
        if !text.contains('\u{fffd}') {
            assert!(
                pieces.iter().all(|p| !p.contains('\u{fffd}')),
                "a piece cut a character: {pieces:?}"
            );
        }
    }
}

#[test]
fn smollm2_streams_real_text_without_cutting_characters() {
    check_real_text(smollm2(), "smollm2");
}

#[test]
fn gemma3_streams_real_text_without_cutting_characters() {
    check_real_text(gemma3(), "gemma3");
}

#[test]
fn emoji_made_of_byte_tokens_is_held_until_complete() {
    let t = gemma3();
    // 𓀀 (U+13000) is spelled with four byte-fallback tokens in Gemma's vocabulary.
    let ids = t.encode("a𓀀", BosPolicy::Never).unwrap();
    let byte_ids: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| t.token_str(id).is_some_and(|s| s.starts_with("<0x")))
        .collect();
    assert_eq!(byte_ids.len(), 4, "{ids:?}");
    let mut decoder = IncrementalDecoder::new(t);
    let emitted: Vec<Option<String>> = ids.iter().map(|&id| decoder.push(id).unwrap()).collect();
    assert_eq!(emitted[0].as_deref(), Some("a"));
    assert!(
        emitted[1..].iter().all(Option::is_none),
        "bytes are held back: {emitted:?}"
    );
    assert_eq!(decoder.finish().unwrap().as_deref(), Some("𓀀"));
}

#[test]
fn byte_level_pieces_of_a_cjk_character_are_held_until_complete() {
    let t = smollm2();
    let ids = t.encode("龘", BosPolicy::Never).unwrap();
    assert_eq!(ids.len(), 3, "龘 spans three byte-level tokens: {ids:?}");
    let mut decoder = IncrementalDecoder::new(t);
    let mut pieces = Vec::new();
    for (idx, &id) in ids.iter().enumerate() {
        let piece = decoder.push(id).unwrap();
        if idx + 1 < ids.len() {
            assert_eq!(piece, None, "held back until the last byte");
        }
        pieces.extend(piece);
    }
    assert_eq!(pieces, ["龘"]);
    assert_eq!(decoder.finish().unwrap(), None);
}

#[test]
fn works_over_a_shared_tokenizer() {
    let fixture = fixture("gemma3");
    let tokenizer = Arc::new(Tokenizer::from_gguf(&common::read_gguf(common::GEMMA3_FILE)).unwrap());
    let mut decoder = IncrementalDecoder::new(Arc::clone(&tokenizer));
    let case = &fixture.cases[0];
    let mut text: String = case.ids.iter().filter_map(|&id| decoder.push(id).unwrap()).collect();
    text.extend(decoder.finish().unwrap());
    assert_eq!(text, case.text);
}

#[test]
fn unknown_id_is_an_error_and_leaves_the_decoder_usable() {
    let t = smollm2();
    let mut decoder = IncrementalDecoder::new(t);
    assert!(decoder.push(1_000_000).is_err());
    assert_eq!(
        decoder
            .push(t.encode("Hi", BosPolicy::Never).unwrap()[0])
            .unwrap()
            .as_deref(),
        Some("Hi")
    );
}

/// Ids biased toward the hard cases: byte-fallback tokens, special tokens, `▁`-only tokens and
/// byte-level fragments of multi-byte characters.
fn id_strategy(tokenizer: &'static Tokenizer) -> impl Strategy<Value = u32> {
    let vocab_size = tokenizer.vocab_size() as u32;
    let byte_ids: Vec<u32> = (0..vocab_size)
        .filter(|&id| {
            tokenizer
                .token_str(id)
                .is_some_and(|s| s.len() == 6 && s.starts_with("<0x"))
        })
        .collect();
    let special_ids: Vec<u32> = (0..vocab_size.min(300))
        .filter(|&id| tokenizer.is_special(id))
        .collect();
    let interesting: Vec<u32> = [
        "▁", "▁▁", " ", "  ", "\n", "Ġ", "ĠĠ", "Ċ", "â", "Ģ", "ł", "ä¸", "ï¼", "ðŁ", "Ĳ",
    ]
    .iter()
    .filter_map(|s| tokenizer.hf_tokenizer().token_to_id(s))
    .collect();
    let mut choices: Vec<BoxedStrategy<u32>> = vec![(0..vocab_size).boxed()];
    for set in [byte_ids, special_ids, interesting] {
        if !set.is_empty() {
            choices.push(proptest::sample::select(set).boxed());
        }
    }
    proptest::strategy::Union::new(choices)
}

fn skip_strategy() -> impl Strategy<Value = SkipSpecial> {
    prop_oneof![Just(SkipSpecial::Yes), Just(SkipSpecial::No)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn smollm2_stream_concatenates_to_decode(ids in prop::collection::vec(id_strategy(smollm2()), 0..48), skip in skip_strategy()) {
        check_stream_equals_decode(smollm2(), &ids, skip)?;
    }

    #[test]
    fn gemma3_stream_concatenates_to_decode(ids in prop::collection::vec(id_strategy(gemma3()), 0..48), skip in skip_strategy()) {
        check_stream_equals_decode(gemma3(), &ids, skip)?;
    }
}
