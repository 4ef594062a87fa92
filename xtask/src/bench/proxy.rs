//! A counting HTTP/1.1 proxy in front of the S3 emulator.
//!
//! Both tools talk to the store through one of these, so their requests are counted
//! the same way: one log entry per request with the method, the path and query, the
//! request body size on the wire, the status and the time the response was complete.
//! For the S3 lag measurement it can also keep the bodies of `.ltx` PUTs, which the
//! bench decodes afterwards to learn which commits each upload carried.
//!
//! It forwards bytes verbatim (apart from answering `Expect: 100-continue` itself),
//! one upstream connection per client connection, so keep-alive behaves as it would
//! against the emulator directly.
//!
//! With [`Faults`] (the soak's `--faults`) it also breaks a seeded share of the
//! requests (503 SlowDown, 500, 429, dropped before the store sees them, applied with
//! the response lost, GET bodies cut in half) and drops everything during outages.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::SystemTime;

use anyhow::{Context, Result};

/// The largest PUT body kept for decoding; LTX uploads in the lag runs are a few KiB.
const MAX_CAPTURE: u64 = 16 << 20;
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Put,
    List,
    Get,
    Head,
    Delete,
    /// Multipart create/complete and other POSTs.
    Post,
    Other,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Put => "PUT",
            Kind::List => "LIST",
            Kind::Get => "GET",
            Kind::Head => "HEAD",
            Kind::Delete => "DELETE",
            Kind::Post => "POST",
            Kind::Other => "other",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Percent-decoded path, `/bucket/key`.
    pub path: String,
    pub query: String,
    /// Request body bytes as sent (including any aws-chunked framing).
    pub body_bytes: u64,
    pub status: u16,
    pub done: SystemTime,
    /// The decoded body of a `.ltx` PUT, when capturing.
    pub body: Option<Arc<Vec<u8>>>,
}

impl Request {
    pub fn kind(&self) -> Kind {
        let q = |name: &str| {
            self.query
                .split('&')
                .any(|p| p == name || p.starts_with(&format!("{name}=")))
        };
        // Path-style: `/bucket` or `/bucket/` addresses the bucket, anything longer a key.
        let is_bucket = self
            .path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .find('/')
            .is_none();
        match self.method.as_str() {
            "GET" if is_bucket => Kind::List,
            "GET" => Kind::Get,
            "PUT" => Kind::Put,
            "HEAD" => Kind::Head,
            "DELETE" => Kind::Delete,
            "POST" if q("delete") => Kind::Delete,
            "POST" => Kind::Post,
            _ => Kind::Other,
        }
    }

    /// The object key (without the bucket), for requests on an object.
    pub fn key(&self) -> Option<&str> {
        let p = self.path.trim_start_matches('/');
        p.split_once('/').map(|(_, k)| k).filter(|k| !k.is_empty())
    }

    /// A successful single-request upload of an LTX object (not a multipart part).
    pub fn is_ltx_put(&self) -> bool {
        self.method == "PUT"
            && (200..300).contains(&self.status)
            && !self.query.contains("partNumber=")
            && self.key().is_some_and(|k| k.ends_with(".ltx"))
    }

    /// A completed multipart upload of an LTX object.
    pub fn is_ltx_complete(&self) -> bool {
        self.method == "POST"
            && (200..300).contains(&self.status)
            && self.query.contains("uploadId=")
            && self.key().is_some_and(|k| k.ends_with(".ltx"))
    }
}

#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    faults: Option<Arc<Faults>>,
    stop: AtomicBool,
    capture: AtomicBool,
    log: Mutex<Vec<Request>>,
    /// Open client connections, to end them when the proxy stops.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Status(u16),
    DropBefore,
    DropAfter,
    CutBody,
    Outage,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Status(503) => "503 SlowDown",
            Fault::Status(429) => "429",
            Fault::Status(_) => "500",
            Fault::DropBefore => "dropped before the store",
            Fault::DropAfter => "applied, response lost",
            Fault::CutBody => "GET body cut",
            Fault::Outage => "dropped in an outage",
        }
    }
}

/// Faults to inject: `rate_ppm` requests in a million are broken, one kind at
/// random (seeded), and every request while the store is down.
#[derive(Debug)]
pub struct Faults {
    rate_ppm: u64,
    down: AtomicBool,
    rng: Mutex<u64>,
    counts: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Faults {
    pub fn new(rate_ppm: u64, seed: u64) -> Arc<Faults> {
        Arc::new(Faults {
            rate_ppm,
            down: AtomicBool::new(false),
            rng: Mutex::new(seed | 1),
            counts: Mutex::new(Default::default()),
        })
    }

    /// Requests broken so far, by kind.
    pub fn counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        lock(&self.counts).clone()
    }

    fn roll(&self, method: &str) -> Fault {
        let fault = if self.down.load(Ordering::Acquire) {
            Fault::Outage
        } else {
            let r = {
                let mut x = lock(&self.rng);
                // xorshift64: reproducible from the seed, good enough to pick faults.
                *x ^= *x << 13;
                *x ^= *x >> 7;
                *x ^= *x << 17;
                *x
            };
            if r % 1_000_000 >= self.rate_ppm {
                return Fault::None;
            }
            match (r >> 32) % 6 {
                0 => Fault::Status(503),
                1 => Fault::Status(500),
                2 => Fault::Status(429),
                3 => Fault::DropBefore,
                4 => Fault::DropAfter,
                _ if method == "GET" => Fault::CutBody,
                _ => Fault::Status(503),
            }
        };
        *lock(&self.counts).entry(fault.name()).or_default() += 1;
        fault
    }
}

#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Result<Proxy> {
        Self::start_with(upstream, None)
    }

    /// A proxy that also injects `faults`.
    pub fn start_faulty(upstream: SocketAddr, faults: Arc<Faults>) -> Result<Proxy> {
        Self::start_with(upstream, Some(faults))
    }

    fn start_with(upstream: SocketAddr, faults: Option<Arc<Faults>>) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the counting proxy")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream,
            faults,
            stop: AtomicBool::new(false),
            capture: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            conns: Mutex::new(HashMap::new()),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || {
                for (id, conn) in listener.incoming().enumerate() {
                    if sh.stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let id = id as u64;
                    if let Ok(c) = conn.try_clone() {
                        lock(&sh.conns).insert(id, c);
                    }
                    let sh = sh.clone();
                    let _ =
                        std::thread::Builder::new()
                            .name("proxy-conn".into())
                            .spawn(move || {
                                let _ = serve(conn, &sh);
                                lock(&sh.conns).remove(&id);
                            });
                }
            })
            .context("starting the proxy thread")?;
        Ok(Proxy {
            port,
            shared,
            accept: Some(accept),
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Keep the bodies of `.ltx` PUTs from now on.
    pub fn capture_ltx(&self, on: bool) {
        self.shared.capture.store(on, Ordering::Release);
    }

    /// Starts or ends an outage: while down, every request (and every connection
    /// open when it began) is dropped.
    pub fn set_down(&self, down: bool) {
        if let Some(f) = &self.shared.faults {
            f.down.store(down, Ordering::Release);
        }
        if down {
            for (_, c) in lock(&self.shared.conns).iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// A copy of the log so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    pub fn len(&self) -> usize {
        lock(&self.shared.log).len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wake the accept loop, and end connections still open.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for (_, c) in lock(&self.shared.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Request or response head: the start line and the headers we act on.
#[derive(Debug, Default)]
struct Head {
    raw: Vec<u8>,
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn wants_close(&self) -> bool {
        let conn = self
            .header("connection")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        conn.contains("close") || (self.start.contains("HTTP/1.0") && !conn.contains("keep-alive"))
    }
}

/// Reads a head up to the blank line; `None` on a clean EOF before any byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let before = raw.len();
        let n = r.read_until(b'\n', &mut raw)?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated HTTP head",
            ));
        }
        if raw.len() > MAX_HEAD {
            return Err(io::Error::other("HTTP head too large"));
        }
        let line = &raw[before..];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let start = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Head {
        raw,
        start,
        headers,
    }))
}

#[derive(Debug, Clone, Copy)]
enum Body {
    None,
    Length(u64),
    Chunked,
    UntilEof,
}

/// Copies a body from `r` to `w`; returns the bytes copied and, if `keep`, the
/// de-chunked content.
fn copy_body(
    r: &mut impl BufRead,
    w: &mut impl Write,
    body: Body,
    keep: bool,
) -> io::Result<(u64, Option<Vec<u8>>)> {
    let mut kept = keep.then(Vec::new);
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut copy_n = |r: &mut dyn BufRead,
                      w: &mut dyn Write,
                      mut n: u64,
                      kept: &mut Option<Vec<u8>>|
     -> io::Result<u64> {
        let mut copied = 0;
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = r.read(&mut buf[..want])?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "truncated body",
                ));
            }
            w.write_all(&buf[..got])?;
            if let Some(k) = kept.as_mut() {
                k.extend_from_slice(&buf[..got]);
            }
            n -= got as u64;
            copied += got as u64;
        }
        Ok(copied)
    };
    match body {
        Body::None => {}
        Body::Length(n) => total += copy_n(r, w, n, &mut kept)?,
        Body::UntilEof => loop {
            let got = r.read(&mut buf)?;
            if got == 0 {
                break;
            }
            w.write_all(&buf[..got])?;
            if let Some(k) = kept.as_mut() {
                k.extend_from_slice(&buf[..got]);
            }
            total += got as u64;
        },
        Body::Chunked => loop {
            let mut line = Vec::new();
            r.read_until(b'\n', &mut line)?;
            w.write_all(&line)?;
            total += line.len() as u64;
            let size = chunk_size(&line)?;
            if size == 0 {
                // Trailers, up to the blank line.
                loop {
                    let mut t = Vec::new();
                    if r.read_until(b'\n', &mut t)? == 0 {
                        break;
                    }
                    w.write_all(&t)?;
                    total += t.len() as u64;
                    if t == b"\r\n" || t == b"\n" {
                        break;
                    }
                }
                break;
            }
            total += copy_n(r, w, size, &mut kept)?;
            let mut crlf = Vec::new();
            r.read_until(b'\n', &mut crlf)?;
            w.write_all(&crlf)?;
            total += crlf.len() as u64;
        },
    }
    Ok((total, kept))
}

fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let text = String::from_utf8_lossy(line);
    let hex = text.trim().split(';').next().unwrap_or("").trim();
    u64::from_str_radix(hex, 16)
        .map_err(|_| io::Error::other(format!("bad chunk size line {text:?}")))
}

/// Undoes `aws-chunked` content encoding (`hex;chunk-signature=…\r\n data \r\n … 0\r\n
/// trailers`), which the AWS SDKs use to send checksums in a trailer.
fn decode_aws_chunked(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    let mut rest = b;
    loop {
        let nl = rest.iter().position(|&c| c == b'\n')?;
        let size = chunk_size(&rest[..=nl]).ok()? as usize;
        rest = &rest[nl + 1..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size..)?;
        rest = rest.strip_prefix(b"\r\n").unwrap_or(rest);
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One client connection: requests in order, each forwarded and answered in turn.
fn serve(client: TcpStream, sh: &Shared) -> io::Result<()> {
    client.set_nodelay(true)?;
    let mut cr = BufReader::new(client.try_clone()?);
    let mut cw = client;
    let mut upstream: Option<(BufReader<TcpStream>, TcpStream)> = None;
    loop {
        let Some(req) = read_head(&mut cr)? else {
            return Ok(());
        };
        let mut parts = req.start.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let target = parts.next().unwrap_or_default().to_string();
        let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
        let (path, query) = (percent_decode(path), query.to_string());
        let fault = sh.faults.as_ref().map_or(Fault::None, |f| f.roll(&method));
        let req_body = if req.chunked() {
            Body::Chunked
        } else {
            Body::Length(req.content_length().unwrap_or(0))
        };
        match fault {
            Fault::Outage | Fault::DropBefore => {
                let _ = cw.shutdown(Shutdown::Both);
                return Ok(());
            }
            Fault::Status(code) => {
                // The body is read (unless the client waits for 100-continue), so the
                // client sees the status rather than a reset.
                if !req
                    .header("expect")
                    .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
                {
                    copy_body(&mut cr, &mut io::sink(), req_body, false)?;
                }
                let (reason, code_name, extra) = match code {
                    503 => ("Slow Down", "SlowDown", ""),
                    429 => ("Too Many Requests", "TooManyRequests", "Retry-After: 1\r\n"),
                    _ => ("Internal Server Error", "InternalError", ""),
                };
                let body = format!(
                    "<Error><Code>{code_name}</Code><Message>injected by the soak</Message></Error>"
                );
                let _ = write!(
                    cw,
                    "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = cw.shutdown(Shutdown::Both);
                return Ok(());
            }
            _ => {}
        }

        if upstream.is_none() {
            let s = TcpStream::connect(sh.upstream)?;
            s.set_nodelay(true)?;
            upstream = Some((BufReader::new(s.try_clone()?), s));
        }
        let Some((ur, uw)) = upstream.as_mut() else {
            return Ok(());
        };

        // Answer `Expect: 100-continue` here and drop it upstream: the client sends
        // its body at once, as it would after the emulator's interim response.
        let expect = req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expect {
            let mut raw = Vec::with_capacity(req.raw.len());
            for line in req.raw.split_inclusive(|&c| c == b'\n') {
                let l = String::from_utf8_lossy(line).to_ascii_lowercase();
                if !l.starts_with("expect:") {
                    raw.extend_from_slice(line);
                }
            }
            uw.write_all(&raw)?;
            cw.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        } else {
            uw.write_all(&req.raw)?;
        }
        let body = req_body;
        let keep = method == "PUT"
            && sh.capture.load(Ordering::Acquire)
            && path.ends_with(".ltx")
            && req.content_length().is_none_or(|n| n <= MAX_CAPTURE);
        let mut w = io::BufWriter::with_capacity(64 * 1024, &mut *uw);
        let (body_bytes, kept) = copy_body(&mut cr, &mut w, body, keep)?;
        w.flush()?;
        drop(w);

        let resp = loop {
            let Some(h) = read_head(ur)? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upstream closed",
                ));
            };
            let status = status_of(&h);
            if (100..200).contains(&status) && status != 101 {
                cw.write_all(&h.raw)?;
                continue;
            }
            break h;
        };
        let status = status_of(&resp);
        let rbody = if method == "HEAD" || status == 204 || status == 304 {
            Body::None
        } else if resp.chunked() {
            Body::Chunked
        } else if let Some(n) = resp.content_length() {
            Body::Length(n)
        } else {
            Body::UntilEof
        };
        match (fault, rbody) {
            (Fault::DropAfter, _) => {
                // The store applied it; the client never hears.
                copy_body(ur, &mut io::sink(), rbody, false)?;
                let _ = cw.shutdown(Shutdown::Both);
                return Ok(());
            }
            (Fault::CutBody, Body::Length(n)) if n > 1 => {
                cw.write_all(&resp.raw)?;
                copy_body(ur, &mut cw, Body::Length(n / 2), false)?;
                let _ = cw.shutdown(Shutdown::Both);
                return Ok(());
            }
            _ => {}
        }
        cw.write_all(&resp.raw)?;
        let mut w = io::BufWriter::with_capacity(64 * 1024, &mut cw);
        copy_body(ur, &mut w, rbody, false)?;
        w.flush()?;
        drop(w);
        let done = SystemTime::now();

        let aws_chunked = req
            .header("content-encoding")
            .is_some_and(|v| v.contains("aws-chunked"))
            || req
                .header("x-amz-content-sha256")
                .is_some_and(|v| v.starts_with("STREAMING-"));
        let body = kept.and_then(|b| {
            if aws_chunked {
                decode_aws_chunked(&b)
            } else {
                Some(b)
            }
        });
        lock(&sh.log).push(Request {
            method,
            path,
            query,
            body_bytes,
            status,
            done,
            body: body.map(Arc::new),
        });
        if resp.wants_close() || req.wants_close() || matches!(rbody, Body::UntilEof) {
            let _ = cw.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

fn status_of(h: &Head) -> u16 {
    h.start
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Request counts by kind, and bytes uploaded (PUT and POST bodies).
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub by_kind: HashMap<Kind, u64>,
    pub total: u64,
    pub bytes_up: u64,
}

impl Counts {
    pub fn of<'a>(reqs: impl IntoIterator<Item = &'a Request>) -> Counts {
        let mut c = Counts::default();
        for r in reqs {
            *c.by_kind.entry(r.kind()).or_default() += 1;
            c.total += 1;
            if matches!(r.method.as_str(), "PUT" | "POST") {
                c.bytes_up += r.body_bytes;
            }
        }
        c
    }

    pub fn get(&self, k: Kind) -> u64 {
        self.by_kind.get(&k).copied().unwrap_or(0)
    }
}

/// A minimal HTTP/1.1 request straight to the emulator (not through a proxy): bucket
/// creation and resets. moto checks no signatures, so any credential string does.
pub fn simple_request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_decodes() {
        let enc =
            b"5;chunk-signature=ab\r\nhello\r\n3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n";
        assert_eq!(decode_aws_chunked(enc).as_deref(), Some(&b"helloabc"[..]));
    }

    #[test]
    fn kinds() {
        let r = |m: &str, p: &str, q: &str| Request {
            method: m.into(),
            path: p.into(),
            query: q.into(),
            body_bytes: 0,
            status: 200,
            done: SystemTime::now(),
            body: None,
        };
        assert_eq!(r("GET", "/b", "list-type=2&prefix=x").kind(), Kind::List);
        assert_eq!(r("GET", "/b/", "").kind(), Kind::List);
        assert_eq!(r("GET", "/b/k/0000/x.ltx", "").kind(), Kind::Get);
        assert_eq!(r("POST", "/b", "delete").kind(), Kind::Delete);
        assert_eq!(r("POST", "/b/k.ltx", "uploadId=1").kind(), Kind::Post);
        assert!(r("PUT", "/b/p/0000/1-1.ltx", "").is_ltx_put());
        assert!(!r("PUT", "/b/p/0000/1-1.ltx", "partNumber=1&uploadId=x").is_ltx_put());
        assert_eq!(percent_decode("/a%2Fb"), "/a/b");
    }
}
