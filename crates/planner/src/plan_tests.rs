//! Scenario tests of the planner on real model shapes and real hardware from the table: what it
//! chooses, what it refuses and why, and the numbers it predicts.

use crate::cluster::{Cluster, Link, NodeId, PairLink};
use crate::cost::{CostModel, PlanOptions};
use crate::hardware::{lookup, parse_hardware_cluster, parse_hardware_list};
use crate::model::{ModelShape, WeightBlock};
use crate::plan::{evaluate_placement, plan, Placement, PlanNote};
use crate::prefill_split::{best_prefill_split, decide_prefill_split, SplitOutcome};
use crate::quant::{choose_quantization, Quant};
use crate::{NodeSpec, PlanError};

/// A dense Llama-style model's shape at `bits` per weight.
pub(crate) struct LlamaDims {
    pub num_layers: usize,
    pub hidden: u64,
    pub ffn: u64,
    pub num_heads: u64,
    pub num_kv_heads: u64,
    pub head_dim: u64,
    pub vocab: u64,
    pub tied: bool,
}

pub(crate) const LLAMA3_8B: LlamaDims = LlamaDims {
    num_layers: 32,
    hidden: 4096,
    ffn: 14336,
    num_heads: 32,
    num_kv_heads: 8,
    head_dim: 128,
    vocab: 128_256,
    tied: false,
};
pub(crate) const LLAMA3_70B: LlamaDims = LlamaDims {
    num_layers: 80,
    hidden: 8192,
    ffn: 28672,
    num_heads: 64,
    num_kv_heads: 8,
    head_dim: 128,
    vocab: 128_256,
    tied: false,
};
pub(crate) const LLAMA32_1B: LlamaDims = LlamaDims {
    num_layers: 16,
    hidden: 2048,
    ffn: 8192,
    num_heads: 32,
    num_kv_heads: 8,
    head_dim: 64,
    vocab: 128_256,
    tied: true,
};

pub(crate) fn llama(name: &str, dims: &LlamaDims, bits: f64) -> ModelShape {
    let block = |params: u64| WeightBlock {
        num_params: params,
        num_bytes: (params as f64 * bits / 8.0).ceil() as u64,
    };
    let (q, kv) = (
        dims.num_heads * dims.head_dim,
        dims.num_kv_heads * dims.head_dim,
    );
    let layer_params =
        dims.hidden * (2 * q + 2 * kv) + 3 * dims.hidden * dims.ffn + 2 * dims.hidden;
    ModelShape {
        name: name.into(),
        layers: vec![block(layer_params); dims.num_layers],
        embedding: block(dims.vocab * dims.hidden),
        head: (!dims.tied).then(|| block(dims.vocab * dims.hidden)),
        other: block(dims.hidden),
        hidden_size: dims.hidden,
        attention_width: q,
        kv_bytes_per_token_per_layer: 2 * kv * 2,
        num_attention_heads: dims.num_heads,
        num_kv_heads: dims.num_kv_heads,
    }
}

fn hardware(list: &str) -> Cluster {
    Cluster::new(
        parse_hardware_list(list).unwrap(),
        Link::TEN_GIGABIT_ETHERNET,
    )
}

fn notes(plan: &crate::Plan) -> Vec<String> {
    plan.notes.iter().map(ToString::to_string).collect()
}

#[test]
fn model_that_fits_the_fastest_node_stays_there_and_the_split_is_refused() {
    let model = llama("llama3-8b", &LLAMA3_8B, 16.0);
    let plan = plan(
        &model,
        &hardware("rtx-4090,h100-sxm"),
        &PlanOptions::default(),
    )
    .unwrap();
    let Placement::SingleNode { stage } = &plan.placement else {
        panic!("expected one node: {plan:#?}")
    };
    assert_eq!(stage.node_name, "h100-sxm");
    assert_eq!(stage.layers, 0..32);
    assert!(stage.holds_embedding && stage.holds_head);
    // Roofline: (weights read + KV of 512 tokens) / 3.35 TB/s.
    let bytes_read = model.weight_bytes() - model.embedding.num_bytes - model.other.num_bytes
        + 512 * model.kv_bytes_per_token();
    let expected = 3350e9 / bytes_read as f64;
    assert!(
        (plan.prediction.tokens_per_second - expected).abs() < 1e-9 * expected,
        "{plan:#?}"
    );
    let text = notes(&plan).join("\n");
    assert!(text.contains("refused 2-stage split: predicted"), "{text}");
    assert!(
        text.contains("tok/s on h100-sxm alone, and the model fits there"),
        "{text}"
    );
    assert_eq!(plan.prediction.link_seconds_per_token, 0.0);
}

#[test]
fn model_too_big_for_any_node_is_split_and_says_why() {
    let model = llama("llama3-70b", &LLAMA3_70B, Quant::Q4KM.bits_per_weight());
    let plan = plan(&model, &hardware("2xrtx-4090"), &PlanOptions::default()).unwrap();
    let Placement::Pipeline { stages } = &plan.placement else {
        panic!("expected a pipeline: {plan:#?}")
    };
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0].layers.start, 0);
    assert_eq!(stages[0].layers.end, stages[1].layers.start);
    assert_eq!(stages[1].layers.end, 80);
    assert!(stages
        .iter()
        .all(|s| s.memory_bytes <= s.usable_memory_bytes));
    let text = notes(&plan).join("\n");
    assert!(text.contains("no single node holds the model"), "{text}");
    assert!(text.contains("chose a 2-stage pipeline"), "{text}");
    // Two hops of one token's hidden state (8192 x 2 bytes) plus the logits row back (the
    // fixture's vocabulary x 4 bytes), on 10 GbE.
    assert!(
        plan.prediction.link_seconds_per_token > 2.0 * 0.2e-3
            && plan.prediction.link_seconds_per_token < 1e-3
    );
    assert!(plan.prediction.ttft_seconds > stages.iter().map(|s| s.prefill_seconds).sum::<f64>());
}

#[test]
fn layers_follow_bandwidth_not_free_memory() {
    // A big slow node and a small fast one; 70B at Q8_0 (~75 GB) fits neither alone.
    let slow = NodeSpec {
        name: "big-slow".into(),
        memory_bytes: 512 << 30,
        bandwidth_bytes_per_s: 100e9,
        flops_per_s: 10e12,
        power_watts: None,
    };
    let fast = NodeSpec {
        name: "small-fast".into(),
        memory_bytes: 48 << 30,
        bandwidth_bytes_per_s: 800e9,
        flops_per_s: 100e12,
        power_watts: None,
    };
    let mut slow_small = slow.clone();
    slow_small.memory_bytes = 60 << 30;
    let model = llama("llama3-70b", &LLAMA3_70B, 8.5);
    let cluster = Cluster::new(vec![slow_small, fast], Link::TEN_GIGABIT_ETHERNET);
    let options = PlanOptions::default();
    let plan = plan(&model, &cluster, &options).unwrap();
    let stages = plan.placement.stages();
    let fast_stage = stages.iter().find(|s| s.node_name == "small-fast").unwrap();
    let cost = CostModel::new(&model, &cluster, &options).unwrap();
    // The fast node is filled: one more layer would not fit.
    let mut one_more = fast_stage.layers.clone();
    if one_more.start > 0 {
        one_more.start -= 1;
    } else {
        one_more.end += 1;
    }
    assert!(
        !cost.fits(NodeId(1), &one_more),
        "fast node not full: {plan:#?}"
    );
    // Splitting in proportion to memory (60:48) would be predicted slower.
    let by_memory = 80 * 60 / 108;
    let proportional = [(NodeId(0), 0..by_memory), (NodeId(1), by_memory..80)];
    assert!(proportional.iter().all(|(n, l)| cost.fits(*n, l)));
    assert!(plan.prediction.seconds_per_token < cost.placement_decode_seconds(&proportional));
}

#[test]
fn pipeline_beats_a_slower_single_node_that_fits() {
    // 70B Q4_K_M fits the M2 Ultra alone (800 GB/s), but half of it on an RTX 4090 (1008 GB/s)
    // is faster even with the hops.
    let model = llama("llama3-70b", &LLAMA3_70B, Quant::Q4KM.bits_per_weight());
    let plan = plan(
        &model,
        &hardware("m2-ultra-192gb,rtx-4090"),
        &PlanOptions::default(),
    )
    .unwrap();
    assert!(
        matches!(plan.placement, Placement::Pipeline { .. }),
        "{plan:#?}"
    );
    let chose = plan.notes.iter().find_map(|n| match n {
        PlanNote::PipelineChosen {
            best_single: Some(single),
            tokens_per_second,
            ..
        } => Some((single.clone(), *tokens_per_second)),
        _ => None,
    });
    let (single, tokens_per_second) = chose.expect("the note names the single node it beat");
    assert_eq!(single.node, "m2-ultra-192gb");
    assert!(tokens_per_second > single.tokens_per_second);
    // With a 50 ms link the same split is refused.
    let mut slow_link = hardware("m2-ultra-192gb,rtx-4090");
    slow_link.default_link = Link {
        latency_s: 50e-3,
        bandwidth_bytes_per_s: 1e9,
    };
    let plan = crate::plan(&model, &slow_link, &PlanOptions::default()).unwrap();
    assert!(
        matches!(plan.placement, Placement::SingleNode { .. }),
        "{plan:#?}"
    );
    assert!(notes(&plan).join("\n").contains("refused 2-stage split"));
}

#[test]
fn a_fast_link_pair_is_preferred() {
    // Three equal nodes that must share the model; the pair joined by a fast link is used.
    let model = llama("llama3-70b", &LLAMA3_70B, 16.0);
    let mut cluster = hardware("3xa100-80gb");
    cluster.default_link = Link {
        latency_s: 5e-3,
        bandwidth_bytes_per_s: 1e9,
    };
    cluster.links.push(PairLink {
        a: NodeId(0),
        b: NodeId(2),
        link: Link {
            latency_s: 5e-6,
            bandwidth_bytes_per_s: 50e9,
        },
    });
    let plan = plan(&model, &cluster, &PlanOptions::default()).unwrap();
    let mut used: Vec<usize> = plan.placement.stages().iter().map(|s| s.node.0).collect();
    used.sort();
    assert_eq!(used, [0, 2], "{plan:#?}");
    assert!(notes(&plan)
        .iter()
        .any(|n| n == "a100-80gb#2 holds no layers: the pipeline is predicted faster without it"));
}

#[test]
fn tied_embeddings_are_copied_only_when_split() {
    let model = llama("llama3.2-1b", &LLAMA32_1B, 16.0);
    let cluster = hardware("h100-sxm,rtx-4090");
    let options = PlanOptions::default();
    let cost = CostModel::new(&model, &cluster, &options).unwrap();
    let kv = |layers: u64| layers * model.kv_bytes_per_token_per_layer * 4096;
    let layer = model.layers[0].num_bytes;
    let (embedding, other) = (model.embedding.num_bytes, model.other.num_bytes);
    assert_eq!(
        cost.stage_memory_bytes(&(0..16)),
        16 * layer + embedding + other + kv(16)
    );
    assert_eq!(
        cost.stage_memory_bytes(&(0..8)),
        8 * layer + embedding + other + kv(8)
    );
    assert_eq!(
        cost.stage_memory_bytes(&(8..16)),
        8 * layer + embedding + other + kv(8),
        "the last stage holds a copy"
    );
    assert_eq!(cost.stage_memory_bytes(&(4..8)), 4 * layer + other + kv(4));
}

#[test]
fn time_to_first_token_is_the_prompt_roofline() {
    let model = llama("llama3-8b", &LLAMA3_8B, 16.0);
    let options = PlanOptions {
        prompt_tokens: 512,
        ..PlanOptions::default()
    };
    let plan = plan(&model, &hardware("h100-sxm"), &options).unwrap();
    let layer_params: u64 = model.layers.iter().map(|l| l.num_params).sum();
    let flops = 2.0 * layer_params as f64 * 512.0
        + 2.0 * 512.0 * 513.0 * model.attention_width as f64 * 32.0
        + 2.0 * model.head_as_read().num_params as f64;
    let expected = flops / 989e12;
    assert!(
        (plan.prediction.ttft_seconds - expected).abs() < 1e-12,
        "{} vs {expected}",
        plan.prediction.ttft_seconds
    );
    assert_eq!(
        notes(&plan),
        ["runs on h100-sxm alone at a predicted 222.2 tok/s"]
    );
    let joules = plan.prediction.joules_per_token.unwrap();
    assert!((joules - 700.0 * plan.prediction.seconds_per_token).abs() < 1e-12);
}

#[test]
fn nothing_fits_is_an_error_naming_the_sizes() {
    let model = llama("llama3-70b", &LLAMA3_70B, 16.0);
    let err = plan(
        &model,
        &hardware("rtx-4090,rtx-3090"),
        &PlanOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, PlanError::DoesNotFit { .. }));
    let text = err.to_string();
    assert!(
        text.starts_with("`llama3-70b` does not fit: one node would need 132.7 GiB"),
        "{text}"
    );
    assert!(
        text.contains(
            "the largest node, `rtx-4090`, can use 21.6 GiB, all nodes together 43.2 GiB"
        ),
        "{text}"
    );
}

#[test]
fn many_nodes_use_bandwidth_orders() {
    // 8 nodes (> 6): each node first, the rest by bandwidth. 70B BF16 (~141 GB) needs at least
    // two of the 80 GB parts; the H100s (3.35 TB/s) are the fastest.
    let model = llama("llama3-70b", &LLAMA3_70B, 16.0);
    let plan = plan(
        &model,
        &hardware("4xl40s,2xa100-80gb,2xh100-sxm"),
        &PlanOptions::default(),
    )
    .unwrap();
    let names: Vec<&str> = plan
        .placement
        .stages()
        .iter()
        .map(|s| s.node_name.as_str())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("h100-sxm")), "{names:?}");
}

#[test]
fn quantization_is_the_best_that_fits() {
    let model = llama("llama3-70b", &LLAMA3_70B, 16.0);
    let options = PlanOptions {
        context_tokens: 8192,
        ..PlanOptions::default()
    };
    let choice = choose_quantization(&model, &hardware("m2-max-64gb"), &options).unwrap();
    assert_eq!(choice.chosen, Some(Quant::Q4KM), "{choice:#?}");
    let bf16 = &choice.options[0];
    assert_eq!(bf16.quant, Quant::Bf16);
    assert!(bf16.refusal.as_ref().unwrap().contains("does not fit"));
    assert_eq!(choice.options.len(), 5);
    let on_mac = choose_quantization(&model, &hardware("m3-ultra-512gb"), &options).unwrap();
    assert_eq!(on_mac.chosen, Some(Quant::Bf16));
    let nowhere = choose_quantization(&model, &hardware("l4"), &options).unwrap();
    assert_eq!(nowhere.chosen, None);
    assert!(nowhere.options.iter().all(|o| o.plan.is_none()));
    // Bytes follow bits per weight.
    let q8 = model.at_quant(Quant::Q8_0);
    assert_eq!(
        q8.layers[0].num_bytes,
        (model.layers[0].num_params as f64 * 8.5 / 8.0).ceil() as u64
    );
    assert_eq!(Quant::parse("Q6_K").unwrap(), Quant::Q6K);
    assert!(Quant::parse("q3")
        .unwrap_err()
        .to_string()
        .contains("q4_k_m"));
}

#[test]
fn split_prefill_pays_off_when_the_link_is_fast_enough() {
    // Decode on a Mac (27 TFLOPS), prefill on an H100 (989 TFLOPS): 64 MiB of KV for a
    // 512-token prompt crosses 10 GbE in ~57 ms, far less than the ~0.3 s the Mac would compute.
    let model = llama("llama3-8b", &LLAMA3_8B, 16.0);
    let cluster = hardware("m2-ultra-192gb,h100-sxm");
    let options = PlanOptions::default();
    let split = decide_prefill_split(&model, &cluster, &options, NodeId(1), NodeId(0)).unwrap();
    assert_eq!(split.kv_transfer_bytes, 512 * 32 * 2 * 8 * 128 * 2);
    assert!(split.use_split(), "{split:#?}");
    let SplitOutcome::Possible {
        remote_prefill_seconds,
        split_ttft_seconds,
        ..
    } = split.outcome
    else {
        panic!()
    };
    assert!(
        (split_ttft_seconds - (remote_prefill_seconds + split.kv_transfer_seconds)).abs() < 1e-15
    );
    assert!(split_ttft_seconds < split.local_ttft_seconds);
    assert!(
        split
            .to_string()
            .starts_with("use split prefill on h100-sxm: TTFT"),
        "{split}"
    );
    // Over 100 Mbit/s the transfer costs more than it saves.
    let mut slow = cluster.clone();
    slow.default_link = Link {
        latency_s: 1e-3,
        bandwidth_bytes_per_s: 100e6 / 8.0,
    };
    let split = decide_prefill_split(&model, &slow, &options, NodeId(1), NodeId(0)).unwrap();
    assert!(!split.use_split());
    assert!(split.split_ttft_seconds().unwrap() >= split.local_ttft_seconds);
    // A prefill node that cannot hold the model is refused with the sizes.
    let big = llama("llama3-70b", &LLAMA3_70B, 16.0);
    let split = decide_prefill_split(
        &big,
        &hardware("m3-ultra-512gb,rtx-4090"),
        &options,
        NodeId(1),
        NodeId(0),
    )
    .unwrap();
    assert!(matches!(
        split.outcome,
        SplitOutcome::PrefillNodeTooSmall { .. }
    ));
    assert!(
        split.to_string().contains("rtx-4090 cannot hold the model"),
        "{split}"
    );
    let best = best_prefill_split(
        &model,
        &hardware("m2-ultra-192gb,l4,h100-sxm"),
        &options,
        NodeId(0),
    )
    .unwrap()
    .unwrap();
    assert_eq!(best.prefill_node, "h100-sxm");
    assert!(decide_prefill_split(&model, &cluster, &options, NodeId(0), NodeId(0)).is_err());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = llama("llama3-8b", &LLAMA3_8B, 16.0);
    let cluster = hardware("h100-sxm");
    let bad_options = PlanOptions {
        prompt_tokens: 9000,
        context_tokens: 8192,
        ..PlanOptions::default()
    };
    assert!(plan(&model, &cluster, &bad_options)
        .unwrap_err()
        .to_string()
        .contains("9000-token prompt"));
    let headroom = PlanOptions {
        memory_headroom: 1.5,
        ..PlanOptions::default()
    };
    assert!(plan(&model, &cluster, &headroom).is_err());
    let mut no_kv = model.clone();
    no_kv.kv_bytes_per_token_per_layer = 0;
    assert!(plan(&no_kv, &cluster, &PlanOptions::default())
        .unwrap_err()
        .to_string()
        .contains("KV bytes"));
    assert!(lookup("h100-sxm").is_some());
}

#[test]
fn a_placement_given_by_hand_is_predicted_with_the_planners_formulas_even_when_slower() {
    let model = llama("llama3-8b", &LLAMA3_8B, 16.0);
    let cluster = hardware("h100-sxm,h100-sxm");
    let options = PlanOptions::default();
    let chosen = plan(&model, &cluster, &options).unwrap();
    let single = evaluate_placement(&model, &cluster, &options, &[(NodeId(0), 0..32)]).unwrap();
    assert!(
        (single.prediction.tokens_per_second - chosen.prediction.tokens_per_second).abs()
            < 1e-9 * chosen.prediction.tokens_per_second
    );
    let split = evaluate_placement(
        &model,
        &cluster,
        &options,
        &[(NodeId(0), 0..16), (NodeId(1), 16..32)],
    )
    .unwrap();
    assert_eq!(split.placement.stages().len(), 2);
    assert!(split.prediction.link_seconds_per_token > 0.0);
    assert!(
        split.prediction.tokens_per_second < single.prediction.tokens_per_second,
        "the hops cost time"
    );
    let gap = evaluate_placement(
        &model,
        &cluster,
        &options,
        &[(NodeId(0), 0..10), (NodeId(1), 12..32)],
    )
    .unwrap_err();
    assert!(gap.to_string().contains("contiguously"), "{gap}");
    let unknown =
        evaluate_placement(&model, &cluster, &options, &[(NodeId(2), 0..32)]).unwrap_err();
    assert!(
        unknown.to_string().contains("node 2 does not exist"),
        "{unknown}"
    );
}

/// Llama-3-8B in BF16, by hand: a layer is 4096 × (2 × 4096 + 2 × 1024) + 3 × 4096 × 14336
/// + 2 × 4096 = 218,112,000 parameters (436,224,000 bytes; 13,959,168,000 for 32 layers); the
/// head 128,256 × 4096 × 2 = 1,050,673,152 bytes; KV 2 × 1024 × 2 = 4096 bytes per token per
/// layer, 67,108,864 bytes for 512 tokens of 32 layers. Decode reads 15,076,950,016 bytes.
const LLAMA3_8B_BF16_DECODE_BYTES: f64 = 15_076_950_016.0;

/// Llama-3-8B in BF16 on two NVLinked H100s stays on one GPU: tensor parallelism would halve the
/// read (15.08 GB ÷ 3.35 TB/s = 4.50 ms, 2.25 ms per rank) but add 64 all-reduces of an 8 KiB row
/// at 2 × ½ × 8192 B ÷ 450 GB/s + 60 µs each, 3.84 ms in all: 6.09 ms (164.2 tok/s) against
/// 4.50 ms (222.2 tok/s). As measured on 2× H200: TP=2 147.0 tok/s, one GPU 180.9.
#[test]
fn eight_b_on_two_nvlinked_gpus_stays_on_one_gpu() {
    let model = llama("llama3-8b", &LLAMA3_8B, 16.0);
    let cluster = parse_hardware_cluster("2xh100-sxm", Link::TEN_GIGABIT_ETHERNET).unwrap();
    let options = PlanOptions::default();
    let chosen = plan(&model, &cluster, &options).unwrap();
    assert!(matches!(chosen.placement, Placement::SingleNode { .. }), "{chosen:#?}");
    let single_seconds = LLAMA3_8B_BF16_DECODE_BYTES / 3350e9;
    let predicted = chosen.prediction.seconds_per_token;
    assert!((predicted - single_seconds).abs() < 1e-9 * single_seconds, "{predicted} vs {single_seconds}");
    let cost = CostModel::new(&model, &cluster, &options).unwrap();
    let all_reduce = 2.0 * 0.5 * 8192.0 / 450e9 + 60e-6;
    assert_eq!(Link::NVLINK_4.latency_s, 60e-6);
    let link_seconds = cost.tensor_parallel_link_seconds_per_token(Link::NVLINK_4, 2);
    assert!((link_seconds - 64.0 * all_reduce).abs() < 1e-15, "{link_seconds}");
    let tensor_parallel = cost.tensor_parallel_decode_seconds(&[NodeId(0), NodeId(1)], Link::NVLINK_4);
    let expected = LLAMA3_8B_BF16_DECODE_BYTES / 2.0 / 3350e9 + 64.0 * all_reduce;
    assert!((tensor_parallel - expected).abs() < 1e-9 * expected, "{tensor_parallel} vs {expected}");
    assert!(tensor_parallel > single_seconds);
    let text = notes(&chosen).join("\n");
    assert!(
        text.contains(
            "refused tensor parallel over 2 GPUs of 2xh100-sxm: predicted 164.2 tok/s, not faster \
             than 222.2 tok/s on h100-sxm#1"
        ),
        "{text}"
    );
}

#[test]
fn two_machines_over_ten_gigabit_ethernet_get_no_tensor_parallelism() {
    let model = llama("llama3-8b", &LLAMA3_8B, 16.0);
    // Separate entries are separate machines: no host, only pipelines between them.
    let cluster = parse_hardware_cluster("h100-sxm,h100-sxm", Link::TEN_GIGABIT_ETHERNET).unwrap();
    assert!(cluster.hosts.is_empty());
    let plan = plan(&model, &cluster, &PlanOptions::default()).unwrap();
    assert!(
        matches!(plan.placement, Placement::SingleNode { .. }),
        "{plan:#?}"
    );
    let text = notes(&plan).join("\n");
    assert!(!text.contains("tensor parallel"), "{text}");
    // Even declared as one host, a 10 GbE "interconnect" is below the rule's 25 GB/s.
    let mut slow = cluster.clone();
    slow.hosts.push(crate::Host {
        name: "slow".into(),
        nodes: vec![NodeId(0), NodeId(1)],
        interconnect: Link::TEN_GIGABIT_ETHERNET,
    });
    let plan = plan_of(&model, &slow);
    assert!(
        matches!(plan.placement, Placement::SingleNode { .. }),
        "{plan:#?}"
    );
    assert!(
        notes(&plan)
            .iter()
            .any(|n| n.starts_with("no tensor parallelism on slow: its GPUs are joined at")),
        "{:?}",
        notes(&plan)
    );
}

fn plan_of(model: &ModelShape, cluster: &Cluster) -> crate::Plan {
    plan(model, cluster, &PlanOptions::default()).unwrap()
}

#[test]
fn heads_that_do_not_divide_limit_the_degree_and_say_so() {
    // Llama-3-70B in BF16 (two GPUs' worth): 64 attention heads and 8 KV heads, which 3 GPUs
    // cannot share and 2 can.
    let model = llama("llama3-70b", &LLAMA3_70B, 16.0);
    let options = PlanOptions { context_tokens: 2048, ..PlanOptions::default() };
    let cluster = parse_hardware_cluster("3xh100-sxm", Link::TEN_GIGABIT_ETHERNET).unwrap();
    let chosen = plan(&model, &cluster, &options).unwrap();
    let Placement::TensorParallel { ranks, .. } = &chosen.placement else {
        panic!("expected tensor parallelism: {chosen:#?}")
    };
    assert_eq!(ranks.len(), 2);
    let text = notes(&chosen).join("\n");
    assert!(text.contains("h100-sxm#3 is not a rank"), "{text}");
    assert!(
        text.contains(
            "64 attention heads and 8 KV heads do not split evenly over the 3 GPUs of 3xh100-sxm"
        ),
        "{text}"
    );
    // Four GPUs divide both: all four are ranks.
    let four = parse_hardware_cluster("4xh100-sxm", Link::TEN_GIGABIT_ETHERNET).unwrap();
    let four_way = plan(&model, &four, &options).unwrap();
    assert_eq!(four_way.placement.describe(), "tensor parallel x4");
}

#[test]
fn seventy_b_in_bf16_needs_two_gpus_and_tensor_parallelism_beats_the_pipeline() {
    let model = llama("llama3-70b", &LLAMA3_70B, 16.0);
    let cluster = parse_hardware_cluster("2xh100-sxm", Link::TEN_GIGABIT_ETHERNET).unwrap();
    let options = PlanOptions {
        context_tokens: 2048,
        ..PlanOptions::default()
    };
    let plan = plan(&model, &cluster, &options).unwrap();
    let Placement::TensorParallel { ranks, .. } = &plan.placement else {
        panic!("expected tensor parallelism: {plan:#?}")
    };
    assert!(ranks
        .iter()
        .all(|r| r.memory_bytes <= r.usable_memory_bytes));
    let text = notes(&plan).join("\n");
    assert!(text.starts_with("no single node holds the model"), "{text}");
    assert!(
        text.contains("(no single GPU holds the model); the best pipeline would be"),
        "{text}"
    );
    // The pipeline reads all 141 GB in turn (~42 ms a token); tensor parallelism half on each
    // GPU at once (~21 ms) plus 160 all-reduces at 60 µs (9.6 ms): ~1.4x the pipeline's rate.
    let pipeline_plan = plan_without_hosts(&model, &cluster, &options);
    assert!(matches!(
        pipeline_plan.placement,
        Placement::Pipeline { .. }
    ));
    let ratio = plan.prediction.tokens_per_second / pipeline_plan.prediction.tokens_per_second;
    assert!((1.3..1.5).contains(&ratio), "tensor parallel / pipeline tokens per second: {ratio}");
}

fn plan_without_hosts(model: &ModelShape, cluster: &Cluster, options: &PlanOptions) -> crate::Plan {
    let mut separate = cluster.clone();
    separate.hosts.clear();
    plan(model, &separate, options).unwrap()
}

#[test]
fn a_slower_tensor_parallel_candidate_is_refused_with_both_numbers() {
    // A tiny model: 64 all-reduces of 60 µs each cost more than half of reading it.
    let model = llama("llama3.2-1b", &LLAMA32_1B, 4.0);
    let cluster = parse_hardware_cluster("2xh100-sxm", Link::TEN_GIGABIT_ETHERNET).unwrap();
    let plan = plan_of(&model, &cluster);
    assert!(
        matches!(plan.placement, Placement::SingleNode { .. }),
        "{plan:#?}"
    );
    let text = notes(&plan).join("\n");
    assert!(
        text.contains("refused tensor parallel over 2 GPUs of 2xh100-sxm: predicted"),
        "{text}"
    );
    assert!(text.contains("tok/s on h100-sxm#1 alone"), "{text}");
}

#[test]
fn hosts_are_validated() {
    let model = llama("llama3-8b", &LLAMA3_8B, 16.0);
    let mut cluster = parse_hardware_cluster("2xh100-sxm,l4", Link::TEN_GIGABIT_ETHERNET).unwrap();
    cluster.hosts.push(crate::Host {
        name: "other".into(),
        nodes: vec![NodeId(1), NodeId(2)],
        interconnect: Link::PCIE_4_X16,
    });
    let err = plan(&model, &cluster, &PlanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("host `other`: `h100-sxm#2` is in another host too"),
        "{err}"
    );
    let mut bad_heads = model.clone();
    bad_heads.num_kv_heads = 5;
    let err = plan(&bad_heads, &cluster, &PlanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("32 attention heads and 5 KV heads"), "{err}");
}
