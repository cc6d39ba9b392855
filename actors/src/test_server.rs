//! A `valkey-server` for the engine's unit tests that need the real thing.

/// A `valkey-server` (`$VALKEY_SERVER`, else from `PATH`) on a free
/// loopback port, to run commands against the real thing; killed on
/// drop.
pub(crate) struct Server {
    child: std::process::Child,
    pub(crate) port: u16,
    dir: std::path::PathBuf,
}

impl Server {
    pub(crate) fn start() -> Server {
        use std::process::{Command, Stdio};
        let bin = std::env::var("VALKEY_SERVER").unwrap_or_else(|_| "valkey-server".into());
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let dir =
                std::env::temp_dir().join(format!("valkeylock-unit-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let child = Command::new(&bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start valkey-server (run .ci/install-valkey, or set VALKEY_SERVER)");
            let mut server = Server { child, port, dir };
            for _ in 0..250 {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return server;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            drop(server);
        }
        panic!("could not start valkey-server");
    }

    pub(crate) async fn client(&self) -> fred::clients::Client {
        use fred::interfaces::ClientLike;
        use fred::prelude::{Config, ServerConfig};
        let config = Config {
            version: fred::types::RespVersion::RESP3,
            server: ServerConfig::new_centralized("127.0.0.1", self.port),
            ..Config::default()
        };
        let client = fred::types::Builder::from_config(config)
            .with_performance_config(|p| {
                p.default_command_timeout = std::time::Duration::from_secs(5)
            })
            .build()
            .expect("client");
        client.init().await.expect("connect to the test server");
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command by name through `client`, for set-ups and looks: its reply,
/// or a panic naming the command.
pub(crate) async fn raw(
    client: &fred::clients::Client,
    name: &'static str,
    args: Vec<String>,
) -> fred::types::Value {
    use fred::interfaces::ClientLike;
    use fred::types::CustomCommand;
    client
        .custom(CustomCommand::new_static(name, None, false), args)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// What `key` holds, to compare what two ways of writing it left: its
/// type, its value (a string's, or a hash's field `f`), and whether it
/// expires. Lifts `maxmemory` first, so that the looks are not refused.
pub(crate) async fn key_left(
    client: &fred::clients::Client,
    key: &str,
) -> (fred::types::Value, fred::types::Value, bool) {
    use fred::types::Value;
    let arg = |a: &str| a.to_owned();
    raw(
        client,
        "CONFIG",
        vec![arg("SET"), arg("maxmemory"), arg("0")],
    )
    .await;
    let kind = raw(client, "TYPE", vec![arg(key)]).await;
    let value = match kind.as_str().as_deref() {
        Some("string") => raw(client, "GET", vec![arg(key)]).await,
        Some("hash") => raw(client, "HGET", vec![arg(key), arg("f")]).await,
        _ => Value::Null,
    };
    let expires = matches!(
        raw(client, "PTTL", vec![arg(key)]).await,
        Value::Integer(ms) if ms > 0
    );
    (kind, value, expires)
}

/// An empty server again (`maxmemory` lifted, `FLUSHALL`), then the
/// set-up commands `setup`.
pub(crate) async fn fresh(
    client: &fred::clients::Client,
    setup: impl IntoIterator<Item = (&'static str, Vec<String>)>,
) {
    let args = |a: &[&str]| a.iter().map(|a| a.to_string()).collect();
    raw(client, "CONFIG", args(&["SET", "maxmemory", "0"])).await;
    raw(client, "FLUSHALL", vec![]).await;
    for (name, args) in setup {
        raw(client, name, args).await;
    }
}

/// The expiry arguments of an acquisition for the tests' three kinds:
/// `PXAT+` (a minute ahead), `PXAT-` (a second past), else `PX` a minute:
/// the number, and `PX` or `PXAT`.
pub(crate) fn expiry(kind: &str) -> (i64, &'static str) {
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as i64
    };
    match kind {
        "PXAT+" => (now_ms() + 60_000, "PXAT"),
        "PXAT-" => (now_ms() - 1_000, "PXAT"),
        _ => (60_000, "PX"),
    }
}

/// The set-up commands of a case, run on an empty server; `OURS` in an
/// argument stands for the acquiring token.
pub(crate) type Setup = &'static [(&'static str, &'static [&'static str])];

/// The outcomes of a plain `NX` acquisition of one key without fencing
/// (the acquire script's common case), each as it is set up on an empty
/// server: (what, the key, its expiry for [`expiry`], the set-up). The
/// tests that compare two ways of acquiring run both on every one.
pub(crate) const FREE_KEY_OUTCOMES: [(&str, &str, &str, Setup); 14] = [
    ("free", "k", "PX", &[]),
    ("free, PXAT ahead", "k", "PXAT+", &[]),
    ("free, PXAT past", "k", "PXAT-", &[]),
    ("another owner's", "k", "PX", &[("SET", &["k", "someone"])]),
    ("ours already", "k", "PX", &[("SET", &["k", "OURS"])]),
    ("queued for", "k", "PX", &[("SET", &["{k}:q", "x"])]),
    (
        "queued for, PXAT past",
        "k",
        "PXAT-",
        &[("SET", &["{k}:q", "x"])],
    ),
    (
        "queued for, another owner's",
        "k",
        "PX",
        &[("SET", &["{k}:q", "x"]), ("SET", &["k", "someone"])],
    ),
    (
        "braces, queue there",
        "a{b}",
        "PX",
        &[("SET", &["{a{b}}:q", "x"])],
    ),
    (
        "one brace, queue there",
        "a{b",
        "PX",
        &[("SET", &["{a{b}:q", "x"])],
    ),
    (
        "the other brace, queue there",
        "a}b",
        "PX",
        &[("SET", &["{a}b}:q", "x"])],
    ),
    ("a hash", "k", "PX", &[("HSET", &["k", "f", "v"])]),
    (
        "another owner's, writes refused",
        "k",
        "PX",
        &[
            ("SET", &["k", "someone"]),
            ("CONFIG", &["SET", "maxmemory-policy", "noeviction"]),
            ("CONFIG", &["SET", "maxmemory", "1"]),
        ],
    ),
    (
        "write refused",
        "k",
        "PX",
        &[
            ("SET", &["filler", "x"]),
            ("CONFIG", &["SET", "maxmemory-policy", "noeviction"]),
            ("CONFIG", &["SET", "maxmemory", "1"]),
        ],
    ),
];
