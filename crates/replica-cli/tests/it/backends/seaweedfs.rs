//! S3 on SeaweedFS, which checks signatures (moto accepts any): the same scenarios
//! as on moto, and a run with a wrong secret is refused without printing it.

use super::s3::S3;

super::scenarios!(S3::seaweed();
    replica_writes_and_both_tools_restore,
    litestream_writes_and_replica_restores,
    secret_never_appears_in_output_of_failing_runs,
    rolling_deploy_hands_over_without_loss,
    replication_survives_faults_and_an_outage,
);
