//! A store's link that a test can break, over either proxy: the fault classes it
//! injects (one at a time), a total outage, and recovery. The end-to-end fault
//! scenario walks through every class of the link its store uses.

use std::time::Duration;

use super::{Fault, FaultPlan, FaultProxy, LinkMode, TcpProxy};

pub trait FaultyLink {
    /// The address the replica URL should name instead of the store's.
    fn addr(&self) -> &str;
    /// The fault classes this link can inject, for [`FaultyLink::set`].
    fn classes(&self) -> Vec<&'static str>;
    /// Injects one class until the next call.
    fn set(&self, class: &str);
    /// Nothing reaches the store until [`FaultyLink::heal`].
    fn outage(&self);
    fn heal(&self);
    /// What was injected, for the test's report.
    fn summary(&self) -> String;
}

/// The HTTP proxy: one request in three gets the class's fault.
pub struct HttpLink(FaultProxy);

impl HttpLink {
    pub fn start(upstream: &str) -> HttpLink {
        HttpLink(FaultProxy::start(upstream, FaultPlan::HEALTHY))
    }
}

const HTTP_CLASSES: &[(&str, &[Fault])] = &[
    ("503 SlowDown", &[Fault::SlowDown, Fault::None, Fault::None]),
    ("500", &[Fault::ServerError, Fault::None, Fault::None]),
    (
        "429 Retry-After",
        &[Fault::TooMany, Fault::None, Fault::None],
    ),
    (
        "dropped before the store",
        &[Fault::DropBefore, Fault::None, Fault::None],
    ),
    (
        "applied, response lost",
        &[Fault::DropAfter, Fault::None, Fault::None],
    ),
    (
        "body cut short",
        &[Fault::CutBody, Fault::None, Fault::None],
    ),
    ("latency 150 ms", &[]),
];

impl FaultyLink for HttpLink {
    fn addr(&self) -> &str {
        &self.0.addr
    }

    fn classes(&self) -> Vec<&'static str> {
        HTTP_CLASSES.iter().map(|(name, _)| *name).collect()
    }

    fn set(&self, class: &str) {
        let (name, pattern) = HTTP_CLASSES
            .iter()
            .find(|(name, _)| *name == class)
            .unwrap_or_else(|| panic!("no HTTP fault class {class:?}"));
        let delay = if name.starts_with("latency") {
            Duration::from_millis(150)
        } else {
            Duration::ZERO
        };
        self.0.set_plan(FaultPlan {
            only: "",
            pattern,
            delay,
        });
    }

    fn outage(&self) {
        self.0.set_plan(FaultPlan::OUTAGE);
    }

    fn heal(&self) {
        self.0.set_plan(FaultPlan::HEALTHY);
    }

    fn summary(&self) -> String {
        let log = self.0.log();
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for entry in &log {
            let name = entry.fault.name();
            match counts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        }
        format!("{} requests, by fault: {counts:?}", log.len())
    }
}

/// The TCP proxy, for SFTP's one long-lived connection.
pub struct TcpLink(TcpProxy);

impl TcpLink {
    pub fn start(upstream: &str) -> TcpLink {
        TcpLink(TcpProxy::start(upstream))
    }
}

impl FaultyLink for TcpLink {
    fn addr(&self) -> &str {
        &self.0.addr
    }

    fn classes(&self) -> Vec<&'static str> {
        vec!["connection cut after 48 KiB", "latency 20 ms per chunk"]
    }

    fn set(&self, class: &str) {
        self.0.set_mode(match class {
            "connection cut after 48 KiB" => LinkMode::CutAfter(48 * 1024),
            "latency 20 ms per chunk" => LinkMode::Latency(Duration::from_millis(20)),
            _ => panic!("no TCP fault class {class:?}"),
        });
    }

    fn outage(&self) {
        self.0.set_mode(LinkMode::Down);
    }

    fn heal(&self) {
        self.0.set_mode(LinkMode::Healthy);
    }

    fn summary(&self) -> String {
        format!("{} connections cut mid-stream", self.0.cuts())
    }
}
