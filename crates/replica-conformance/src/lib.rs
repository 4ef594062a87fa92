//! The backend conformance suite: one set of cases that every [`ReplicaClient`] must
//! pass, run by each backend crate against its own store (modelled on OpenDAL's
//! behaviour tests: one suite, gated on declared capabilities, a fresh random root per
//! client, configured by the backend's own test file).
//!
//! # Adding a backend
//!
//! 1. Add a dev-dependency: `replica-conformance = { path = "../replica-conformance" }`.
//! 2. Write `tests/it/conformance.rs`, a module of the crate's one integration-test
//!    binary (`tests/it/main.rs` declaring `mod conformance;`, named `integration` by a
//!    `[[test]]` section with `autotests = false`), with a factory that returns a
//!    client rooted at a **fresh, empty** prefix on every call (use [`random_root`];
//!    keep any temporary directory or emulator handle alive with [`keep_alive`]), and
//!    invoke the macro:
//!
//! ```ignore
//! use std::sync::Arc;
//! use replica_core::client::ReplicaClient;
//!
//! async fn fresh_client() -> Arc<dyn ReplicaClient> {
//!     let root = replica_conformance::random_root("conformance");
//!     Arc::new(MyClient::new(&root))
//! }
//!
//! replica_conformance::conformance_suite! {
//!     backend: "mine",
//!     client: crate::conformance::fresh_client,
//!     // Optional: a client whose every operation is refused (wrong credentials, a
//!     // forbidden root). Without it, `permission_denied` is reported as skipped.
//!     permission_denied: crate::conformance::denied_client,
//!     // Optional: cases this backend cannot pass, each with a reason. Only cases whose
//!     // capability the client does not declare may be listed (checked at run time).
//!     skip: { create_only_race: "the store has no atomic create-only" },
//! }
//! ```
//!
//! 3. `cargo nextest run -p <crate>`: every case is its own test,
//!    `conformance::<case>` after the function in [`cases`]; skipped cases are
//!    `#[ignore]`d with their reason (run them anyway with `--run-ignored all`), and
//!    `conformance_skips` prints the skips and fails if one is not justified by a
//!    missing capability, or if a case needs a capability the backend lacks but is not
//!    skipped.
//!
//! The arguments must appear in this order (`backend`, `client`, then optionally
//! `permission_denied`, then optionally `skip`); trailing commas are optional. The test
//! file needs no tokio dependency: each case runs on a 4-worker multi-thread runtime
//! built here, with a time limit of 300 s (`REPLICA_CONFORMANCE_TIMEOUT_SECS`).
//!
//! # What the cases assume of a backend
//!
//! - Keys are `/`-separated, never start a segment with `.`, never contain `//`, `\` or
//!   NUL, and no key is also a "directory" of another key (`a` and `a/b` never coexist),
//!   so file-like stores can pass. Everything else is fair game: spaces, `+ % = & ? # ~`
//!   and non-ASCII.
//! - `list` returns keys in byte order, strictly after `start_after`, all pages.
//! - A ranged `get` yields the bytes of the range that exist: a range reaching past
//!   the end is cut short, one starting at or past the end (or empty) yields nothing,
//!   neither is an error.
//! - `head`/`get` of a missing key fail with [`StoreError::NotFound`] naming the key;
//!   `delete_many` of missing keys succeeds.
//! - A put's timestamp comes back from `head` (and from `list` if
//!   [`Capabilities::list_has_ltx_time`]) exact to the millisecond.
//! - Errors name the key (or list prefix) they concern.
//! - Permission failures ([`cases::permission_denied`]) are
//!   [`StoreError::PermissionDenied`], or [`StoreError::Other`] where the store cannot
//!   tell a refusal from another permanent failure; never `NotFound` (restore would see
//!   an empty replica), `Transient` (retried forever) or success (a `list` that returns
//!   nothing).
//!
//! [`StoreError::NotFound`]: replica_core::error::StoreError::NotFound
//! [`StoreError::PermissionDenied`]: replica_core::error::StoreError::PermissionDenied
//! [`StoreError::Other`]: replica_core::error::StoreError::Other
//! [`Capabilities::list_has_ltx_time`]: replica_core::client::Capabilities::list_has_ltx_time

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use replica_core::client::{
    ByteStream, ObjectInfo, Payload, PutOptions, ReplicaClient, StoreInfo, Version, Versioned,
};
use replica_core::error::StoreError;
use replica_core::key::{Key, KeyPrefix};

pub mod cases;
mod support;

/// Keys for tests that name objects with string literals.
pub mod keys {
    use replica_core::key::{Key, KeyPrefix};

    /// # Panics
    /// If `s` is not a valid key: tests only name valid ones.
    pub fn k(s: impl AsRef<str>) -> Key {
        Key::new(s.as_ref()).unwrap_or_else(|e| panic!("a test used an invalid key: {e}"))
    }

    /// # Panics
    /// If `s` is not a valid prefix.
    pub fn p(s: impl AsRef<str>) -> KeyPrefix {
        KeyPrefix::new(s.as_ref()).unwrap_or_else(|e| panic!("a test used an invalid prefix: {e}"))
    }

    pub fn ks<S: AsRef<str>>(v: &[S]) -> Vec<Key> {
        v.iter().map(k).collect()
    }
}

/// A root (or key prefix) unique to this call: `<prefix>/<unix-ms>-<16 random hex>`, or
/// just `<unix-ms>-<hex>` when `prefix` is empty. The time comes first so that leftovers
/// of old runs sort, and can be cleaned up, by age.
pub fn random_root(prefix: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let nonce: u64 = rand::random();
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        format!("{ms}-{nonce:016x}")
    } else {
        format!("{prefix}/{ms}-{nonce:016x}")
    }
}

/// Wraps `client` so that `guard` (a temporary directory, an emulator process, …) lives
/// exactly as long as the client: the suite drops its clients at the end of each case.
pub fn keep_alive<C, G>(client: C, guard: G) -> Arc<dyn ReplicaClient>
where
    C: ReplicaClient + 'static,
    G: Send + Sync + 'static,
{
    Arc::new(KeepAlive {
        client,
        _guard: guard,
    })
}

struct KeepAlive<C, G> {
    client: C,
    _guard: G,
}

impl<C: fmt::Debug, G> fmt::Debug for KeepAlive<C, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.client.fmt(f)
    }
}

#[async_trait]
impl<C, G> ReplicaClient for KeepAlive<C, G>
where
    C: ReplicaClient,
    G: Send + Sync,
{
    fn info(&self) -> &StoreInfo {
        self.client.info()
    }

    fn set_file_mode(&self, mode: replica_core::file_mode::FileMode) {
        self.client.set_file_mode(mode);
    }

    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        self.client.put(key, body, opts).await
    }

    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.client.get(key, range).await
    }

    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        self.client.head(key).await
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        self.client.list(prefix, start_after).await
    }

    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        self.client.delete_many(keys).await
    }

    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        self.client.get_versioned(key).await
    }

    async fn put_if(
        &self,
        key: &Key,
        body: bytes::Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.client.put_if(key, body, expected).await
    }
}

const DEFAULT_TIMEOUT_SECS: u64 = 300;

fn case_timeout() -> Duration {
    let secs = std::env::var("REPLICA_CONFORMANCE_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    Duration::from_secs(secs)
}

/// Runs one case on its own multi-thread runtime (what
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 4)]` would build), under a
/// time limit so that a hung store fails the case instead of the whole run.
#[doc(hidden)]
pub fn run_case<F: Future<Output = ()>>(backend: &str, case: &str, fut: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("building the conformance runtime");
    let limit = case_timeout();
    eprintln!("conformance: backend {backend}, case {case}");
    runtime.block_on(async {
        if tokio::time::timeout(limit, fut).await.is_err() {
            panic!(
                "conformance case {case} on backend {backend} did not finish within \
                 {limit:?} (REPLICA_CONFORMANCE_TIMEOUT_SECS sets the limit)"
            );
        }
    });
}

/// The reason printed (and used as the `#[ignore]` reason) when a backend gives no
/// `permission_denied` hook.
pub const NO_PERMISSION_HOOK: &str = "backend provides no way to produce a permission error";

/// The body of the generated `conformance_skips` test: prints what is skipped and why,
/// and fails unless every skip is justified by a capability the client does not declare
/// and every case needing a missing capability is skipped.
#[doc(hidden)]
pub fn check_skips(
    backend: &str,
    client: &dyn ReplicaClient,
    skips: &[(&str, &str)],
    has_permission_hook: bool,
    generated: &[&str],
) {
    use cases::Needs;

    let caps = client.info().capabilities;
    let mut problems = Vec::new();

    // The macro's case list and `cases::ALL` are written separately; keep them in step.
    let mut listed: Vec<&str> = generated.to_vec();
    listed.push("permission_denied");
    listed.sort_unstable();
    let mut known: Vec<&str> = cases::ALL.iter().map(|c| c.name).collect();
    known.sort_unstable();
    if listed != known {
        problems.push(format!(
            "internal: the macro generates {listed:?} but cases::ALL holds {known:?}"
        ));
    }

    println!(
        "conformance suite for backend {backend} ({}, {}): {caps:?}",
        client.info().scheme,
        client.info().redacted_url
    );
    for (i, (name, reason)) in skips.iter().enumerate() {
        if skips[..i].iter().any(|(n, _)| n == name) {
            problems.push(format!("{name} is listed under skip more than once"));
        }
        if reason.trim().is_empty() {
            problems.push(format!("the skip of {name} gives no reason"));
        }
        let Some(case) = cases::ALL.iter().find(|c| c.name == *name) else {
            problems.push(format!("{name} is not a conformance case"));
            continue;
        };
        match case.needs {
            Needs::Nothing => problems.push(format!(
                "{name} is skipped ({reason}), but it needs no optional capability: every \
                 backend must pass it"
            )),
            Needs::PermissionHook => problems.push(
                "permission_denied cannot be listed under skip; leave out the \
                 `permission_denied:` hook instead (it is then reported as skipped)"
                    .to_owned(),
            ),
            needs if needs.met_by(&caps) => problems.push(format!(
                "{name} is skipped ({reason}), but the backend declares the capability \
                 {} it needs, so it must run; drop the skip or stop declaring it",
                needs.describe()
            )),
            needs => println!(
                "  skipped {name}: {reason} (needs {}, which the backend does not declare)",
                needs.describe()
            ),
        }
    }
    if !has_permission_hook {
        println!("  skipped permission_denied: {NO_PERMISSION_HOOK}");
    }
    for case in cases::ALL {
        if matches!(case.needs, Needs::Nothing | Needs::PermissionHook)
            || case.needs.met_by(&caps)
            || skips.iter().any(|(n, _)| *n == case.name)
        {
            continue;
        }
        problems.push(format!(
            "{} needs {}, which the backend does not declare, and is not skipped: list it \
             as `skip: {{ {}: \"<reason>\" }}` in conformance_suite!",
            case.name,
            case.needs.describe(),
            case.name
        ));
    }
    let skipped = skips.len() + usize::from(!has_permission_hook);
    println!(
        "  {} of {} cases run",
        cases::ALL.len() - skipped.min(cases::ALL.len()),
        cases::ALL.len()
    );
    assert!(
        problems.is_empty(),
        "conformance skips for backend {backend} are wrong:\n  {}",
        problems.join("\n  ")
    );
}

/// Generates the conformance tests for one backend. See the [crate docs](crate) for the
/// syntax; the cases are the functions of [`cases`].
#[macro_export]
macro_rules! conformance_suite {
    (
        backend: $backend:literal,
        client: $client:path
        $(, permission_denied: $denied:path)?
        $(, skip: { $($skip:ident : $reason:literal),* $(,)? })?
        $(,)?
    ) => {
        $crate::__conformance_suite! {
            [$backend; $client; [$($denied)?]; [$($($skip: $reason,)*)?]]
            round_trip
            overwrite_replaces
            empty_object
            ranged_get
            list_by_prefix
            list_start_after
            list_paging
            delete_many_missing_keys
            delete_many_over_a_thousand
            escaped_keys
            large_object
            large_object_create_only
            prefix_isolation
            not_found
            missing_payload_file
            timestamp_round_trip
            ltx_time_is_never_store_time
            create_only_existing
            create_only_race
            conditional_put
            conditional_put_race
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_suite {
    (@cases $ctx:tt; $skips:tt; $($case:ident)*) => {
        $( $crate::__conformance_case! { $case $ctx $skips } )*
    };
    (
        [$backend:literal; $client:path; [$($denied:path)?]; [$($skip:ident: $reason:literal,)*]]
        $($case:ident)*
    ) => {
        // The skips again, as one token tree, since they cannot repeat inside the cases'
        // repetition.
        $crate::__conformance_suite! {
            @cases [$backend; $client]; [$($skip: $reason,)*]; $($case)*
        }

        $crate::__conformance_permission! { $backend; $($denied)? }

        #[test]
        fn conformance_skips() {
            // Each skip must name a case (a typo does not compile).
            $( let _ = $crate::cases::$skip; )*
            $crate::run_case($backend, "conformance_skips", async {
                let client = $client().await;
                $crate::check_skips(
                    $backend,
                    &*client,
                    &[$((::core::stringify!($skip), $reason)),*],
                    $crate::__conformance_has!($($denied)?),
                    &[$(::core::stringify!($case)),*],
                );
            });
        }
    };
}

/// Looks `$case` up among the skips (`macro_rules!` can only compare an identifier with a
/// literal one, hence a rule per case) and generates its test, `#[ignore]`d if skipped.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case {
    (round_trip $ctx:tt [round_trip: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { round_trip $ctx $r }
    };
    (overwrite_replaces $ctx:tt [overwrite_replaces: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { overwrite_replaces $ctx $r }
    };
    (empty_object $ctx:tt [empty_object: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { empty_object $ctx $r }
    };
    (ranged_get $ctx:tt [ranged_get: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { ranged_get $ctx $r }
    };
    (list_by_prefix $ctx:tt [list_by_prefix: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { list_by_prefix $ctx $r }
    };
    (list_start_after $ctx:tt [list_start_after: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { list_start_after $ctx $r }
    };
    (list_paging $ctx:tt [list_paging: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { list_paging $ctx $r }
    };
    (delete_many_missing_keys $ctx:tt [delete_many_missing_keys: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { delete_many_missing_keys $ctx $r }
    };
    (delete_many_over_a_thousand $ctx:tt [delete_many_over_a_thousand: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { delete_many_over_a_thousand $ctx $r }
    };
    (escaped_keys $ctx:tt [escaped_keys: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { escaped_keys $ctx $r }
    };
    (large_object $ctx:tt [large_object: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { large_object $ctx $r }
    };
    (large_object_create_only $ctx:tt [large_object_create_only: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { large_object_create_only $ctx $r }
    };
    (prefix_isolation $ctx:tt [prefix_isolation: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { prefix_isolation $ctx $r }
    };
    (not_found $ctx:tt [not_found: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { not_found $ctx $r }
    };
    (missing_payload_file $ctx:tt [missing_payload_file: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { missing_payload_file $ctx $r }
    };
    (timestamp_round_trip $ctx:tt [timestamp_round_trip: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { timestamp_round_trip $ctx $r }
    };
    (ltx_time_is_never_store_time $ctx:tt [ltx_time_is_never_store_time: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { ltx_time_is_never_store_time $ctx $r }
    };
    (create_only_existing $ctx:tt [create_only_existing: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { create_only_existing $ctx $r }
    };
    (create_only_race $ctx:tt [create_only_race: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_test! { create_only_race $ctx $r }
    };
    // Some other case's skip: look further.
    ($case:ident $ctx:tt [$other:ident: $r:literal, $($x:tt)*]) => {
        $crate::__conformance_case! { $case $ctx [$($x)*] }
    };
    // Not skipped.
    ($case:ident $ctx:tt []) => {
        $crate::__conformance_test! { $case $ctx }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    (prefix_isolation [$b:literal; $c:path] $($reason:literal)?) => {
        #[test]
        $(#[ignore = $reason])?
        fn prefix_isolation() {
            $crate::run_case($b, "prefix_isolation", async {
                $crate::cases::prefix_isolation($c().await, $c().await).await
            });
        }
    };
    ($case:ident [$b:literal; $c:path] $($reason:literal)?) => {
        #[test]
        $(#[ignore = $reason])?
        fn $case() {
            $crate::run_case($b, ::core::stringify!($case), async {
                $crate::cases::$case($c().await).await
            });
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_permission {
    ($b:literal; $denied:path) => {
        #[test]
        fn permission_denied() {
            $crate::run_case($b, "permission_denied", async {
                $crate::cases::permission_denied($denied().await).await
            });
        }
    };
    ($b:literal;) => {
        #[test]
        #[ignore = "backend provides no way to produce a permission error"]
        fn permission_denied() {
            ::core::panic!(
                "backend {} gives conformance_suite! no `permission_denied:` hook, so no \
                 permission error can be produced",
                $b
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_has {
    ($x:path) => {
        true
    };
    () => {
        false
    };
}
