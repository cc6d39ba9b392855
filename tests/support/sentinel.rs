//! A local Sentinel deployment for tests: a primary, one replica, and three
//! `valkey-sentinel` processes (quorum 2, `down-after-milliseconds` 1000,
//! short failover timeout), all on free 127.0.0.1 ports, optionally with one
//! password on every process (`requirepass`). Dropping it kills every process
//! and removes the sentinels' directories.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cluster::cli_auth;
use super::{free_port, ValkeyServer};

/// The service name the sentinels monitor.
pub const SERVICE: &str = "mymaster";
pub const DOWN_AFTER_MS: u64 = 1000;

/// One `valkey-sentinel` process.
pub struct SentinelProcess {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    password: Option<String>,
}

impl SentinelProcess {
    fn start(primary_port: u16, password: Option<&str>) -> SentinelProcess {
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("valkeylock-sentinel-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let conf = dir.join("sentinel.conf");
            let mut f = std::fs::File::create(&conf).expect("sentinel.conf");
            write!(
                f,
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {SERVICE} 3000\n\
                 sentinel parallel-syncs {SERVICE} 1\n",
                dir = dir.display()
            )
            .expect("write sentinel.conf");
            if let Some(pw) = password {
                // Clients and the other sentinels must authenticate; the
                // sentinels authenticate to the data nodes and to each other.
                write!(
                    f,
                    "requirepass {pw}\nsentinel auth-pass {SERVICE} {pw}\nsentinel sentinel-pass {pw}\n"
                )
                .expect("write sentinel.conf");
            }
            drop(f);
            let child = Command::new("valkey-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn valkey-sentinel (run .ci/install-valkey)");
            let mut s = SentinelProcess {
                port,
                child: Some(child),
                dir,
                password: password.map(str::to_owned),
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Some(c) = s.child.as_mut() {
                    if let Ok(Some(_)) = c.try_wait() {
                        s.child = None;
                        break;
                    }
                }
                if s.cli(&["PING"]).contains("PONG") {
                    return s;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            s.kill();
        }
        panic!("could not start valkey-sentinel");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A `valkey-cli` command to this sentinel (authenticated if needed).
    pub fn cli(&self, args: &[&str]) -> String {
        cli_auth(self.port, self.password.as_deref(), args)
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME`: the port it believes is primary.
    pub fn primary_port(&self) -> Option<u16> {
        let out = self.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]);
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A primary, a replica and three sentinels.
pub struct SentinelDeployment {
    /// `[0]` starts as primary, `[1]` as its replica.
    pub servers: Vec<ValkeyServer>,
    pub sentinels: Vec<SentinelProcess>,
    /// The one password of every process, if any.
    pub password: Option<String>,
}

impl SentinelDeployment {
    /// Starts everything and waits until the replica is in sync and every
    /// sentinel knows the replica and the two other sentinels
    /// (`SENTINEL CKQUORUM` OK), so a failover can be authorized.
    pub fn start() -> SentinelDeployment {
        Self::start_inner(None)
    }

    /// [`start`](Self::start) with `requirepass password` on the primary,
    /// the replica and the sentinels (and `masterauth`, `auth-pass`,
    /// `sentinel-pass` so they reach each other).
    pub fn start_with_password(password: &str) -> SentinelDeployment {
        Self::start_inner(Some(password))
    }

    fn start_inner(password: Option<&str>) -> SentinelDeployment {
        let auth: Vec<&str> = match password {
            Some(pw) => vec!["--requirepass", pw, "--masterauth", pw],
            None => Vec::new(),
        };
        let primary = ValkeyServer::start_with(&auth);
        let p = primary.port.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &p];
        replica_args.extend(&auth);
        let replica = ValkeyServer::start_with(&replica_args);
        let d = SentinelDeployment {
            sentinels: (0..3)
                .map(|_| SentinelProcess::start(primary.port, password))
                .collect(),
            servers: vec![primary, replica],
            password: password.map(str::to_owned),
        };
        d.wait_ready(Duration::from_secs(20));
        d
    }

    /// Waits until the current primary has a replica in sync and every
    /// sentinel agrees on the primary, sees the replica and reaches quorum.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.is_ready() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sentinel deployment not ready within {within:?}: {}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn is_ready(&self) -> bool {
        let Some(primary) = self.sentinels[0].primary_port() else {
            return false;
        };
        if !self.servers.iter().any(|s| s.port == primary && s.ping()) {
            return false;
        }
        let replicas_up = self
            .servers
            .iter()
            .filter(|s| s.port != primary && s.ping())
            .all(|s| {
                let info = self.cli(s.port, &["INFO", "replication"]);
                info.contains("master_link_status:up")
                    && info.contains(&format!("master_port:{primary}"))
            });
        replicas_up
            && self.sentinels.iter().all(|s| {
                s.primary_port() == Some(primary)
                    && s.cli(&["SENTINEL", "CKQUORUM", SERVICE]).contains("OK")
                    && s.cli(&["SENTINEL", "REPLICAS", SERVICE]).contains("slave")
                    && !s.cli(&["SENTINEL", "REPLICAS", SERVICE]).contains("s_down")
            })
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.sentinels {
            out.push_str(&format!(
                "\nsentinel {} says primary {:?}; ckquorum: {}",
                s.port,
                s.primary_port(),
                s.cli(&["SENTINEL", "CKQUORUM", SERVICE]).trim()
            ));
        }
        for s in &self.servers {
            let info = self.cli(s.port, &["INFO", "replication"]);
            let role = info
                .lines()
                .filter(|l| l.starts_with("role:") || l.starts_with("master_link_status:"))
                .collect::<Vec<_>>()
                .join(" ");
            out.push_str(&format!("\nserver {}: {role}", s.port));
        }
        out
    }

    /// A `valkey-cli` command to a data node of this deployment
    /// (authenticated if needed).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli_auth(port, self.password.as_deref(), args)
    }

    /// The locker's node URL: through the three sentinels, with the
    /// password if there is one.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let auth = match &self.password {
            Some(pw) => format!(":{pw}@"),
            None => String::new(),
        };
        format!("valkey-sentinel://{auth}{}/{SERVICE}", hosts.join(","))
    }

    /// The primary's port per the first sentinel.
    pub fn primary_port(&self) -> u16 {
        self.sentinels[0].primary_port().expect("sentinel answers")
    }

    pub fn server_mut(&mut self, port: u16) -> &mut ValkeyServer {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .expect("a server of this deployment")
    }

    pub fn server(&self, port: u16) -> &ValkeyServer {
        self.servers
            .iter()
            .find(|s| s.port == port)
            .expect("a server of this deployment")
    }

    /// Waits until every sentinel names a primary other than `old`, and
    /// that server says `role:master`. Returns the new primary's port.
    pub fn wait_new_primary(&self, old: u16, within: Duration) -> u16 {
        let deadline = std::time::Instant::now() + within;
        loop {
            let seen: Vec<Option<u16>> = self.sentinels.iter().map(|s| s.primary_port()).collect();
            if let Some(Some(p)) = seen.first() {
                if *p != old
                    && seen.iter().all(|s| *s == Some(*p))
                    && self.cli(*p, &["ROLE"]).starts_with("master")
                {
                    return *p;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no new primary within {within:?}: {}",
                self.describe()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
