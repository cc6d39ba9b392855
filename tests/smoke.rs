mod support;

use std::time::Duration;
use support::*;
use valkeylock::{Locker, LockerOptions, LostReason};

#[tokio::test]
async fn smoke() {
    init_tracing();
    let server = ValkeyServer::start();
    let opts = LockerOptions::new([server.url()]).with_key_majority(1);
    let a = Locker::connect(opts.clone()).await.unwrap();
    let b = Locker::connect(opts).await.unwrap();
    let g = a.lock("n").await.unwrap();
    assert!(g.is_held());
    assert!(b.try_lock("n").await.is_err());
    let waiter = tokio::spawn({
        let b = b.clone();
        async move {
            let t = tokio::time::Instant::now();
            let g = b.lock("n").await.unwrap();
            (t.elapsed(), g)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = tokio::time::Instant::now();
    g.release().await;
    let (_, g2) = waiter.await.unwrap();
    eprintln!("handover {:?}", t.elapsed());
    let admin = server.admin().await;
    let _: i64 = fred::prelude::KeysInterface::del(&admin, "valkeylock:0:n").await.unwrap();
    let t = tokio::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), g2.lost()).await.unwrap();
    eprintln!("lost {r:?} after {:?}", t.elapsed());
    assert_eq!(r, LostReason::Deleted);
    a.close().await;
    b.close().await;
}
