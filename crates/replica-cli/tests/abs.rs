//! End to end on Azurite (started by `cargo xtask test`): `replica` replicates to
//! `abs://account@container/…?endpoint=…`, and both `replica restore` and Litestream
//! 0.5.17 (`type: abs`) restore the same content; the reverse direction too; and a
//! failing run never prints the account key. Credentials go through
//! `AZURE_STORAGE_ACCOUNT`/`AZURE_STORAGE_KEY`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{
    Proc, SIGINT, assert_restored, litestream_cmd, new_db, replica_cmd, run, user_dump, wait_until,
    write_batches,
};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Creates a container with an account SAS minted by Python's standard library (an
/// independent implementation of the signing algorithm the backend uses).
const CREATE_CONTAINER_PY: &str = r#"
import base64, datetime, hashlib, hmac, sys, urllib.parse, urllib.request
endpoint, account, key, container = sys.argv[1:5]
now = datetime.datetime.now(datetime.timezone.utc)
fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
st, se = fmt(now - datetime.timedelta(minutes=5)), fmt(now + datetime.timedelta(hours=1))
sv = "2025-01-05"
sts = "\n".join([account, "rwdlac", "b", "sco", st, se, "", "https,http", sv, "", ""])
sig = base64.b64encode(hmac.new(base64.b64decode(key), sts.encode(), hashlib.sha256).digest()).decode()
q = urllib.parse.urlencode({"sv": sv, "ss": "b", "srt": "sco", "sp": "rwdlac", "st": st, "se": se, "spr": "https,http", "sig": sig})
req = urllib.request.Request(f"{endpoint}/{container}?restype=container&{q}", method="PUT", headers={"x-ms-version": "2025-01-05"})
urllib.request.urlopen(req).read()
"#;

struct Azure {
    endpoint: String,
    account: String,
    key: String,
    container: String,
}

impl Azure {
    /// Azurite from the environment and a fresh container on it.
    fn new() -> Azure {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!("{k} is not set: run `cargo xtask test` (it starts Azurite)")
            })
        };
        let az = Azure {
            endpoint: var("REPLICA_AZURE_ENDPOINT"),
            account: var("REPLICA_AZURE_ACCOUNT_NAME"),
            key: var("REPLICA_AZURE_ACCOUNT_KEY"),
            container: format!("e2e-{:016x}", rand::random::<u64>()),
        };
        let o = Command::new("python3")
            .args(["-c", CREATE_CONTAINER_PY])
            .args([&az.endpoint, &az.account, &az.key, &az.container])
            .output()
            .expect("running python3 to create the container");
        assert!(
            o.status.success(),
            "creating container {} failed: {}",
            az.container,
            String::from_utf8_lossy(&o.stderr)
        );
        az
    }

    fn url(&self, path: &str) -> String {
        format!(
            "abs://{}@{}/{path}?endpoint={}",
            self.account, self.container, self.endpoint
        )
    }

    fn with_credentials<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("AZURE_STORAGE_ACCOUNT", &self.account)
            .env("AZURE_STORAGE_KEY", &self.key)
            .env_remove("AZURE_STORAGE_SAS_TOKEN")
    }

    /// A Litestream config for one database replicated to `path` in the container.
    fn litestream_config(&self, dir: &Path, db: &Path, path: &str) -> PathBuf {
        let cfg = dir.join("litestream.yml");
        std::fs::write(
            &cfg,
            format!(
                "dbs:\n  - path: {}\n    replica:\n      type: abs\n      account-name: {}\n      account-key: \"{}\"\n      bucket: {}\n      path: {path}\n      endpoint: \"{}\"\n",
                db.display(),
                self.account,
                self.key,
                self.container,
                self.endpoint
            ),
        )
        .expect("writing litestream.yml");
        cfg
    }
}

#[test]
fn replica_writes_abs_and_both_tools_restore_it() {
    let az = Azure::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let url = az.url("prod/app");

    let mut cmd = replica_cmd();
    az.with_credentials(
        cmd.args(["replicate", "--sync-interval", "100ms"])
            .arg(&db)
            .arg(&url),
    );
    let mut rep = Proc::spawn("replica replicate abs", cmd);
    write_batches(&conn, 20, 40);
    conn.execute_batch("VACUUM").expect("vacuum");
    write_batches(&conn, 5, 10);
    let st = rep.stop(SIGINT, TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "replicate exited with {st}\n{}",
        rep.output_report()
    );
    drop(conn);
    let source = user_dump(&db);

    let ours = dir.path().join("ours.db");
    let mut cmd = replica_cmd();
    let o = run(az.with_credentials(cmd.args(["restore", "-o"]).arg(&ours).arg(&url)));
    assert!(o.success(), "replica restore from abs failed\n{o}");
    assert_restored("replica restore", &ours, &source);

    // Litestream finds our files in the abs layout (`prod/app/ltx/9/…`, `prod/app/ltx/0/…`).
    let theirs = dir.path().join("theirs.db");
    let cfg = az.litestream_config(dir.path(), &db, "prod/app");
    let mut cmd = litestream_cmd();
    let o = run(az.with_credentials(
        cmd.args(["restore", "-config"])
            .arg(&cfg)
            .arg("-o")
            .arg(&theirs)
            .arg(&db),
    ));
    assert!(o.success(), "litestream restore from abs failed\n{o}");
    assert_restored("litestream restore", &theirs, &source);

    // `replica ltx` sees the same files and their persisted times (HEAD per file).
    let mut cmd = replica_cmd();
    let o = run(az.with_credentials(cmd.args(["ltx", "--json"]).arg(&url)));
    assert!(o.success(), "replica ltx failed\n{o}");
    let rows: serde_json::Value = serde_json::from_str(&o.stdout).expect("ltx --json");
    let rows = rows.as_array().expect("array");
    assert!(
        rows.iter().any(|r| r["level"] == 9),
        "no snapshot listed: {rows:?}"
    );
    assert!(
        rows.iter().any(|r| r["level"] == 0),
        "no L0 listed: {rows:?}"
    );
    assert!(
        rows.iter()
            .all(|r| r["key"].as_str().is_some_and(|k| k.starts_with("ltx/")))
    );
}

#[test]
fn litestream_writes_abs_and_replica_restores_it() {
    let az = Azure::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    write_batches(&conn, 3, 50);
    let cfg = az.litestream_config(dir.path(), &db, "ls/app");
    let mut cmd = litestream_cmd();
    az.with_credentials(cmd.args(["replicate", "-config"]).arg(&cfg));
    let mut ls = Proc::spawn("litestream replicate abs", cmd);
    write_batches(&conn, 20, 40);
    let expected = user_dump(&db);
    let url = az.url("ls/app");
    let out = dir.path().join("probe.db");
    // Litestream syncs every second; wait until a restore shows everything.
    let caught_up = wait_until(TIMEOUT, || {
        let _ = std::fs::remove_file(&out);
        let mut cmd = replica_cmd();
        let o = run(az.with_credentials(cmd.args(["-q", "restore", "-o"]).arg(&out).arg(&url)));
        o.success() && user_dump(&out) == expected
    });
    let st = ls.stop(SIGINT, TIMEOUT);
    assert!(
        caught_up,
        "replica restore never matched the source\n{}",
        ls.output_report()
    );
    assert_eq!(st.code(), Some(0), "litestream exited with {st}");
    assert_restored("replica restore of a Litestream replica", &out, &expected);
}

#[test]
fn account_key_never_appears_in_output_of_failing_runs() {
    let az = Azure::new();
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    drop(new_db(&db));
    // A well-formed key that is not the account's: Azurite refuses every signature.
    let marker = "U0VDUkVUTUFSS0VSLXNlY3JldG1hcmtlci1TRUNSRVRNQVJLRVI=";
    let runs = [
        (
            "restore with a wrong account key",
            vec![
                "-vv".to_owned(),
                "restore".into(),
                "-o".into(),
                dir.path().join("out.db").display().to_string(),
                az.url("x"),
            ],
        ),
        (
            "restore from a closed port",
            vec![
                "-vv".to_owned(),
                "restore".into(),
                "-o".into(),
                dir.path().join("out2.db").display().to_string(),
                format!(
                    "abs://{}@{}/x?endpoint=http://127.0.0.1:9/acct",
                    az.account, az.container
                ),
            ],
        ),
    ];
    for (what, args) in runs {
        let o = run(replica_cmd()
            .args(&args)
            .env("AZURE_STORAGE_ACCOUNT", &az.account)
            .env("AZURE_STORAGE_KEY", marker)
            .env("REPLICA_LOG", "trace"));
        assert_ne!(o.code(), Some(0), "{what}: expected a failure\n{o}");
        assert!(
            !o.stderr.contains(marker) && !o.stdout.contains(marker),
            "{what}: the account key appears in the output"
        );
        assert!(!o.stderr.is_empty(), "{what}: no error message");
    }
}
