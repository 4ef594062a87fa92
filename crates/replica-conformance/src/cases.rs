//! The conformance cases. Each takes a client rooted at a fresh, empty prefix (the
//! suite's factory guarantees it and every case checks it), panics with a message naming
//! the operation that misbehaved, and on success deletes what it wrote.
//!
//! A case that needs a capability ([`Needs`]) fails at once, saying so, when the client
//! does not declare it: the only way not to run it is an explicit, reasoned `skip:` in
//! [`conformance_suite!`](crate::conformance_suite). Sub-checks tied to a capability
//! (ranges inside other cases, `list` timestamps) run only when it is declared.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use replica_core::client::{Capabilities, Payload, PutMode, ReplicaClient};
use replica_core::error::StoreError;

use crate::support::{
    MIB, Store, assert_recent, create_only, describe, key, overwrite, pattern, payload, race,
    stored_ms, unix_ms, verify_pattern, with_timestamp, write_pattern_file,
};

/// What a case needs beyond the trait's required behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Every backend must pass the case.
    Nothing,
    /// [`Capabilities::create_only`].
    CreateOnly,
    /// [`Capabilities::ranged_get`].
    RangedGet,
    /// The `permission_denied:` hook of the macro.
    PermissionHook,
}

impl Needs {
    pub fn met_by(self, caps: &Capabilities) -> bool {
        match self {
            Needs::Nothing | Needs::PermissionHook => true,
            Needs::CreateOnly => caps.create_only,
            Needs::RangedGet => caps.ranged_get,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Needs::Nothing => "nothing",
            Needs::CreateOnly => "capability create_only",
            Needs::RangedGet => "capability ranged_get",
            Needs::PermissionHook => "the permission_denied hook",
        }
    }
}

/// One case of the suite.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub needs: Needs,
}

const fn case(name: &'static str, needs: Needs) -> Case {
    Case { name, needs }
}

/// Every case, in the order the macro generates them.
pub const ALL: &[Case] = &[
    case("round_trip", Needs::Nothing),
    case("overwrite_replaces", Needs::Nothing),
    case("empty_object", Needs::Nothing),
    case("ranged_get", Needs::RangedGet),
    case("list_by_prefix", Needs::Nothing),
    case("list_start_after", Needs::Nothing),
    case("list_paging", Needs::Nothing),
    case("delete_many_missing_keys", Needs::Nothing),
    case("delete_many_over_a_thousand", Needs::Nothing),
    case("escaped_keys", Needs::Nothing),
    case("large_object", Needs::Nothing),
    case("large_object_create_only", Needs::CreateOnly),
    case("prefix_isolation", Needs::Nothing),
    case("not_found", Needs::Nothing),
    case("missing_payload_file", Needs::Nothing),
    case("timestamp_round_trip", Needs::Nothing),
    case("ltx_time_is_never_store_time", Needs::Nothing),
    case("create_only_existing", Needs::CreateOnly),
    case("create_only_race", Needs::CreateOnly),
    case("conditional_put", Needs::Nothing),
    case("conditional_put_race", Needs::Nothing),
    case("permission_denied", Needs::PermissionHook),
];

/// Fails the case unless the client declares what it needs.
fn require(c: &dyn ReplicaClient, name: &str) {
    let case = ALL
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("internal: case {name} is missing from cases::ALL"));
    assert!(
        case.needs.met_by(&c.info().capabilities),
        "case {name} needs {}, which backend {} does not declare ({:?}). If that is \
         right, list it in conformance_suite! as `skip: {{ {name}: \"<reason>\" }}`; \
         cases are never skipped silently",
        case.needs.describe(),
        c.info().scheme,
        c.info().capabilities
    );
}

async fn start(client: Arc<dyn ReplicaClient>, name: &str) -> Store {
    require(&*client, name);
    let store = Store::new(client);
    store.assert_fresh().await;
    store
}

const LTX_KEY: &str = "ltx/0/0000000000000001-0000000000000001.ltx";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Put (bytes and file payloads), get, head, list and delete of a few objects.
pub async fn round_trip(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "round_trip").await;
    assert!(!s.c.info().scheme.is_empty(), "info().scheme is empty");
    assert!(
        !s.c.info().redacted_url.is_empty(),
        "info().redacted_url is empty"
    );

    s.put_bytes(LTX_KEY, b"hello world").await;
    assert_eq!(s.get(LTX_KEY, None).await, b"hello world", "get after put");
    let info = s.head(LTX_KEY).await;
    assert_eq!(info.size, 11, "head size after put");
    assert_recent(
        info.ltx_time.or(info.last_modified),
        "head of an object put without a timestamp",
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("spool");
    std::fs::write(&src, b"from a file").expect("write payload file");
    let file_key = "snapshots/from-file";
    s.put(file_key, Payload::File(src), &overwrite()).await;
    assert_eq!(s.get(file_key, None).await, b"from a file", "file payload");
    assert_eq!(s.head(file_key).await.size, 11, "head size of file payload");

    let listed = s.list("", None).await;
    let got: Vec<(&str, u64)> = listed.iter().map(|o| (o.key.as_str(), o.size)).collect();
    assert_eq!(got, [(LTX_KEY, 11), (file_key, 11)], "list after two puts");
    if s.c.info().capabilities.list_has_ltx_time {
        for info in &listed {
            assert_recent(
                info.ltx_time.or(info.last_modified),
                &format!("list entry {}", info.key),
            );
        }
    }

    s.delete(&[LTX_KEY.to_owned()]).await;
    s.assert_not_found(LTX_KEY, "after delete_many").await;
    assert_eq!(s.keys("", None).await, [file_key], "list after delete");
    s.delete(&[file_key.to_owned()]).await;
    assert!(s.keys("", None).await.is_empty(), "list after deleting all");
}

/// Overwriting puts replace the whole object, whether shorter or longer, from bytes or
/// from a file.
pub async fn overwrite_replaces(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "overwrite_replaces").await;
    let key = "dir/object";
    s.put_bytes(key, b"0123456789abcdef").await;
    s.put_bytes(key, b"xyz").await;
    assert_eq!(
        s.get(key, None).await,
        b"xyz",
        "a shorter overwrite leaves no tail"
    );
    assert_eq!(
        s.head(key).await.size,
        3,
        "head size after shorter overwrite"
    );
    let listed = s.list("", None).await;
    assert_eq!(listed.len(), 1, "one object after overwrites: {listed:?}");
    assert_eq!(listed[0].size, 3, "list size after shorter overwrite");

    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("spool");
    let long = pattern(7, 0..100_000);
    std::fs::write(&src, &long).expect("write payload file");
    s.put(key, Payload::File(src), &overwrite()).await;
    assert!(s.get(key, None).await == long, "overwrite from a file");
    assert_eq!(
        s.head(key).await.size,
        100_000,
        "head size after longer overwrite"
    );
    s.cleanup().await;
}

/// Zero-byte objects from bytes and from a file.
pub async fn empty_object(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "empty_object").await;
    s.put_bytes("empty/bytes", b"").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("empty");
    std::fs::write(&src, b"").expect("write payload file");
    s.put("empty/file", Payload::File(src), &overwrite()).await;
    for key in ["empty/bytes", "empty/file"] {
        assert!(s.get(key, None).await.is_empty(), "get {key}");
        assert_eq!(s.head(key).await.size, 0, "head {key}");
        if s.c.info().capabilities.ranged_get {
            assert!(
                s.get(key, Some(0..10)).await.is_empty(),
                "{key} range 0..10"
            );
            assert!(s.get(key, Some(0..0)).await.is_empty(), "{key} range 0..0");
        }
    }
    let listed = s.list("empty/", None).await;
    assert_eq!(listed.len(), 2, "list of empty objects: {listed:?}");
    assert!(listed.iter().all(|o| o.size == 0), "list sizes: {listed:?}");
    s.cleanup().await;
}

/// Half-open byte ranges at the start, middle and end, whole, empty and past the end
/// (cut short; nothing when the range starts at or past the end).
pub async fn ranged_get(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "ranged_get").await;
    let data = pattern(42, 0..1000);
    s.put_bytes("r", &data).await;
    let cases: &[(u64, u64, std::ops::Range<usize>)] = &[
        (0, 1, 0..1),
        (0, 100, 0..100),
        (450, 550, 450..550),
        (900, 1000, 900..1000),
        (999, 1000, 999..1000),
        (0, 1000, 0..1000),
        (990, 2000, 990..1000),
        (10, u64::MAX, 10..1000),
        (7, 7, 0..0),
        (1000, 1000, 0..0),
        (1000, 1010, 0..0),
        (5000, 6000, 0..0),
    ];
    for (start, end, want) in cases {
        let got = s.get("r", Some(*start..*end)).await;
        assert!(
            got == data[want.clone()],
            "range {start}..{end} of a 1000-byte object: got {} bytes, expected bytes \
             {want:?}",
            got.len()
        );
    }
    match s.c.get(&key("missing"), Some(0..10)).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "missing"),
        Err(e) => panic!(
            "ranged get of a missing key should be NotFound, got {}",
            describe(&e)
        ),
        Ok(_) => panic!("ranged get of a missing key succeeded"),
    }
    s.cleanup().await;
}

/// Keys chosen so that directory-walk order and byte order differ (`-` < `/` < `0`), in
/// both layouts (`ltx/<level>/…`, `<level %04x>/…`).
const LIST_KEYS: &[&str] = &[
    "a-b",
    "a/b",
    "a/c/d",
    "a0",
    "ltx/0/0000000000000001-0000000000000001.ltx",
    "ltx/0/0000000000000002-0000000000000002.ltx",
    "ltx/0/0000000000000010-0000000000000010.ltx",
    "ltx/1/0000000000000001-0000000000000002.ltx",
    "ltx/9/0000000000000001-0000000000000010.ltx",
    "lock.json",
    "0000/0000000000000001-0000000000000001.ltx",
    "0009/0000000000000001-0000000000000003.ltx",
];

/// What `list(prefix, after)` must return for `all`.
fn model(all: &[&str], prefix: &str, after: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = all
        .iter()
        .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| **k > a))
        .map(|k| k.to_string())
        .collect();
    v.sort();
    v
}

async fn put_keys_as_bodies(s: &Store, keys: &[&str]) {
    s.put_many(
        keys.iter()
            .map(|k| (k.to_string(), Bytes::copy_from_slice(k.as_bytes())))
            .collect(),
    )
    .await;
}

/// Listing by prefix: empty, directory-like, ending inside a name, nested, absent.
pub async fn list_by_prefix(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "list_by_prefix").await;
    put_keys_as_bodies(&s, LIST_KEYS).await;

    let mut sorted = strings(LIST_KEYS);
    sorted.sort();
    assert_eq!(
        s.keys("", None).await,
        sorted,
        "empty prefix lists everything"
    );
    assert_eq!(
        s.keys("ltx/0/000000000000000", None).await,
        [
            "ltx/0/0000000000000001-0000000000000001.ltx",
            "ltx/0/0000000000000002-0000000000000002.ltx",
        ],
        "a prefix ending inside a name"
    );
    assert_eq!(
        s.keys("a", None).await,
        ["a-b", "a/b", "a/c/d", "a0"],
        "a one-letter prefix, in byte order"
    );
    assert_eq!(
        s.keys("ltx/", None).await.len(),
        5,
        "recurses below the prefix"
    );
    for prefix in [
        "a/",
        "a/c",
        "a/c/",
        "a-",
        "l",
        "ltx",
        "ltx/0/",
        "ltx/1",
        "ltx/7/",
        "lock.json",
        "lock.json/",
        "0",
        "000",
        "0009/",
        "0009/0000000000000001-",
        "zzz",
        "b",
    ] {
        assert_eq!(
            s.keys(prefix, None).await,
            model(LIST_KEYS, prefix, None),
            "prefix {prefix:?}"
        );
    }

    for info in s.list("", None).await {
        assert_eq!(
            info.size,
            info.key.len() as u64,
            "list size of {}",
            info.key
        );
        if s.c.info().capabilities.list_has_ltx_time {
            assert_recent(
                info.ltx_time.or(info.last_modified),
                &format!("list entry {}", info.key),
            );
        }
    }
    s.cleanup().await;
}

/// `start_after` is exclusive, need not name an existing key, and combines with prefixes.
pub async fn list_start_after(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "list_start_after").await;
    put_keys_as_bodies(&s, LIST_KEYS).await;

    assert_eq!(
        s.keys(
            "ltx/0/",
            Some("ltx/0/0000000000000001-0000000000000001.ltx")
        )
        .await,
        [
            "ltx/0/0000000000000002-0000000000000002.ltx",
            "ltx/0/0000000000000010-0000000000000010.ltx",
        ],
        "start_after an existing key is exclusive"
    );
    assert_eq!(
        s.keys("", Some("ltx/0/z")).await,
        [
            "ltx/1/0000000000000001-0000000000000002.ltx",
            "ltx/9/0000000000000001-0000000000000010.ltx",
        ],
        "start_after a key that does not exist"
    );
    let afters = [
        "",
        "0",
        "0009/",
        "a",
        "a/b",
        "a/c",
        "a0",
        "lock.json",
        "ltx/",
        "ltx/0/0000000000000001-0000000000000001.ltx",
        "ltx/0/0000000000000010-0000000000000010.ltx",
        "ltx/0/z",
        "ltx/9/0000000000000001-0000000000000010.ltx",
        "zzzz",
    ];
    for prefix in ["", "a", "a/", "ltx/", "ltx/0/", "0"] {
        for after in afters {
            assert_eq!(
                s.keys(prefix, Some(after)).await,
                model(LIST_KEYS, prefix, Some(after)),
                "prefix {prefix:?} start_after {after:?}"
            );
        }
    }
    s.cleanup().await;
}

const PAGED: usize = 1_100;

fn paged_key(prefix: &str, i: usize) -> String {
    format!("{prefix}/{i:05}")
}

/// More objects than one page (S3 returns at most 1,000 keys per request): every one is
/// listed, once, in order, also when `start_after` or a prefix cuts a page.
pub async fn list_paging(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "list_paging").await;
    let keys: Vec<String> = (0..PAGED).map(|i| paged_key("page", i)).collect();
    let mut items: Vec<(String, Bytes)> = keys
        .iter()
        .map(|k| (k.clone(), Bytes::from_static(b"x")))
        .collect();
    // Neighbours that sort just before and after the prefix and must not be listed.
    for k in ["pagd/x", "page-", "page0", "pagf/x"] {
        items.push((k.to_owned(), Bytes::from_static(b"y")));
    }
    s.put_many(items).await;

    let listed = s.list("page/", None).await;
    assert_eq!(
        listed.len(),
        PAGED,
        "list of {PAGED} objects below one prefix"
    );
    let got: Vec<String> = listed.iter().map(|o| o.key.clone()).collect();
    assert!(got == keys, "{PAGED} objects listed in order, each once");
    assert!(listed.iter().all(|o| o.size == 1), "list sizes");

    assert_eq!(
        s.keys("page/", Some(&keys[999])).await,
        keys[1000..],
        "start_after the 1,000th key"
    );
    assert_eq!(
        s.keys("page/", Some(&keys[0])).await,
        keys[1..],
        "start_after the first key"
    );
    assert_eq!(
        s.keys("page/", Some("page/")).await,
        keys,
        "start_after the prefix itself"
    );
    assert_eq!(
        s.keys("page/00", None).await,
        keys[..1000],
        "a prefix matching exactly 1,000 keys"
    );
    assert_eq!(s.keys("page/010", None).await, keys[1000..], "the tail");
    assert_eq!(
        s.keys("page/000", None).await,
        keys[..100],
        "a partial name"
    );
    let all = s.keys("", None).await;
    assert_eq!(all.len(), PAGED + 4, "empty prefix lists everything");
    assert_eq!(s.keys("page", None).await.len(), PAGED + 2, "prefix 'page'");
    s.cleanup().await;
}

/// Keys that do not exist, including under absent "directories" or under an existing
/// object, are not an error; other keys in the same call are still deleted.
pub async fn delete_many_missing_keys(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "delete_many_missing_keys").await;
    put_keys_as_bodies(&s, &["a/1", "a/2", "b/3"]).await;
    s.delete(&strings(&[
        "a/1",
        "a/missing",
        "nodir/missing",
        "b/3",
        "a/2/under-an-object",
    ]))
    .await;
    assert_eq!(s.keys("", None).await, ["a/2"], "after a mixed delete");
    s.delete(&[]).await;
    s.delete(&strings(&["a/1", "b/3"])).await;
    assert_eq!(
        s.keys("", None).await,
        ["a/2"],
        "deleting deleted keys again"
    );
    assert_eq!(s.get("a/2", None).await, b"a/2", "the survivor is intact");
    s.cleanup().await;
}

/// One call with more keys than one S3 DeleteObjects request takes (1,000), existing and
/// missing mixed; neighbours survive.
pub async fn delete_many_over_a_thousand(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "delete_many_over_a_thousand").await;
    let keys: Vec<String> = (0..PAGED).map(|i| paged_key("del", i)).collect();
    let mut items: Vec<(String, Bytes)> = keys
        .iter()
        .map(|k| (k.clone(), Bytes::from_static(b"x")))
        .collect();
    for k in ["keep/a", "keep/b", "del-keep"] {
        items.push((k.to_owned(), Bytes::from_static(b"k")));
    }
    s.put_many(items).await;
    assert_eq!(s.keys("del/", None).await.len(), PAGED, "all created");

    let mut request = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        request.push(k.clone());
        if i % 20 == 0 {
            request.push(format!("del/missing-{i:05}"));
        }
    }
    assert!(request.len() > PAGED);
    s.delete(&request).await;
    let left = s.keys("del/", None).await;
    assert!(
        left.is_empty(),
        "{} of {} keys survived one delete_many (first {:?})",
        left.len(),
        PAGED,
        left.first()
    );
    assert_eq!(
        s.keys("", None).await,
        ["del-keep", "keep/a", "keep/b"],
        "keys not named survive"
    );
    s.cleanup().await;
}

/// Keys a URL-based store must escape (and must not decode twice, nor treat `+` as a
/// space), non-ASCII keys, and both layouts' LTX keys.
pub const ESCAPED_KEYS: &[&str] = &[
    "sp ace/file name.ltx",
    "plus+sign",
    "a+b/c d",
    "percent%20literal",
    "percent%2Fslash",
    "100%",
    "question?mark",
    "hash#tag",
    "amp&ersand=x",
    "eq=ual&q?x#y",
    "tilde~/x~y",
    "punct/!$'()*,;:@[]",
    "ünïcödé/日本語",
    "emoji/🦀 crab",
    "ltx/0/0000000000000001-0000000000000001.ltx",
    "0009/0000000000000001-00000000000000ff.ltx",
];

pub async fn escaped_keys(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "escaped_keys").await;
    let long = format!("long/{}", "x".repeat(180));
    let mut all: Vec<&str> = ESCAPED_KEYS.to_vec();
    all.push(&long);
    for k in &all {
        s.put_bytes(k, k.as_bytes()).await;
        assert_eq!(s.get(k, None).await, k.as_bytes(), "get {k:?}");
        assert_eq!(s.head(k).await.size, k.len() as u64, "head {k:?}");
    }
    let mut sorted = strings(&all);
    sorted.sort();
    let listed = s.list("", None).await;
    let got: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(got, sorted, "list returns the keys exactly as put");
    for info in &listed {
        assert_eq!(
            info.size,
            info.key.len() as u64,
            "list size of {:?}",
            info.key
        );
    }
    for prefix in [
        "sp ace/",
        "sp ace/file n",
        "plus+",
        "a+b/",
        "a b",
        "percent%2",
        "percent%2F",
        "percent/",
        "100%",
        "question?",
        "hash#",
        "amp&",
        "eq=ual&q?x#",
        "tilde~/",
        "punct/!$",
        "ünï",
        "ü",
        "emoji/🦀",
        "0009/",
        "p",
    ] {
        assert_eq!(
            s.keys(prefix, None).await,
            model(&all, prefix, None),
            "prefix {prefix:?}"
        );
    }
    for after in [
        "hash#tag",
        "plus+sign",
        "percent%20literal",
        "ünïcödé/",
        "a+b/c d",
    ] {
        assert_eq!(
            s.keys("", Some(after)).await,
            model(&all, "", Some(after)),
            "start_after {after:?}"
        );
    }
    s.delete(&strings(&all)).await;
    let left = s.keys("", None).await;
    assert!(left.is_empty(), "delete_many left {left:?}");
}

const LARGE_LEN: u64 = 24 * MIB + 12_345;

/// A 24 MiB object (above the 8 MiB at which a backend may switch to multipart), put
/// from a file with a timestamp, streamed back and compared as it arrives.
pub async fn large_object(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "large_object").await;
    let seed: u64 = rand::random();
    let dir = tempfile::tempdir().expect("tempdir");
    let src = write_pattern_file(dir.path(), "large", seed, LARGE_LEN);
    let ts = UNIX_EPOCH + Duration::from_millis(1_700_000_000_321);
    let key = "0009/0000000000000001-0000000000000400.ltx";
    s.put(
        key,
        Payload::File(src),
        &with_timestamp(PutMode::Overwrite, ts),
    )
    .await;

    let info = s.head(key).await;
    assert_eq!(info.size, LARGE_LEN, "head size of the large object");
    assert_eq!(
        info.ltx_time.map(unix_ms),
        Some(stored_ms(s.c.info().timestamp_precision, ts)),
        "the timestamp of a large (possibly multipart) put"
    );
    let listed = s.list("", None).await;
    assert_eq!(listed.len(), 1, "list: {listed:?}");
    assert_eq!(listed[0].size, LARGE_LEN, "list size of the large object");
    verify_pattern(&s, key, None, seed, 0..LARGE_LEN).await;

    if s.c.info().capabilities.ranged_get {
        let boundary = 8 * MIB;
        for r in [
            boundary - 10..boundary + 10,
            5 * MIB..17 * MIB + 3,
            LARGE_LEN - 100..LARGE_LEN,
        ] {
            verify_pattern(&s, key, Some(r.clone()), seed, r).await;
        }
        verify_pattern(
            &s,
            key,
            Some(LARGE_LEN - 5..LARGE_LEN + 5),
            seed,
            LARGE_LEN - 5..LARGE_LEN,
        )
        .await;
    }
    s.cleanup().await;
}

/// Create-only on the large-object path: S3 needs `If-None-Match` on
/// CompleteMultipartUpload too, or a create-only multipart put silently overwrites.
pub async fn large_object_create_only(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "large_object_create_only").await;
    let (first, second): (u64, u64) = (rand::random(), rand::random());
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_pattern_file(dir.path(), "a", first, LARGE_LEN);
    let b = write_pattern_file(dir.path(), "b", second, LARGE_LEN - 1000);
    let key = "0009/0000000000000001-0000000000000800.ltx";
    s.put(key, Payload::File(a), &create_only()).await;
    match s
        .c
        .put(&self::key(key), Payload::File(b), &create_only())
        .await
    {
        Err(StoreError::AlreadyExists { key: k }) => {
            assert_eq!(k, key, "AlreadyExists names another key")
        }
        Err(e) => panic!(
            "a second large create-only put should fail with AlreadyExists, got {}",
            describe(&e)
        ),
        Ok(()) => panic!("a second large create-only put of an existing key succeeded"),
    }
    assert_eq!(s.head(key).await.size, LARGE_LEN, "the first put's size");
    verify_pattern(&s, key, None, first, 0..LARGE_LEN).await;
    s.cleanup().await;
}

/// Two fresh clients do not see, overwrite or delete each other's objects.
pub async fn prefix_isolation(first: Arc<dyn ReplicaClient>, second: Arc<dyn ReplicaClient>) {
    let a = start(first, "prefix_isolation").await;
    let b = start(second, "prefix_isolation").await;
    a.put_bytes("shared/key", b"from a").await;
    a.put_bytes("only-a", b"a").await;
    b.put_bytes("shared/key", b"from b").await;

    assert_eq!(
        a.keys("", None).await,
        ["only-a", "shared/key"],
        "first lists"
    );
    assert_eq!(b.keys("", None).await, ["shared/key"], "second lists");
    assert_eq!(a.get("shared/key", None).await, b"from a", "first reads");
    assert_eq!(b.get("shared/key", None).await, b"from b", "second reads");
    b.assert_not_found("only-a", "the second client").await;

    b.delete(&strings(&["shared/key", "only-a"])).await;
    assert_eq!(
        a.keys("", None).await,
        ["only-a", "shared/key"],
        "the second client's delete_many reached the first's objects"
    );
    assert_eq!(a.get("shared/key", None).await, b"from a", "first reads");
    a.cleanup().await;
}

/// Missing keys: `get` and `head` fail with NotFound naming the key (also for a key
/// that is only a "directory" of others); deleting and listing them is fine.
pub async fn not_found(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "not_found").await;
    match s.c.get(&key("nope"), None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "nope", "NotFound's key"),
        Err(e) => panic!(
            "get of a missing key: expected NotFound, got {}",
            describe(&e)
        ),
        Ok(_) => panic!("get of a missing key succeeded"),
    }
    s.assert_not_found("ltx/0/nope", "a missing key").await;

    s.put_bytes("nf/dir/x", b"x").await;
    s.assert_not_found("nf/dir", "a key that is a 'directory' of another")
        .await;
    s.assert_not_found("nf", "a key that is a 'directory' of another")
        .await;
    s.assert_not_found("nf/dir/xx", "a key extending an object's")
        .await;
    match s.c.get(&key("nf/dir"), None).await {
        Err(StoreError::NotFound { key }) => assert_eq!(key, "nf/dir", "NotFound's key"),
        Err(e) => panic!(
            "get of a 'directory' key: expected NotFound, got {}",
            describe(&e)
        ),
        Ok(_) => panic!("get of a 'directory' key succeeded"),
    }
    s.delete(&strings(&["nope", "nf/dir/missing"])).await;
    assert!(
        s.keys("nope", None).await.is_empty(),
        "list of a missing key"
    );
    assert!(s.keys("no-such-dir/", None).await.is_empty(), "missing dir");
    assert_eq!(
        s.keys("", None).await,
        ["nf/dir/x"],
        "nothing else appeared"
    );
    s.cleanup().await;
}

/// A put whose payload file is missing fails, but not as NotFound (which would read as
/// a missing object) nor as Transient (retrying cannot help), names the key, and
/// leaves nothing behind.
pub async fn missing_payload_file(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "missing_payload_file").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("no-such-spool");
    let key = "ltx/0/0000000000000003-0000000000000003.ltx";
    let mut modes = vec![overwrite()];
    if s.c.info().capabilities.create_only {
        modes.push(create_only());
    }
    for opts in &modes {
        match s
            .c
            .put(&self::key(key), Payload::File(src.clone()), opts)
            .await
        {
            Ok(()) => panic!("put from a missing file ({:?}) succeeded", opts.mode),
            Err(e) => {
                assert!(
                    !e.is_not_found() && !e.is_transient(),
                    "put from a missing file ({:?}) must fail permanently and not as \
                     NotFound, got {}",
                    opts.mode,
                    describe(&e)
                );
                assert!(
                    e.to_string().contains(key),
                    "the error does not name the key: {}",
                    describe(&e)
                );
            }
        }
        s.assert_not_found(key, "after a failed put").await;
    }
    assert!(
        s.keys("", None).await.is_empty(),
        "a failed put left objects"
    );
    if s.c.info().capabilities.create_only {
        // A failed create-only put must not leave the key reserved.
        s.put(key, payload(b"ok"), &create_only()).await;
        assert_eq!(s.get(key, None).await, b"ok");
    }
    s.cleanup().await;
}

/// `PutOptions::timestamp` comes back from `head` (and `list`, when the backend says
/// so) exact to the backend's declared `timestamp_precision` (a millisecond unless it
/// says otherwise), through every kind of put; a later put without one
/// does not keep the old time.
pub async fn timestamp_round_trip(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "timestamp_round_trip").await;
    let caps = s.c.info().capabilities;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("spool");
    std::fs::write(&src, b"from a file").expect("write payload file");

    let t1 = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let t2 = UNIX_EPOCH + Duration::from_millis(1_600_000_000_001);
    let t3 = UNIX_EPOCH + Duration::from_millis(1_234_567_890_000);
    let mut expect: Vec<(String, SystemTime)> = Vec::new();
    for (i, (mode, body, ts)) in [
        (PutMode::Overwrite, payload(b"bytes"), t1),
        (PutMode::Overwrite, Payload::File(src.clone()), t2),
        (PutMode::CreateOnly, payload(b"create"), t3),
        (PutMode::CreateOnly, Payload::File(src.clone()), t1),
    ]
    .into_iter()
    .enumerate()
    {
        if mode == PutMode::CreateOnly && !caps.create_only {
            continue;
        }
        let key = format!("ts/{i}");
        s.put(&key, body, &with_timestamp(mode, ts)).await;
        expect.push((key, ts));
    }
    // Overwriting with a new timestamp replaces it.
    s.put(
        "ts/0",
        payload(b"again"),
        &with_timestamp(PutMode::Overwrite, t3),
    )
    .await;
    expect[0].1 = t3;

    for (key, ts) in &expect {
        let created = s.head(key).await.ltx_time;
        assert_eq!(
            created.map(unix_ms),
            Some(stored_ms(s.c.info().timestamp_precision, *ts)),
            "head {key}: created {created:?}, put with timestamp {ts:?}"
        );
    }
    if caps.list_has_ltx_time {
        let listed = s.list("ts/", None).await;
        assert_eq!(listed.len(), expect.len(), "list: {listed:?}");
        for (info, (key, ts)) in listed.iter().zip(&expect) {
            assert_eq!(&info.key, key);
            assert_eq!(
                info.ltx_time.map(unix_ms),
                Some(stored_ms(s.c.info().timestamp_precision, *ts)),
                "list entry {key}: created {:?}, put with timestamp {ts:?}",
                info.ltx_time
            );
        }
    }

    // Without a timestamp the store's own time is reported, not the previous one.
    s.put_bytes("ts/0", b"no timestamp").await;
    assert_recent(
        {
            let i = s.head("ts/0").await;
            i.ltx_time.or(i.last_modified)
        },
        "head after overwriting a timestamped object without a timestamp",
    );
    s.cleanup().await;
}

/// The LTX time and the store's own time are different facts: point-in-time restore
/// plans on the first, so a backend must never report its upload time as the LTX time
/// (an S3 listing that did so made `--timestamp` restores stop at upload times). Objects
/// are put with LTX times long past; every `head` and `list` entry reports exactly
/// that time as `ltx_time` (or none, where the listing cannot carry it), and a
/// `last_modified`, when given, is the store's recent clock.
pub async fn ltx_time_is_never_store_time(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "ltx_time_is_never_store_time").await;
    let info = s.c.info().clone();
    let precision = info.timestamp_precision;
    let past = UNIX_EPOCH + Duration::from_millis(1_000_000_000_123);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("spool");
    std::fs::write(&src, b"from a file").expect("write payload file");
    let puts = [
        (
            "ltx/0/0000000000000001-0000000000000001.ltx",
            payload(b"bytes"),
        ),
        (
            "ltx/1/0000000000000001-0000000000000002.ltx",
            Payload::File(src),
        ),
    ];
    for (i, (k, body)) in puts.into_iter().enumerate() {
        let at = past + Duration::from_secs(i as u64);
        s.put(k, body, &with_timestamp(PutMode::Overwrite, at))
            .await;
    }
    let expect = |i: usize| stored_ms(precision, past + Duration::from_secs(i as u64));
    for (i, entry) in s.list("", None).await.iter().enumerate() {
        match entry.ltx_time {
            Some(t) => assert_eq!(
                unix_ms(t),
                expect(i),
                "list entry {}: ltx_time {t:?} is not the LTX time it was put with",
                entry.key
            ),
            None => assert!(
                !info.capabilities.list_has_ltx_time,
                "list entry {}: no ltx_time, but the backend declares list_has_ltx_time",
                entry.key
            ),
        }
        if entry.last_modified.is_some() {
            assert_recent(
                entry.last_modified,
                &format!("list entry {} last_modified", entry.key),
            );
        }
        let head = s.head(&entry.key).await;
        assert_eq!(
            head.ltx_time.map(unix_ms),
            Some(expect(i)),
            "head {}: ltx_time is not the LTX time it was put with",
            entry.key
        );
        if head.last_modified.is_some() {
            assert_recent(
                head.last_modified,
                &format!("head {} last_modified", entry.key),
            );
        }
    }
    s.cleanup().await;
}

/// A create-only put of an existing key fails with AlreadyExists naming it and leaves
/// the object as it was, whoever wrote it and from whatever payload.
pub async fn create_only_existing(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "create_only_existing").await;
    let key = "lock/k";
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("spool");
    std::fs::write(&src, b"from a file").expect("write payload file");

    let refused = async |body: Payload, keep: &[u8], what: &str| {
        match s.c.put(&self::key(key), body, &create_only()).await {
            Err(StoreError::AlreadyExists { key: k }) => {
                assert_eq!(k, key, "{what}: AlreadyExists names another key")
            }
            Err(e) => panic!("{what}: expected AlreadyExists, got {}", describe(&e)),
            Ok(()) => panic!("{what}: a create-only put of an existing key succeeded"),
        }
        assert_eq!(s.get(key, None).await, keep, "{what}: the object changed");
        assert_eq!(s.head(key).await.size, keep.len() as u64, "{what}: size");
    };

    s.put(key, payload(b"one"), &create_only()).await;
    refused(payload(b"two!"), b"one", "second create-only").await;
    refused(
        Payload::File(src.clone()),
        b"one",
        "create-only from a file",
    )
    .await;
    s.put_bytes(key, b"three").await;
    refused(payload(b"four"), b"three", "create-only after an overwrite").await;
    assert_eq!(s.keys("", None).await, [key], "one object");

    s.delete(&[key.to_owned()]).await;
    s.put(key, Payload::File(src), &create_only()).await;
    assert_eq!(
        s.get(key, None).await,
        b"from a file",
        "create-only after delete"
    );
    s.cleanup().await;
}

const RACERS: usize = 16;
const RACE_ROUNDS: usize = 4;

/// 16 concurrent create-only puts of one key with different bodies: exactly one
/// succeeds, the rest fail with AlreadyExists, and the winner's body is stored. Run
/// several rounds, because a racy implementation can get lucky once.
pub async fn create_only_race(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "create_only_race").await;
    for round in 0..RACE_ROUNDS {
        let key = format!("0009/{:016x}-{:016x}.ltx", round + 1, round + 1);
        let results = race(RACERS, |i| {
            let (c, key) = (s.c.clone(), key.clone());
            let body = format!("round {round} racer {i};").repeat(1000 + i);
            async move {
                let res = c
                    .put(&self::key(&key), payload(body.as_bytes()), &create_only())
                    .await;
                (body, res)
            }
        })
        .await;
        let mut winners = Vec::new();
        let mut problems = Vec::new();
        for (body, res) in results {
            match res {
                Ok(()) => winners.push(body),
                Err(StoreError::AlreadyExists { key: k }) if k == key => {}
                Err(e) => problems.push(describe(&e)),
            }
        }
        assert!(
            problems.is_empty(),
            "round {round}: losers must fail with AlreadyExists naming {key}, got: {problems:?}"
        );
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} of {RACERS} racing create-only puts succeeded",
            winners.len()
        );
        let stored = s.get(&key, None).await;
        assert!(
            stored == winners[0].as_bytes(),
            "round {round}: the stored body ({} bytes) is not the winner's ({} bytes)",
            stored.len(),
            winners[0].len()
        );
    }
    assert_eq!(
        s.keys("", None).await.len(),
        RACE_ROUNDS,
        "one object per round"
    );
    s.cleanup().await;
}

/// The compare-and-swap the lease is built on: `put_if` with no version creates
/// only; `get_versioned` returns the body with the version to name; a put naming the
/// current version replaces the body and returns a new version; a stale version, or
/// one of an object deleted since, is refused with Conflict and changes nothing.
pub async fn conditional_put(client: Arc<dyn ReplicaClient>) {
    let s = start(client, "conditional_put").await;
    let k = key("lock.json");
    let v1 =
        s.c.put_if(&k, Bytes::from_static(b"{\"n\":1}"), None)
            .await
            .unwrap_or_else(|e| panic!("creating with put_if: {}", describe(&e)));
    match s.c.put_if(&k, Bytes::from_static(b"{\"n\":9}"), None).await {
        Err(StoreError::AlreadyExists { .. }) => {}
        other => panic!("a second create must fail with AlreadyExists, got {other:?}"),
    }
    let read =
        s.c.get_versioned(&k)
            .await
            .unwrap_or_else(|e| panic!("get_versioned: {}", describe(&e)));
    assert_eq!(&read.body[..], b"{\"n\":1}");
    assert_eq!(
        read.version, v1,
        "get_versioned names the version put_if returned"
    );
    let v2 =
        s.c.put_if(&k, Bytes::from_static(b"{\"n\":2}"), Some(&v1))
            .await
            .unwrap_or_else(|e| panic!("put_if with the current version: {}", describe(&e)));
    assert_ne!(v1, v2, "a write must change the version");
    match s
        .c
        .put_if(&k, Bytes::from_static(b"{\"n\":3}"), Some(&v1))
        .await
    {
        Err(StoreError::Conflict { key: kk }) => assert_eq!(kk, "lock.json"),
        other => panic!("a stale version must fail with Conflict, got {other:?}"),
    }
    assert_eq!(
        s.get("lock.json", None).await,
        b"{\"n\":2}",
        "a refused put changes nothing"
    );
    let v = s.c.get_versioned(&k).await.map(|v| v.version);
    assert_eq!(v.ok(), Some(v2.clone()));
    s.c.delete_many(std::slice::from_ref(&k))
        .await
        .unwrap_or_else(|e| panic!("delete: {}", describe(&e)));
    match s
        .c
        .put_if(&k, Bytes::from_static(b"{\"n\":4}"), Some(&v2))
        .await
    {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("a version of a deleted object must fail with Conflict, got {other:?}"),
    }
    match s.c.get_versioned(&k).await {
        Err(StoreError::NotFound { .. }) => {}
        other => panic!("get_versioned of a missing object must be NotFound, got {other:?}"),
    }
    s.cleanup().await;
}

/// Eight writers read the same version and race to replace it: exactly one wins, the
/// rest get Conflict, and the winner's body is what is stored. Several rounds.
pub async fn conditional_put_race(client: Arc<dyn ReplicaClient>) {
    const WRITERS: usize = 8;
    let s = start(client, "conditional_put_race").await;
    let k = key("lock.json");
    let mut version =
        s.c.put_if(&k, Bytes::from_static(b"start"), None)
            .await
            .unwrap_or_else(|e| panic!("creating with put_if: {}", describe(&e)));
    for round in 0..RACE_ROUNDS {
        let results = race(WRITERS, |i| {
            let (c, k, v) = (s.c.clone(), k.clone(), version.clone());
            let body = Bytes::from(format!("round {round} writer {i}"));
            async move {
                let res = c.put_if(&k, body.clone(), Some(&v)).await;
                (body, res)
            }
        })
        .await;
        let mut winners = Vec::new();
        let mut problems = Vec::new();
        for (body, res) in results {
            match res {
                Ok(v) => winners.push((body, v)),
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => problems.push(describe(&e)),
            }
        }
        assert!(
            problems.is_empty(),
            "round {round}: losers must fail with Conflict, got: {problems:?}"
        );
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} of {WRITERS} compare-and-swap puts naming one version succeeded",
            winners.len()
        );
        let (body, v) = winners.remove(0);
        assert_eq!(s.get("lock.json", None).await, &body[..], "round {round}");
        version = v;
    }
    s.cleanup().await;
}

/// Every operation of a client the store refuses fails with PermissionDenied, or with
/// Other where the store cannot tell a refusal apart (e.g. a file root that cannot be
/// resolved), naming the key or prefix. Never success (an empty `list` would read as an
/// empty replica), NotFound (likewise) or Transient (retried forever).
pub async fn permission_denied(client: Arc<dyn ReplicaClient>) {
    require(&*client, "permission_denied");
    let key = LTX_KEY;
    let prefix = "ltx/0/";
    let (k, p) = (self::key(key), crate::support::prefix(prefix));
    let mut outcomes: Vec<(String, &str, Option<StoreError>)> = Vec::new();
    outcomes.push((
        "put".into(),
        key,
        client.put(&k, payload(b"x"), &overwrite()).await.err(),
    ));
    if client.info().capabilities.create_only {
        outcomes.push((
            "create-only put".into(),
            key,
            client.put(&k, payload(b"x"), &create_only()).await.err(),
        ));
    }
    outcomes.push(("get".into(), key, client.get(&k, None).await.err()));
    outcomes.push(("head".into(), key, client.head(&k).await.err()));
    outcomes.push(("list".into(), prefix, client.list(&p, None).await.err()));
    outcomes.push((
        "delete_many".into(),
        key,
        client.delete_many(std::slice::from_ref(&k)).await.err(),
    ));

    let mut problems = Vec::new();
    for (op, name, err) in &outcomes {
        let Some(err) = err else {
            problems.push(format!("{op} {name:?} succeeded"));
            continue;
        };
        println!("  {op} {name:?}: {}", describe(err));
        match err {
            StoreError::PermissionDenied { .. } | StoreError::Other { .. } => {
                if !err.to_string().contains(name) {
                    problems.push(format!(
                        "{op}: the error does not name {name:?}: {}",
                        describe(err)
                    ));
                }
            }
            _ => problems.push(format!(
                "{op} {name:?}: expected PermissionDenied (or Other), got {}",
                describe(err)
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "with a client the store refuses:\n  {}",
        problems.join("\n  ")
    );
}
