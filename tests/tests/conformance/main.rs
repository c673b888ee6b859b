//! One conformance suite for both backends: every case below is one `async fn` over a
//! [`Backend`](backend::Backend), run once on a real `redis-server` (`redis::…`) and once on a
//! [`MemoryStore`](lockattr::MemoryStore) (`memory::…`). A case uses the public API only, so a
//! difference between the two runs is a difference a user's test would see. Checks that only
//! make sense on one backend live elsewhere: Redis's in `tests/runtime`, paused time in
//! [`paused`] here. That awaiting a lock operation lets the thread's other tasks run (a round
//! trip on Redis, the cooperative budget in memory) is a case of its own: [`scheduling`].
//!
//! Every case runs on a 2-worker runtime in real time, bounded by
//! [`CASE_LIMIT`](backend::CASE_LIMIT), with timing bounds generous enough for a loaded
//! machine.

mod backend;
mod support;

mod attribute;
mod cancellation;
mod exclusion;
mod fencing;
mod invalid;
mod leases;
mod lifetime;
mod loss;
mod operations;
mod paused;
mod scheduling;
mod waiting;

/// Instantiates every case on both backends: `redis::<group>::<case>` and
/// `memory::<group>::<case>`, the same async fn each time.
macro_rules! conformance {
    ($($group:ident: [$($case:ident),* $(,)?]),* $(,)?) => {
        conformance!(@on redis, crate::backend::Redis; $($group: [$($case),*]),*);
        conformance!(@on memory, crate::backend::Memory; $($group: [$($case),*]),*);
    };
    (@on $backend:ident, $ty:ty; $($group:ident: [$($case:ident),*]),*) => {
        mod $backend {
            $(
                mod $group {
                    $(
                        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $case() {
                            let backend = <$ty as crate::backend::Backend>::start();
                            crate::backend::bounded::<$ty>(crate::$group::$case(&backend)).await;
                        }
                    )*
                }
            )*
        }
    };
}

conformance! {
    exclusion: [
        tasks_of_one_locker_exclude_each_other,
        lockers_exclude_each_other,
        every_task_of_one_locker_gets_turns,
        every_task_of_two_lockers_gets_turns,
        namespaces_keep_lockers_apart,
    ],
    waiting: [
        a_waiter_gets_the_lock_when_it_is_released,
        a_wait_that_runs_out_is_a_timeout,
        try_lock_is_a_single_attempt,
        run_reenters_and_knows_its_fencing_token,
    ],
    leases: [
        a_fixed_lease_is_lost_at_its_deadline,
        renewal_keeps_a_body_longer_than_its_lease_protected,
        extend_moves_the_deadline,
        a_vanished_holder_blocks_others_for_its_lease_only,
    ],
    loss: [
        a_loss_cancels_the_body_under_run,
        a_loss_found_at_release_fails_run,
        a_lost_guard_gives_up_its_place_in_the_queue_at_once,
    ],
    fencing: [
        tokens_increase_across_lockers_handovers_and_grants,
        tokens_increase_in_the_order_of_holders,
        a_token_is_issued_when_first_asked_and_never_to_a_lost_lock,
        tokens_increase_when_only_some_holders_ask,
    ],
    cancellation: [
        dropped_acquire_futures_leave_a_free_key_free,
        dropped_waiters_leave_nothing_behind,
        a_waiter_dropped_after_its_grant_frees_the_lock,
        dropped_guards_and_bodies_release_at_once,
    ],
    operations: [
        inspect_reports_the_holder_and_its_waiters,
        force_unlock_frees_the_lock_and_the_holder_sees_lost,
    ],
    attribute: [
        the_attribute_locks_and_converts_errors,
        the_attribute_times_out_before_the_body,
        the_attribute_reports_a_loss,
    ],
    invalid: [
        invalid_keys_are_refused,
        invalid_leases_and_settings_are_refused,
    ],
}
