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
