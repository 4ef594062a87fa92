//! Debug-level output (`-v`) of a failing run holds no secret and no database content,
//! on S3 (moto), Azure (Azurite) and SFTP (OpenSSH sshd), all started by `cargo xtask
//! test`. Each run replicates a database whose rows carry a marker through a TCP proxy,
//! so the uploads (the database's pages) really happen and are logged; then the proxy
//! cuts every connection, the store is unreachable, and the final flush fails (exit 1).

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Proc, SIGINT, new_db, replica_cmd, wait_until};
use tempfile::TempDir;

const TIMEOUT: Duration = Duration::from_secs(30);

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `cargo xtask test` (it starts the emulators)")
    })
}

/// A TCP proxy to `target` that can be cut: every open connection is shut down and new
/// ones are closed at once.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, c, o) = (target.to_owned(), cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                };
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    if let Ok(mut v) = o.lock() {
                        v.extend(client.try_clone().ok());
                        v.extend(server.try_clone().ok());
                    }
                    pipe(client, s2);
                    pipe(server, c2);
                }
            }
        });
        Proxy { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(v) = self.open.lock() {
            for s in v.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// `http://host:port/rest` with the proxy's address instead.
fn via_proxy(endpoint: &str) -> (String, String) {
    let rest = endpoint
        .strip_prefix("http://")
        .expect("an http:// endpoint");
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    (hostport.to_owned(), path.to_owned())
}

/// The rows' marker, in every form a log could show it.
fn content_forms(marker: &str) -> Vec<String> {
    let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    let hex_spaced: Vec<String> = marker.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        marker.to_owned(),
        hex,
        hex_spaced.join(" "),
        hex_spaced.join(", "),
    ]
}

/// Replicates a database holding `marker` rows to `url` through `proxy` at debug
/// level, cuts the proxy once uploads happened, stops; returns the whole output.
fn failing_run(what: &str, url: &str, proxy: &Proxy, env: &[(&str, &str)]) -> String {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("app.db");
    let conn = new_db(&db);
    let marker = format!("DBCONTENT{:016x}", rand::random::<u64>());
    let write = |n: usize| {
        for i in 0..n {
            conn.execute(
                "INSERT INTO t(v, b) VALUES (?1, zeroblob(10))",
                [format!("{marker} row {i}")],
            )
            .expect("insert");
        }
    };
    write(50);
    let mut cmd = replica_cmd();
    cmd.args([
        "-v",
        "replicate",
        "--sync-interval",
        "100ms",
        "--flush-timeout",
        "2s",
    ])
    .arg(&db)
    .arg(url)
    .env_remove("REPLICA_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut rep = Proc::spawn(what, cmd);
    // Uploaded: the spool keeps a copy of each uploaded L0 file.
    let shipped = db.with_file_name(".app.db-replica/shipped/0");
    for _ in 0..5 {
        write(20);
        std::thread::sleep(Duration::from_millis(150));
    }
    // Keep writing until a shipped copy is seen: compaction may clear the first ones
    // before a poll sees them.
    let uploaded = wait_until(TIMEOUT, || {
        write(5);
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_dir(&shipped).is_ok_and(|mut d| d.next().is_some())
    });
    assert!(
        uploaded,
        "{what}: nothing was uploaded\n{}",
        rep.output_report()
    );
    proxy.cut();
    write(50);
    std::thread::sleep(Duration::from_secs(1));
    let st = rep.stop(SIGINT, TIMEOUT);
    let out = format!("{}\n{}", rep.stdout(), rep.stderr());
    assert_eq!(
        st.code(),
        Some(1),
        "{what}: expected a failed flush\n{}",
        rep.output_report()
    );
    assert!(out.contains("DEBUG"), "{what}: no debug output\n{out}");
    for form in content_forms(&marker) {
        assert!(
            !out.contains(&form),
            "{what}: database content ({form}) in the output"
        );
    }
    out
}

fn assert_no_secret(what: &str, out: &str, secret: &str) {
    assert!(!secret.is_empty());
    assert!(
        !out.contains(secret),
        "{what}: a secret appears in the output"
    );
}

/// moto does not check signatures, so a plain PUT creates the bucket.
fn create_bucket(endpoint: &str, bucket: &str) {
    use std::io::Write;
    let (hostport, _) = via_proxy(endpoint);
    let mut conn = TcpStream::connect(&hostport).expect("connecting to the S3 emulator");
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("sending CreateBucket");
    let mut resp = String::new();
    conn.read_to_string(&mut resp)
        .expect("reading CreateBucket");
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "CreateBucket failed: {resp}"
    );
}

#[test]
fn s3_debug_output_of_a_failing_run_has_no_secret_and_no_content() {
    let endpoint = var("REPLICA_S3_ENDPOINT");
    let bucket = format!("redact-{:016x}", rand::random::<u64>());
    create_bucket(&endpoint, &bucket);
    let (target, _) = via_proxy(&endpoint);
    let proxy = Proxy::start(&target);
    let url = format!(
        "s3://{bucket}/app?endpoint=http://127.0.0.1:{}&region=us-east-1&force_path_style=true",
        proxy.port
    );
    // moto accepts any secret, so the marker can be the secret key itself.
    let secret = format!("SECRETKEY{:016x}", rand::random::<u64>());
    let out = failing_run(
        "S3",
        &url,
        &proxy,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDREDACTIONTEST"),
            ("AWS_SECRET_ACCESS_KEY", &secret),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert_no_secret("S3", &out, &secret);
}

#[test]
fn azure_debug_output_of_a_failing_run_has_no_secret_and_no_content() {
    let endpoint = var("REPLICA_AZURE_ENDPOINT");
    let account = var("REPLICA_AZURE_ACCOUNT_NAME");
    let key = var("REPLICA_AZURE_ACCOUNT_KEY");
    let container = format!("redact-{:016x}", rand::random::<u64>());
    crate::support::create_abs_container(&endpoint, &account, &key, &container);
    let (target, path) = via_proxy(&endpoint);
    let proxy = Proxy::start(&target);
    let url = format!(
        "abs://{account}@{container}/app?endpoint=http://127.0.0.1:{}/{path}",
        proxy.port
    );
    let out = failing_run(
        "Azure",
        &url,
        &proxy,
        &[
            ("AZURE_STORAGE_ACCOUNT", &account),
            ("AZURE_STORAGE_KEY", &key),
        ],
    );
    assert_no_secret("Azure", &out, &key);
    // The SAS minted from the key is a credential too: its signature never shows.
    for (i, _) in out.match_indices("sig=") {
        let value: String = out[i + 4..]
            .chars()
            .take_while(|c| !matches!(c, '&' | ' ' | '"' | '\n'))
            .collect();
        assert!(
            value.len() < 8 || value.contains("REDACTED"),
            "Azure: a SAS signature appears in the output: sig={value}"
        );
    }
}

#[test]
fn sftp_debug_output_of_a_failing_run_has_no_secret_and_no_content() {
    let key = PathBuf::from(var("REPLICA_SFTP_KEY"));
    let host_key_file = std::env::var("REPLICA_SFTP_HOST_KEY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| key.with_file_name("host_ed25519.pub"));
    let host_key = std::fs::read_to_string(&host_key_file).expect("reading the host key");
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    let target = format!("{}:{}", var("REPLICA_SFTP_HOST"), var("REPLICA_SFTP_PORT"));
    let proxy = Proxy::start(&target);
    let root = format!(
        "{}/redact-{:016x}",
        var("REPLICA_SFTP_ROOT"),
        rand::random::<u64>()
    );
    let enc = |s: &str| {
        s.replace('%', "%25")
            .replace(' ', "%20")
            .replace('&', "%26")
    };
    let url = format!(
        "sftp://{}@127.0.0.1:{}{root}/app?key_path={}&host_key={}",
        var("REPLICA_SFTP_USER"),
        proxy.port,
        enc(&key.display().to_string()),
        enc(&host_key.join(" "))
    );
    // A password is offered too (the server takes the key first), to check it is
    // never printed either.
    let password = format!("PASSWORD{:016x}", rand::random::<u64>());
    let out = failing_run(
        "SFTP",
        &url,
        &proxy,
        &[("REPLICA_SFTP_PASSWORD", &password)],
    );
    assert_no_secret("SFTP", &out, &password);
    let private = std::fs::read_to_string(&key).expect("reading the private key");
    for line in private
        .lines()
        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
    {
        assert_no_secret("SFTP", &out, line);
    }
}
