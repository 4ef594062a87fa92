use super::*;
use crate::memory::{ALL_CAPABILITIES, Faults, MemoryClient};

fn store() -> Arc<dyn ReplicaClient> {
    Arc::new(MemoryClient::new(ALL_CAPABILITIES, Faults::default()))
}

fn cfg(ttl_ms: u64, wait_ms: u64) -> LeaseConfig {
    LeaseConfig {
        ttl: Duration::from_millis(ttl_ms),
        wait: Duration::from_millis(wait_ms),
    }
}

async fn record(client: &dyn ReplicaClient) -> Record {
    let v = client
        .get_versioned(&Key::from_static(KEY))
        .await
        .expect("lease object");
    serde_json::from_slice(&v.body).expect("lease record")
}

#[tokio::test]
async fn a_live_holder_keeps_the_lease_and_a_release_hands_it_over() {
    let client = store();
    let a = Lease::acquire(client.clone(), cfg(3000, 0), Some("a.db"))
        .await
        .expect("first acquire");
    assert!(a.state().permit("x").is_ok());
    let r = record(client.as_ref()).await;
    assert_eq!(r.generation, 1);
    assert_eq!(r.owner, format!("{}:{}", host_name(), std::process::id()));

    // Same process, another instance: alive, so not a dead predecessor.
    let err = Lease::acquire(client.clone(), cfg(3000, 300), Some("b.db"))
        .await
        .expect_err("the lease is held");
    let msg = err.to_string();
    assert!(msg.contains("replicating a.db"), "{msg}");
    assert!(msg.contains("was not released within"), "{msg}");

    let state = a.state();
    a.release().await;
    assert!(
        state.permit("x").is_err(),
        "a released lease permits nothing"
    );
    assert!(record(client.as_ref()).await.released);
    let b = Lease::acquire(client.clone(), cfg(3000, 0), Some("b.db"))
        .await
        .expect("a released lease is free");
    assert_eq!(record(client.as_ref()).await.generation, 2);
    b.release().await;
}

#[tokio::test]
async fn renewal_keeps_writes_permitted_past_the_ttl() {
    let client = store();
    let a = Lease::acquire(client.clone(), cfg(600, 0), None)
        .await
        .expect("acquire");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(a.state().permit("x").is_ok(), "renewed every ttl/3");
    a.release().await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_its_old_holder_loses_it() {
    let client = store();
    let a = Lease::acquire(client.clone(), cfg(600, 0), None)
        .await
        .expect("acquire");
    let a_state = a.state();
    // Simulate a holder that stopped renewing: its task ends, its record stays.
    let mut a = a;
    if let Some(r) = a.renewal.take() {
        r.abort();
    }
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        a_state.permit("x").is_err(),
        "the holder stops writing ttl/3 before expiry"
    );
    let b = Lease::acquire(client.clone(), cfg(600, 2000), None)
        .await
        .expect("expired lease is taken over");
    // The old holder's renewal now names a stale version: lost, for good.
    let renewal = tokio::spawn(renew(
        client.clone(),
        a_state.clone(),
        a.inner.clone(),
        Duration::from_millis(600),
    ));
    tokio::time::timeout(Duration::from_secs(3), a_state.lost())
        .await
        .expect("the old holder learns it lost the lease");
    let _ = renewal.await;
    assert!(matches!(
        a_state.permit("x"),
        Err(StoreError::Fenced { lost: true, .. })
    ));
    assert!(b.state().permit("x").is_ok());
    drop(a);
    b.release().await;
}

#[tokio::test]
async fn a_dead_predecessor_on_this_machine_is_taken_over_at_once() {
    let client = store();
    let mut dead = Holder::this_process(None);
    dead.instance = "0".into();
    // A pid that cannot be running: above the kernel's pid_max.
    dead.pid = 1 << 23;
    let record = Record {
        generation: 7,
        expires_at: meta::format_timestamp(SystemTime::now() + Duration::from_secs(600)),
        owner: "gone".into(),
        holder: Some(dead),
        released: false,
        other: serde_json::Map::from_iter([("future".to_owned(), serde_json::json!(1))]),
    };
    put_record(client.as_ref(), &Key::from_static(KEY), &record, None)
        .await
        .expect("seed");
    let a = Lease::acquire(client.clone(), cfg(3000, 0), None)
        .await
        .expect("a dead holder's lease is free");
    let r = super::tests::record(client.as_ref()).await;
    assert_eq!(r.generation, 8);
    assert_eq!(r.other.get("future"), Some(&serde_json::json!(1)));
    a.release().await;
}

#[tokio::test]
async fn a_malformed_lease_is_named_and_left_alone() {
    let client = store();
    client
        .put_if(&Key::from_static(KEY), Bytes::from_static(b"{nope"), None)
        .await
        .expect("seed");
    let err = Lease::acquire(client.clone(), cfg(3000, 0), None)
        .await
        .expect_err("malformed");
    assert!(matches!(err, LeaseError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("lock.json"));
}

#[tokio::test]
async fn fenced_writes_stop_when_the_lease_does() {
    let client = store();
    let a = Lease::acquire(client.clone(), cfg(3000, 0), None)
        .await
        .expect("acquire");
    let fenced = Fenced::new(client.clone(), a.state());
    let key = Key::from_static("ltx/0/x.ltx");
    fenced
        .put(
            &key,
            Payload::Bytes(Bytes::from_static(b"1")),
            &PutOptions::default(),
        )
        .await
        .expect("held: written");
    a.release().await;
    let err = fenced
        .put(
            &key,
            Payload::Bytes(Bytes::from_static(b"2")),
            &PutOptions::default(),
        )
        .await
        .expect_err("released: refused");
    assert!(
        matches!(err, StoreError::Fenced { lost: false, .. }),
        "{err}"
    );
    let mut body = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut client.get(&key, None).await.unwrap(), &mut body)
        .await
        .unwrap();
    assert_eq!(body, b"1");
}
