//! The conformance suite every backend passes (feature `test-suite`). Public, so third-party backends can run
//! it too:
//!
//! ```ignore
//! // in tests/my_store.rs; needs tokio (macros, rt-multi-thread) as a dev-dependency
//! keymeter::key_store_conformance!(std::sync::Arc::new(MyStore::connect().await));
//! ```
//!
//! Each check is also a public async function in [`keys`], taking the store as `Arc<dyn KeyStore>`, and panics
//! with a message on failure.

/// Generates one `#[tokio::test]` per [`keys`] check; `$make` is an expression (it may `.await`) giving a fresh
/// `Arc<dyn KeyStore>` (or a type that coerces to it) for each test.
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! key_store_conformance {
    ($make:expr) => {
        $crate::__key_store_tests!($make;
            create_and_get, duplicate_id, digest_lookup, hint_bound, list_filters, revoke, revoke_org,
            revoke_takes_created, disable_enable, update, replace_hash, rotate, record_use, concurrent_create);
    };
}

/// Generates one `#[tokio::test]` per [`alerts`] check; `$make` gives a fresh [`crate::store::Store`] (the
/// outbox's checks need its ledger and key table too).
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! outbox_conformance {
    ($make:expr) => {
        $crate::__outbox_tests!($make;
            outbox_fans_out_once_and_leases, endpoints_and_secrets, budget_alerts_once_per_period,
            revoke_leaked_once);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __outbox_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: ::std::sync::Arc<dyn $crate::store::Store> = $make;
                $crate::conformance::alerts::$name(store).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per [`credentials`] check; `$make` gives a fresh
/// `Arc<dyn CredentialStore>`.
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! credential_store_conformance {
    ($make:expr) => {
        $crate::__credential_store_tests!($make;
            put_get_replace, scopes_are_separate, delete_and_delete_all, providers_and_list, compare_and_swap,
            concurrent_puts, version_moves_with_every_write, a_cache_sees_every_write);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __credential_store_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: ::std::sync::Arc<dyn $crate::credentials::CredentialStore> = $make;
                $crate::conformance::credentials::$name(store).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per [`ledger`] check; `$make` gives a fresh `Arc<dyn Ledger>`.
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! ledger_conformance {
    ($make:expr) => {
        $crate::__ledger_tests!($make;
            record_once, events_and_reports, reports_match_the_events, prune_keeps_spend_and_request_ids, events_page_in_order, budget_status_and_soft_limit, reserve_all_or_none,
            settle_and_release, reservations_expire, concurrent_reservations_never_overshoot,
            set_budget_counts_past_events, delete_budget_lifts_it, reports_by_tag_and_end_user, invalid_input_is_refused, estimated_replaced_by_exact,
            request_ids_are_claimed_with_the_reservation, lapsed_claims_are_billed_never_dropped,
            settle_batch_settles_each);
        $crate::__lease_tests!($make;
            leases_grow_as_far_as_room_and_shrink, settled_draws_leave_their_lease, leases_lapse_unbilled,
            two_instances_of_leases_never_overshoot, warm_leases_answer_from_memory,
            open_draws_are_carved_and_billed_when_lost, earlier_runs_leases_end);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lease_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let ledger: ::std::sync::Arc<dyn $crate::ledger::Ledger> = $make;
                $crate::conformance::lease::$name(ledger).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __ledger_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let ledger: ::std::sync::Arc<dyn $crate::ledger::Ledger> = $make;
                $crate::conformance::ledger::$name(ledger).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per [`limits`] check of a [`crate::limits::LimitStore`]; `$make` gives a
/// fresh store.
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! limit_store_conformance {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn limits_set_replace_clear() {
            let store: ::std::sync::Arc<dyn $crate::limits::LimitStore> = $make;
            $crate::conformance::limits::limits_set_replace_clear(store).await;
        }
    };
}

/// Generates one `#[tokio::test]` per [`slots`] check of a [`crate::limits::SlotStore`]; `$make` gives a fresh
/// store.
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! slot_store_conformance {
    ($make:expr) => {
        $crate::__slot_tests!($make;
            slots_all_or_none_and_released_at_once, slots_lapse_unless_renewed,
            concurrent_acquires_take_exactly_the_limit);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __slot_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: ::std::sync::Arc<dyn $crate::limits::SlotStore> = $make;
                $crate::conformance::slots::$name(store).await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per [`limits`] check of a [`crate::limits::RateLimiter`] that takes the
/// caller's time; `$make` gives a fresh limiter.
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! rate_limiter_conformance {
    ($make:expr) => {
        $crate::__limiter_tests!($make;
            burst_then_one_per_interval, all_or_none, token_debt_delays_the_next_request,
            concurrent_checks_admit_exactly_the_quota, refund_gives_a_request_back);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __limiter_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let limiter: ::std::sync::Arc<dyn $crate::limits::RateLimiter> = $make;
                $crate::conformance::limits::$name(limiter).await;
            }
        )*
    };
}

/// Generates the [`limits`] checks of a [`crate::limits::BucketStore`] (and of a
/// [`crate::limits::LocalLimiter`] on it); `$make` gives a fresh store (an `Arc` of it).
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! bucket_store_conformance {
    ($make:expr) => {
        $crate::__bucket_tests!($make; bucket_states_round_trip, local_limiter_survives_a_restart);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __bucket_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: ::std::sync::Arc<dyn $crate::limits::BucketStore> = $make;
                $crate::conformance::limits::$name(store).await;
            }
        )*
    };
}

/// Generates the [`stats`] check for a backend that is both a [`crate::stats::StatsStore`] and a
/// [`crate::keys::KeyStore`]; `$make` gives a fresh one (an `Arc` of it).
#[cfg_attr(docsrs, doc(cfg(feature = "test-suite")))]
#[macro_export]
macro_rules! stats_store_conformance {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn stats_add_up_and_move_last_used_forward() {
            let store = $make;
            $crate::conformance::stats::stats_add_up_and_move_last_used_forward(
                store.clone(),
                store,
            )
            .await;
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __key_store_tests {
    ($make:expr; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let store: ::std::sync::Arc<dyn $crate::keys::KeyStore> = $make;
                $crate::conformance::keys::$name(store).await;
            }
        )*
    };
}

pub mod alerts;
pub mod credentials;
pub mod keys;
pub mod lease;
pub mod ledger;
pub mod limits;
pub mod slots;
pub mod stats;
