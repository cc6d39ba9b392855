//! Configurations that must not silently break exclusion:
//! - lockers listing the same nodes in different orders exclude each other.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use support::*;
use tokio::time::timeout;
use valkeylock::{Error, Locker, LockerOptions};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Three servers, every order of them: a locker listing them in that order
/// and one listing them in the original order never both hold one name,
/// whichever takes it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_order_does_not_matter() {
    init_tracing();
    let servers = [
        ValkeyServer::start(),
        ValkeyServer::start(),
        ValkeyServer::start(),
    ];
    let urls: Vec<String> = servers.iter().map(ValkeyServer::url).collect();
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let base = Locker::connect(LockerOptions::new(urls.clone()))
        .await
        .expect("connect");
    for order in orders {
        let listed: Vec<String> = order.iter().map(|&i| urls[i].clone()).collect();
        let other = Locker::connect(LockerOptions::new(listed.clone()))
            .await
            .expect("connect");
        for first_is_base in [true, false] {
            let name = unique("order");
            let (first, second) = if first_is_base {
                (&base, &other)
            } else {
                (&other, &base)
            };
            let g = first.try_lock(&name).await.expect("the first try_lock");
            let r = second.try_lock(&name).await;
            assert!(
                matches!(r, Err(Error::NotLocked { .. })),
                "order {order:?}: both lockers hold {name:?} ({r:?})"
            );
            g.release().await;
            let g = timeout(ms(2000), second.lock(&name))
                .await
                .expect("the second locker waits for a free lock")
                .expect("lock");
            g.release().await;
        }
        other.close().await;
        // Both lockers agree on which server holds each key.
        let a = LockerOptions::new(urls.clone());
        let b = LockerOptions::new(listed.clone());
        for i in 0..3 {
            let on_a = a.node_of_key(i).expect("placement");
            let on_b = b.node_of_key(i).expect("placement");
            assert_eq!(urls[on_a], listed[on_b], "key {i} with order {order:?}");
        }
    }
    base.close().await;
}
