//! The shared backend conformance suite (`replica-conformance`) against the S3
//! emulator (`REPLICA_S3_ENDPOINT`, started by `cargo xtask test`). All cases share one
//! bucket, created on first use; each client is rooted at a fresh random prefix of it.
//!
//! moto accepts any credentials and has no policies, so it cannot produce
//! AccessDenied: the same suite runs a second time against SeaweedFS
//! (`REPLICA_SEAWEED_*`), which checks signatures, with `permission_denied` given a
//! client whose secret is wrong.

use std::sync::Arc;

use replica_core::client::ReplicaClient;

use crate::support;

static BUCKET: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

async fn fresh_client() -> Arc<dyn ReplicaClient> {
    let bucket = BUCKET.get_or_init(support::new_bucket).await;
    let root = replica_conformance::random_root("conformance");
    Arc::new(support::client_at(&support::emulator().endpoint, bucket, &root).await)
}

replica_conformance::conformance_suite! {
    backend: "s3",
    client: crate::conformance::fresh_client,
}

/// Every case of the suite but one, against SeaweedFS, listed here rather than
/// through `conformance_suite!` because one case is left out, and the suite's `skip`
/// is (rightly) only for missing capabilities: `list_start_after`. SeaweedFS lists
/// from a filer tree, and a start-after key that names a "directory" ("a" while
/// "a/b" exists) skips that whole directory, where S3 compares keys byte by byte.
/// replica lists with start-after nowhere today; the moto suite above checks the
/// backend sends it correctly.
mod seaweedfs {
    use std::sync::Arc;

    use replica_core::client::ReplicaClient;

    use crate::support;

    async fn client(wrong_secret: bool) -> Arc<dyn ReplicaClient> {
        let (mut emu, bucket) = support::seaweed();
        if wrong_secret {
            emu.secret_key = format!("{}-not", emu.secret_key);
        }
        let root = replica_conformance::random_root("conformance");
        let url = format!(
            "s3://{bucket}/{root}?endpoint={}&region=us-east-1",
            emu.endpoint
        );
        Arc::new(support::client_with(&emu, &url).await)
    }

    macro_rules! cases {
        ($($case:ident),* $(,)?) => {
            $(
                #[test]
                fn $case() {
                    replica_conformance::run_case("s3-seaweedfs", stringify!($case), async {
                        replica_conformance::cases::$case(client(false).await).await
                    });
                }
            )*
        };
    }

    cases!(
        round_trip,
        overwrite_replaces,
        empty_object,
        ranged_get,
        list_by_prefix,
        list_paging,
        delete_many_missing_keys,
        delete_many_over_a_thousand,
        escaped_keys,
        large_object,
        large_object_create_only,
        not_found,
        missing_payload_file,
        timestamp_round_trip,
        ltx_time_is_never_store_time,
        create_only_existing,
        create_only_race,
        conditional_put,
        conditional_put_race,
    );

    #[test]
    fn prefix_isolation() {
        replica_conformance::run_case("s3-seaweedfs", "prefix_isolation", async {
            replica_conformance::cases::prefix_isolation(client(false).await, client(false).await)
                .await
        });
    }

    /// A wrong secret: SeaweedFS refuses the signature (403), which must be
    /// `PermissionDenied` (never retried, never "not found").
    #[test]
    fn permission_denied() {
        replica_conformance::run_case("s3-seaweedfs", "permission_denied", async {
            replica_conformance::cases::permission_denied(client(true).await).await
        });
    }
}
