//! Chat-template rendering follows Hugging Face's jinja2 setup: trim_blocks, lstrip_blocks, no
//! kept trailing newline, loop controls, Python string methods, `strftime_now`, Python-style
//! `tojson`, and the `bos_token` / `eos_token` / `add_generation_prompt` variables.

use hearth_tokenizer::{ChatMessage, ChatTemplate, GenerationPrompt};

fn render(source: &str, messages: &[ChatMessage]) -> String {
    ChatTemplate::new(source, "<s>", "</s>")
        .unwrap()
        .render(messages, GenerationPrompt::Add)
        .unwrap()
}

fn user(content: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", content)]
}

#[test]
fn block_tags_swallow_their_newline_and_indentation() {
    let source =
        "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content }}]\n  {% endif %}\n{% endfor %}\n";
    assert_eq!(render(source, &user("hi")), "[hi]\n");
}

#[test]
fn trailing_newline_of_the_template_is_dropped() {
    assert_eq!(render("{{ bos_token }}x\n", &[]), "<s>x");
}

#[test]
fn special_token_variables_and_generation_prompt_are_passed() {
    let source = "{{ bos_token }}{% if add_generation_prompt %}A{% else %}B{% endif %}{{ eos_token }}";
    let template = ChatTemplate::new(source, "<bos>", "<eos>").unwrap();
    assert_eq!(template.render(&[], GenerationPrompt::Add).unwrap(), "<bos>A<eos>");
    assert_eq!(template.render(&[], GenerationPrompt::Omit).unwrap(), "<bos>B<eos>");
    assert_eq!(template.render(&[], false).unwrap(), "<bos>B<eos>");
}

#[test]
fn python_string_and_dict_methods_work() {
    let source = "{{ messages[0].content.strip().upper() }}|{{ messages[0].content.split(',') | length }}|\
                  {{ messages[0]['content'].startswith('  a') }}|{{ messages[0].get('role') }}|\
                  {% for k, v in messages[0].items() %}{{ k }};{% endfor %}";
    assert_eq!(render(source, &user("  a,b  ")), "A,B|2|True|user|role;content;");
}

#[test]
fn loop_controls_are_enabled() {
    let source = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% if m.role == 'skip' %}{% continue %}{% endif %}{{ m.content }}{% endfor %}";
    let messages = ["a", "b", "c"]
        .map(|c| ChatMessage::new(if c == "b" { "skip" } else { "user" }, c))
        .to_vec();
    assert_eq!(render(source, &messages), "a");
}

#[test]
fn tojson_writes_python_json_dumps() {
    let source = "{{ {'name': 'f', 'args': [1, 2.5, true, none], 'text': 'é <b> \"q\"\\n'} | tojson }}";
    assert_eq!(
        render(source, &[]),
        r#"{"name": "f", "args": [1, 2.5, true, null], "text": "é <b> \"q\"\n"}"#
    );
    let indented = "{{ {'a': [1], 'b': {}} | tojson(indent=2) }}";
    assert_eq!(render(indented, &[]), "{\n  \"a\": [\n    1\n  ],\n  \"b\": {}\n}");
    assert_eq!(
        render("{{ messages | tojson }}", &user("x")),
        r#"[{"role": "user", "content": "x"}]"#
    );
}

#[test]
fn strftime_now_formats_the_current_date() {
    let year: i32 = render("{{ strftime_now('%Y') }}", &[]).parse().unwrap();
    assert!((2024..3000).contains(&year), "{year}");
    let date = render("{{ strftime_now('%d %b %Y') }}", &[]);
    assert_eq!(date.len(), 11, "{date:?}");
}

#[test]
fn undefined_variables_render_empty_like_jinja2() {
    assert_eq!(render("[{{ tools }}]{% if tools %}T{% endif %}", &[]), "[]");
}

#[test]
fn source_is_kept() {
    let template = ChatTemplate::new("{{ bos_token }}", "<s>", "</s>").unwrap();
    assert_eq!(template.source(), "{{ bos_token }}");
}
