mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn publish_then_consume_and_ack() {
    let dir = tempfile::tempdir().unwrap();
    let b = TestBroker::start(dir.path(), |_| {}).await;
    let mut c = b.client().await;
    create_topic(&mut c, "orders").await;
    let r = publish(
        &mut c,
        "orders",
        vec![event("a", "k1", "1"), event("b", "k2", "2")],
    )
    .await;
    assert_eq!(r.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![0, 1]);
    let mut s = Sub::open(&mut c, "orders", "billing", 10).await;
    let d = s.take(2, Duration::from_secs(20)).await;
    assert_eq!(d.len(), 2);
    s.ack(d.iter().map(offset).collect()).await;
    wait_committed(&c, "orders", "billing", 2).await;
    drop(s);
    b.stop().await;
}
