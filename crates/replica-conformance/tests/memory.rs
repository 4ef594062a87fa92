//! The suite checked against itself: an in-memory backend, simple enough to be obviously
//! right, must pass every case (with all capabilities, and with none plus the matching
//! skips); deliberately broken variants of it must fail the case aimed at the fault.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use replica_conformance::{cases, check_skips, run_case};
use replica_core::client::{Capabilities, Payload, PutOptions, ReplicaClient};
use replica_core::key::Key;
use replica_core::memory::{
    ALL_CAPABILITIES as ALL_CAPS, Faults, MemoryClient, NO_CAPABILITIES as NO_CAPS,
};

fn memory(caps: Capabilities, faults: Faults) -> Arc<dyn ReplicaClient> {
    Arc::new(MemoryClient::new(caps, faults))
}

async fn full_client() -> Arc<dyn ReplicaClient> {
    memory(ALL_CAPS, Faults::default())
}

async fn denied_client() -> Arc<dyn ReplicaClient> {
    memory(
        ALL_CAPS,
        Faults {
            denied: true,
            ..Faults::default()
        },
    )
}

async fn bare_client() -> Arc<dyn ReplicaClient> {
    memory(NO_CAPS, Faults::default())
}

mod full {
    replica_conformance::conformance_suite! {
        backend: "memory",
        client: crate::full_client,
        permission_denied: crate::denied_client,
    }
}

mod bare {
    replica_conformance::conformance_suite! {
        backend: "memory-without-capabilities",
        client: crate::bare_client,
        skip: {
            ranged_get: "declares no ranged_get",
            create_only_existing: "declares no create_only",
            large_object_create_only: "declares no create_only",
            create_only_race: "declares no create_only",
        }
    }
}

/// Runs `case` and returns its panic message; fails if it passes.
fn failure<F: Future<Output = ()>>(case: impl FnOnce() -> F) -> String {
    let err = std::panic::catch_unwind(AssertUnwindSafe(|| {
        run_case("memory-faulty", "teeth", case())
    }))
    .expect_err("the case passed against a broken backend");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn assert_fails<F: Future<Output = ()>>(case: impl FnOnce() -> F, needle: &str) {
    let msg = failure(case);
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
}

fn faulty(faults: Faults) -> Arc<dyn ReplicaClient> {
    memory(ALL_CAPS, faults)
}

#[test]
fn catches_racy_create_only() {
    let f = Faults {
        racy_create_only: true,
        ..Faults::default()
    };
    assert_fails(
        || cases::create_only_race(faulty(f)),
        "racing create-only puts succeeded",
    );
}

#[test]
fn catches_a_store_that_ignores_if_match() {
    let f = Faults {
        ignores_if_match: true,
        ..Faults::default()
    };
    assert_fails(
        || cases::conditional_put(faulty(f)),
        "a second create must fail with AlreadyExists",
    );
    assert_fails(
        || cases::conditional_put_race(faulty(f)),
        "compare-and-swap puts naming one version succeeded",
    );
}

#[test]
fn catches_a_list_without_paging() {
    let f = Faults {
        list_first_page: Some(1000),
        ..Faults::default()
    };
    assert_fails(|| cases::list_paging(faulty(f)), "objects below one prefix");
}

#[test]
fn catches_a_delete_of_one_batch_only() {
    let f = Faults {
        delete_first_batch: Some(1000),
        ..Faults::default()
    };
    assert_fails(
        || cases::delete_many_over_a_thousand(faulty(f)),
        "survived one delete_many",
    );
}

#[test]
fn catches_timestamps_cut_to_the_second() {
    let f = Faults {
        timestamp_seconds: true,
        ..Faults::default()
    };
    assert_fails(|| cases::timestamp_round_trip(faulty(f)), "head ts/1");
}

#[test]
fn catches_a_store_time_listed_as_the_ltx_time() {
    let f = Faults {
        list_store_time_as_ltx_time: true,
        ..Faults::default()
    };
    assert_fails(
        || cases::ltx_time_is_never_store_time(faulty(f)),
        "is not the LTX time it was put with",
    );
}

#[test]
fn catches_a_range_past_the_end_that_errors() {
    let f = Faults {
        range_past_end_errors: true,
        ..Faults::default()
    };
    assert_fails(|| cases::ranged_get(faulty(f)), "range Some(990..2000)");
}

#[test]
fn catches_a_refused_list_that_reads_as_empty() {
    let f = Faults {
        denied_but_list_empty: true,
        ..Faults::default()
    };
    assert_fails(
        || cases::permission_denied(faulty(f)),
        "list \"ltx/0/\" succeeded",
    );
}

#[test]
fn catches_a_factory_that_reuses_a_root() {
    let shared = faulty(Faults::default());
    let second = shared.clone();
    run_case("memory", "setup", async move {
        shared
            .put(
                &Key::from_static("left-over"),
                Payload::Bytes(Bytes::new()),
                &PutOptions::default(),
            )
            .await
            .expect("put");
    });
    assert_fails(move || cases::round_trip(second), "fresh, empty prefix");
}

#[test]
fn a_case_needing_a_missing_capability_fails_loudly() {
    assert_fails(
        || async { cases::create_only_race(bare_client().await).await },
        "needs capability create_only",
    );
}

fn skips_failure(caps: Capabilities, skips: &[(&str, &str)]) -> String {
    let client = memory(caps, Faults::default());
    let generated: Vec<&str> = cases::ALL
        .iter()
        .map(|c| c.name)
        .filter(|n| *n != "permission_denied")
        .collect();
    let err = std::panic::catch_unwind(AssertUnwindSafe(|| {
        check_skips("memory", &*client, skips, false, &generated)
    }))
    .expect_err("check_skips accepted bad skips");
    err.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[test]
fn skips_must_be_justified_and_complete() {
    let msg = skips_failure(ALL_CAPS, &[("create_only_race", "racy")]);
    assert!(msg.contains("declares the capability"), "{msg}");

    let msg = skips_failure(ALL_CAPS, &[("list_paging", "slow")]);
    assert!(msg.contains("needs no optional capability"), "{msg}");

    let msg = skips_failure(ALL_CAPS, &[("permission_denied", "no")]);
    assert!(msg.contains("permission_denied cannot be listed"), "{msg}");

    let msg = skips_failure(NO_CAPS, &[("ranged_get", "no ranges")]);
    assert!(
        msg.contains("create_only_race needs capability create_only")
            && msg.contains("is not skipped"),
        "{msg}"
    );

    let msg = skips_failure(
        NO_CAPS,
        &[
            ("ranged_get", ""),
            ("ranged_get", "twice"),
            ("create_only_existing", "x"),
            ("large_object_create_only", "x"),
            ("create_only_race", "x"),
        ],
    );
    assert!(msg.contains("gives no reason"), "{msg}");
    assert!(msg.contains("more than once"), "{msg}");
}

#[test]
fn random_roots_differ_and_have_the_prefix() {
    let a = replica_conformance::random_root("conformance/");
    let b = replica_conformance::random_root("conformance");
    assert_ne!(a, b);
    assert!(a.starts_with("conformance/") && !a.contains("//"), "{a}");
    assert!(!replica_conformance::random_root("").contains('/'));
}
