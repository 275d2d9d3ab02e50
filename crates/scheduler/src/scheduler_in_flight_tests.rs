//! Exact-id tests of several plans in flight at once (a pipeline computing one step per
//! stage): a later `schedule` leaves out requests in flight, plans are updated out of order,
//! a request in flight is never preempted (an older one that needs its blocks waits), aborting
//! one in flight is safe, and plans scheduled for several free slots share the requests
//! evenly. Test-only; owns nothing at run time.

use crate::scheduler_tests::{add, scheduler, tokens, SAMPLED_TOKEN};
use crate::{RequestId, RequestStatus, SampledToken, Scheduler, StepPlan};

fn ids(plan: &StepPlan) -> Vec<u64> {
    plan.requests.iter().map(|entry| entry.id.0).collect()
}

/// One unfinished sample per sampled entry of `plan` whose id is in `which`.
fn samples(plan: &StepPlan, which: &[u64]) -> Vec<SampledToken> {
    plan.requests
        .iter()
        .filter(|entry| entry.samples && which.contains(&entry.id.0))
        .map(|entry| SampledToken {
            id: entry.id,
            token_id: SAMPLED_TOKEN,
            finished: false,
        })
        .collect()
}

fn update_all(s: &mut Scheduler, plan: &StepPlan) {
    let all: Vec<u64> = ids(plan);
    s.update(plan, &samples(plan, &all)).unwrap();
    s.check_invariants().unwrap();
}

#[test]
fn a_second_schedule_leaves_out_requests_in_flight_and_plans_update_out_of_order() {
    let mut s = scheduler(4, 16, 64);
    add(&mut s, 1, &tokens(0..5), 4);
    add(&mut s, 2, &tokens(10..13), 4);
    let first = s.schedule();
    assert_eq!(ids(&first), [1, 2]);
    assert!(s.is_in_flight(RequestId(1)) && s.is_in_flight(RequestId(2)));
    assert!(s.schedule().requests.is_empty(), "both requests are in flight");
    add(&mut s, 3, &tokens(20..26), 4);
    let second = s.schedule();
    assert_eq!(ids(&second), [3]);
    s.check_invariants().unwrap();

    update_all(&mut s, &second);
    assert!(!s.is_in_flight(RequestId(3)) && s.is_in_flight(RequestId(1)));
    let third = s.schedule();
    assert_eq!(ids(&third), [3], "only request 3 is back; 1 and 2 are still in flight");
    assert_eq!(third.requests[0].new_token_ids, [SAMPLED_TOKEN]);
    update_all(&mut s, &first);
    let fourth = s.schedule();
    assert_eq!(ids(&fourth), [1, 2]);
    assert!(
        fourth.requests.iter().all(|entry| entry.new_token_ids == [SAMPLED_TOKEN]),
        "{fourth:?}"
    );
    update_all(&mut s, &third);
    update_all(&mut s, &fourth);
    let err = s.update(&first, &samples(&first, &[1, 2])).unwrap_err();
    assert!(err.to_string().contains("stale plan"), "a plan applies once: {err}");
}

#[test]
fn a_request_in_flight_is_never_preempted_the_older_one_growing_waits_for_it() {
    // 4 blocks of 2 tokens: request 1 (4 tokens) and request 2 (3 tokens) fill the pool.
    let mut s = scheduler(2, 4, 64);
    add(&mut s, 1, &tokens(0..4), 4);
    let first = s.schedule();
    add(&mut s, 2, &tokens(10..13), 4);
    let second = s.schedule();
    assert_eq!((ids(&first), ids(&second)), (vec![1], vec![2]));
    assert_eq!(s.stats().num_blocks_used, 4);
    update_all(&mut s, &first);
    // Request 1 now needs a third block; the only other running request is in flight, so
    // request 1 stalls, keeping its blocks, and nothing is admitted.
    add(&mut s, 3, &tokens(20..21), 1);
    let third = s.schedule();
    assert!(third.requests.is_empty() && third.preempted.is_empty(), "{third:?}");
    assert_eq!(s.request_status(RequestId(1)), Some(RequestStatus::Running));
    assert_eq!(s.request_status(RequestId(2)), Some(RequestStatus::Running));
    assert_eq!(s.stats().num_blocks_used, 4);
    s.check_invariants().unwrap();
    // Once request 2's plan is back, request 1 (older) preempts it and grows.
    update_all(&mut s, &second);
    let fourth = s.schedule();
    assert_eq!(ids(&fourth), [1]);
    assert_eq!(fourth.preempted, [RequestId(2)]);
    assert_eq!(s.request_status(RequestId(2)), Some(RequestStatus::Preempted));
    s.check_invariants().unwrap();
}

#[test]
fn the_newest_request_growing_preempts_itself_when_older_ones_are_in_flight() {
    // 4 blocks of 2 tokens: request 1 (3 tokens) then request 2 (4 tokens) fill the pool.
    let mut s = scheduler(2, 4, 64);
    add(&mut s, 1, &tokens(0..3), 4);
    let first = s.schedule();
    add(&mut s, 2, &tokens(10..14), 4);
    let second = s.schedule();
    assert_eq!((ids(&first), ids(&second)), (vec![1], vec![2]));
    update_all(&mut s, &second);
    // Request 2 needs a third block; request 1 (older) is in flight: request 2 gives way.
    let third = s.schedule();
    assert!(third.requests.is_empty(), "{third:?}");
    assert_eq!(third.preempted, [RequestId(2)]);
    assert_eq!(s.request_status(RequestId(1)), Some(RequestStatus::Running));
    assert_eq!(s.stats().num_blocks_used, 2);
    s.check_invariants().unwrap();
}

#[test]
fn aborting_a_request_in_flight_frees_its_blocks_and_its_update_needs_no_sample() {
    let mut s = scheduler(4, 16, 64);
    add(&mut s, 1, &tokens(0..5), 4);
    add(&mut s, 2, &tokens(10..15), 4);
    let plan = s.schedule();
    let num_used = s.stats().num_blocks_used;
    assert!(s.abort_request(RequestId(1)));
    assert!(!s.is_in_flight(RequestId(1)));
    assert_eq!(s.stats().num_blocks_used, num_used - 2);
    s.check_invariants().unwrap();
    s.update(&plan, &samples(&plan, &[2])).unwrap();
    s.check_invariants().unwrap();
    assert_eq!((s.num_running(), s.num_waiting()), (1, 0));
    assert!(!s.is_in_flight(RequestId(2)));
}

#[test]
fn plans_scheduled_for_two_free_slots_split_the_requests_evenly() {
    let mut s = scheduler(4, 32, 64);
    for id in 1..=5 {
        add(&mut s, id, &tokens(10 * id as u32..10 * id as u32 + 3), 4);
    }
    let first = s.schedule_share(2);
    let second = s.schedule_share(1);
    assert_eq!((ids(&first), ids(&second)), (vec![1, 2, 3], vec![4, 5]));
    update_all(&mut s, &first);
    // Requests 1-3 are back, 4 and 5 in flight: one free slot takes all three.
    assert_eq!(ids(&s.schedule_share(1)), [1, 2, 3]);
    s.check_invariants().unwrap();
}
