//! Bad options, bad names and bad connections give the documented errors;
//! options load from TOML and JSON.
#![allow(missing_docs)]

mod support;

use std::time::Duration;

use support::*;
use valkeylock::{ConnectionErrorKind, Error, Locker, LockerOptions, MAX_NAME_LEN};

const PREFIX: &str = "valkeylock";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A loopback port nobody listens on (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[track_caller]
fn expect_invalid_options(result: Result<Locker, Error>, want: &str) {
    match result {
        Err(Error::InvalidOptions { field, reason }) => {
            assert_eq!(field, want, "wrong field (reason: {reason})");
            assert!(!reason.is_empty());
        }
        other => panic!("expected InvalidOptions for `{want}`, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_options_are_rejected_by_connect() {
    init_tracing();
    let server = ValkeyServer::start();
    let url = server.url();
    let base = || LockerOptions::new([url.clone()]).with_key_majority(1);

    expect_invalid_options(Locker::connect(LockerOptions::default()).await, "nodes");
    expect_invalid_options(
        Locker::connect(LockerOptions::new(Vec::<String>::new())).await,
        "nodes",
    );
    expect_invalid_options(
        Locker::connect(base().with_key_majority(0)).await,
        "key_majority",
    );
    expect_invalid_options(
        Locker::connect(
            base()
                .with_key_validity(ms(1000))
                .with_extend_interval(ms(1000)),
        )
        .await,
        "extend_interval",
    );
    expect_invalid_options(
        Locker::connect(
            base()
                .with_key_validity(ms(1000))
                .with_extend_interval(ms(1500)),
        )
        .await,
        "extend_interval",
    );
    for bad in [
        "nope",
        "127.0.0.1:6379",
        "http://127.0.0.1:6379",
        "redis://",
        "redis://127.0.0.1:99999",
    ] {
        expect_invalid_options(
            Locker::connect(LockerOptions::new([bad]).with_key_majority(1)).await,
            "nodes",
        );
    }
    // Two nodes but one key per lock (majority 1).
    expect_invalid_options(
        Locker::connect(LockerOptions::new([url.clone(), url.clone()]).with_key_majority(1)).await,
        "nodes",
    );
    // Four nodes, three keys.
    expect_invalid_options(
        Locker::connect(
            LockerOptions::new([url.clone(), url.clone(), url.clone(), url.clone()])
                .with_key_majority(2),
        )
        .await,
        "nodes",
    );
    expect_invalid_options(
        Locker::connect(LockerOptions::new([url.clone()]).with_key_prefix("{vl}")).await,
        "key_prefix",
    );
    // validate() agrees with connect().
    assert!(matches!(
        base().with_key_majority(0).validate(),
        Err(Error::InvalidOptions {
            field: "key_majority",
            ..
        })
    ));
    assert!(base().validate().is_ok());
}

/// Every duration option at `Duration::MAX` is refused by `connect` with its
/// field named; `connect_timeout` used to pass validation and then overflow
/// `connect_timeout + 2 s` inside `connect` (a panic). So is an
/// `event_buffer` of 0 or `usize::MAX`.
#[tokio::test]
async fn huge_durations_are_rejected_by_connect() {
    init_tracing();
    let base =
        || LockerOptions::new([format!("redis://127.0.0.1:{}", dead_port())]).with_key_majority(1);
    let max = Duration::MAX;
    for (want, options) in [
        ("key_validity", base().with_key_validity(max)),
        ("extend_interval", base().with_extend_interval(max)),
        ("try_next_after", base().with_try_next_after(max)),
        ("clock_drift", base().with_clock_drift(max)),
        ("connect_timeout", base().with_connect_timeout(max)),
        // fred's event channels would panic at 0, and allocate every slot
        // of a huge one at once.
        ("event_buffer", base().with_event_buffer(0)),
        ("event_buffer", base().with_event_buffer(usize::MAX)),
    ] {
        let result = tokio::spawn(Locker::connect(options))
            .await
            .unwrap_or_else(|e| panic!("connect with {want} = Duration::MAX panicked: {e}"));
        expect_invalid_options(result, want);
    }
}

#[tokio::test]
async fn invalid_names_are_rejected() {
    init_tracing();
    let server = ValkeyServer::start();
    let admin = server.admin().await;
    // Majority 2 on one server: 3 keys, so a hash tag would pin them together.
    let locker = Locker::connect(LockerOptions::new([server.url()]))
        .await
        .expect("connect");
    let too_long = "x".repeat(MAX_NAME_LEN + 1);
    let bad_names = ["", "{tag}", "locker:{mail}:{35020382}", too_long.as_str()];
    for name in bad_names {
        for (op, r) in [
            ("lock", locker.lock(name).await),
            ("try_lock", locker.try_lock(name).await),
            ("force_lock", locker.force_lock(name).await),
        ] {
            match r {
                Err(Error::InvalidName {
                    name: shown,
                    reason,
                }) => {
                    assert!(!reason.is_empty());
                    assert!(
                        shown.len() <= 80,
                        "{op}: error name not shortened ({} bytes)",
                        shown.len()
                    );
                }
                other => panic!(
                    "{op}({:?}…): expected InvalidName, got {other:?}",
                    &name[..name.len().min(20)]
                ),
            }
        }
    }
    assert_eq!(
        locker.active_locks(),
        0,
        "an invalid name created a LockActor"
    );
    // Exactly MAX_NAME_LEN bytes is fine.
    let longest = "y".repeat(MAX_NAME_LEN);
    let g = locker
        .lock(&longest)
        .await
        .expect("a name of MAX_NAME_LEN bytes");
    // `lock()` returns once a majority is won: the third key may follow.
    let keys = |name: String, want: usize| {
        let admin = admin.clone();
        async move {
            eventually(Duration::from_secs(5), || async {
                existing_keys(&admin, PREFIX, &name, 3).await == want
            })
            .await
        }
    };
    assert!(keys(longest.clone(), 3).await, "the keys of {longest}");
    let _ = g.release().await;
    // A name with ':' and non-ASCII UTF-8 works, and maps to the documented keys.
    let name = format!("{}:ünï:✓ code", unique("a:b"));
    let g = locker.lock(&name).await.expect("a name with ':' and UTF-8");
    assert!(g.is_held());
    assert_eq!(g.name(), name);
    assert!(keys(name.clone(), 3).await, "the keys of {name}");
    let other = Locker::connect(LockerOptions::new([server.url()]))
        .await
        .expect("connect");
    assert!(matches!(
        other.try_lock(&name).await,
        Err(Error::NotLocked { .. })
    ));
    let _ = g.release().await;
    // The other locker's failed attempt may still have a key's acquisition
    // out; if it lands after the delete, that locker releases what it took.
    assert!(keys(name.clone(), 0).await, "keys of {name} left");
    other.close().await;
    locker.close().await;

    // With majority 1 there is one key, so a hash tag is harmless.
    let single = Locker::connect(LockerOptions::new([server.url()]).with_key_majority(1))
        .await
        .expect("connect");
    let tagged = format!("{{{}}}", unique("tag"));
    let g = single
        .lock(&tagged)
        .await
        .expect("hash-tagged name with majority 1");
    let _ = g.release().await;
    single.close().await;
}

/// The kind, node and causes of a connection error (panics on anything else).
fn connection_error(
    r: Result<Locker, Error>,
    what: &str,
) -> (ConnectionErrorKind, Option<String>, String) {
    match r {
        Err(e @ Error::Connection { .. }) => {
            let shown = with_causes(&e);
            eprintln!("{what}: {shown}");
            match e {
                Error::Connection { kind, node, .. } => (kind, node, shown),
                _ => unreachable!(),
            }
        }
        other => panic!("{what}: expected Error::Connection, got {other:?}"),
    }
}

#[tokio::test]
async fn nothing_listening_is_a_connection_error() {
    init_tracing();
    let dead = format!("redis://127.0.0.1:{}", dead_port());
    let opts = LockerOptions::new([dead.clone()])
        .with_key_majority(1)
        .with_connect_timeout(ms(500));
    let (kind, node, shown) = connection_error(Locker::connect(opts).await, "nothing listening");
    assert_eq!(kind, ConnectionErrorKind::Unreachable, "{shown}");
    assert_eq!(node.as_deref(), Some(dead.as_str()));
    // Two of three nodes unreachable: no majority of keys.
    let server = ValkeyServer::start();
    let (dead1, dead2) = (
        format!("redis://127.0.0.1:{}", dead_port()),
        format!("redis://127.0.0.1:{}", dead_port()),
    );
    let opts = LockerOptions::new([server.url(), dead1.clone(), dead2.clone()])
        .with_connect_timeout(ms(500));
    let (kind, node, shown) = connection_error(Locker::connect(opts).await, "1 of 3 nodes up");
    assert_eq!(kind, ConnectionErrorKind::Unreachable, "{shown}");
    assert_eq!(node, None, "two nodes are down, not one");
    assert!(
        shown.contains("only 1 of 3 keys") && shown.contains(&dead1) && shown.contains(&dead2),
        "{shown}"
    );
    // One of three unreachable: still a majority, connect succeeds.
    let server2 = ValkeyServer::start();
    let opts = LockerOptions::new([
        server.url(),
        server2.url(),
        format!("redis://127.0.0.1:{}", dead_port()),
    ])
    .with_connect_timeout(ms(500));
    let locker = Locker::connect(opts)
        .await
        .expect("2 of 3 nodes up is enough");
    let g = locker
        .lock(&unique("two-of-three"))
        .await
        .expect("lock with 2 of 3 nodes");
    let _ = g.release().await;
    locker.close().await;
}

#[tokio::test]
async fn wrong_password_is_a_connection_error() {
    init_tracing();
    let server = ValkeyServer::start_with(&["--requirepass", "secret"]);
    let wrong = LockerOptions::new([format!(
        "redis://:not-the-pa55word@127.0.0.1:{}",
        server.port
    )])
    .with_key_majority(1);
    let (kind, node, shown) = connection_error(Locker::connect(wrong).await, "wrong password");
    assert_eq!(kind, ConnectionErrorKind::Authentication, "{shown}");
    assert_eq!(
        node,
        Some(format!("redis://:***@127.0.0.1:{}", server.port))
    );
    assert!(
        !shown.contains("not-the-pa55word"),
        "the password leaked into the error: {shown}"
    );
    // "Which node(s) and why": a refused password is not "no answer".
    assert!(
        shown.to_ascii_uppercase().contains("WRONGPASS"),
        "the error does not say the credentials were refused: {shown}"
    );
    let missing = LockerOptions::new([server.url()]).with_key_majority(1);
    let (kind, _, shown) = connection_error(Locker::connect(missing).await, "no password");
    assert_eq!(kind, ConnectionErrorKind::Authentication, "{shown}");
    assert!(
        shown.to_ascii_uppercase().contains("NOAUTH"),
        "the error does not say authentication is required: {shown}"
    );
    let right = LockerOptions::new([format!("redis://:secret@127.0.0.1:{}", server.port)])
        .with_key_majority(1);
    let locker = Locker::connect(right).await.expect("right password");
    let g = locker.lock(&unique("auth")).await.expect("lock with auth");
    assert!(g.is_held());
    let _ = g.release().await;
    locker.close().await;
}

#[tokio::test]
async fn options_from_toml_and_json() {
    init_tracing();
    let server = ValkeyServer::start();
    let toml_text = format!(
        r#"
nodes = ["{}"]
key_prefix = "vl-toml"
key_majority = 1
key_validity = "3s"
extend_interval = "1s"
try_next_after = "150ms"
no_loop_tracking = false
fallback_set_px = false
connect_timeout = "1s500ms"
"#,
        server.url()
    );
    let o: LockerOptions = toml::from_str(&toml_text).expect("TOML");
    assert_eq!(o.nodes, vec![server.url()]);
    assert_eq!(o.key_prefix, "vl-toml");
    assert_eq!(o.key_majority, 1);
    assert_eq!(o.key_validity, ms(3000));
    assert_eq!(o.extend_interval, Some(ms(1000)));
    assert_eq!(o.try_next_after, ms(150));
    assert!(!o.no_loop_tracking);
    assert!(!o.fallback_set_px);
    assert!(!o.disable_cache);
    assert_eq!(o.connect_timeout, ms(1500));
    assert_eq!(o.clock_drift, None);
    let locker = Locker::connect(o).await.expect("connect with TOML options");
    let admin = server.admin().await;
    let name = unique("toml");
    let g = locker.lock(&name).await.expect("lock");
    assert_eq!(existing_keys(&admin, "vl-toml", &name, 1).await, 1);
    let _ = g.release().await;
    locker.close().await;

    let json = format!(
        r#"{{"nodes":["{}"],"key_majority":1,"key_validity":"2s","disable_cache":true}}"#,
        server.url()
    );
    let o: LockerOptions = serde_json::from_str(&json).expect("JSON");
    assert_eq!(o.key_validity, ms(2000));
    assert_eq!(o.extend_interval, None);
    assert!(o.disable_cache);
    assert_eq!(o.key_prefix, "valkeylock");
    let back: LockerOptions =
        serde_json::from_str(&serde_json::to_string(&o).expect("to JSON")).expect("round trip");
    assert_eq!(back, o);
    let back: LockerOptions =
        toml::from_str(&toml::to_string(&o).expect("to TOML")).expect("TOML round trip");
    assert_eq!(back, o);
    let locker = Locker::connect(o).await.expect("connect with JSON options");
    let g = locker.lock(&unique("json")).await.expect("lock");
    let _ = g.release().await;
    locker.close().await;

    assert!(toml::from_str::<LockerOptions>("key_validity = \"5 parsecs\"").is_err());
    assert!(toml::from_str::<LockerOptions>("unknown_field = 1").is_err());
    assert!(serde_json::from_str::<LockerOptions>(r#"{"key_majority":"two"}"#).is_err());
    // Parsed but invalid: caught by connect.
    let o: LockerOptions =
        toml::from_str(&format!("nodes = [\"{}\"]\nkey_majority = 0", server.url())).expect("TOML");
    expect_invalid_options(Locker::connect(o).await, "key_majority");
}
