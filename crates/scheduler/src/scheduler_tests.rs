//! Exact-id unit tests of `Scheduler`: prefix reuse, eviction order, chunking, preemption,
//! abort, admission limits (rejections are in `scheduler_error_tests.rs`). Test-only; owns
//! nothing at run time. Every test checks the scheduler's invariants after each operation
//! (through `add` and `step`).

use crate::{
    BlockId, NewRequest, RequestId, RequestStatus, SampledToken, ScheduledRequest, Scheduler,
    SchedulerConfig, StepPlan,
};

/// Token every sampled request gets from `step`.
pub(crate) const SAMPLED_TOKEN: u32 = 999;

pub(crate) fn scheduler(
    block_size: usize,
    num_blocks: usize,
    max_num_batched_tokens: usize,
) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        block_size,
        num_blocks,
        max_num_batched_tokens,
        max_num_seqs: 8,
        max_model_len: 1024,
    })
    .unwrap()
}

pub(crate) fn add_salted(
    s: &mut Scheduler,
    id: u64,
    prompt: &[u32],
    max_tokens: usize,
    cache_salt: u64,
) {
    s.add_request(NewRequest {
        id: RequestId(id),
        prompt_token_ids: prompt.to_vec(),
        max_tokens,
        cache_salt,
    })
    .unwrap();
    s.check_invariants().unwrap();
}

pub(crate) fn add(s: &mut Scheduler, id: u64, prompt: &[u32], max_tokens: usize) {
    add_salted(s, id, prompt, max_tokens, 0);
}

/// Schedules and updates one step; sampled requests whose id is in `finished` finish.
pub(crate) fn step(s: &mut Scheduler, finished: &[u64]) -> StepPlan {
    let plan = s.schedule();
    s.check_invariants().unwrap();
    let sampled: Vec<SampledToken> = plan
        .requests
        .iter()
        .filter(|entry| entry.samples)
        .map(|entry| SampledToken {
            id: entry.id,
            token_id: SAMPLED_TOKEN,
            finished: finished.contains(&entry.id.0),
        })
        .collect();
    s.update(&plan, &sampled).unwrap();
    s.check_invariants().unwrap();
    plan
}

pub(crate) fn entry(plan: &StepPlan, id: u64) -> &ScheduledRequest {
    let found = plan.requests.iter().find(|entry| entry.id == RequestId(id));
    found.unwrap_or_else(|| panic!("request {id} not in plan {plan:?}"))
}

pub(crate) fn tokens(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

#[test]
fn second_request_reuses_the_full_blocks_of_a_common_prefix() {
    let mut s = scheduler(16, 64, 512);
    let common = tokens(0..48);
    add(&mut s, 1, &[common.clone(), tokens(100..105)].concat(), 4);
    let first = step(&mut s, &[]);
    add(&mut s, 2, &[common, tokens(200..205)].concat(), 4);
    let plan = step(&mut s, &[]);
    let second = entry(&plan, 2);
    assert_eq!(second.num_cached_prompt_tokens, 48);
    assert_eq!(second.num_computed_tokens, 48);
    assert_eq!(second.new_token_ids, tokens(200..205));
    assert_eq!(second.block_table[..3], entry(&first, 1).block_table[..3]);
    assert_ne!(second.block_table[3], entry(&first, 1).block_table[3]);
    let stats = s.stats();
    assert_eq!(
        (stats.num_prefix_query_tokens, stats.num_prefix_hit_tokens),
        (106, 48)
    );
}

#[test]
fn whole_prompt_hit_backs_off_one_block_to_leave_a_token_to_compute() {
    let mut s = scheduler(16, 64, 512);
    add(&mut s, 1, &tokens(0..48), 4);
    let first = step(&mut s, &[1]);
    assert_eq!(
        s.stats().num_blocks_used,
        0,
        "finished request freed its blocks"
    );
    assert_eq!(s.stats().num_cached_blocks, 3, "but they stay cached");
    add(&mut s, 2, &tokens(0..48), 4);
    let plan = step(&mut s, &[]);
    let second = entry(&plan, 2);
    assert_eq!(second.num_cached_prompt_tokens, 32);
    assert_eq!(second.new_token_ids, tokens(32..48));
    assert!(second.samples);
    assert_eq!(second.block_table[..2], entry(&first, 1).block_table[..2]);
}

#[test]
fn partial_block_prefix_is_not_reused() {
    let mut s = scheduler(16, 64, 512);
    add(&mut s, 1, &tokens(0..40), 4);
    step(&mut s, &[]);
    assert_eq!(
        s.stats().num_cached_blocks,
        2,
        "the partial third block is not registered"
    );
    add(&mut s, 2, &[tokens(0..40), tokens(300..308)].concat(), 4);
    let plan = step(&mut s, &[]);
    assert_eq!(entry(&plan, 2).num_cached_prompt_tokens, 32);
    assert_eq!(entry(&plan, 2).new_token_ids.len(), 16);
}

#[test]
fn cache_salt_separates_caches() {
    let mut s = scheduler(4, 64, 512);
    add_salted(&mut s, 1, &tokens(0..12), 4, 7);
    step(&mut s, &[1]);
    add_salted(&mut s, 2, &tokens(0..12), 4, 8);
    add_salted(&mut s, 3, &tokens(0..12), 4, 7);
    let plan = step(&mut s, &[]);
    assert_eq!(entry(&plan, 2).num_cached_prompt_tokens, 0);
    assert_eq!(entry(&plan, 3).num_cached_prompt_tokens, 8);
}

#[test]
fn eviction_takes_least_recently_freed_blocks_first_and_a_sequence_tail_before_its_prefix() {
    let mut s = scheduler(2, 8, 64);
    add(&mut s, 1, &[1, 2, 3, 4], 4); // blocks 0, 1
    assert_eq!(
        entry(&step(&mut s, &[1]), 1).block_table,
        [BlockId(0), BlockId(1)]
    );
    add(&mut s, 2, &[5, 6, 7, 8], 4); // blocks 2, 3
    assert_eq!(
        entry(&step(&mut s, &[2]), 2).block_table,
        [BlockId(2), BlockId(3)]
    );
    // Free queue, front first: never-used 4..8, then request 1 tail first, then request 2.
    add(&mut s, 3, &[50; 9], 4);
    let plan = s.schedule();
    s.check_invariants().unwrap();
    let ids = |idxs: &[u32]| idxs.iter().map(|&i| BlockId(i)).collect::<Vec<_>>();
    assert_eq!(entry(&plan, 3).block_table, ids(&[4, 5, 6, 7, 1]));
    assert_eq!(
        s.stats().num_cached_blocks,
        3,
        "only request 1's tail block was evicted"
    );
    // Request 1's first block is still cached; reviving it and growing evicts 3 before 2.
    add(&mut s, 4, &[1, 2, 3, 4, 9], 4);
    let plan = s.schedule();
    s.check_invariants().unwrap();
    assert_eq!(entry(&plan, 4).num_cached_prompt_tokens, 2);
    assert_eq!(entry(&plan, 4).block_table, ids(&[0, 3, 2]));
}

#[test]
fn long_prompt_is_chunked_by_the_budget_while_a_generating_request_gets_a_token_each_step() {
    // Budget 33 = 1 token for the generating request + 32-token chunks of the long prompt.
    let mut s = scheduler(4, 64, 33);
    add(&mut s, 1, &[1, 2, 3], 20);
    step(&mut s, &[]);
    add(&mut s, 2, &tokens(0..100), 4);
    let mut chunks = Vec::new();
    for step_idx in 0..4 {
        let plan = step(&mut s, &[]);
        assert_eq!(
            entry(&plan, 1).new_token_ids,
            [SAMPLED_TOKEN],
            "step {step_idx}"
        );
        let long = entry(&plan, 2);
        assert_eq!(long.num_computed_tokens, chunks.iter().sum::<usize>());
        assert_eq!(long.samples, step_idx == 3);
        chunks.push(long.new_token_ids.len());
        assert!(plan.num_batched_tokens <= 33);
    }
    assert_eq!(chunks, [32, 32, 32, 4]);
}

#[test]
fn newest_request_is_preempted_when_blocks_run_out_and_recomputes_the_same_tokens() {
    let mut s = scheduler(2, 4, 64);
    add(&mut s, 1, &[1, 2, 3], 5);
    add(&mut s, 2, &[4, 5, 6], 5);
    step(&mut s, &[]); // both hold 2 blocks; the pool is full
    add(&mut s, 3, &[7], 1); // waits for a block
    step(&mut s, &[]); // position 3 still fits requests 1 and 2
    let plan = step(&mut s, &[]); // request 1 needs a third block
    assert_eq!(plan.preempted, [RequestId(2)]);
    assert_eq!(
        plan.requests.len(),
        1,
        "no admission in a step that preempted"
    );
    assert_eq!(entry(&plan, 1).new_token_ids, [SAMPLED_TOKEN]);
    assert_eq!(
        s.request_status(RequestId(2)),
        Some(RequestStatus::Preempted)
    );
    assert_eq!((s.num_running(), s.num_waiting()), (1, 2));
    assert_eq!(s.stats().num_preemptions, 1);
    // Request 1 finishes; request 2 is at the front but does not fit yet, so request 3,
    // which would, stays behind it.
    let plan = step(&mut s, &[1]);
    assert_eq!(plan.requests.len(), 1);
    let plan = step(&mut s, &[3]);
    let ids: Vec<_> = plan.requests.iter().map(|entry| entry.id.0).collect();
    assert_eq!(ids, [2, 3], "the preempted request is re-admitted first");
    let recomputed = entry(&plan, 2);
    // Its first block survived in the cache; its second was evicted by request 1's growth.
    assert_eq!(recomputed.num_computed_tokens, 2);
    assert_eq!(recomputed.new_token_ids, [6, SAMPLED_TOKEN, SAMPLED_TOKEN]);
    assert_eq!(
        recomputed.num_cached_prompt_tokens, 0,
        "first admission's hit, kept"
    );
    assert!(recomputed.samples);
}

#[test]
fn newest_request_that_cannot_grow_preempts_itself_and_stops_scheduling() {
    let mut s = scheduler(2, 3, 64);
    add(&mut s, 1, &[1, 2, 3], 3); // 2 blocks, next position 3 fits
    add(&mut s, 2, &[4, 5], 3); // 1 block, next position 2 needs a new one
    step(&mut s, &[]);
    let plan = step(&mut s, &[]);
    assert_eq!(plan.preempted, [RequestId(2)]);
    assert_eq!(plan.requests.len(), 1);
    assert_eq!(entry(&plan, 1).num_computed_tokens, 3);
}

#[test]
fn abort_frees_blocks_at_once_wherever_the_request_is() {
    let mut s = scheduler(4, 16, 64);
    add(&mut s, 1, &tokens(0..10), 4);
    add(&mut s, 2, &tokens(0..10), 4);
    s.schedule();
    assert!(s.stats().num_blocks_used > 0);
    add(&mut s, 3, &tokens(0..3), 4);
    assert!(s.abort_request(RequestId(1)));
    assert!(s.abort_request(RequestId(2)));
    assert!(s.abort_request(RequestId(3)));
    s.check_invariants().unwrap();
    assert_eq!(s.stats().num_blocks_used, 0);
    assert!(!s.has_unfinished());
    assert!(!s.abort_request(RequestId(1)), "already gone");
}

#[test]
fn update_skips_requests_aborted_after_schedule() {
    let mut s = scheduler(4, 16, 64);
    add(&mut s, 1, &tokens(0..5), 4);
    add(&mut s, 2, &tokens(10..15), 4);
    let plan = s.schedule();
    assert!(s.abort_request(RequestId(1)));
    let sampled: Vec<_> = [1, 2]
        .map(|id| SampledToken {
            id: RequestId(id),
            token_id: 0,
            finished: false,
        })
        .to_vec();
    s.update(&plan, &sampled).unwrap();
    s.check_invariants().unwrap();
    assert_eq!(s.num_running(), 1);
}

#[test]
fn admission_respects_max_num_seqs_and_stops_at_the_first_request_that_does_not_fit() {
    let mut s = Scheduler::new(SchedulerConfig {
        block_size: 4,
        num_blocks: 6,
        max_num_batched_tokens: 64,
        max_num_seqs: 2,
        max_model_len: 64,
    })
    .unwrap();
    add(&mut s, 1, &tokens(0..16), 4); // 4 blocks
    add(&mut s, 2, &tokens(20..29), 4); // 3 blocks: does not fit next to request 1
    add(&mut s, 3, &tokens(40..41), 4); // 1 block: would fit, but FIFO keeps it behind 2
    let plan = step(&mut s, &[]);
    assert_eq!(plan.requests.len(), 1);
    assert_eq!((s.num_running(), s.num_waiting()), (1, 2));
    step(&mut s, &[1]);
    let plan = step(&mut s, &[]);
    let ids: Vec<_> = plan.requests.iter().map(|entry| entry.id.0).collect();
    assert_eq!(ids, [2, 3]);
    add(&mut s, 4, &tokens(60..61), 4);
    step(&mut s, &[]);
    assert_eq!(
        (s.num_running(), s.num_waiting()),
        (2, 1),
        "max_num_seqs is 2"
    );
}
