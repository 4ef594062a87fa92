use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::memory::{ALL_CAPABILITIES, Faults, MemoryClient};

/// What the next call of [`Flaky`] fails with.
#[derive(Debug, Clone, Copy)]
enum Fail {
    Transient,
    Throttled(Option<Duration>),
    Denied,
}

/// A real in-memory store whose next calls fail as scripted, counting every call.
#[derive(Debug)]
struct Flaky {
    inner: MemoryClient,
    script: Mutex<VecDeque<Fail>>,
    calls: AtomicU32,
}

impl Flaky {
    fn new(script: &[Fail]) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryClient::new(ALL_CAPABILITIES, Faults::default()),
            script: Mutex::new(script.iter().copied().collect()),
            calls: AtomicU32::new(0),
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn check(&self, op: Op, key: &str) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let next = self.script.lock().expect("script").pop_front();
        let source = || Box::new(std::io::Error::other("scripted")) as _;
        match next {
            None => Ok(()),
            Some(Fail::Transient) => Err(StoreError::Transient {
                op,
                key: key.to_owned(),
                source: source(),
            }),
            Some(Fail::Throttled(retry_after)) => Err(StoreError::Throttled {
                op,
                key: key.to_owned(),
                retry_after,
                source: source(),
            }),
            Some(Fail::Denied) => Err(StoreError::PermissionDenied {
                op,
                key: key.to_owned(),
                detail: "scripted".into(),
            }),
        }
    }
}

#[async_trait]
impl ReplicaClient for Flaky {
    fn info(&self) -> &StoreInfo {
        self.inner.info()
    }
    fn set_file_mode(&self, mode: crate::file_mode::FileMode) {
        self.inner.set_file_mode(mode);
    }
    async fn put(&self, key: &Key, body: Payload, opts: &PutOptions) -> Result<(), StoreError> {
        self.check(Op::Put, key)?;
        self.inner.put(key, body, opts).await
    }
    async fn get(&self, key: &Key, range: Option<Range<u64>>) -> Result<ByteStream, StoreError> {
        self.check(Op::Get, key)?;
        self.inner.get(key, range).await
    }
    async fn head(&self, key: &Key) -> Result<ObjectInfo, StoreError> {
        self.check(Op::Head, key)?;
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        self.check(Op::List, prefix)?;
        self.inner.list(prefix, start_after).await
    }
    async fn delete_many(&self, keys: &[Key]) -> Result<(), StoreError> {
        self.check(Op::Delete, "")?;
        self.inner.delete_many(keys).await
    }
    async fn get_versioned(&self, key: &Key) -> Result<Versioned, StoreError> {
        self.check(Op::Get, key)?;
        self.inner.get_versioned(key).await
    }
    async fn put_if(
        &self,
        key: &Key,
        body: Bytes,
        expected: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.check(Op::Put, key)?;
        self.inner.put_if(key, body, expected).await
    }
}

fn retrying(flaky: &Arc<Flaky>) -> Retrying {
    Retrying::new(flaky.clone(), Policy::REQUEST)
}

fn key() -> Key {
    Key::from_static("0000/0000000000000001-0000000000000001.ltx")
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_until_the_request_succeeds() {
    let flaky = Flaky::new(&[Fail::Transient, Fail::Transient]);
    let client = retrying(&flaky);
    let opts = PutOptions::default();
    client
        .put(&key(), Payload::Bytes(Bytes::from_static(b"abc")), &opts)
        .await
        .expect("put after two failures");
    assert_eq!(flaky.calls(), 3);
    assert_eq!(flaky.inner.head(&key()).await.expect("stored").size, 3);
}

#[tokio::test(start_paused = true)]
async fn retries_are_bounded_and_the_last_error_is_returned() {
    let flaky = Flaky::new(&[Fail::Transient; 10]);
    let err = retrying(&flaky)
        .head(&key())
        .await
        .expect_err("never succeeds");
    assert!(err.is_transient(), "{err}");
    assert_eq!(flaky.calls(), Policy::REQUEST.attempts);
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_is_not_retried() {
    let flaky = Flaky::new(&[Fail::Denied]);
    let err = retrying(&flaky).head(&key()).await.expect_err("denied");
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err}");
    assert_eq!(flaky.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_throttling_store_is_waited_for_as_long_as_it_asks() {
    let flaky = Flaky::new(&[Fail::Throttled(Some(Duration::from_secs(7)))]);
    let start = tokio::time::Instant::now();
    let prefix = KeyPrefix::new("0000/").expect("prefix");
    retrying(&flaky).list(&prefix, None).await.expect("list");
    assert_eq!(flaky.calls(), 2);
    assert!(
        start.elapsed() >= Duration::from_secs(7),
        "{:?}",
        start.elapsed()
    );

    // Without Retry-After, a throttled request still waits a second, not 200 ms.
    let flaky = Flaky::new(&[Fail::Throttled(None)]);
    let start = tokio::time::Instant::now();
    retrying(&flaky).list(&prefix, None).await.expect("list");
    assert!(start.elapsed() >= THROTTLED_MIN, "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_compare_and_swap_is_never_resent() {
    let flaky = Flaky::new(&[Fail::Transient]);
    let err = retrying(&flaky)
        .put_if(&key(), Bytes::from_static(b"lease"), None)
        .await
        .expect_err("sent once");
    assert!(err.is_transient(), "{err}");
    assert_eq!(flaky.calls(), 1);
}

#[test]
fn backoff_doubles_with_jitter_up_to_its_cap_and_resets() {
    let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
    let mut steps = Vec::new();
    for _ in 0..6 {
        let step = b.current();
        let d = b.next(None);
        assert!(
            d >= step / 2 && d <= step,
            "{d:?} outside the upper half of {step:?}"
        );
        steps.push(step.as_millis());
    }
    assert_eq!(steps, [200, 400, 800, 1000, 1000, 1000]);
    b.reset();
    assert_eq!(b.current(), Duration::from_millis(200));
}

#[test]
fn a_store_cannot_ask_for_an_unbounded_wait() {
    let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
    let throttled = StoreError::Throttled {
        op: Op::Get,
        key: "k".into(),
        retry_after: Some(Duration::from_secs(3600)),
        source: Box::new(std::io::Error::other("slow down")),
    };
    assert_eq!(b.next(Some(&throttled)), RETRY_AFTER_MAX);
    // A backend loop that has not translated its failure gets the same floor.
    assert!(b.next_throttled(None) >= THROTTLED_MIN);
}

#[test]
fn retry_after_is_read_in_seconds() {
    assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
    assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    assert_eq!(parse_retry_after(""), None);
}
