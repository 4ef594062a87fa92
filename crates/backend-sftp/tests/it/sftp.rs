//! The sftp backend against OpenSSH sshd (started by `cargo xtask test`): host-key
//! verification, credentials never leaking into errors, and reconnecting after the
//! connection drops. URL parsing is unit-tested in `src/lib.rs`.

// The key helpers take anything string-like; `&key` reads the same for both kinds.
#![allow(clippy::needless_borrows_for_generic_args)]

use replica_conformance::keys::k;

use std::io::Write;
use std::sync::{Arc, Mutex};

use backend_sftp::SftpClient;
use bytes::Bytes;
use replica_core::client::{Payload, PutOptions, ReplicaClient};
use replica_core::error::{Chain, StoreError};
use tokio::io::AsyncReadExt;

use crate::support;

fn key(name: &str) -> String {
    format!("ltx/0/{name}.ltx")
}

async fn round_trip(c: &SftpClient) -> Result<(), StoreError> {
    let probe = key("probe");
    c.put(
        &k(&probe),
        Payload::Bytes(Bytes::from_static(b"hello")),
        &PutOptions::default(),
    )
    .await?;
    let mut body = Vec::new();
    c.get(&k(&probe), None)
        .await?
        .read_to_end(&mut body)
        .await
        .expect("read");
    assert_eq!(body, b"hello");
    Ok(())
}

fn sub() -> String {
    replica_conformance::random_root("sftp-tests")
}

#[tokio::test]
async fn pinned_host_key_is_accepted() {
    let emu = support::emulator();
    let c = emu.client(&sub());
    round_trip(&c).await.expect("round trip with the right pin");
}

#[tokio::test]
async fn pinned_fingerprint_is_accepted() {
    let emu = support::emulator();
    let key = russh::keys::PublicKey::from_openssh(&emu.host_key).expect("host key");
    let fp = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
    let url = emu.url(&sub(), &format!("host_key={}", support::enc(&fp)));
    let c = SftpClient::parse(&url).expect("parse");
    round_trip(&c)
        .await
        .expect("round trip with a fingerprint pin");
}

#[tokio::test]
async fn wrong_pinned_host_key_is_refused() {
    let emu = support::emulator();
    // The client's own public key: a valid ed25519 key, but not the server's.
    let wrong = std::fs::read_to_string(emu.key.with_extension("pub")).expect("client pub");
    let wrong: String = wrong
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let url = emu.url(&sub(), &format!("host_key={}", support::enc(&wrong)));
    let c = SftpClient::parse(&url).expect("parse");
    let err = round_trip(&c)
        .await
        .expect_err("a wrong pin must be refused");
    let text = Chain(&err).to_string();
    assert!(
        text.contains("host key verification failed") && text.contains("does not match"),
        "unclear error: {text}"
    );
    assert!(
        !err.is_transient(),
        "a host key mismatch is not transient: {err:?}"
    );
}

#[tokio::test]
async fn unknown_host_is_refused() {
    let emu = support::emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, "# nothing here\nexample.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
        .expect("write known_hosts");
    let url = emu.url(
        &sub(),
        &format!("known_hosts={}", support::enc(&kh.display().to_string())),
    );
    let c = SftpClient::parse(&url).expect("parse");
    let err = round_trip(&c)
        .await
        .expect_err("an unknown host must be refused");
    let text = Chain(&err).to_string();
    assert!(text.contains("unknown host"), "unclear error: {text}");
    assert!(!err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn known_hosts_entry_is_accepted_and_a_changed_key_refused() {
    let emu = support::emulator();
    let dir = tempfile::tempdir().expect("tempdir");
    let kh = dir.path().join("known_hosts");
    let host = format!("[{}]:{}", emu.host, emu.port);
    std::fs::write(&kh, format!("{host} {}\n", emu.host_key_pin())).expect("write");
    let url = emu.url(
        &sub(),
        &format!("known_hosts={}", support::enc(&kh.display().to_string())),
    );
    let c = SftpClient::parse(&url).expect("parse");
    round_trip(&c).await.expect("host in known_hosts");

    // Same host, another ed25519 key: the key changed.
    let other = std::fs::read_to_string(emu.key.with_extension("pub")).expect("client pub");
    let other: String = other
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(&kh, format!("{host} {other}\n")).expect("write");
    let c = SftpClient::parse(&url).expect("parse");
    let err = round_trip(&c)
        .await
        .expect_err("a changed key must be refused");
    let text = Chain(&err).to_string();
    assert!(text.contains("changed"), "unclear error: {text}");
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn insecure_option_connects_and_warns() {
    let emu = support::emulator();
    let url = emu.url(&sub(), "insecure_skip_host_key_check=true");
    let buf = Captured::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let c = SftpClient::parse(&url).expect("parse");
            round_trip(&c).await.expect("insecure round trip");
        });
    });
    let logs = String::from_utf8_lossy(&buf.0.lock().expect("lock")).into_owned();
    assert!(
        logs.contains("WARN") && logs.contains("insecure_skip_host_key_check"),
        "no warning logged: {logs:?}"
    );
}

#[test]
#[allow(unsafe_code)]
fn wrong_password_never_appears_in_errors() {
    let emu = support::emulator();
    let var = format!("REPLICA_SFTP_TEST_PW_{:x}", rand_u64());
    let secret = format!("PWMARKER{:016x}", rand_u64());
    // SAFETY: a variable no other code reads, set before the runtime starts.
    unsafe { std::env::set_var(&var, &secret) };
    let url = format!(
        "sftp://{}@{}:{}{}/{}?password_env={var}&host_key={}",
        emu.user,
        emu.host,
        emu.port,
        emu.root,
        sub(),
        support::enc(&emu.host_key_pin()),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let err = rt.block_on(async {
        let c = SftpClient::parse(&url).expect("parse");
        let e = c
            .head(&k("ltx/0/x.ltx"))
            .await
            .expect_err("sshd refuses passwords");
        (e, format!("{c:?} {}", c.info().redacted_url))
    });
    let text = format!("{} {:?} {}", err.0, err.0, err.1);
    assert!(!text.contains(&secret), "the password leaked: {text}");
    assert!(
        matches!(err.0, StoreError::PermissionDenied { .. }),
        "expected PermissionDenied: {text}"
    );
    assert!(
        text.contains(&var),
        "the error should name the variable: {text}"
    );
}

fn rand_u64() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// A TCP proxy to sshd whose connections the test can cut.
async fn proxy(target: (String, u16)) -> (u16, tokio::sync::watch::Sender<u64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (cut, _) = tokio::sync::watch::channel(0u64);
    let cut_tx = cut.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut rx = cut_tx.subscribe();
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) =
                    tokio::net::TcpStream::connect((target.0.as_str(), target.1)).await
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = rx.changed() => {}
                }
            });
        }
    });
    (port, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_connection_drops() {
    let emu = support::emulator();
    let (port, cut) = proxy((emu.host.clone(), emu.port)).await;
    let mut via = emu.clone();
    via.port = port;
    // The pin is for the key, not the port, so it still applies.
    let c = via.client(&sub());
    round_trip(&c).await.expect("first round trip");
    cut.send_modify(|n| *n += 1);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    c.head(&k(key("probe")))
        .await
        .expect("head after the drop reconnects");
    round_trip(&c).await.expect("round trip after the drop");
}
