#!/usr/bin/env python3
"""Generate the golden-logit fixtures under tests/fixtures/golden/<arch>/.

Run by hand (never by CI); see tests/fixtures/golden/README.md for the exact
packages and versions. Nothing is downloaded: every model is a tiny
random-weight model built from a config with PyTorch + transformers.

For each architecture this writes:

  config.json        the Hugging Face config (save_pretrained)
  model.safetensors  F32 weights with HF tensor names (save_pretrained)
  model.gguf         the same weights as GGUF v3, F32, with the tensor names,
                     tensor transforms and metadata keys that llama.cpp's
                     convert_hf_to_gguf.py produces for that architecture
  reference.json     prompt ids, logits at every prompt position, 16 greedy
                     ids and the raw logits each one was chosen from

Converter conventions reproduced here (checked against convert_hf_to_gguf.py):

  * llama: q_proj / k_proj rows are permuted (HF "rotate_half" layout ->
    GGUF interleaved-pair RoPE), k with n_kv_head.  Writes llama.vocab_size
    and llama.rope.dimension_count.
  * qwen2 / qwen3 / phi3 / gemma3: no permutation (NEOX RoPE in llama.cpp).
  * gemma3: +1 is added to every tensor whose HF name ends in "norm.weight"
    (attn/ffn pre+post norms, q/k norms, final norm), because Gemma3RMSNorm
    computes x * (1 + w) while llama.cpp computes x * w.
    rope.freq_base is the *global* (full-attention) theta; llama.cpp hard-codes
    10000 for the local (sliding) layers and a sliding pattern of 6
    (layer il is full attention iff il % 6 == 5), so the tiny model has 6
    layers with exactly that pattern and rope local theta 10000.
  * phi3: fused attn_qkv and fused ffn_up (gate rows first, then up rows)
    are written as-is; rope.dimension_count, rope.scaling.original_context_length
    and attention.sliding_window (0 = none) are written.
  * key_length / value_length are written when config.json has "head_dim"
    (the base converter does this; transformers 5 writes head_dim for llama,
    qwen3, gemma3), and always for gemma3.
  * tied embeddings: save_pretrained drops lm_head.weight, so there is no
    output.weight tensor in either file.

Besides writing the files, the script re-reads each GGUF with gguf's
GGUFReader and runs an independent float64 NumPy forward pass that follows
llama.cpp's semantics (reading hyper-parameters from the GGUF metadata only),
and checks it against the transformers logits. That validates the GGUF
conventions above.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import gguf
import safetensors
import transformers
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "golden"

PROMPT_LEN = 12
N_GEN = 16
BOS_ID, EOS_ID, PAD_ID = 1, 2, 0

# Shared tiny shape.
COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=PAD_ID,
)

MATRIX_STD = 0.2
NORM_NOISE_STD = 0.1
MIN_GREEDY_MARGIN = 0.02  # top1 - top2 logit gap required at every greedy step
MIN_DISTINCT_GREEDY = 4   # at least this many distinct tokens among the 16


def make_config(arch: str):
    c = dict(COMMON)
    if arch == "llama":
        # SmolLM2-style: tied embeddings.
        return LlamaConfig(**c, rope_theta=10000.0, tie_word_embeddings=True)
    if arch == "qwen2":
        return Qwen2Config(**c, rope_theta=10000.0, tie_word_embeddings=False)
    if arch == "qwen3":
        # head_dim 32 != hidden/heads = 16.
        return Qwen3Config(**c, head_dim=32, rope_theta=10000.0, tie_word_embeddings=False)
    if arch == "phi3":
        return Phi3Config(
            **c,
            rope_theta=10000.0,
            original_max_position_embeddings=c["max_position_embeddings"],
            rope_scaling=None,
            sliding_window=None,
            tie_word_embeddings=False,
        )
    if arch == "gemma3":
        c.update(num_hidden_layers=6, intermediate_size=96)
        n = c["num_hidden_layers"]
        layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
        return Gemma3TextConfig(
            **c,
            head_dim=32,                 # != hidden/heads = 16
            query_pre_attn_scalar=32,    # = head_dim, as llama.cpp assumes (non-27B)
            sliding_window=4,
            layer_types=layer_types,
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
            hidden_activation="gelu_pytorch_tanh",
            final_logit_softcapping=None,
            attn_logit_softcapping=None,
            tie_word_embeddings=True,
        )
    raise ValueError(arch)


ARCHS = ["llama", "qwen2", "qwen3", "gemma3", "phi3"]
SEEDS = {"llama": 1000, "qwen2": 2000, "qwen3": 3000, "gemma3": 4000, "phi3": 5000}


# --------------------------------------------------------------------------
# model construction


def init_weights(model, arch: str, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                noise = torch.randn(p.shape, generator=gen) * NORM_NOISE_STD
                if arch != "gemma3":
                    p.copy_(1.0 + noise)
                elif ".post_" in name:
                    # Gemma3RMSNorm multiplies by (1 + w). The post-attention /
                    # post-FFN norms get an effective scale of ~2 so the blocks
                    # outweigh the sqrt(hidden)-scaled input embedding; otherwise
                    # a tied-embedding random model just echoes its last token.
                    p.copy_(1.0 + noise)
                else:
                    p.copy_(noise)  # effective scale 1 +- 0.1
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * MATRIX_STD)


def build_model(arch: str, seed: int):
    config = make_config(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    init_weights(model, arch, gen)
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    return config, model


@torch.no_grad()
def run_reference(model, seed: int):
    gen = torch.Generator().manual_seed(seed + 1)
    rest = torch.randint(3, COMMON["vocab_size"], (PROMPT_LEN - 1,), generator=gen)
    prompt = [BOS_ID] + rest.tolist()

    def logits_of(ids):
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
        return out.logits[0].float()

    prompt_logits = logits_of(prompt)
    ids = list(prompt)
    greedy_ids, greedy_logits, margins = [], [], []
    for step in range(N_GEN):
        last = prompt_logits[-1] if step == 0 else logits_of(ids)[-1]
        top2 = torch.topk(last, 2).values
        margins.append(float(top2[0] - top2[1]))
        nxt = int(torch.argmax(last))
        greedy_ids.append(nxt)
        greedy_logits.append(last.clone())
        ids.append(nxt)

    # One full causal pass over prompt + generated[:-1] must reproduce every logit.
    full = logits_of(prompt + greedy_ids[:-1])
    check = torch.cat([prompt_logits, torch.stack(greedy_logits)[1:]], 0)
    full_vs_steps = float((full - check).abs().max())

    return dict(
        prompt_ids=prompt,
        prompt_logits=prompt_logits.numpy(),
        greedy_ids=greedy_ids,
        greedy_logits=torch.stack(greedy_logits).numpy(),
        min_margin=min(margins),
        full_vs_steps=full_vs_steps,
    )


# --------------------------------------------------------------------------
# GGUF writing (mirrors convert_hf_to_gguf.py)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level mapping (byte -> printable unicode char)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


MERGES = ["Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a n"]


def make_vocab(n_vocab: int):
    """A tiny but functional GPT-2 style byte-level BPE vocabulary.

    ids 0..2: <|pad|>, <|bos|>, <|eos|> (CONTROL)
    then one token per byte that can occur in valid UTF-8 (all but 0xC0, 0xC1,
    0xF5..0xFF), then the results of MERGES.
    """
    b2u = bytes_to_unicode()
    specials = ["<|pad|>", "<|bos|>", "<|eos|>"]
    invalid = {0xC0, 0xC1} | set(range(0xF5, 0x100))
    byte_tokens = [b2u[b] for b in range(256) if b not in invalid]
    merged = [m.replace(" ", "") for m in MERGES]
    tokens = specials + byte_tokens + merged
    assert len(tokens) == n_vocab, (len(tokens), n_vocab)
    assert len(set(tokens)) == len(tokens)
    types = [gguf.TokenType.CONTROL] * len(specials) + [gguf.TokenType.NORMAL] * (len(tokens) - len(specials))
    return tokens, [int(t) for t in types]


GGUF_ARCH = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "gemma3": gguf.MODEL_ARCH.GEMMA3,
    "phi3": gguf.MODEL_ARCH.PHI3,
}


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute: HF half-split -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_tensors(arch: str, cfg: dict, hf: dict[str, torch.Tensor]) -> list[tuple[str, np.ndarray]]:
    n_layer = cfg["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(GGUF_ARCH[arch], n_layer)
    n_head = cfg["num_attention_heads"]
    n_kv = cfg["num_key_value_heads"]
    out = []
    for name, t in hf.items():
        data = t.detach().to(torch.float32).numpy().copy()
        if arch == "llama":
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute_rope(data, n_head)
            if name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute_rope(data, n_kv)
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data + np.float32(1.0)
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"cannot map {name}")
        out.append((new, np.ascontiguousarray(data, dtype=np.float32)))

    # Stable, readable order: token_embd, blocks in order, output_norm, output.
    def key(item):
        n = item[0]
        if n.startswith("token_embd"):
            return (0, 0, n)
        if n.startswith("blk."):
            return (1, int(n.split(".")[1]), n)
        return (2, 0 if n.startswith("output_norm") else 1, n)

    return sorted(out, key=key)


def write_gguf(path: Path, arch: str, cfg: dict, tensors: list[tuple[str, np.ndarray]]) -> list[str]:
    K = gguf.Keys
    w = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[GGUF_ARCH[arch]])
    a = w.arch
    keys = ["general.architecture"]

    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"hearth golden {arch}")
    keys += [K.General.TYPE, K.General.NAME]

    n_embd = cfg["hidden_size"]
    n_head = cfg["num_attention_heads"]
    rope_params = cfg.get("rope_parameters") or {}
    rope_full = rope_params.get("full_attention", rope_params)
    theta = float(rope_full["rope_theta"])

    def kv(fn, key, *args):
        fn(*args)
        keys.append(key.format(arch=a))

    if arch == "phi3":
        # Phi3MiniModel.set_gguf_parameters (does not call the base class)
        rot_pct = rope_params.get("partial_rotary_factor", 1.0)
        kv(w.add_context_length, K.LLM.CONTEXT_LENGTH, cfg["max_position_embeddings"])
        kv(w.add_rope_scaling_orig_ctx_len, K.Rope.SCALING_ORIG_CTX_LEN, cfg["original_max_position_embeddings"])
        kv(w.add_embedding_length, K.LLM.EMBEDDING_LENGTH, n_embd)
        kv(w.add_feed_forward_length, K.LLM.FEED_FORWARD_LENGTH, cfg["intermediate_size"])
        kv(w.add_block_count, K.LLM.BLOCK_COUNT, cfg["num_hidden_layers"])
        kv(w.add_head_count, K.Attention.HEAD_COUNT, n_head)
        kv(w.add_head_count_kv, K.Attention.HEAD_COUNT_KV, cfg["num_key_value_heads"])
        kv(w.add_layer_norm_rms_eps, K.Attention.LAYERNORM_RMS_EPS, cfg["rms_norm_eps"])
        kv(w.add_rope_dimension_count, K.Rope.DIMENSION_COUNT, int(rot_pct * n_embd) // n_head)
        kv(w.add_rope_freq_base, K.Rope.FREQ_BASE, theta)
        kv(w.add_file_type, K.General.FILE_TYPE, gguf.LlamaFileType.ALL_F32)
        kv(w.add_sliding_window, K.Attention.SLIDING_WINDOW, cfg.get("sliding_window") or 0)
    else:
        # TextModel.set_gguf_parameters
        kv(w.add_block_count, K.LLM.BLOCK_COUNT, cfg["num_hidden_layers"])
        kv(w.add_context_length, K.LLM.CONTEXT_LENGTH, cfg["max_position_embeddings"])
        kv(w.add_embedding_length, K.LLM.EMBEDDING_LENGTH, n_embd)
        kv(w.add_feed_forward_length, K.LLM.FEED_FORWARD_LENGTH, cfg["intermediate_size"])
        kv(w.add_head_count, K.Attention.HEAD_COUNT, n_head)
        kv(w.add_head_count_kv, K.Attention.HEAD_COUNT_KV, cfg["num_key_value_heads"])
        kv(w.add_rope_freq_base, K.Rope.FREQ_BASE, theta)
        kv(w.add_layer_norm_rms_eps, K.Attention.LAYERNORM_RMS_EPS, cfg["rms_norm_eps"])
        if cfg.get("head_dim") is not None or arch == "gemma3":
            kv(w.add_key_length, K.Attention.KEY_LENGTH, cfg["head_dim"])
            kv(w.add_value_length, K.Attention.VALUE_LENGTH, cfg["head_dim"])
        kv(w.add_file_type, K.General.FILE_TYPE, gguf.LlamaFileType.ALL_F32)
        if arch == "llama":
            # LlamaModel.set_gguf_parameters
            kv(w.add_vocab_size, K.LLM.VOCAB_SIZE, cfg["vocab_size"])
            rope_dim = cfg.get("head_dim") or n_embd // n_head
            kv(w.add_rope_dimension_count, K.Rope.DIMENSION_COUNT, rope_dim)
        if arch == "gemma3":
            # Gemma3Model.set_gguf_parameters: rope.freq_base = global theta
            # (already written), sliding window since the pattern is not 1.
            kv(w.add_sliding_window, K.Attention.SLIDING_WINDOW, cfg["sliding_window"])

    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    keys.append(K.General.QUANTIZATION_VERSION)

    # Minimal, well-formed GPT-2 style tokenizer section.
    tokens, types = make_vocab(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(True)
    keys += [
        K.Tokenizer.MODEL, K.Tokenizer.PRE, K.Tokenizer.LIST, K.Tokenizer.TOKEN_TYPE, K.Tokenizer.MERGES,
        K.Tokenizer.BOS_ID, K.Tokenizer.EOS_ID, K.Tokenizer.PAD_ID, K.Tokenizer.ADD_BOS,
    ]

    for name, data in tensors:
        w.add_tensor(name, data)

    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return keys


# --------------------------------------------------------------------------
# Independent check: NumPy forward pass with llama.cpp semantics on the GGUF


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def ggml_forward(path: Path, ids: list[int], disable_swa: bool = False) -> np.ndarray:
    r = gguf.GGUFReader(path)
    arch = _field(r, "general.architecture")
    g = lambda k, d=None: _field(r, f"{arch}.{k}", d)  # noqa: E731
    n_embd = g("embedding_length")
    n_layer = g("block_count")
    n_head = g("attention.head_count")
    n_kv = g("attention.head_count_kv")
    eps = g("attention.layer_norm_rms_epsilon")
    base = g("rope.freq_base", 10000.0)
    hd = g("attention.key_length", n_embd // n_head)
    hd_v = g("attention.value_length", hd)
    n_rot = g("rope.dimension_count", hd)
    n_swa = g("attention.sliding_window", 0)

    T = {t.name: np.array(t.data, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)]) for t in r.tensors}
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in r.tensors)

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def lin(x, name):
        y = x @ T[name + ".weight"].T
        if name + ".bias" in T:
            y = y + T[name + ".bias"]
        return y

    n = len(ids)
    pos = np.arange(n)

    def rope(x, theta_base):  # x: [n, heads, hd]
        inv = theta_base ** (-np.arange(0, n_rot, 2, dtype=np.float64) / n_rot)
        ang = pos[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x = x.copy()
        if arch == "llama":  # LLAMA_ROPE_TYPE_NORM: adjacent pairs
            a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
            x[..., 0:n_rot:2] = a * cos - b * sin
            x[..., 1:n_rot:2] = a * sin + b * cos
        else:  # NEOX: halves
            h = n_rot // 2
            a, b = x[..., :h].copy(), x[..., h:n_rot].copy()
            x[..., :h] = a * cos - b * sin
            x[..., h:n_rot] = a * sin + b * cos
        return x

    x = T["token_embd.weight"][ids]
    if arch == "gemma3":
        x = x * math.sqrt(n_embd)
    for il in range(n_layer):
        p = f"blk.{il}."
        h = rms(x, T[p + "attn_norm.weight"])
        if p + "attn_qkv.weight" in T:
            qkv = lin(h, p + "attn_qkv")
            q = qkv[:, : n_head * hd]
            k = qkv[:, n_head * hd: n_head * hd + n_kv * hd]
            v = qkv[:, n_head * hd + n_kv * hd:]
        else:
            q, k, v = lin(h, p + "attn_q"), lin(h, p + "attn_k"), lin(h, p + "attn_v")
        q = q.reshape(n, n_head, hd)
        k = k.reshape(n, n_kv, hd)
        v = v.reshape(n, n_kv, hd_v)
        if p + "attn_q_norm.weight" in T:
            q = rms(q, T[p + "attn_q_norm.weight"])
            k = rms(k, T[p + "attn_k_norm.weight"])
        is_swa = arch == "gemma3" and n_swa > 0 and il % 6 < 5  # llama.cpp set_swa_pattern(6)
        theta = 10000.0 if is_swa else base
        q, k = rope(q, theta), rope(k, theta)
        mask = pos[None, :] > pos[:, None]
        if is_swa and not disable_swa:
            mask = mask | (pos[:, None] - pos[None, :] >= n_swa)
        att = np.empty((n, n_head, hd_v))
        for hh in range(n_head):
            kh = hh // (n_head // n_kv)
            s = (q[:, hh, :] @ k[:, kh, :].T) / math.sqrt(hd)
            s = np.where(mask, -np.inf, s)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att[:, hh, :] = s @ v[:, kh, :]
        o = lin(att.reshape(n, n_head * hd_v), p + "attn_output")
        if arch == "gemma3":
            o = rms(o, T[p + "post_attention_norm.weight"])
        x = x + o
        h = rms(x, T[p + "ffn_norm.weight"])
        if p + "ffn_gate.weight" in T:
            gte, up = lin(h, p + "ffn_gate"), lin(h, p + "ffn_up")
        else:  # phi3 fused gate+up
            gu = lin(h, p + "ffn_up")
            gte, up = gu[:, : gu.shape[1] // 2], gu[:, gu.shape[1] // 2:]
        if arch == "gemma3":
            act = 0.5 * gte * (1 + np.tanh(math.sqrt(2 / math.pi) * (gte + 0.044715 * gte ** 3)))
        else:
            act = gte / (1 + np.exp(-gte))
        f = lin(act * up, p + "ffn_down")
        if arch == "gemma3":
            f = rms(f, T[p + "post_ffw_norm.weight"])
        x = x + f
    x = rms(x, T["output_norm.weight"])
    out_w = T.get("output.weight", T["token_embd.weight"])
    return x @ out_w.T


# --------------------------------------------------------------------------
# output


def fmt_row(row: np.ndarray) -> str:
    # Shortest repr that round-trips the float32 value.
    return "[" + ",".join(repr(float(str(np.float32(v)))) for v in row) + "]"


def write_reference(path: Path, ref: dict, extra: dict) -> None:
    lines = ["{"]
    lines.append(f'  "prompt_ids": {json.dumps(ref["prompt_ids"])},')
    lines.append('  "prompt_logits": [')
    rows = [("    " + fmt_row(r)) for r in ref["prompt_logits"]]
    lines.append(",\n".join(rows))
    lines.append("  ],")
    lines.append(f'  "greedy_ids": {json.dumps(ref["greedy_ids"])},')
    lines.append('  "greedy_logits": [')
    rows = [("    " + fmt_row(r)) for r in ref["greedy_logits"]]
    lines.append(",\n".join(rows))
    lines.append("  ],")
    items = list(extra.items())
    for i, (k, v) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)}{comma}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # sanity
    path.write_text(text)


def make_arch(arch: str, out_root: Path) -> dict:
    seed = SEEDS[arch]
    for attempt in range(50):
        config, model = build_model(arch, seed)
        ref = run_reference(model, seed)
        distinct = len(set(ref["greedy_ids"]))
        if ref["min_margin"] >= MIN_GREEDY_MARGIN and distinct >= MIN_DISTINCT_GREEDY:
            break
        print(f"  {arch}: seed {seed} rejected (min margin {ref['min_margin']:.4f}, {distinct} distinct)")
        seed += 1
    else:
        raise RuntimeError(f"{arch}: no acceptable seed")

    d = out_root / arch
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    model.save_pretrained(d, safe_serialization=True)
    for extra in d.iterdir():
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()

    cfg = json.loads((d / "config.json").read_text())
    hf = load_file(d / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in hf.values())
    assert ("lm_head.weight" in hf) == (not cfg.get("tie_word_embeddings", False)), sorted(hf)
    tensors = convert_tensors(arch, cfg, hf)
    keys = write_gguf(d / "model.gguf", arch, cfg, tensors)

    # Independent llama.cpp-semantics check of the GGUF against transformers.
    seq = ref["prompt_ids"] + ref["greedy_ids"][:-1]
    ggml_logits = ggml_forward(d / "model.gguf", seq)
    expect = np.concatenate([ref["prompt_logits"], ref["greedy_logits"][1:]], 0)
    scale = float(np.abs(expect).max())
    gguf_diff = float(np.abs(ggml_logits - expect).max())
    if gguf_diff > 1e-3 * max(1.0, scale):
        raise RuntimeError(f"{arch}: GGUF forward differs from transformers by {gguf_diff} (scale {scale})")
    ggml_greedy = [int(np.argmax(ggml_logits[PROMPT_LEN - 1 + i])) for i in range(N_GEN)]
    assert ggml_greedy == ref["greedy_ids"], (ggml_greedy, ref["greedy_ids"])

    if arch == "gemma3":
        # The sliding window must matter for these fixtures.
        no_swa = ggml_forward(d / "model.gguf", seq, disable_swa=True)
        swa_effect = float(np.abs(no_swa - expect).max())
        assert swa_effect > 0.1, swa_effect
        assert np.abs(no_swa[:cfg["sliding_window"]] - expect[:cfg["sliding_window"]]).max() < 1e-3

    assert np.array_equal(ref["greedy_logits"][0], ref["prompt_logits"][-1])
    extra = {
        "arch": arch,
        "seed": seed,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "gguf_version": _pkg_version("gguf"),
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
        "dtype": "float32",
        "attn_implementation": "eager",
        "min_greedy_margin": round(ref["min_margin"], 6),
        "max_abs_diff_gguf_numpy_f64_vs_transformers": gguf_diff,
        "max_abs_diff_full_pass_vs_stepwise": ref["full_vs_steps"],
    }
    write_reference(d / "reference.json", ref, extra)
    for f in d.iterdir():
        f.chmod(0o644)

    return dict(
        arch=arch, seed=seed, dir=d, tensors=[(n, list(t.shape)) for n, t in tensors], keys=keys,
        greedy=ref["greedy_ids"], prompt=ref["prompt_ids"], margin=ref["min_margin"], gguf_diff=gguf_diff,
        full_vs_steps=ref["full_vs_steps"], layer_types=cfg.get("layer_types"),
    )


def _pkg_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--arch", action="append", choices=ARCHS, help="only these (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print tensor names and metadata keys")
    args = ap.parse_args()

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, gguf {_pkg_version('gguf')}")
    for arch in args.arch or ARCHS:
        r = make_arch(arch, args.out)
        sizes = {p.name: p.stat().st_size for p in sorted(r["dir"].iterdir())}
        print(f"{arch}: seed {r['seed']} prompt {r['prompt']} greedy {r['greedy']}")
        print(f"  min margin {r['margin']:.4f}, gguf-vs-hf {r['gguf_diff']:.2e}, full-vs-steps {r['full_vs_steps']:.2e}")
        print(f"  sizes {sizes}")
        if r["layer_types"]:
            print(f"  layer_types {r['layer_types']}")
        if args.verbose:
            print("  keys: " + ", ".join(r["keys"]))
            for n, s in r["tensors"]:
                print(f"    {n} {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
