//! The sharded deployment: one config file, restore on boot, `--exec` with signals and
//! exit codes, the shard-count guard, and config errors.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::support::{self, replica_cmd, run};

const KEYS: usize = 400;

fn service() -> PathBuf {
    // The runner's value first: a test binary kept in a target dir shared between
    // checkouts carries the compile-time path of whichever checkout built it.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/fixtures/shard_service.py")
}

struct Deploy {
    dir: TempDir,
}

impl Deploy {
    fn new() -> Self {
        Self {
            dir: TempDir::new().expect("tempdir"),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn replica(&self) -> PathBuf {
        self.dir.path().join("replica")
    }

    /// Writes a config with `count` shards (paths relative to the config file).
    fn config(&self, name: &str, count: u32, extra: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "replication:\n  enabled: true\n  replica_url: file://{}\n  sync_interval: 100ms\n{extra}shards:\n  count: {count}\n  path: ./data/shard_{{index}}.db\ndatabases:\n  - ./data/dlq.db\n",
                self.replica().display()
            ),
        )
        .expect("writing config");
        path
    }

    fn replicate(&self, cfg: &Path, exec: &str) -> support::Output {
        run(replica_cmd()
            .args(["replicate", "--config"])
            .arg(cfg)
            .args(["--exec", exec]))
    }

    fn service(&self, mode: &str, count: u32, tail: &str) -> String {
        format!(
            "python3 {} {mode} {} {count} {KEYS} {tail}",
            service().display(),
            self.data().display()
        )
    }

    fn listing(&self) -> Vec<String> {
        let mut out = Vec::new();
        for root in [self.data(), self.replica()] {
            walk(&root, &mut out);
        }
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p.display().to_string());
        }
    }
}

#[test]
fn sidecar_passes_the_exit_code_and_restores_every_shard_on_boot() {
    let d = Deploy::new();
    let cfg = d.config("replica.yml", 4, "");

    // The service writes to 4 shards and the dead-letter database, then exits 3.
    let o = d.replicate(&cfg, &d.service("write", 4, "3"));
    assert_eq!(
        o.code(),
        Some(3),
        "replica must exit with the child's code\n{o}"
    );
    for name in ["shard_0", "shard_1", "shard_2", "shard_3", "dlq"] {
        assert!(
            d.replica().join(name).join("ltx").is_dir(),
            "no replica for {name}\n{o}"
        );
    }

    // The pod restarts with an empty disk, except that shard 2 survived: it is kept
    // as it is, and every other database is restored before the service starts.
    let kept = d.data().join("shard_2.db");
    let kept_ino = std::fs::metadata(&kept).expect("shard 2").ino();
    for entry in std::fs::read_dir(d.data()).expect("data dir").flatten() {
        let p = entry.path();
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("shard_2.db")
        {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("wiping data");
        } else {
            std::fs::remove_file(&p).expect("wiping data");
        }
    }
    let snapshots = || {
        std::fs::read_dir(d.replica().join("shard_0/ltx/9"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let snapshots_before = snapshots();
    let o = d.replicate(&cfg, &d.service("check", 4, ""));
    assert_eq!(
        o.code(),
        Some(0),
        "the service must see every row it committed\n{o}"
    );
    assert!(o.stdout.contains("missing 0"), "{o}");
    // A restored shard is the replica's head: replication resumes without uploading
    // it again as a snapshot.
    assert_eq!(
        o.stderr
            .matches("resuming replication of a restored database")
            .count(),
        4,
        "{o}"
    );
    assert_eq!(
        snapshots(),
        snapshots_before,
        "a restored shard was snapshotted again"
    );
    assert_eq!(
        std::fs::metadata(&kept).expect("shard 2").ino(),
        kept_ino,
        "the local shard 2 was replaced"
    );

    // A whole new disk: everything comes back.
    std::fs::remove_dir_all(d.data()).expect("wiping data");
    let o = d.replicate(&cfg, &d.service("check", 4, ""));
    assert_eq!(o.code(), Some(0), "after losing the whole disk\n{o}");
}

#[test]
fn a_changed_shard_count_is_refused_before_anything_is_written() {
    let d = Deploy::new();
    let o = d.replicate(&d.config("four.yml", 4, ""), &d.service("write", 4, "0"));
    assert_eq!(o.code(), Some(0), "{o}");
    std::fs::remove_dir_all(d.data()).expect("wiping data");
    let before = d.listing();

    let o = d.replicate(&d.config("eight.yml", 8, ""), "true");
    assert_eq!(
        o.code(),
        Some(2),
        "a changed shard count is a configuration error\n{o}"
    );
    for needle in [
        "shards.count = 4",
        "says 8",
        "eight.yml",
        "replica_url",
        "shard 3",
    ] {
        assert!(
            o.stderr.contains(needle),
            "the message should mention {needle:?}\n{o}"
        );
    }
    assert_eq!(
        d.listing(),
        before,
        "files were written before the shard guard"
    );
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let d = Deploy::new();
    let cases = [
        (
            "unknown.yml",
            "replication:\n  enabled: true\n  replica_url: file:///tmp/x\n  sync_intervall: 1s\ndatabases: [a.db]\n",
            "sync_intervall",
        ),
        (
            "duration.yml",
            "replication:\n  enabled: true\n  replica_url: file:///tmp/x\n  retention: forever\ndatabases: [a.db]\n",
            "replication.retention",
        ),
        (
            "url.yml",
            "replication:\n  enabled: true\ndatabases: [a.db]\n",
            "replication.replica_url",
        ),
        (
            "index.yml",
            "replication:\n  enabled: true\n  replica_url: file:///tmp/x\nshards:\n  count: 2\n  path: ./data/shard.db\n",
            "shards.path",
        ),
        (
            "scheme.yml",
            "replication:\n  enabled: true\n  replica_url: ftp://host/x\ndatabases: [a.db]\n",
            "ftp",
        ),
    ];
    for (name, text, key) in cases {
        let path = d.dir.path().join(name);
        std::fs::write(&path, text).expect("config");
        let o = run(replica_cmd()
            .args(["replicate", "--config"])
            .arg(&path)
            .args(["--exec", "true"]));
        assert_eq!(o.code(), Some(2), "{name}\n{o}");
        assert!(o.stderr.contains(key), "{name}: should name {key}\n{o}");
        if key != "ftp" {
            assert!(o.stderr.contains(name), "{name}: should name the file\n{o}");
        }
    }
    assert!(!d.data().exists(), "a config error created files");
}

#[test]
fn embedded_mode_refuses_the_sidecar_and_disabled_runs_the_child_alone() {
    let d = Deploy::new();
    let o = d.replicate(&d.config("embedded.yml", 2, "  mode: embedded\n"), "true");
    assert_eq!(o.code(), Some(2), "{o}");
    assert!(
        o.stderr.contains("embedded") && o.stderr.contains("in-process"),
        "{o}"
    );

    let cfg = d.dir.path().join("off.yml");
    std::fs::write(
        &cfg,
        "replication:\n  enabled: false\nshards:\n  count: 2\n  path: ./data/shard_{index}.db\n",
    )
    .expect("config");
    let o = d.replicate(&cfg, "sh -c 'exit 7'");
    assert_eq!(
        o.code(),
        Some(7),
        "the child runs and its code is passed on\n{o}"
    );
    assert!(
        o.stderr.contains("WITHOUT replication"),
        "a warning says so\n{o}"
    );
    assert!(!d.replica().exists(), "nothing was replicated");
}

#[test]
fn restore_config_restores_all_or_the_named_databases() {
    let d = Deploy::new();
    let cfg = d.config("replica.yml", 2, "");
    let o = d.replicate(&cfg, &d.service("write", 2, "0"));
    assert_eq!(o.code(), Some(0), "{o}");
    std::fs::remove_dir_all(d.data()).expect("wiping data");

    let o = run(replica_cmd()
        .args(["restore", "--config"])
        .arg(&cfg)
        .arg("data/shard_1.db"));
    assert!(o.success(), "{o}");
    assert!(d.data().join("shard_1.db").exists());
    assert!(
        !d.data().join("shard_0.db").exists(),
        "only the named database"
    );

    let o = run(replica_cmd()
        .args(["restore", "--if-db-not-exists", "--config"])
        .arg(&cfg));
    assert!(o.success(), "{o}");
    for name in ["shard_0.db", "shard_1.db", "dlq.db"] {
        assert!(d.data().join(name).exists(), "{name} not restored");
    }
    let o = run(replica_cmd()
        .args(["restore", "--config"])
        .arg(&cfg)
        .arg("data/nope.db"));
    assert_eq!(o.code(), Some(2), "{o}");
}

#[test]
fn signals_reach_the_child_and_its_code_comes_back() {
    let d = Deploy::new();
    let cfg = d.config("replica.yml", 2, "");
    let script = d.dir.path().join("svc.py");
    std::fs::write(
        &script,
        "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(5))\nprint('ready', flush=True)\ntime.sleep(60)\nsys.exit(9)\n",
    )
    .expect("script");
    let mut cmd = replica_cmd();
    cmd.args(["replicate", "--config"])
        .arg(&cfg)
        .args(["--exec", &format!("python3 {}", script.display())]);
    let mut p = support::Proc::spawn("replica replicate --exec", cmd);
    assert!(
        support::wait_until(std::time::Duration::from_secs(20), || p
            .stdout()
            .contains("ready")),
        "the service did not start\n{}",
        p.output_report()
    );
    let st = p.stop(support::SIGTERM, std::time::Duration::from_secs(30));
    assert_eq!(
        st.code(),
        Some(5),
        "SIGTERM must reach the service\n{}",
        p.output_report()
    );
}
