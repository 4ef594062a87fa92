//! Points in a replication that a caller can ask for and wait on: the TXID that holds
//! everything committed so far ([`Monitor::commit_point`]), a read transaction on the
//! database at exactly a spooled TXID ([`Monitor::consistent_read`]), and the store's
//! arrival at a TXID ([`Monitor::wait_stored`]).
//!
//! Callers queue a [`Request`] in `Shared::requests` and wake the capture thread's
//! wait (as a WAL change would; where the WAL is polled, the request waits for the
//! next poll, at most [`IDLE_WAIT`](super::watch::IDLE_WAIT)); capture serves the queue
//! after its tick and answers on a oneshot channel. When capture ends the queue is closed, and every waiting caller gets
//! [`EngineError::Stopped`] instead of waiting forever. The shipper notifies
//! `Shared::uploaded` after each upload; [`Monitor::wait_stored`] reads the manifest
//! when woken.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{EngineError, Monitor};

/// A read transaction on the replicated database whose snapshot is exactly the state
/// of `txid`: it began while capture held the write lock with everything committed
/// spooled up to `txid`. Ends when `conn` is dropped (or `COMMIT`ted).
#[derive(Debug)]
pub struct ConsistentRead {
    pub txid: u64,
    pub conn: rusqlite::Connection,
}

/// What a caller asks of the capture thread.
#[derive(Debug)]
pub(crate) enum Request {
    /// The TXID that will hold every commit made before the request.
    CommitPoint(oneshot::Sender<Result<u64, EngineError>>),
    /// The same, and ship it at once instead of at the next sync interval.
    ShipNow(oneshot::Sender<Result<u64, EngineError>>),
    /// A [`ConsistentRead`] at the current end of the WAL.
    ConsistentRead(oneshot::Sender<Result<ConsistentRead, EngineError>>),
}

/// The queue of requests. Pushed by any caller; drained by capture after each tick
/// and closed by the capture thread's wrapper when capture returns.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    closed: bool,
    waiting: Vec<Request>,
}

impl Requests {
    /// Queues `r`, or hands it back if capture has ended.
    fn push(&self, r: Request) -> Result<(), Request> {
        match self.queue.lock() {
            Ok(mut q) if !q.closed => {
                q.waiting.push(r);
                Ok(())
            }
            _ => Err(r),
        }
    }

    /// Everything queued, for capture to serve: one uncontended lock per tick.
    pub(crate) fn take(&self) -> Vec<Request> {
        match self.queue.lock() {
            Ok(mut q) => std::mem::take(&mut q.waiting),
            Err(_) => Vec::new(),
        }
    }

    /// Capture has ended: nothing queued will be served, and nothing more is queued.
    /// Dropping the senders wakes their callers.
    pub(crate) fn close(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.closed = true;
            q.waiting.clear();
        }
    }
}

impl Monitor {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, EngineError>>) -> Request,
    ) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        if self.shared.requests.push(make(tx)).is_err() {
            return Err(self.stopped());
        }
        if let Ok(w) = self.shared.capture_waker.lock()
            && let Some(w) = w.as_ref()
        {
            w.wake();
        }
        rx.await.map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> EngineError {
        EngineError::Stopped {
            db: self.db.clone(),
        }
    }

    /// The TXID that holds every commit made to the database before this call. Capture
    /// answers after a look at the WAL (woken for it); no file is spooled and nothing
    /// is uploaded for it.
    pub async fn commit_point(&self) -> Result<u64, EngineError> {
        self.ask(Request::CommitPoint).await
    }

    /// A read transaction on the database at exactly the state of a TXID (see
    /// [`ConsistentRead`]). Capture takes SQLite's write lock for as long as it takes
    /// to spool what was committed since its last look (as its checkpoint barrier
    /// does), opens the read transaction, and releases the lock.
    pub async fn consistent_read(&self) -> Result<ConsistentRead, EngineError> {
        self.ask(Request::ConsistentRead).await
    }

    /// Waits until the store holds `txid` (or a later one), for at most `timeout`.
    pub async fn wait_stored(&self, txid: u64, timeout: Duration) -> Result<(), EngineError> {
        let deadline = Instant::now() + timeout;
        loop {
            let uploaded = self.shared.uploaded.notified();
            let remote = self.remote_txid();
            if remote >= txid {
                return Ok(());
            }
            if self.shared.failed.load(Ordering::Acquire) || self.lease_state.is_lost() {
                return Err(self.stopped());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(EngineError::NotStored {
                    db: self.db.clone(),
                    txid,
                    remote,
                    waited: timeout,
                });
            }
            // Woken by each upload; the cap notices a failure, which notifies nobody.
            let nap = (deadline - now).min(Duration::from_millis(250));
            let _ = tokio::time::timeout(nap, uploaded).await;
        }
    }

    /// Waits until everything committed before the call is in the store: about one
    /// sync interval later, with no extra upload. Returns the TXID that holds it.
    pub async fn sync(&self, timeout: Duration) -> Result<u64, EngineError> {
        let started = Instant::now();
        let txid = self.commit_point().await?;
        self.wait_stored(txid, timeout.saturating_sub(started.elapsed()))
            .await?;
        Ok(txid)
    }

    /// [`Monitor::sync`], but the upload starts at once instead of at the next sync
    /// interval (one more upload than the schedule would make).
    pub async fn sync_now(&self, timeout: Duration) -> Result<u64, EngineError> {
        let started = Instant::now();
        let txid = self.ask(Request::ShipNow).await?;
        self.wait_stored(txid, timeout.saturating_sub(started.elapsed()))
            .await?;
        Ok(txid)
    }

    /// The highest TXID in the store, as the replicator knows it.
    pub fn remote_txid(&self) -> u64 {
        self.manifest.lock().map(|m| m.replica_max()).unwrap_or(0)
    }
}
