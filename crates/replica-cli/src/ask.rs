//! Asking the running `replicate` process over its operator endpoint (`metrics_addr`),
//! as `status`, `sync` and `verify --against` do.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Sends `method path` (with its query) to the process at `addr` and reads the JSON
/// it answers, giving up after `timeout`.
pub async fn ask(
    addr: SocketAddr,
    method: Method,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, Value)> {
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&body).with_context(|| {
            format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )
        })?;
        Ok::<_, anyhow::Error>((status, value))
    };
    let route = path.split('?').next().unwrap_or(path);
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
        .with_context(|| format!("asking the replicate process at http://{addr}{route}"))
}

/// `path?k=v&…`, with the values escaped.
pub fn with_query<'a>(path: &str, pairs: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, &v);
    }
    let q = q.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}
