//! What every scenario shares: the settings, the binaries, the S3 emulator, and how
//! to point either tool at a replica destination (a `file://` directory, or a bucket
//! behind a counting proxy) with the same settings.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::proxy::{self, Proxy};
use crate::proc::{self, Proc, Signal};

pub const S3_REGION: &str = "us-east-1";
/// moto accepts any credentials.
const S3_KEY: &str = "bench";
const S3_SECRET: &str = "bench-secret";

/// Durations and sizes; `--quick` scales them down.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    pub reps: usize,
    /// Backends for the write-overhead and lag rows.
    pub write_backends: Vec<Backend>,
    pub flat_secs: f64,
    pub paced_rate: f64,
    pub paced_secs: f64,
    pub sparse_commits: usize,
    pub sparse_gap: (f64, f64),
    pub restore_mib: f64,
    /// L0 files of changes on top of the restore snapshot; 3600 = one per second for
    /// an hour, the default 1 s sync interval with a commit in every interval.
    pub restore_syncs: u64,
    pub shards: usize,
    pub shard_mib: f64,
    pub cost_dbs: usize,
    pub cost_secs: f64,
    pub busy_rate: f64,
    pub scale_dbs: usize,
    pub scale_warmup_secs: f64,
    pub scale_secs: f64,
    /// How long after the last commit the lag watchers keep looking.
    pub lag_grace: Duration,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                quick,
                reps: 1,
                write_backends: vec![Backend::File, Backend::S3],
                flat_secs: 5.0,
                paced_rate: 1000.0,
                paced_secs: 3.0,
                sparse_commits: 5,
                sparse_gap: (1.0, 1.5),
                restore_mib: 64.0,
                restore_syncs: 600,
                shards: 16,
                shard_mib: 4.0,
                cost_dbs: 16,
                cost_secs: 25.0,
                busy_rate: 10.0,
                scale_dbs: 100,
                scale_warmup_secs: 4.0,
                scale_secs: 10.0,
                lag_grace: Duration::from_secs(3),
            }
        } else {
            Settings {
                quick,
                reps: 3,
                write_backends: vec![Backend::File, Backend::S3],
                flat_secs: 30.0,
                paced_rate: 1000.0,
                paced_secs: 20.0,
                sparse_commits: 20,
                sparse_gap: (1.0, 1.5),
                restore_mib: 1024.0,
                restore_syncs: 3600,
                shards: 16,
                shard_mib: 64.0,
                cost_dbs: 16,
                cost_secs: 600.0,
                busy_rate: 10.0,
                scale_dbs: 1000,
                scale_warmup_secs: 20.0,
                scale_secs: 120.0,
                lag_grace: Duration::from_secs(4),
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    Replica,
    Litestream,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::Replica => "replica",
            Tool::Litestream => "litestream",
        }
    }

    /// Both tools, in an order that alternates with the repetition, so neither
    /// always runs first (page cache, emulator state, thermal drift).
    pub fn order(rep: usize) -> [Tool; 2] {
        if rep.is_multiple_of(2) {
            [Tool::Replica, Tool::Litestream]
        } else {
            [Tool::Litestream, Tool::Replica]
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    File,
    S3,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::File => "file",
            Backend::S3 => "s3",
        }
    }
}

#[derive(Debug)]
pub struct Ctx {
    pub s: Settings,
    pub replica: PathBuf,
    pub litestream: PathBuf,
    pub writer: PathBuf,
    pub work: PathBuf,
    pub moto_addr: SocketAddr,
    /// `replica replicate --help`, to pass newer engine flags only when they exist.
    pub replica_help: String,
    /// `--keep-work`: leave each run's directory (databases, logs, lag data).
    pub keep: bool,
    seq: Cell<u32>,
    _moto: Proc,
}

impl Ctx {
    pub fn new(
        s: Settings,
        replica: PathBuf,
        litestream: PathBuf,
        writer: PathBuf,
        work: PathBuf,
        moto: Proc,
        moto_addr: SocketAddr,
    ) -> Result<Ctx> {
        let out = Command::new(&replica)
            .args(["replicate", "--help"])
            .output()
            .context("running replica replicate --help")?;
        Ok(Ctx {
            s,
            replica,
            litestream,
            writer,
            work,
            moto_addr,
            replica_help: String::from_utf8_lossy(&out.stdout).into_owned(),
            keep: false,
            seq: Cell::new(0),
            _moto: moto,
        })
    }

    pub fn replica_has_flag(&self, flag: &str) -> bool {
        self.replica_help.contains(flag)
    }

    /// A fresh directory under the work directory.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        let d = self.work.join(format!("{n:03}-{name}"));
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    /// Removes a finished run's directory (large databases), unless `--keep-work`.
    pub fn done_with(&self, dir: &Path) -> Result<()> {
        if self.keep {
            return Ok(());
        }
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
    }

    /// Wipes the emulator's state (every bucket) between scenarios, to bound its memory.
    pub fn reset_s3(&self) -> Result<()> {
        let (st, body) = proxy::simple_request(self.moto_addr, "POST", "/moto-api/reset")?;
        if !(200..300).contains(&st) {
            bail!("resetting moto failed: {body}");
        }
        Ok(())
    }

    fn new_bucket(&self) -> Result<String> {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        let bucket = format!("bench-{n:04}");
        let (st, body) = proxy::simple_request(self.moto_addr, "PUT", &format!("/{bucket}"))?;
        if st != 200 {
            bail!("creating bucket {bucket} on moto failed: {body}");
        }
        Ok(bucket)
    }

    pub fn python(&self) -> Command {
        let mut c = Command::new("python3");
        c.arg(&self.writer);
        c
    }

    /// Runs the writer to completion and parses its JSON summary.
    pub fn writer_run(
        &self,
        dir: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let log = dir.join(format!("writer-{}.log", args.first().unwrap_or(&"x")));
        let out = proc::run_output("writer.py", self.python().args(args), &log, timeout)?;
        serde_json::from_str(out.trim())
            .with_context(|| format!("parsing the writer's output {out:?}"))
    }

    /// Starts the writer in the background (stdout into `<log>.out`).
    pub fn writer_spawn(&self, name: &str, args: &[&str], log: &Path) -> Result<Proc> {
        let out = log.with_extension("out");
        let f = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        let mut cmd = self.python();
        cmd.args(args).stdout(f);
        Proc::spawn_with_stdout(name, &mut cmd, log)
    }

    pub fn replica_cmd(&self) -> Command {
        let mut c = Command::new(&self.replica);
        s3_env(&mut c);
        c
    }

    pub fn litestream_cmd(&self) -> Command {
        let mut c = Command::new(&self.litestream);
        s3_env(&mut c);
        c
    }
}

/// Credentials for the emulator, and nothing from the user's AWS setup. Litestream's
/// S3 client fails with the machine's AWS_CA_BUNDLE set (toolchain.md), so neither
/// tool gets it.
fn s3_env(c: &mut Command) {
    c.env("AWS_ACCESS_KEY_ID", S3_KEY)
        .env("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        .env("AWS_REGION", S3_REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("REPLICA_LOG")
        .env_remove("REPLICA_CONFIG");
}

/// Where a tool replicates to. Databases are addressed by file stem, under one root:
/// `<root>/<stem>` is the layout both tools' multi-database configs use.
#[derive(Debug)]
pub struct Dest {
    pub backend: Backend,
    /// `file`: the replica root directory.
    root: PathBuf,
    bucket: String,
    prefix: String,
    pub proxy: Option<Proxy>,
}

impl Dest {
    pub fn new(ctx: &Ctx, backend: Backend, dir: &Path) -> Result<Dest> {
        match backend {
            Backend::File => {
                let root = dir.join("replica");
                fs::create_dir_all(&root)?;
                Ok(Dest {
                    backend,
                    root,
                    bucket: String::new(),
                    prefix: String::new(),
                    proxy: None,
                })
            }
            Backend::S3 => Ok(Dest {
                backend,
                root: PathBuf::new(),
                bucket: ctx.new_bucket()?,
                prefix: "bench".into(),
                proxy: Some(Proxy::start(ctx.moto_addr)?),
            }),
        }
    }

    fn endpoint(&self) -> String {
        self.proxy.as_ref().map(Proxy::endpoint).unwrap_or_default()
    }

    /// The replica URL of one database.
    pub fn url(&self, stem: &str) -> String {
        match self.backend {
            Backend::File => format!("file://{}/{stem}", self.root.display()),
            Backend::S3 => format!(
                "s3://{}/{}/{stem}?endpoint={}&region={S3_REGION}&force_path_style=true",
                self.bucket,
                self.prefix,
                self.endpoint()
            ),
        }
    }

    /// The root URL a `replica` config appends `/<stem>` to.
    pub fn root_url(&self) -> String {
        match self.backend {
            Backend::File => format!("file://{}", self.root.display()),
            Backend::S3 => format!(
                "s3://{}/{}?endpoint={}&region={S3_REGION}&force_path_style=true",
                self.bucket,
                self.prefix,
                self.endpoint()
            ),
        }
    }

    /// The `replica:` block of a Litestream config for one database.
    fn litestream_replica(&self, stem: &str, indent: &str) -> String {
        match self.backend {
            Backend::File => format!(
                "{indent}replica:\n{indent}  type: file\n{indent}  path: \"{}/{stem}\"\n",
                self.root.display()
            ),
            Backend::S3 => format!(
                "{indent}replica:\n{indent}  type: s3\n{indent}  bucket: {}\n{indent}  path: \"{}/{stem}\"\n\
                 {indent}  endpoint: \"{}\"\n{indent}  region: {S3_REGION}\n{indent}  force-path-style: true\n",
                self.bucket,
                self.prefix,
                self.endpoint()
            ),
        }
    }

    /// The L0 directory of a `file://` replica.
    pub fn l0_dir(&self, stem: &str) -> PathBuf {
        self.root.join(stem).join("ltx").join("0")
    }

    /// The key prefix of one database in the bucket.
    pub fn key_prefix(&self, stem: &str) -> String {
        format!("{}/{stem}/", self.prefix)
    }

    /// Whether the database's replica holds at least one LTX file.
    pub fn has_files(&self, stem: &str) -> bool {
        match self.backend {
            Backend::File => {
                let Ok(levels) = fs::read_dir(self.root.join(stem).join("ltx")) else {
                    return false;
                };
                levels.flatten().any(|l| {
                    fs::read_dir(l.path()).is_ok_and(|mut files| {
                        files
                            .any(|f| f.is_ok_and(|f| is_ltx_name(&f.file_name().to_string_lossy())))
                    })
                })
            }
            Backend::S3 => {
                let prefix = self.key_prefix(stem);
                self.proxy.as_ref().is_some_and(|p| {
                    p.requests().iter().any(|r| {
                        (r.is_ltx_put() || r.is_ltx_complete())
                            && r.key().is_some_and(|k| k.starts_with(&prefix))
                    })
                })
            }
        }
    }

    /// Deletes every object added since `before` (a [`Dest::file_listing`]) or since
    /// proxy log position `from`; returns how many. Existing objects are never
    /// rewritten by either tool (LTX names are unique), so this restores the replica.
    pub fn remove_added(&self, ctx: &Ctx, before: &[String], from: usize) -> Result<usize> {
        match &self.proxy {
            Some(p) => {
                let keys: Vec<String> = p.requests()[from.min(p.len())..]
                    .iter()
                    .filter(|r| r.is_ltx_put() || r.is_ltx_complete())
                    .filter_map(|r| r.key().map(str::to_owned))
                    .collect();
                for k in &keys {
                    let (st, body) = proxy::simple_request(
                        ctx.moto_addr,
                        "DELETE",
                        &format!("/{}/{k}", self.bucket),
                    )?;
                    if !(200..300).contains(&st) {
                        bail!("deleting {k} from moto failed: {body}");
                    }
                }
                Ok(keys.len())
            }
            None => {
                let mut n = 0;
                for f in self.file_listing() {
                    if before.binary_search(&f).is_err() {
                        fs::remove_file(&f).with_context(|| format!("removing {f}"))?;
                        n += 1;
                    }
                }
                Ok(n)
            }
        }
    }

    /// Every LTX file name in a `file://` replica (all levels), for before/after checks.
    pub fn file_listing(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if is_ltx_name(&e.file_name().to_string_lossy()) {
                    out.push(p.display().to_string());
                }
            }
        }
        out.sort();
        out
    }
}

/// A finished LTX object: both tools write `.<…>.tmp`/`….ltx.tmp` first and rename.
pub fn is_ltx_name(name: &str) -> bool {
    name.ends_with(".ltx") && !name.starts_with('.')
}

pub fn stem(db: &Path) -> String {
    db.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Extra settings: engine arguments for `replica` (only the restore data set changes
/// them), and a metrics endpoint for either tool.
#[derive(Debug, Default, Clone)]
pub struct ToolOpts {
    pub args: Vec<String>,
    /// Serve Prometheus metrics here: `--metrics-addr` for `replica`, `addr:` in
    /// Litestream's config.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Starts `tool` replicating `dbs` to `dest` with default settings (1 s sync interval
/// for both). `replica` replicates one database with `replicate DB URL`, several with a
/// deployment config; Litestream always gets a config file.
pub fn start_tool(
    ctx: &Ctx,
    tool: Tool,
    dbs: &[PathBuf],
    dest: &Dest,
    dir: &Path,
    opts: &ToolOpts,
) -> Result<Proc> {
    let log = dir.join(format!("{}.log", tool.name()));
    match tool {
        Tool::Replica => {
            let mut cmd = ctx.replica_cmd();
            cmd.arg("replicate");
            if let [db] = dbs {
                cmd.arg(db).arg(dest.url(&stem(db)));
            } else {
                let cfg = dir.join("replica.yml");
                fs::write(&cfg, replica_config(dest, dbs, false, None))?;
                cmd.arg("--config").arg(&cfg);
            }
            cmd.args(&opts.args);
            if let Some(addr) = opts.metrics_addr {
                cmd.arg("--metrics-addr").arg(addr.to_string());
            }
            Proc::spawn("replica replicate", &mut cmd, &log)
        }
        Tool::Litestream => {
            let cfg = dir.join("litestream.yml");
            let mut text = litestream_config(dest, dbs);
            if let Some(addr) = opts.metrics_addr {
                text = format!("addr: \"{addr}\"\n{text}");
            }
            fs::write(&cfg, text)?;
            let mut cmd = ctx.litestream_cmd();
            cmd.args(["replicate", "-config"]).arg(&cfg);
            Proc::spawn("litestream replicate", &mut cmd, &log)
        }
    }
}

/// A `replica` deployment config: explicit databases, or `shards` (count, path).
pub fn replica_config(
    dest: &Dest,
    dbs: &[PathBuf],
    restore_on_boot: bool,
    shards: Option<(usize, &Path)>,
) -> String {
    let mut y = format!(
        "replication:\n  enabled: true\n  mode: sidecar\n  replica_url: \"{}\"\n  sync_interval: 1s\n  restore_on_boot: {restore_on_boot}\n",
        dest.root_url()
    );
    if let Some((count, path)) = shards {
        let _ = write!(
            y,
            "shards:\n  count: {count}\n  path: \"{}\"\n",
            path.display()
        );
    }
    if !dbs.is_empty() {
        y.push_str("databases:\n");
        for db in dbs {
            let _ = writeln!(y, "  - \"{}\"", db.display());
        }
    }
    y
}

pub fn litestream_config(dest: &Dest, dbs: &[PathBuf]) -> String {
    let mut y = String::from("dbs:\n");
    for db in dbs {
        let _ = writeln!(y, "  - path: \"{}\"", db.display());
        y.push_str(&dest.litestream_replica(&stem(db), "    "));
    }
    y
}

/// Waits until every database has its first file in the replica (the initial
/// snapshot), so measurements start from a settled replicator.
pub fn wait_ready(p: &mut Proc, dest: &Dest, dbs: &[PathBuf], timeout: Duration) -> Result<()> {
    let stems: Vec<String> = dbs.iter().map(|d| stem(d)).collect();
    let start = Instant::now();
    let mut pending: Vec<&String> = stems.iter().collect();
    loop {
        p.ensure_running()?;
        pending.retain(|s| !dest.has_files(s));
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{}: {} of {} databases had no file in the replica after {}s; last lines of its log:\n{}",
                p.name,
                pending.len(),
                stems.len(),
                timeout.as_secs(),
                p.log_tail(25)
            );
        }
        proc::sleep(Duration::from_millis(50))?;
    }
}

/// Creates `n` small databases `db_0000.db`… in `dir` (schema + `rows` rows each).
pub fn create_dbs(ctx: &Ctx, dir: &Path, n: usize, rows: usize) -> Result<Vec<PathBuf>> {
    let data = dir.join("data");
    fs::create_dir_all(&data)?;
    let dbs: Vec<PathBuf> = (0..n).map(|i| data.join(format!("db_{i:04}.db"))).collect();
    let list = dir.join("dbs.txt");
    write_list(&list, &dbs)?;
    ctx.writer_run(
        dir,
        &[
            "create-many",
            &list.display().to_string(),
            "--rows",
            &rows.to_string(),
        ],
        Duration::from_secs(600),
    )?;
    Ok(dbs)
}

pub fn write_list(path: &Path, dbs: &[PathBuf]) -> Result<()> {
    let mut s = String::new();
    for d in dbs {
        let _ = writeln!(s, "{}", d.display());
    }
    fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Stops a replicator (SIGINT: both tools flush and exit).
pub fn stop_tool(p: &mut Proc) -> Result<()> {
    let st = p.stop_or_kill(Signal::Int, Duration::from_secs(60))?;
    if !st.success() {
        eprintln!(
            "xtask bench: {} exited with {st} on SIGINT; last lines of its log:\n{}",
            p.name,
            p.log_tail(25)
        );
    }
    Ok(())
}
