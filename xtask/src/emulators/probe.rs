//! Readiness probes: does something answer on a local port, and how.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::HOST;

pub(super) fn connect(port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    Some(s)
}

pub(super) fn port_in_use(port: u16) -> bool {
    connect(port).is_some()
}

/// Reads from `s` until `\n` or 512 bytes; returns the first line.
pub(super) fn read_line(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 512 {
        let n = s.read(&mut byte).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    let line = buf.split(|b| *b == b'\n').next()?;
    Some(String::from_utf8_lossy(line).trim_end().to_string())
}

/// `GET path` over HTTP/1.1; the status code, if an HTTP response came back.
pub(super) fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = connect(port)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: replica-xtask\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let line = read_line(&mut s)?;
    let mut parts = line.split_whitespace();
    parts
        .next()
        .filter(|v| v.starts_with("HTTP/1."))
        .and_then(|_| parts.next())
        .and_then(|code| code.parse().ok())
}
