//! A fault-injecting HTTP/1.1 proxy for the emulators: one request per connection
//! (it answers `Connection: close`), so every request is seen and can be broken on
//! its own. Faults follow a fixed pattern over the requests they apply to, so the
//! share of faulted requests is exact and a run can be repeated; every request is
//! logged with the fault it got.
//!
//! Kinds: a 503 SlowDown, a 500 or a 429 with `Retry-After` without forwarding; the
//! connection dropped before the request reaches the store, or after the store
//! applied it (the response lost); the response body cut in the middle. Latency is
//! the plan's `delay`; an outage is a plan that drops every request. The plan can be
//! changed while the proxy runs ([`FaultProxy::set_plan`]), so a test walks through
//! fault classes, an outage and recovery against one running replicator. Request
//! bodies carry a Content-Length or are chunked.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 503 SlowDown, without forwarding.
    SlowDown,
    /// 500 Internal Server Error, without forwarding.
    ServerError,
    /// 429 Too Many Requests with `Retry-After: 1`, without forwarding.
    TooMany,
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
            Fault::ServerError => "500",
            Fault::TooMany => "429",
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

impl FaultPlan {
    /// Every request passes, at once.
    pub const HEALTHY: FaultPlan = FaultPlan {
        only: "",
        pattern: &[],
        delay: Duration::ZERO,
    };

    /// Every request is dropped before it reaches the store.
    pub const OUTAGE: FaultPlan = FaultPlan {
        only: "",
        pattern: &[Fault::DropBefore],
        delay: Duration::ZERO,
    };
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub fault: Fault,
}

/// The plan in force, and how many eligible requests it has seen.
struct Current {
    plan: FaultPlan,
    eligible: u64,
}

pub struct FaultProxy {
    pub addr: String,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Current>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (any port) and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str, plan: FaultPlan) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(Current { plan, eligible: 0 }));
        let (upstream, l, s, c) = (
            upstream.to_owned(),
            log.clone(),
            stop.clone(),
            current.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (upstream, l, c) = (upstream.clone(), l.clone(), c.clone());
                std::thread::spawn(move || {
                    if let Some(entry) = serve(conn, &upstream, &c) {
                        l.lock().expect("proxy log").push(entry);
                    }
                });
            }
        });
        FaultProxy {
            addr,
            log,
            stop,
            current,
        }
    }

    /// Replaces the plan; its pattern starts again at its first entry.
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.current.lock().expect("proxy plan") = Current { plan, eligible: 0 };
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

fn serve(client: TcpStream, upstream: &str, current: &Mutex<Current>) -> Option<Logged> {
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let mut reader = BufReader::new(client.try_clone().ok()?);
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut range = None;
    let mut chunked = false;
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
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
        if lower.starts_with("range:") {
            range = Some(line[6..].trim().to_owned());
        }
        head.extend_from_slice(line.as_bytes());
    }
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let mut body = vec![0u8; content_length];
        reader.read_exact(&mut body).ok()?;
        body
    };
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let (fault, delay) = {
        let mut c = current.lock().expect("proxy plan");
        let plan = c.plan.clone();
        let fault =
            if (plan.only.is_empty() || path.contains(plan.only)) && !plan.pattern.is_empty() {
                let k = c.eligible as usize;
                c.eligible += 1;
                match plan.pattern[k % plan.pattern.len()] {
                    Fault::CutBody if method != "GET" => Fault::None,
                    f => f,
                }
            } else {
                Fault::None
            };
        (fault, plan.delay)
    };
    let logged = Logged {
        method,
        path,
        range,
        fault,
    };
    let trace = std::env::var_os("FAULT_PROXY_TRACE").is_some();
    if trace {
        eprintln!("proxy: {} {} {:?} start", logged.method, logged.path, fault);
    }
    let mut client = client;
    let refuse = |client: &mut TcpStream, status: &str, extra: &str, code: &str| {
        let body = format!(
            "<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
        );
        let _ = write!(
            client,
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    match fault {
        Fault::SlowDown => {
            refuse(&mut client, "503 Slow Down", "", "SlowDown");
            return Some(logged);
        }
        Fault::ServerError => {
            refuse(
                &mut client,
                "500 Internal Server Error",
                "",
                "InternalError",
            );
            return Some(logged);
        }
        Fault::TooMany => {
            refuse(
                &mut client,
                "429 Too Many Requests",
                "Retry-After: 1\r\n",
                "TooManyRequests",
            );
            return Some(logged);
        }
        Fault::DropBefore => {
            let _ = client.shutdown(Shutdown::Both);
            return Some(logged);
        }
        _ => {}
    }
    std::thread::sleep(delay);
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
    if trace {
        eprintln!("proxy: {} {} {:?} done", logged.method, logged.path, fault);
    }
    Some(logged)
}

/// A chunked request body, raw (sizes and trailer included), to forward as it came.
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut raw = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        raw.extend_from_slice(line.as_bytes());
        let size_hex = line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                if reader.read_line(&mut trailer).ok()? == 0 {
                    return None;
                }
                raw.extend_from_slice(trailer.as_bytes());
                if trailer == "\r\n" {
                    return Some(raw);
                }
            }
        }
        let mut chunk = vec![0u8; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        raw.extend_from_slice(&chunk);
    }
}
