//! Gets: the file streamed through a channel, in chunks, as the reader asks.

use super::*;

/// Reads `[start, end)` (end `None` = to EOF) and sends the chunks down `tx`.
pub(crate) async fn pump(
    c: Arc<Conn>,
    handle: String,
    start: u64,
    end: Option<u64>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    _permit: OwnedSemaphorePermit,
) {
    let s = &c.sftp;
    let mut off = start;
    loop {
        let want = match end {
            Some(e) if off >= e => break,
            Some(e) => (e - off).min(CHUNK as u64),
            None => CHUNK as u64,
        };
        let len = u32::try_from(want).unwrap_or(CHUNK as u32);
        match s.read(handle.as_str(), off, len).await {
            Ok(d) if d.data.is_empty() => break,
            Ok(d) => {
                off += d.data.len() as u64;
                if tx.send(Ok(Bytes::from(d.data))).await.is_err() {
                    break;
                }
            }
            Err(e) if status_code(&e) == Some(StatusCode::Eof) => break,
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e))).await;
                break;
            }
        }
    }
    let _ = s.close(handle.as_str()).await;
}

/// An `AsyncRead` over chunks arriving on a channel; an error chunk fails the read.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
        }
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.cur.is_empty() {
                let n = self.cur.len().min(buf.remaining());
                let chunk = self.cur.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.cur = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
