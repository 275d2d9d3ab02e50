//! Benchmark models (`hearth_models::bench`): tiny shapes written through the same code as the
//! real ones load through hearth's GGUF loader and give finite logits in every quant; the
//! Q4_K_M type mix follows llama.cpp's rule; metadata, sizes and determinism hold; the real
//! shapes' plans have the sizes llama.cpp's files have.

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use hearth_models::bench::{
    plan_tensors, summarize, use_more_bits, write_bench_model, BenchModelParams, BenchQuant, BenchShape, ShapeName,
};
use hearth_models::weights::gguf::GgufFile;
use hearth_models::{Architecture, ForwardBatch, LoadOptions, ModelFiles, PagedKvCache, SequenceInput};

const TINY_VOCAB: usize = 300;

fn params(arch: Architecture, quant: BenchQuant, seed: u64) -> BenchModelParams {
    BenchModelParams {
        shape: BenchShape::tiny(arch),
        quant,
        vocab_size: TINY_VOCAB,
        tokenizer_metadata: vec![("tokenizer.ggml.model".into(), Value::String("gpt2".into()))],
        seed,
    }
}

fn write(dir: &Path, params: &BenchModelParams) -> std::path::PathBuf {
    let path = dir.join(format!("{}-{}-{}.gguf", params.shape.name, params.quant.as_str(), params.seed));
    write_bench_model(params, &path, &mut |_| {}).unwrap();
    path
}

/// Logits of a 5-token prompt, `[5, vocab]`.
fn prompt_logits(path: &Path) -> Vec<Vec<f32>> {
    let device = Device::Cpu;
    let loaded = ModelFiles::open(path).unwrap().load(&LoadOptions::default()).unwrap();
    let model = &loaded.model;
    let kv = PagedKvCache::new(&model.config, 4, 4, DType::F32, &device).unwrap();
    let input = SequenceInput { new_token_ids: vec![1, 17, 250, 3, 99], num_cached_tokens: 0, block_table: vec![2, 0], wants_logits: true };
    let batch = ForwardBatch::all_logits(&input, 4, &device).unwrap();
    model.forward(&batch, &kv).unwrap().to_vec2().unwrap()
}

#[test]
fn tiny_models_load_and_give_finite_logits_in_every_quant() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        for quant in BenchQuant::ALL {
            let path = write(dir.path(), &params(arch, quant, 7));
            let logits = prompt_logits(&path);
            assert_eq!((logits.len(), logits[0].len()), (5, TINY_VOCAB), "{arch:?} {quant:?}");
            let bad = logits.iter().flatten().filter(|x| !x.is_finite()).count();
            assert_eq!(bad, 0, "{arch:?} {quant:?}: {bad} non-finite logits");
            let spread = logits[4].iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(spread > 1e-3 && spread < 1e3, "{arch:?} {quant:?}: logits of magnitude {spread}");
        }
    }
}

#[test]
fn q4_k_m_puts_q6_k_where_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    for arch in [Architecture::Llama, Architecture::Qwen2] {
        let path = write(dir.path(), &params(arch, BenchQuant::Q4KM, 1));
        let file = GgufFile::open(&path).unwrap();
        let infos = &file.content.tensor_infos;
        let ty = |name: &str| infos.get(name).unwrap_or_else(|| panic!("{arch:?}: no tensor {name}")).ggml_dtype;
        let num_layers = BenchShape::tiny(arch).num_layers;
        for layer_idx in 0..num_layers {
            let more = if use_more_bits(layer_idx, num_layers) { GgmlDType::Q6K } else { GgmlDType::Q4K };
            let p = |stem: &str| format!("blk.{layer_idx}.{stem}");
            assert_eq!(ty(&p("attn_v.weight")), more, "{arch:?} layer {layer_idx} attn_v");
            assert_eq!(ty(&p("ffn_down.weight")), more, "{arch:?} layer {layer_idx} ffn_down");
            for stem in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
                assert_eq!(ty(&p(&format!("{stem}.weight"))), GgmlDType::Q4K, "{arch:?} layer {layer_idx} {stem}");
            }
            for stem in ["attn_norm.weight", "ffn_norm.weight"] {
                assert_eq!(ty(&p(stem)), GgmlDType::F32, "{arch:?} layer {layer_idx} {stem}");
            }
        }
        assert_eq!(ty("output_norm.weight"), GgmlDType::F32);
        match arch {
            // Tied: llama.cpp quantizes the shared embedding as the output head.
            Architecture::Llama => {
                assert_eq!(ty("token_embd.weight"), GgmlDType::Q6K);
                assert!(!infos.contains_key("output.weight"));
                assert_eq!(ty("rope_freqs.weight"), GgmlDType::F32);
            }
            _ => {
                assert_eq!(ty("token_embd.weight"), GgmlDType::Q4K);
                assert_eq!(ty("output.weight"), GgmlDType::Q6K);
                assert_eq!(ty("blk.0.attn_q.bias"), GgmlDType::F32);
                assert!(!infos.contains_key("rope_freqs.weight"));
            }
        }
    }
    // The real shapes: half the attn_v / ffn_down tensors get Q6_K.
    for (num_layers, want) in [(32, 16), (16, 8), (28, 14)] {
        assert_eq!((0..num_layers).filter(|&i| use_more_bits(i, num_layers)).count(), want, "{num_layers} layers");
    }
}

#[test]
fn q8_0_and_bf16_store_every_matrix_in_their_type_and_vectors_in_f32() {
    let dir = tempfile::tempdir().unwrap();
    for (quant, matrix_type) in [(BenchQuant::Q8_0, GgmlDType::Q8_0), (BenchQuant::Bf16, GgmlDType::BF16)] {
        let path = write(dir.path(), &params(Architecture::Qwen2, quant, 1));
        let file = GgufFile::open(&path).unwrap();
        for (name, info) in &file.content.tensor_infos {
            let want = if info.shape.rank() == 2 { matrix_type } else { GgmlDType::F32 };
            assert_eq!(info.ggml_dtype, want, "{quant:?}: {name}");
        }
    }
}

#[test]
fn metadata_carries_the_architecture_keys_llama_cpp_reads_and_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), &params(Architecture::Llama, BenchQuant::Q4KM, 1));
    let file = GgufFile::open(&path).unwrap();
    let meta = &file.content.metadata;
    let u32_of = |k: &str| meta.get(k).unwrap_or_else(|| panic!("no {k}")).to_u32().unwrap();
    let f32_of = |k: &str| meta.get(k).unwrap_or_else(|| panic!("no {k}")).to_f32().unwrap();
    let shape = BenchShape::tiny(Architecture::Llama);
    assert_eq!(meta["general.architecture"].to_string().unwrap(), "llama");
    assert_eq!(u32_of("general.file_type"), 15);
    assert_eq!(u32_of("llama.block_count") as usize, shape.num_layers);
    assert_eq!(u32_of("llama.context_length") as usize, shape.context_length);
    assert_eq!(u32_of("llama.embedding_length") as usize, shape.hidden_size);
    assert_eq!(u32_of("llama.feed_forward_length") as usize, shape.intermediate_size);
    assert_eq!(u32_of("llama.attention.head_count") as usize, shape.num_heads);
    assert_eq!(u32_of("llama.attention.head_count_kv") as usize, shape.num_kv_heads);
    assert_eq!(u32_of("llama.rope.dimension_count") as usize, shape.head_dim);
    assert_eq!(u32_of("llama.vocab_size") as usize, TINY_VOCAB);
    assert_eq!(f32_of("llama.rope.freq_base"), 500_000.0);
    assert_eq!(f32_of("llama.attention.layer_norm_rms_epsilon"), 1e-5);
    assert_eq!(meta["tokenizer.ggml.model"].to_string().unwrap(), "gpt2");
    // hearth reads the same file back as the shape it was written from.
    let config = ModelFiles::open(&path).unwrap().config;
    assert_eq!((config.vocab_size, config.num_layers, config.head_dim), (TINY_VOCAB, shape.num_layers, shape.head_dim));
    assert!(config.tie_word_embeddings || !file.content.tensor_infos.contains_key("output.weight"));
}

#[test]
fn llama3_rope_freqs_match_llama_cpp_converter() {
    let factors = ShapeName::Llama32_1b.shape().rope_freq_factors().unwrap();
    assert_eq!(factors.len(), 32);
    // High frequencies unscaled, low ones divided by the factor, a smooth ramp between.
    assert_eq!(factors[0], 1.0);
    assert_eq!(factors[31], 32.0);
    assert!(factors.windows(2).all(|w| w[0] <= w[1]), "{factors:?}");
    assert!(factors.iter().any(|&f| f > 1.0 && f < 32.0), "{factors:?}");
    assert!(ShapeName::Llama3_8b.shape().rope_freq_factors().is_none());
}

#[test]
fn writing_is_deterministic_per_seed_and_matches_the_predicted_size() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), &params(Architecture::Llama, BenchQuant::Q8_0, 3));
    let b_params = params(Architecture::Llama, BenchQuant::Q8_0, 3);
    let b = dir.path().join("again.gguf");
    write_bench_model(&b_params, &b, &mut |_| {}).unwrap();
    let c = write(dir.path(), &params(Architecture::Llama, BenchQuant::Q8_0, 4));
    let (a, b, c) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), std::fs::read(c).unwrap());
    assert!(a == b, "same seed, different bytes");
    assert!(a != c, "different seeds, same bytes");
    assert_eq!(summarize(&b_params).unwrap().num_bytes, a.len() as u64);
    assert!(!dir.path().join("again.gguf.partial").exists());
}

#[test]
fn real_shapes_have_llama_cpp_file_sizes() {
    // llama.cpp's files with SmolLM2's 49,152-token vocabulary (issue 4): 8B Q4_K_M 4.47 GB,
    // 8B F16 14.8 GB (BF16 is the same size).
    let size = |shape: ShapeName, quant| {
        let p = BenchModelParams { shape: shape.shape(), quant, vocab_size: 49_152, tokenizer_metadata: vec![], seed: 0 };
        summarize(&p).unwrap().num_bytes as f64 / 1e9
    };
    let q4 = size(ShapeName::Llama3_8b, BenchQuant::Q4KM);
    let bf16 = size(ShapeName::Llama3_8b, BenchQuant::Bf16);
    assert!((q4 - 4.47).abs() < 0.01, "8B Q4_K_M {q4:.3} GB");
    assert!((bf16 - 14.8).abs() < 0.05, "8B BF16 {bf16:.3} GB");
    let counts: Vec<usize> = ShapeName::ALL
        .iter()
        .map(|s| plan_tensors(&s.shape(), 49_152, BenchQuant::Q8_0).unwrap().len())
        .collect();
    // 8B: embd + 32 × 9 + norm + output; 1B: rope_freqs + embd + 16 × 9 + norm (tied);
    // Qwen2.5-7B: embd + 28 × 12 (q/k/v biases) + norm + output.
    assert_eq!(counts, vec![291, 147, 339]);
}

#[test]
fn an_unwritable_destination_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("no-such-dir/model.gguf");
    let err = write_bench_model(&params(Architecture::Llama, BenchQuant::Q8_0, 1), &out, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("no-such-dir/model.gguf.partial"), "{err}");
    let zero_vocab = BenchModelParams { vocab_size: 0, ..params(Architecture::Llama, BenchQuant::Q8_0, 1) };
    let err = write_bench_model(&zero_vocab, &dir.path().join("m.gguf"), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("vocabulary"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left behind");
}
