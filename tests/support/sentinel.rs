//! A local Sentinel deployment for tests: a primary, one replica, and three
//! `valkey-sentinel` processes (quorum 2, `down-after-milliseconds` 1000,
//! short failover timeout), all on free 127.0.0.1 ports. Dropping it kills
//! every process and removes the sentinels' directories.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cluster::cli;
use super::{free_port, ValkeyServer};

/// The service name the sentinels monitor.
pub const SERVICE: &str = "mymaster";
pub const DOWN_AFTER_MS: u64 = 1000;

/// One `valkey-sentinel` process.
pub struct SentinelProcess {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl SentinelProcess {
    fn start(primary_port: u16) -> SentinelProcess {
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
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Some(c) = s.child.as_mut() {
                    if let Ok(Some(_)) = c.try_wait() {
                        s.child = None;
                        break;
                    }
                }
                if cli(port, &["PING"]).contains("PONG") {
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

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME`: the port it believes is primary.
    pub fn primary_port(&self) -> Option<u16> {
        let out = cli(self.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]);
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
}

impl SentinelDeployment {
    /// Starts everything and waits until the replica is in sync and every
    /// sentinel knows the replica and the two other sentinels
    /// (`SENTINEL CKQUORUM` OK), so a failover can be authorized.
    pub fn start() -> SentinelDeployment {
        let primary = ValkeyServer::start();
        let p = primary.port.to_string();
        let replica = ValkeyServer::start_with(&["--replicaof", "127.0.0.1", &p]);
        let d = SentinelDeployment {
            sentinels: (0..3)
                .map(|_| SentinelProcess::start(primary.port))
                .collect(),
            servers: vec![primary, replica],
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
                let info = cli(s.port, &["INFO", "replication"]);
                info.contains("master_link_status:up")
                    && info.contains(&format!("master_port:{primary}"))
            });
        replicas_up
            && self.sentinels.iter().all(|s| {
                s.primary_port() == Some(primary)
                    && cli(s.port, &["SENTINEL", "CKQUORUM", SERVICE]).contains("OK")
                    && cli(s.port, &["SENTINEL", "REPLICAS", SERVICE]).contains("slave")
                    && !cli(s.port, &["SENTINEL", "REPLICAS", SERVICE]).contains("s_down")
            })
    }

    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.sentinels {
            out.push_str(&format!(
                "\nsentinel {} says primary {:?}; ckquorum: {}",
                s.port,
                s.primary_port(),
                cli(s.port, &["SENTINEL", "CKQUORUM", SERVICE]).trim()
            ));
        }
        for s in &self.servers {
            let info = cli(s.port, &["INFO", "replication"]);
            let role = info
                .lines()
                .filter(|l| l.starts_with("role:") || l.starts_with("master_link_status:"))
                .collect::<Vec<_>>()
                .join(" ");
            out.push_str(&format!("\nserver {}: {role}", s.port));
        }
        out
    }

    /// The locker's node URL: through the three sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("valkey-sentinel://{}/{SERVICE}", hosts.join(","))
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
                    && cli(*p, &["ROLE"]).starts_with("master")
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
