//! Exact-id tests of `Scheduler`'s rejections: invalid configs, `add_request` errors (with
//! their messages), and `update` errors, each leaving the scheduler unchanged. Test-only; owns
//! nothing at run time.

use crate::scheduler_tests::{add, scheduler, tokens};
use crate::{NewRequest, RequestId, SampledToken, Scheduler, SchedulerConfig, SchedulerError};

#[test]
fn update_rejects_mismatched_samples_and_stale_plans_without_changing_anything() {
    let mut s = scheduler(4, 16, 64);
    add(&mut s, 1, &tokens(0..5), 1);
    let plan = s.schedule();
    let sample = |finished| SampledToken {
        id: RequestId(1),
        token_id: 3,
        finished,
    };
    let err = s.update(&plan, &[]).unwrap_err();
    assert_eq!(err, SchedulerError::MissingSample { id: RequestId(1) });
    let err = s.update(&plan, &[sample(true), sample(true)]).unwrap_err();
    assert_eq!(err, SchedulerError::DuplicateSample { id: RequestId(1) });
    let stranger = SampledToken {
        id: RequestId(9),
        ..sample(true)
    };
    let err = s.update(&plan, &[sample(true), stranger]).unwrap_err();
    assert_eq!(err, SchedulerError::UnexpectedSample { id: RequestId(9) });
    let err = s.update(&plan, &[sample(false)]).unwrap_err();
    assert!(
        err.to_string().contains("output 1 reached max_tokens 1"),
        "{err}"
    );
    s.check_invariants().unwrap();
    add(&mut s, 2, &tokens(0..5), 3);
    s.abort_request(RequestId(1));
    let plan = s.schedule();
    let sample = SampledToken {
        id: RequestId(2),
        token_id: 3,
        finished: false,
    };
    s.update(&plan, &[sample]).unwrap();
    let err = s.update(&plan, &[sample]).unwrap_err();
    assert!(matches!(err, SchedulerError::StalePlan { .. }), "{err}");
    s.check_invariants().unwrap();
}

#[test]
fn add_request_rejections_name_the_numbers() {
    let mut s = Scheduler::new(SchedulerConfig {
        block_size: 4,
        num_blocks: 5,
        max_num_batched_tokens: 64,
        max_num_seqs: 8,
        max_model_len: 30,
    })
    .unwrap();
    let new = |id, num_prompt_tokens: u32, max_tokens| NewRequest {
        id: RequestId(id),
        prompt_token_ids: tokens(0..num_prompt_tokens),
        max_tokens,
        cache_salt: 0,
    };
    let message = |s: &mut Scheduler, request| s.add_request(request).unwrap_err().to_string();
    assert_eq!(
        message(&mut s, new(1, 0, 4)),
        "request 1: the prompt is empty"
    );
    assert_eq!(
        message(&mut s, new(1, 3, 0)),
        "request 1: max_tokens must be at least 1, got 0"
    );
    assert_eq!(
        message(&mut s, new(1, 25, 6)),
        "request 1: 25 prompt tokens + max_tokens 6 exceed the model context length 30"
    );
    assert_eq!(
        message(&mut s, new(1, 18, 3)),
        "request 1: 21 tokens (prompt + max_tokens) need 6 KV-cache blocks but the pool has only 5"
    );
    let huge = message(&mut s, new(1, 3, usize::MAX));
    assert!(
        huge.contains("exceed the model context length 30"),
        "{huge}"
    );
    s.add_request(new(1, 17, 3)).unwrap();
    assert_eq!(
        message(&mut s, new(1, 3, 3)),
        "request 1 already exists (waiting or running)"
    );
    s.check_invariants().unwrap();
    assert_eq!(s.num_waiting(), 1);
}

#[test]
fn config_with_a_zero_field_is_rejected_by_name() {
    let config = SchedulerConfig {
        block_size: 4,
        num_blocks: 5,
        max_num_batched_tokens: 0,
        max_num_seqs: 8,
        max_model_len: 30,
    };
    let err = Scheduler::new(config).unwrap_err();
    assert_eq!(
        err.to_string(),
        "scheduler config: max_num_batched_tokens must be at least 1, got 0"
    );
}
