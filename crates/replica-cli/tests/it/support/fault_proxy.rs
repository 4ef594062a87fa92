//! A fault-injecting HTTP/1.1 proxy for the emulators: one request per connection
//! (it answers `Connection: close`), so every request is seen and can be broken on
//! its own. Faults follow a fixed pattern over the requests they apply to, so the
//! share of faulted requests is exact and a run can be repeated; every request is
//! logged with the fault it got.
//!
//! Kinds: a 503 SlowDown without forwarding; the connection dropped before the
//! request reaches the store, or after the store applied it (the response lost); the
//! response body cut in the middle. Request bodies must carry a Content-Length.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 503 SlowDown, without forwarding.
    SlowDown,
    /// The connection closed before the request reaches the store.
    DropBefore,
    /// The store applied the request; its response is lost.
    DropAfter,
    /// Half the response body, then the connection closes (GETs only).
    CutBody,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::SlowDown => "503",
            Fault::DropBefore => "drop-before",
            Fault::DropAfter => "drop-after",
            Fault::CutBody => "cut-body",
        }
    }
}

/// The k-th request whose path contains `only` (every request when empty) gets
/// `pattern[k % len]`; the others pass. Every forwarded request waits `delay` first.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub only: &'static str,
    pub pattern: &'static [Fault],
    pub delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub fault: Fault,
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
        let eligible = Arc::new(AtomicU64::new(0));
        let (upstream, l, s) = (upstream.to_owned(), log.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                counter.fetch_add(1, Ordering::Relaxed);
                let (upstream, plan, l, e) =
                    (upstream.clone(), plan.clone(), l.clone(), eligible.clone());
                std::thread::spawn(move || {
                    if let Some(entry) = serve(conn, &upstream, &plan, &e) {
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

fn serve(
    client: TcpStream,
    upstream: &str,
    plan: &FaultPlan,
    eligible: &AtomicU64,
) -> Option<Logged> {
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
    let fault = if (plan.only.is_empty() || path.contains(plan.only)) && !plan.pattern.is_empty() {
        let k = eligible.fetch_add(1, Ordering::Relaxed) as usize;
        match plan.pattern[k % plan.pattern.len()] {
            Fault::CutBody if method != "GET" => Fault::None,
            f => f,
        }
    } else {
        Fault::None
    };
    let logged = Logged {
        method,
        path,
        range,
        fault,
    };
    let mut client = client;
    match fault {
        Fault::SlowDown => {
            let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            let _ = write!(
                client,
                "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return Some(logged);
        }
        Fault::DropBefore => {
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
        Fault::DropAfter => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::CutBody => {
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
