#!/usr/bin/env python3
"""Writes the golden tokenizer fixtures tests/fixtures/tokenizer/{smollm2,gemma3}.json.

Reference for token ids: llama.cpp's own tokenizer (`llama-tokenize`, vocabulary only, no BOS,
special tokens parsed), because hearth's perplexity numbers are compared with llama.cpp's.
Second opinion: Hugging Face transformers' GGUF tokenizer conversion
(`transformers.integrations.gguf.gguf_tokenizer_mapping.convert_gguf_tokenizer`, the code
`AutoTokenizer.from_pretrained(dir, gguf_file=...)` runs; called directly because the GGUF reader
of transformers 5 imports torch). Where the two disagree the fixture keeps llama.cpp's ids and
records transformers' under `transformers_ids`.
Chat templates are rendered by transformers' `apply_chat_template` (jinja2 sandbox,
trim_blocks, lstrip_blocks).

Setup (outside the repository; only PyPI is needed, no torch):

    python3 -m venv ~/.cache/hearth/tok-venv
    ~/.cache/hearth/tok-venv/bin/pip install transformers tokenizers gguf sentencepiece protobuf numpy jinja2 cmake ninja
    # llama-tokenize from the llama.cpp vendored in the llama-cpp-python sdist (CPU only, ~15 min on 2 cores):
    ~/.cache/hearth/tok-venv/bin/pip download --no-deps --no-binary :all: -d /tmp/lcp llama-cpp-python==0.3.36
    tar xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp
    PATH=~/.cache/hearth/tok-venv/bin:$PATH cmake -S /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp \
        -B /tmp/lcp/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF \
        -DBUILD_SHARED_LIBS=OFF
    ~/.cache/hearth/tok-venv/bin/ninja -C /tmp/lcp/build llama-tokenize

Run (assets from scripts/fetch-assets.sh):

    ~/.cache/hearth/tok-venv/bin/python scripts/golden/make_tokenizer_golden.py \
        --llama-tokenize /tmp/lcp/build/bin/llama-tokenize
"""

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys

import gguf

REPO = pathlib.Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "tests" / "fixtures" / "tokenizer"

# Gemma 3's chat template from its instruction-tuned tokenizer_config.json. The base 270M GGUF
# carries none, so the fixture ships it for the Rust test.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n"
)

CASES = [
    ("english", "The quick brown fox jumps over the lazy dog."),
    ("punctuation_and_newlines", 'Hello, world!\nHow are you? I\'m fine; thanks.\n\nNew: "quoted" (paren) [brack] {brace}'),
    ("leading_space", " leading space"),
    ("leading_spaces", "   three leading spaces"),
    ("trailing_space", "trailing space "),
    ("multiple_spaces", "a  b   c    d     e"),
    ("tabs", "col1\tcol2\t\tcol3"),
    ("digits", "1 12 123 1234 12345 3.14159 1,000,000 2024-02-29"),
    ("contractions", "I'm you're he's they'll we've she'd DON'T"),
    ("emoji", "I love 🦀 and 🎉🎉! 👩‍👩‍👧 👍🏽"),
    ("cjk", "中文测试，日本語のテキスト、한국어 텍스트"),
    ("accents", "Café naïve résumé Zürich São Paulo"),
    ("code", 'fn main() {\n    println!("hi");\n}\n'),
    ("mixed_whitespace", "line1\r\nline2\n\n\n   indented\n\t tab  \n"),
    ("html_like", "<b>bold</b> <table><tr><td>x</td></tr></table> <unk> <s> </s>"),
    ("long_words", "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism"),
    ("url", "https://example.com/path?query=1&x=y#frag user@example.org"),
    ("replacement_char", "bad \ufffd char"),
    ("empty", ""),
    ("single_space", " "),
    ("newline", "\n"),
    ("markdown_line_breaks", "BERNARDO  \nWho's there?\n\nFRANCISCO  \nNay, answer me."),
]

CHATS = [
    {"messages": [{"role": "user", "content": "What is the capital of France?"}], "add_generation_prompt": True},
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
        "add_generation_prompt": False,
    },
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "  What is 2+2?  "},
        ],
        "add_generation_prompt": True,
    },
]

# separator: a control token the random texts never contain; random texts are tokenized in one
# llama-tokenize call joined by it (a special token splits the text, so each part is tokenized alone).
MODELS = {
    "smollm2": {
        "file": "smollm2-135m-instruct-q4_1.gguf",
        "chat_template": None,
        "separator": "<empty_output>",
        "specials": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        "seed": 1,
    },
    "gemma3": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "chat_template": GEMMA3_CHAT_TEMPLATE,
        "separator": "<unused99>",
        "specials": ["<start_of_turn>", "<end_of_turn>", "<bos>", "<b>", "</s>", "<table>", "[multimodal]"],
        "seed": 2,
    },
}

NUM_RANDOM_CASES = 120
RANDOM_POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", " \n",
    "áéíóúñüöäçßøåœæÀÉÎÕÜ", "αβγδεζηθλμπσωΩΔ", "абвгдежзийклмнопрстуфхцчшщыэюя", "中文测试日本語のテキスト漢字",
    "한국어텍스트", "العربية", "हिन्दी", "ภาษาไทย", "🦀🎉👍🏽👩‍👩‍👧❤️🔥😀🤖", "\u0301\u0308\u200d\u200b\ufeff",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢𝟘𝟙", "\x01\x07\x1b\x7f", "\ufffd", "…—–“”‘’«»•", "<>", "0x41<0x41>", "▁", "'s 're 've", "ＡＢＣ１２３",
]
# Runs over tiny alphabets stress merge priority ties (which of two overlapping pairs merges first).
RANDOM_RUN_ALPHABETS = ["ab", "a ", "=-", ".", "*#", "ll", "0 ", "\n ", "an", "er", "ee", "ss", "!?", "xyz", "ha", "aaa b"]


def random_texts(rng, words, specials, count):
    texts = []
    for _ in range(count):
        if rng.random() < 0.4:
            alphabet = rng.choice(RANDOM_RUN_ALPHABETS)
            texts.append("".join(rng.choice(alphabet) * rng.randint(1, 7) for _ in range(rng.randint(1, 30))))
            continue
        parts = []
        for _ in range(rng.randint(1, 25)):
            r = rng.random()
            if r < 0.3:
                parts.append((" " if rng.random() < 0.7 else "") + rng.choice(words))
            elif r < 0.35:
                parts.append(rng.choice(specials))
            else:
                pool = rng.choice(RANDOM_POOLS)
                parts.append("".join(rng.choice(pool) if len(pool) > 3 else pool for _ in range(rng.randint(1, 6))))
        texts.append("".join(parts))
    return texts

HAMLET_PREFIX_CHARS = 2000
HAMLET_PREFIX_TOKENS = 4096


def clean_hamlet(text):
    return "".join(c for c in text if c not in "#*_")


class LlamaCpp:
    def __init__(self, binary, model_path):
        self.binary, self.model_path = binary, model_path

    def encode(self, text):
        out = subprocess.run(
            [self.binary, "-m", str(self.model_path), "--stdin", "--ids", "--no-bos", "--no-escape", "--log-disable"],
            input=text.encode("utf-8"),
            capture_output=True,
            check=True,
        )
        return json.loads(out.stdout.decode().strip().splitlines()[-1])

    def encode_many(self, texts, separator):
        """One call for many texts: joined by a control token, split again at its id."""
        (separator_id,) = self.encode(separator)
        groups = [[]]
        for token in self.encode(separator.join(texts)):
            if token == separator_id:
                groups.append([])
            else:
                groups[-1].append(token)
        assert len(groups) == len(texts), "a random text contained the separator"
        return groups


def read_gguf(path):
    reader = gguf.GGUFReader(str(path))

    def value(key):
        field = reader.fields.get(key)
        if field is None:
            return None
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            return [field.contents(i) for i in range(len(field.data))]
        return field.contents()

    arch = value("general.architecture")
    names = {
        "ggml.model": "tokenizer_type", "ggml.pre": "pre_tokenizer_type", "ggml.tokens": "tokens",
        "ggml.scores": "scores", "ggml.token_type": "token_type", "ggml.merges": "merges",
        "ggml.bos_token_id": "bos_token_id", "ggml.eos_token_id": "eos_token_id",
        "ggml.unknown_token_id": "unk_token_id", "ggml.padding_token_id": "pad_token_id",
        "ggml.add_space_prefix": "add_prefix_space",
    }
    tokenizer_dict = {name: value(f"tokenizer.{key}") for key, name in names.items()}
    tokenizer_dict = {k: v for k, v in tokenizer_dict.items() if v is not None}
    return arch, tokenizer_dict, value("tokenizer.chat_template")


def transformers_tokenizer(arch, tokenizer_dict, chat_template):
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    backend, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    tokens = tokenizer_dict["tokens"]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokens[tokenizer_dict["bos_token_id"]],
        eos_token=tokens[tokenizer_dict["eos_token_id"]],
        chat_template=chat_template,
    )


def make(name, spec, assets, llama_tokenize):
    path = assets / spec["file"]
    arch, tokenizer_dict, gguf_template = read_gguf(path)
    template = gguf_template or spec["chat_template"]
    hf = transformers_tokenizer(arch, tokenizer_dict, template)
    llama = LlamaCpp(llama_tokenize, path)
    differing = []

    def entry(case_name, text):
        ids = llama.encode(text)
        hf_ids = hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
        item = {"name": case_name, "text": text, "ids": ids}
        if hf_ids != ids:
            item["transformers_ids"] = hf_ids
            differing.append(case_name)
        return item

    chats = []
    for chat in CHATS:
        rendered = hf.apply_chat_template(
            chat["messages"], tokenize=False, add_generation_prompt=chat["add_generation_prompt"]
        )
        chats.append(dict(chat, text=rendered, ids=llama.encode(rendered)))
    cases = [entry(case_name, text) for case_name, text in CASES]
    cases.append(entry("chat_templated", chats[1]["text"]))

    hamlet = clean_hamlet((assets / "hamlet.md").read_text(encoding="utf-8"))
    rng = random.Random(spec["seed"])
    texts = random_texts(rng, hamlet.split()[:5000], spec["specials"], NUM_RANDOM_CASES)
    random_cases = []
    for text, ids in zip(texts, llama.encode_many(texts, spec["separator"])):
        item = {"text": text, "ids": ids}
        hf_ids = hf.backend_tokenizer.encode(text, add_special_tokens=False).ids
        if hf_ids != ids:
            item["transformers_ids"] = hf_ids
            differing.append(f"random {text!r}")
        random_cases.append(item)
    prefix = entry("hamlet_prefix", hamlet[:HAMLET_PREFIX_CHARS])
    full_ids = llama.encode(hamlet)
    hf_full = hf.backend_tokenizer.encode(hamlet, add_special_tokens=False).ids
    first_diff = next((i for i, (a, b) in enumerate(zip(full_ids, hf_full)) if a != b), None)
    fixture = {
        "model_file": spec["file"],
        "reference": "llama.cpp llama-tokenize (llama-cpp-python 0.3.36 vendored llama.cpp, commit 0c1e570): "
        "vocabulary only, --no-bos, special tokens parsed; transformers_ids from transformers' GGUF conversion "
        "where it differs",
        "bos_id": tokenizer_dict.get("bos_token_id"),
        "chat_template": spec["chat_template"],
        "cases": cases,
        "chats": chats,
        "random_cases": random_cases,
        "hamlet": {
            "text_prefix_chars": HAMLET_PREFIX_CHARS,
            "prefix_ids": prefix["ids"],
            "prefix_transformers_ids": prefix.get("transformers_ids"),
            "num_tokens": len(full_ids),
            "first_tokens": full_ids[:HAMLET_PREFIX_TOKENS],
            "transformers_num_tokens": len(hf_full),
            "transformers_first_difference_at": first_diff,
        },
    }
    out = OUT_DIR / f"{name}.json"
    out.write_text(dump_fixture(fixture), encoding="utf-8")
    print(f"{out}: {len(cases)} cases, hamlet {len(full_ids)} tokens (transformers {len(hf_full)}, first difference at {first_diff})")
    if differing:
        print(f"  transformers differs from llama.cpp on: {', '.join(differing)}")


def dump_fixture(fixture):
    """JSON with one line per case (diff-friendly, compact id lists)."""

    def compact(value):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    lines = []
    for key, value in fixture.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            body = ",\n".join(f"  {compact(item)}" for item in value)
            lines.append(f" {json.dumps(key)}: [\n{body}\n ]")
        elif isinstance(value, dict):
            body = ",\n".join(f"  {json.dumps(k)}: {compact(v)}" for k, v in value.items())
            lines.append(f" {json.dumps(key)}: {{\n{body}\n }}")
        else:
            lines.append(f" {json.dumps(key)}: {compact(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-tokenize", required=True, help="path to llama.cpp's llama-tokenize binary")
    parser.add_argument("--assets", default=os.environ.get("HEARTH_ASSETS", pathlib.Path.home() / ".cache/hearth/assets"))
    args = parser.parse_args()
    assets = pathlib.Path(args.assets)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, spec in MODELS.items():
        if not (assets / spec["file"]).exists():
            sys.exit(f"{assets / spec['file']} is missing: run scripts/fetch-assets.sh")
        make(name, spec, assets, args.llama_tokenize)


if __name__ == "__main__":
    main()
