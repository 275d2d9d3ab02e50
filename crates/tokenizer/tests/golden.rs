//! Golden tests: token ids of the real SmolLM2 (byte-level BPE) and Gemma 3 (SentencePiece)
//! GGUF vocabularies against llama.cpp's tokenizer (fixtures made by
//! `scripts/golden/make_tokenizer_golden.py`), chat templates against transformers'
//! `apply_chat_template`, decode round trips and special-token facts.

mod common;

use common::{assert_ids_eq, fixture, gemma3, hamlet, smollm2, Fixture};
use hearth_tokenizer::{BosPolicy, ChatTemplate, SkipSpecial, Tokenizer};

fn check_cases(tokenizer: &Tokenizer, fixture: &Fixture) {
    for case in &fixture.cases {
        let ids = tokenizer.encode(&case.text, BosPolicy::Never).unwrap();
        assert_ids_eq(
            tokenizer,
            &format!("{} case {:?} ({:?})", fixture.model_file, case.name, case.text),
            &ids,
            &case.ids,
        );
    }
}

fn check_random_cases(tokenizer: &Tokenizer, fixture: &Fixture) {
    for (idx, case) in fixture.random_cases.iter().enumerate() {
        let ids = tokenizer.encode(&case.text, BosPolicy::Never).unwrap();
        assert_ids_eq(
            tokenizer,
            &format!("random case {idx} ({:?})", case.text),
            &ids,
            &case.ids,
        );
    }
}

fn check_hamlet(tokenizer: &Tokenizer, fixture: &Fixture) {
    let text = hamlet();
    let prefix: String = text.chars().take(fixture.hamlet.text_prefix_chars).collect();
    let ids = tokenizer.encode(&prefix, BosPolicy::Never).unwrap();
    assert_ids_eq(tokenizer, "Hamlet prefix", &ids, &fixture.hamlet.prefix_ids);

    let all = tokenizer.encode(&text, BosPolicy::Never).unwrap();
    let num_first = fixture.hamlet.first_tokens.len();
    assert_ids_eq(
        tokenizer,
        "Hamlet first tokens",
        &all[..num_first.min(all.len())],
        &fixture.hamlet.first_tokens,
    );
    assert_eq!(
        all.len(),
        fixture.hamlet.num_tokens,
        "Hamlet token count differs from llama.cpp"
    );
}

fn check_chats(tokenizer: &Tokenizer, template: &ChatTemplate, fixture: &Fixture) {
    for chat in &fixture.chats {
        let text = template.render(&chat.messages, chat.add_generation_prompt).unwrap();
        assert_eq!(
            text, chat.text,
            "rendered chat differs from transformers' apply_chat_template"
        );
        let ids = tokenizer.encode(&text, BosPolicy::AddIfModelDoes).unwrap();
        assert_ids_eq(tokenizer, &format!("chat {:?}", chat.text), &ids, &chat.ids);
    }
}

fn check_round_trips(tokenizer: &Tokenizer, fixture: &Fixture) {
    for case in &fixture.cases {
        let text = tokenizer.decode(&case.ids, SkipSpecial::No).unwrap();
        assert_eq!(text, case.text, "decode(encode(text)) of case {:?}", case.name);
    }
}

#[test]
fn smollm2_ids_match_llama_cpp() {
    check_cases(smollm2(), &fixture("smollm2"));
}

#[test]
fn gemma3_ids_match_llama_cpp() {
    check_cases(gemma3(), &fixture("gemma3"));
}

#[test]
fn smollm2_random_texts_match_llama_cpp() {
    check_random_cases(smollm2(), &fixture("smollm2"));
}

#[test]
fn gemma3_random_texts_match_llama_cpp() {
    check_random_cases(gemma3(), &fixture("gemma3"));
}

#[test]
fn smollm2_hamlet_matches_llama_cpp() {
    check_hamlet(smollm2(), &fixture("smollm2"));
}

#[test]
fn gemma3_hamlet_matches_llama_cpp() {
    check_hamlet(gemma3(), &fixture("gemma3"));
}

#[test]
fn smollm2_embedded_chat_template_renders_chatml_like_transformers() {
    let tokenizer = smollm2();
    let template = tokenizer
        .chat_template()
        .expect("SmolLM2's GGUF carries a chat template");
    check_chats(tokenizer, template, &fixture("smollm2"));
}

#[test]
fn smollm2_default_system_prompt_is_rendered_when_none_is_given() {
    let template = smollm2().chat_template().unwrap();
    let text = template
        .render(
            &[hearth_tokenizer::ChatMessage::new(
                "user",
                "What is the capital of France?",
            )],
            true,
        )
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn gemma3_chat_template_folds_system_into_first_user_turn_like_transformers() {
    let fixture = fixture("gemma3");
    let tokenizer = gemma3();
    assert!(
        tokenizer.chat_template().is_none(),
        "the base Gemma 3 GGUF ships no template"
    );
    let source = fixture
        .chat_template
        .as_deref()
        .expect("gemma3 fixture carries the template");
    let template = ChatTemplate::new(source, "<bos>", "<eos>").unwrap();
    check_chats(tokenizer, &template, &fixture);
}

#[test]
fn smollm2_decode_inverts_encode() {
    check_round_trips(smollm2(), &fixture("smollm2"));
}

#[test]
fn gemma3_decode_inverts_encode() {
    check_round_trips(gemma3(), &fixture("gemma3"));
}

#[test]
fn smollm2_special_tokens_come_from_metadata() {
    let t = smollm2();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_id(), Some(1));
    assert!(!t.adds_bos());
    // <|im_end|> is EOS; <|endoftext|> also ends generation.
    assert_eq!(t.eos_ids(), &[2, 0]);
    assert_eq!(t.token_str(1), Some("<|im_start|>"));
    assert_eq!(t.token_str(49152), None);
    assert!(t.is_special(2));
    assert!(!t.is_special(9690));
}

#[test]
fn gemma3_special_tokens_come_from_metadata() {
    let t = gemma3();
    assert_eq!(t.vocab_size(), 262_144);
    assert_eq!(t.bos_id(), Some(2));
    assert!(t.adds_bos());
    assert_eq!(t.eos_ids(), &[1, 106], "<eos> then <end_of_turn>");
    assert_eq!(t.token_str(106), Some("<end_of_turn>"));
    assert_eq!(
        t.token_str(138),
        Some("  "),
        "user-defined whitespace tokens keep real spaces"
    );
}

#[test]
fn gemma3_adds_bos_once() {
    let t = gemma3();
    let plain = t.encode("Hello", BosPolicy::Never).unwrap();
    assert_eq!(
        t.encode("Hello", BosPolicy::AddIfModelDoes).unwrap(),
        [&[2][..], &plain].concat()
    );
    assert_eq!(
        t.encode("<bos>Hello", BosPolicy::AddIfModelDoes).unwrap(),
        [&[2][..], &plain].concat()
    );
    assert_eq!(
        t.encode("<bos>Hello", BosPolicy::Always).unwrap(),
        [&[2][..], &plain].concat()
    );
    assert_eq!(t.encode("", BosPolicy::AddIfModelDoes).unwrap(), [2]);
    assert_eq!(t.encode("", BosPolicy::Never).unwrap(), Vec::<u32>::new());
}

#[test]
fn smollm2_adds_bos_only_when_asked() {
    let t = smollm2();
    let plain = t.encode("Hello", BosPolicy::Never).unwrap();
    assert_eq!(t.encode("Hello", BosPolicy::AddIfModelDoes).unwrap(), plain);
    assert_eq!(
        t.encode("Hello", BosPolicy::Always).unwrap(),
        [&[1][..], &plain].concat()
    );
}

#[test]
fn special_tokens_are_skipped_or_kept_on_decode() {
    let t = smollm2();
    let ids = t.encode("<|im_start|>user\nHi<|im_end|>", BosPolicy::Never).unwrap();
    assert_eq!(
        t.decode(&ids, SkipSpecial::No).unwrap(),
        "<|im_start|>user\nHi<|im_end|>"
    );
    assert_eq!(t.decode(&ids, SkipSpecial::Yes).unwrap(), "user\nHi");
    let g = gemma3();
    let ids = g
        .encode(
            "<start_of_turn>model\nHi  there<end_of_turn>",
            BosPolicy::AddIfModelDoes,
        )
        .unwrap();
    assert_eq!(
        g.decode(&ids, SkipSpecial::Yes).unwrap(),
        "model\nHi  there",
        "user-defined tokens are text"
    );
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let err = smollm2().decode(&[1, 49152], SkipSpecial::No).unwrap_err();
    assert!(err.to_string().contains("49152"), "{err}");
}
