//! Reading replica objects, for restore and compaction alike. Object reads that
//! survive a bad network: a response that breaks off (an error, or an end before the
//! size the listing gave) is continued with a ranged GET from the last byte
//! received, as Litestream 0.5 does since its 55 GB restore failed on "unexpected
//! EOF". Bounded: [`ATTEMPTS`] broken responses per object, then the read fails
//! naming it. A GET refused outright is retried by the client
//! ([`crate::retry::Retrying`]) first; one that still fails transiently counts as a
//! broken response here.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use crate::retry::Backoff;

use tracing::warn;

use crate::client::{ByteStream, ReplicaClient};
use crate::error::{Chain, Op, StoreError};
use crate::key::Key;

/// Broken responses tolerated per object.
pub(crate) const ATTEMPTS: u32 = 10;

/// One object, read from `offset` on, with the retries counted across resumes.
pub(crate) struct Fetch {
    pub client: Arc<dyn ReplicaClient>,
    pub key: Key,
    /// The object's size from the listing.
    pub size: u64,
    pub failures: u32,
    backoff: Backoff,
}

impl Fetch {
    pub fn new(client: Arc<dyn ReplicaClient>, key: Key, size: u64) -> Self {
        Self {
            client,
            key,
            size,
            failures: 0,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        }
    }

    /// A stream of the object from `offset` (the whole object at 0).
    pub async fn open(&mut self, offset: u64) -> Result<ByteStream, StoreError> {
        self.get((offset > 0).then_some(offset..self.size)).await
    }

    /// The first `len` bytes of the object (a header), resumed and retried as a
    /// whole read is.
    pub async fn read_prefix(&mut self, len: u64) -> Result<Vec<u8>, StoreError> {
        use tokio::io::AsyncReadExt;
        let len = len.min(self.size);
        let mut out = Vec::with_capacity(len as usize);
        while (out.len() as u64) < len {
            let offset = out.len() as u64;
            let stream = self.get(Some(offset..len)).await?;
            let read = stream.take(len - offset).read_to_end(&mut out).await;
            match read {
                Ok(_) if out.len() as u64 >= len => break,
                Ok(_) => self.broke(out.len() as u64, None).await?,
                Err(e) => self.broke(out.len() as u64, Some(e)).await?,
            }
        }
        Ok(out)
    }

    /// A GET of `range`. One that still fails transiently after the client's own
    /// retries (a store that fails a third of its requests defeats five attempts now
    /// and then) counts as one more broken response of this object, so a restore
    /// rides out a bad stretch within the object's [`ATTEMPTS`] before it gives up.
    async fn get(&mut self, range: Option<std::ops::Range<u64>>) -> Result<ByteStream, StoreError> {
        loop {
            let failed = match self.client.get(&self.key, range.clone()).await {
                Err(e) if e.is_transient() => io::Error::other(Chain(&e).to_string()),
                r => return r,
            };
            let offset = range.as_ref().map_or(0, |r| r.start);
            self.broke(offset, Some(failed)).await?;
        }
    }

    /// A response that ended at `offset` before the object's end, or failed there
    /// with `err`: waits before it is resumed, or gives the error to report once
    /// [`ATTEMPTS`] failures are spent.
    pub async fn broke(&mut self, offset: u64, err: Option<io::Error>) -> Result<(), StoreError> {
        if self.failures >= ATTEMPTS {
            let detail = match err {
                Some(e) => format!(
                    "the response broke off at byte {offset} of {}: {}",
                    self.size,
                    Chain(&e)
                ),
                None => format!("the response ended at byte {offset} of {}", self.size),
            };
            return Err(StoreError::Transient {
                op: Op::Get,
                key: self.key.to_string(),
                source: format!("{detail}, after {ATTEMPTS} attempts").into(),
            });
        }
        let what = err.map_or_else(
            || "the response ended early".into(),
            |e| Chain(&e).to_string(),
        );
        self.failures += 1;
        warn!(key = %self.key, offset, size = self.size, attempt = self.failures, error = what, "read of a replica file broke off; resuming from where it stopped");
        tokio::time::sleep(self.backoff.next(None)).await;
        Ok(())
    }
}

/// A blocking `Read` over an object's byte stream, for use on the blocking pool; with
/// a `fetch`, a response that breaks off is resumed with a ranged GET.
pub(crate) struct StreamReader {
    handle: tokio::runtime::Handle,
    stream: ByteStream,
    /// The object read, for the error.
    key: String,
    fetch: Option<Fetch>,
    bytes: u64,
    /// Why the stream failed, as the GET's failure: the decoder only sees an I/O error.
    error: Option<StoreError>,
}

impl StreamReader {
    /// A reader of `stream` (the object at `key`), resumed through `fetch` if given.
    pub fn new(stream: ByteStream, key: &str, fetch: Option<Fetch>) -> Self {
        Self {
            handle: tokio::runtime::Handle::current(),
            stream,
            key: key.to_owned(),
            fetch,
            bytes: 0,
            error: None,
        }
    }

    /// Opens `key` (of `size` bytes) as a resuming reader.
    pub async fn open(
        client: Arc<dyn ReplicaClient>,
        key: Key,
        size: u64,
    ) -> Result<Self, StoreError> {
        let mut fetch = Fetch::new(client, key.clone(), size);
        let stream = fetch.open(0).await?;
        Ok(Self::new(stream, key.as_str(), Some(fetch)))
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// Why the stream failed, as the GET's failure (the reader's user saw only an
    /// I/O error).
    pub fn take_error(&mut self) -> Option<StoreError> {
        self.error.take()
    }

    /// Replaces a broken stream with one from the current offset, or gives the error
    /// to report.
    fn resume(&mut self, err: Option<std::io::Error>) -> std::io::Result<()> {
        let offset = self.bytes;
        let Some(fetch) = self.fetch.as_mut() else {
            let e = err.unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
            let copy = std::io::Error::new(e.kind(), e.to_string());
            self.error = Some(StoreError::from_io(Op::Get, &self.key, e));
            return Err(copy);
        };
        let resumed = self.handle.block_on(async {
            fetch.broke(offset, err).await?;
            fetch.open(offset).await
        });
        match resumed {
            Ok(s) => {
                self.stream = s;
                Ok(())
            }
            Err(e) => {
                let io = std::io::Error::other(Chain(&e).to_string());
                self.error = Some(e);
                Err(io)
            }
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let r = self
                .handle
                .block_on(tokio::io::AsyncReadExt::read(&mut self.stream, buf));
            match r {
                Ok(0)
                    if !buf.is_empty()
                        && self.fetch.as_ref().is_some_and(|f| self.bytes < f.size) =>
                {
                    self.resume(None)?
                }
                Ok(n) => {
                    self.bytes += n as u64;
                    return Ok(n);
                }
                Err(e) => self.resume(Some(e))?,
            }
        }
    }
}
