//! A fault-injecting TCP proxy, for SFTP: its protocol runs over one long-lived SSH
//! connection, so faults are on connections, not requests. The proxy can cut every
//! connection once it has carried some bytes (a link that breaks mid-transfer), delay
//! every chunk (a slow link), and go down (live connections closed, new ones closed
//! as soon as they are accepted) and come back.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to the traffic it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    Healthy,
    /// Every connection is closed once it has carried this many bytes (both ways).
    CutAfter(u64),
    /// Every chunk waits this long before it is forwarded.
    Latency(Duration),
    /// Connections are closed at once; live ones were closed when the mode was set.
    Down,
}

pub struct TcpProxy {
    pub addr: String,
    mode: Arc<Mutex<LinkMode>>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    cuts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 (any port) and forwards to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the TCP proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let proxy = TcpProxy {
            addr,
            mode: Arc::new(Mutex::new(LinkMode::Healthy)),
            live: Arc::new(Mutex::new(Vec::new())),
            cuts: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (upstream, mode, live, cuts, stop) = (
            upstream.to_owned(),
            proxy.mode.clone(),
            proxy.live.clone(),
            proxy.cuts.clone(),
            proxy.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if *mode.lock().expect("link mode") == LinkMode::Down {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let carried = Arc::new(AtomicU64::new(0));
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let (mode, cuts, carried) = (mode.clone(), cuts.clone(), carried.clone());
                    std::thread::spawn(move || pump(from, to, &mode, &cuts, &carried));
                }
                let mut live = live.lock().expect("live connections");
                live.retain(|s| s.peer_addr().is_ok());
                live.extend([client, server]);
            }
        });
        proxy
    }

    /// Changes the mode; `Down` also closes every live connection.
    pub fn set_mode(&self, m: LinkMode) {
        *self.mode.lock().expect("link mode") = m;
        if m == LinkMode::Down {
            for s in self.live.lock().expect("live connections").drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Connections cut by `CutAfter` so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set_mode(LinkMode::Down);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Copies `from` to `to` until either side closes or the mode breaks the link.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: &Mutex<LinkMode>,
    cuts: &AtomicU64,
    carried: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let total = carried.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let m = *mode.lock().expect("link mode");
        match m {
            LinkMode::Down => break,
            LinkMode::CutAfter(limit) if total > limit => {
                // Half the chunk goes through: the peer sees a message cut short.
                let _ = to.write_all(&buf[..n / 2]);
                cuts.fetch_add(1, Ordering::Relaxed);
                break;
            }
            LinkMode::Latency(d) => std::thread::sleep(d),
            _ => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
