//! What the engine logs about a lock: a loss is a warning carrying the
//! `lock` and `token` fields, a minority key lost is a warning carrying the
//! `lock` and `node` fields, no event carries a whole token, and a
//! release's span is a child of the lock's `hold` span.
//!
//! One test function: it installs a process-global subscriber (the engine
//! logs from its own thread).

mod support;

use std::time::Duration;

use fred::prelude::*;
use support::capture::Capture;
use support::{eventually, unique, ValkeyServer};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use valkeylock::{LockerOptions, LostReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_is_a_warning_with_the_lock_name() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .expect("the only subscriber of this test binary");

    let server = ValkeyServer::start();
    let node = format!("127.0.0.1:{}", server.port);
    let admin = server.admin().await;
    let options = LockerOptions::new([server.url()])
        .with_key_majority(2)
        .with_key_validity(Duration::from_secs(1));
    let locker = valkeylock::Locker::connect(options).await.expect("connect");
    let name = unique("logs");
    let key = |i: usize| format!("valkeylock:{i}:{name}");
    let guard = locker.lock(&name).await.expect("lock");
    let token: String = admin.get(key(0)).await.expect("the key's token");

    // One key of three deleted: still held, and said so.
    let _: i64 = admin.del(key(1)).await.expect("DEL");
    let want = [
        ("lock", name.as_str()),
        ("node", node.as_str()),
        ("reason", "deleted"),
    ];
    let minority = eventually(Duration::from_secs(5), || async {
        !capture
            .find(Level::WARN, "key of a held lock lost", &want)
            .is_empty()
    })
    .await;
    assert!(
        minority,
        "no warning for the minority key: {:?}",
        capture.events()
    );
    assert!(guard.is_held());

    // A majority deleted: lost, and a warning with the lock's name.
    let _: i64 = admin.del(vec![key(0), key(1), key(2)]).await.expect("DEL");
    let reason = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() after a majority DEL");
    assert_eq!(reason, LostReason::Deleted);
    let lost = eventually(Duration::from_secs(5), || async {
        !capture
            .find(
                Level::WARN,
                "lock lost",
                &[("lock", name.as_str()), ("reason", "deleted")],
            )
            .is_empty()
    })
    .await;
    assert!(lost, "no warning for the loss: {:?}", capture.events());
    let warning = &capture.find(Level::WARN, "lock lost", &[("lock", name.as_str())])[0];
    let tag = warning.fields.get("token").expect("a token field");
    assert!(
        tag.len() == 8 && token.starts_with(tag.as_str()),
        "token field {tag:?} of {token:?}"
    );

    drop(guard);

    // A release's span is a child of its lock's `hold` span.
    let held = unique("logs-spans");
    let guard = locker.lock(&held).await.expect("lock");
    guard.release().await.expect("release");
    {
        let spans = capture.spans();
        let hold = spans
            .iter()
            .find(|s| s.name == "hold" && s.fields.get("lock") == Some(&held))
            .unwrap_or_else(|| panic!("no hold span of {held}: {spans:?}"));
        assert!(
            spans.iter().any(|s| s.name == "release"
                && s.fields.get("lock") == Some(&held)
                && s.parent == Some(hold.id)),
            "no release span under the hold span {hold:?}: {spans:?}"
        );
    }
    locker.close().await;
    // No event anywhere carries the whole token (it would let a reader of
    // the logs release or extend the lock).
    let secret = &token[..40];
    for e in capture.events().iter() {
        assert!(
            e.fields.values().all(|v| !v.contains(secret)),
            "an event carries the token: {e:?}"
        );
    }
}
