//! The suite checked against itself: an in-memory backend, simple enough to be obviously
//! right, must pass every case (with all capabilities, and with none plus the matching
//! skips); deliberately broken variants of it must fail the case aimed at the fault.

use std::collections::BTreeMap;
use std::future::Future;
use std::ops::{Bound, Range};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use replica_conformance::{cases, check_skips, run_case};
use replica_core::client::{
    ByteStream, Capabilities, ObjectInfo, Payload, PutMode, PutOptions, ReplicaClient,
};
use replica_core::error::{Op, StoreError};

/// Ways to break the in-memory backend.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    /// Create-only checks, yields, then writes: not atomic.
    racy_create_only: bool,
    /// `list` returns only the first page, like an S3 client that ignores continuation.
    list_first_page: Option<usize>,
    /// `delete_many` deletes only the first batch, like one DeleteObjects request.
    delete_first_batch: Option<usize>,
    /// Timestamps are kept to the second.
    timestamp_seconds: bool,
    /// A range past the end is an error rather than cut short.
    range_past_end_errors: bool,
    /// Every operation is refused, except `list`, which returns nothing.
    denied_but_list_empty: bool,
    /// Every operation is refused.
    denied: bool,
}

type Objects = Arc<Mutex<BTreeMap<String, (Bytes, SystemTime)>>>;

#[derive(Debug)]
struct Memory {
    objects: Objects,
    caps: Capabilities,
    faults: Faults,
}

const ALL_CAPS: Capabilities = Capabilities {
    create_only: true,
    ranged_get: true,
    list_has_created: true,
};

const NO_CAPS: Capabilities = Capabilities {
    create_only: false,
    ranged_get: false,
    list_has_created: false,
};

fn memory(caps: Capabilities, faults: Faults) -> Arc<dyn ReplicaClient> {
    Arc::new(Memory {
        objects: Objects::default(),
        caps,
        faults,
    })
}

impl Memory {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Bytes, SystemTime)>> {
        self.objects.lock().expect("poisoned")
    }

    fn refuse(&self, op: Op, key: &str) -> Result<(), StoreError> {
        if self.faults.denied || self.faults.denied_but_list_empty {
            return Err(StoreError::PermissionDenied {
                op,
                key: key.to_owned(),
                detail: "access denied".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ReplicaClient for Memory {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn redacted_url(&self) -> String {
        format!("memory://{:p}", Arc::as_ptr(&self.objects))
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn put(&self, key: &str, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        self.refuse(Op::Put, key)?;
        let data = match body {
            Payload::Bytes(b) => b,
            Payload::File(path) => match tokio::fs::read(&path).await {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    return Err(StoreError::Other {
                        op: Op::Put,
                        key: key.to_owned(),
                        source: format!("reading payload file {}: {e}", path.display()).into(),
                    });
                }
            },
        };
        let mut ts = opts.timestamp.unwrap_or_else(SystemTime::now);
        if self.faults.timestamp_seconds {
            let secs = ts.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
            ts = UNIX_EPOCH + Duration::from_secs(secs);
        }
        let exists = || StoreError::AlreadyExists {
            key: key.to_owned(),
        };
        match opts.mode {
            PutMode::Overwrite => {
                self.lock().insert(key.to_owned(), (data, ts));
            }
            PutMode::CreateOnly if self.faults.racy_create_only => {
                if self.lock().contains_key(key) {
                    return Err(exists());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.lock().insert(key.to_owned(), (data, ts));
            }
            PutMode::CreateOnly => {
                let mut objects = self.lock();
                if objects.contains_key(key) {
                    return Err(exists());
                }
                objects.insert(key.to_owned(), (data, ts));
            }
        }
        Ok(())
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.refuse(Op::Get, key)?;
        let data = self
            .lock()
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_owned(),
            })?;
        let len = data.len() as u64;
        let data = match range {
            None => data,
            Some(r) if self.faults.range_past_end_errors && r.end > len => {
                return Err(StoreError::Other {
                    op: Op::Get,
                    key: key.to_owned(),
                    source: "range not satisfiable".into(),
                });
            }
            Some(r) => {
                let start = r.start.min(len);
                let end = r.end.min(len).max(start);
                data.slice(start as usize..end as usize)
            }
        };
        Ok(Box::pin(std::io::Cursor::new(data)))
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        self.refuse(Op::Head, key)?;
        let objects = self.lock();
        let (data, ts) = objects.get(key).ok_or_else(|| StoreError::NotFound {
            key: key.to_owned(),
        })?;
        Ok(ObjectInfo {
            key: key.to_owned(),
            size: data.len() as u64,
            created: Some(*ts),
        })
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        if self.faults.denied_but_list_empty {
            return Ok(Vec::new());
        }
        self.refuse(Op::List, prefix)?;
        let lower = match start_after {
            Some(a) => Bound::Excluded(a.to_owned()),
            None => Bound::Unbounded,
        };
        let objects = self.lock();
        let all = objects
            .range((lower, Bound::Unbounded))
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, (data, ts))| ObjectInfo {
                key: k.clone(),
                size: data.len() as u64,
                created: self.caps.list_has_created.then_some(*ts),
            });
        Ok(match self.faults.list_first_page {
            Some(n) => all.take(n).collect(),
            None => all.collect(),
        })
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StoreError> {
        if let Some(k) = keys.first() {
            self.refuse(Op::Delete, k)?;
        }
        let n = self.faults.delete_first_batch.unwrap_or(keys.len());
        let mut objects = self.lock();
        for k in keys.iter().take(n) {
            objects.remove(k);
        }
        Ok(())
    }
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
                "left-over",
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
