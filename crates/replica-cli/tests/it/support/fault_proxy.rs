//! A fault-injecting HTTP/1.1 proxy for the emulators: one request per connection
//! (it answers `Connection: close`), so every request is seen and can be broken on
//! its own. Faults are drawn from a seeded generator, so a failing run can be
//! repeated with its seed; every request is logged with the fault it got.
//!
//! Kinds: a 503 SlowDown without forwarding; the connection dropped before the
//! request reaches the store, or after the store applied it (the response lost); the
//! response body cut in the middle. Request bodies must carry a Content-Length.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Fault probabilities, applied to requests whose path contains `only` (all when
/// empty).
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub seed: u64,
    pub only: &'static str,
    pub slow_down: f64,
    pub drop_before: f64,
    pub drop_after: f64,
    pub cut_body: f64,
    /// Added before every forwarded request: a slow link.
    pub delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub fault: &'static str,
}

pub struct FaultProxy {
    pub addr: String,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (any port) and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str, plan: FaultPlan) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicU64::new(0));
        let (upstream, l, s) = (upstream.to_owned(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (upstream, plan, l) = (upstream.clone(), plan.clone(), l.clone());
                std::thread::spawn(move || {
                    if let Some(entry) = serve(conn, &upstream, &plan, n) {
                        l.lock().expect("proxy log").push(entry);
                    }
                });
            }
        });
        FaultProxy { addr, log, stop }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().expect("proxy log").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// splitmix64: a fault decision per (seed, request number), independent of timing.
fn draw(seed: u64, n: u64, salt: u64) -> f64 {
    let mut z = seed
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn serve(client: TcpStream, upstream: &str, plan: &FaultPlan, n: u64) -> Option<Logged> {
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut reader = BufReader::new(client.try_clone().ok()?);
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut range = None;
    let mut request_line = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if request_line.is_empty() {
            request_line = line.trim_end().to_owned();
        }
        let lower = line.to_ascii_lowercase();
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("range:") {
            range = Some(line[6..].trim().to_owned());
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body).ok()?;
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let eligible = plan.only.is_empty() || path.contains(plan.only);
    let pick = |salt, p: f64| eligible && draw(plan.seed, n, salt) < p;
    let fault = if pick(1, plan.slow_down) {
        "503"
    } else if pick(2, plan.drop_before) {
        "drop-before"
    } else if pick(3, plan.drop_after) {
        "drop-after"
    } else if method == "GET" && pick(4, plan.cut_body) {
        "cut-body"
    } else {
        "none"
    };
    let logged = Logged {
        method,
        path,
        range,
        fault,
    };
    let mut client = client;
    match fault {
        "503" => {
            let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let _ = write!(
                client,
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return Some(logged);
        }
        "drop-before" => {
            let _ = client.shutdown(Shutdown::Both);
            return Some(logged);
        }
        _ => {}
    }
    std::thread::sleep(plan.delay);
    let mut up = TcpStream::connect(upstream).ok()?;
    up.write_all(&head).ok()?;
    up.write_all(&body).ok()?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).ok()?;
    match fault {
        "drop-after" => {
            let _ = client.shutdown(Shutdown::Both);
        }
        "cut-body" => {
            let body_at = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(response.len(), |p| p + 4);
            let body_len = response.len() - body_at;
            // Half the body (at least a byte short), then the connection closes.
            let keep = body_at + body_len / 2;
            let _ = client.write_all(&response[..keep.min(response.len().saturating_sub(1))]);
            let _ = client.shutdown(Shutdown::Both);
        }
        _ => {
            let _ = client.write_all(&response);
        }
    }
    Some(logged)
}
