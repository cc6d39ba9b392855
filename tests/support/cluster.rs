//! A local Valkey Cluster for tests: `masters` masters with one replica each,
//! every node a `valkey-server --cluster-enabled yes` on a free 127.0.0.1 port,
//! joined with `valkey-cli --cluster create … --cluster-replicas 1
//! --cluster-yes`. Dropping it kills every node and removes their directories.
//!
//! Admin helpers read the topology from `CLUSTER NODES`, talk to single nodes
//! (standalone connections), fail over, migrate slots, and build a
//! cluster-aware client.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};

use super::ValkeyServer;

/// The cluster's tuning: quick failure detection, and slots of a failed master
/// do not stop the others from serving (`cluster-require-full-coverage no`).
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// `fail` or `fail?` in its flags.
    pub failed: bool,
    /// The master it replicates (replicas only).
    pub master_id: Option<String>,
    /// Slot ranges it serves (masters only), inclusive.
    pub slots: Vec<(u16, u16)>,
}

impl NodeInfo {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// A running cluster.
pub struct ValkeyCluster {
    /// Every node, in creation order (the first `masters` start as masters).
    pub nodes: Vec<ValkeyServer>,
}

/// Runs `valkey-cli` (sync) and returns its stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_auth(port, None, args)
}

/// [`cli`], authenticating with `password` when there is one.
pub fn cli_auth(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("valkey-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        cmd.args(["--no-auth-warning", "-a", password]);
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run valkey-cli (install valkey-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The hash slot of `key` (CRC16 mod 16384, as `CLUSTER KEYSLOT`).
pub fn keyslot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// A raw command on a standalone connection.
pub async fn command(client: &Client, args: &[&str]) -> Result<Value, Error> {
    let (name, rest) = args.split_first().expect("a command");
    let cmd = CustomCommand::new(name.to_string(), ClusterHash::FirstKey, false);
    client
        .custom::<Value, _>(cmd, rest.iter().map(|s| s.to_string()).collect())
        .await
}

/// A standalone connection to one node, without reconnection (a killed node
/// fails its commands).
pub async fn node_client(port: u16) -> Result<Client, Error> {
    let config = Config::from_url(&format!("redis://127.0.0.1:{port}"))?;
    let client = Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_millis(500);
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        .build()?;
    client.init().await?;
    Ok(client)
}

/// Parses `CLUSTER NODES`.
pub fn parse_nodes(text: &str) -> Vec<NodeInfo> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let port = f[1]
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let flags = f[2];
        let mut slots = Vec::new();
        for s in &f[8..] {
            if s.starts_with('[') {
                continue; // importing/migrating markers
            }
            let (a, b) = match s.split_once('-') {
                Some((a, b)) => (a.parse().ok(), b.parse().ok()),
                None => (s.parse().ok(), s.parse().ok()),
            };
            if let (Some(a), Some(b)) = (a, b) {
                slots.push((a, b));
            }
        }
        out.push(NodeInfo {
            id: f[0].to_owned(),
            port,
            master: flags.split(',').any(|x| x == "master"),
            failed: flags.split(',').any(|x| x == "fail" || x == "fail?"),
            master_id: (f[3] != "-").then(|| f[3].to_owned()),
            slots,
        });
    }
    out
}

impl ValkeyCluster {
    /// Starts `masters` masters with one replica each and waits until the
    /// cluster is fully formed: every slot covered, all nodes agreeing, every
    /// replica's link up.
    pub fn start(masters: usize) -> ValkeyCluster {
        let timeout = NODE_TIMEOUT_MS.to_string();
        let extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            &timeout,
            "--cluster-require-full-coverage",
            "no",
            // A replica of a killed master takes over without waiting for
            // its data age check (it is fresh on loopback anyway).
            "--cluster-replica-validity-factor",
            "0",
        ];
        let nodes: Vec<ValkeyServer> = (0..masters * 2)
            .map(|_| ValkeyServer::start_with(&extra))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("valkey-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run valkey-cli --cluster create");
        assert!(
            out.status.success(),
            "valkey-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = ValkeyCluster { nodes };
        cluster.wait_stable(Duration::from_secs(20));
        cluster
    }

    /// Waits until `valkey-cli --cluster check` is happy, every live node says
    /// `cluster_state:ok`, and every replica's link to its master is up.
    pub fn wait_stable(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.is_stable() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cluster not stable within {within:?}:\n{}",
                self.nodes_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn is_stable(&self) -> bool {
        let live: Vec<u16> = self.live_ports();
        let Some(&first) = live.first() else {
            return false;
        };
        let check = Command::new("valkey-cli")
            .args(["--cluster", "check", &format!("127.0.0.1:{first}")])
            .stdin(Stdio::null())
            .output();
        let Ok(check) = check else { return false };
        let text = String::from_utf8_lossy(&check.stdout);
        if !check.status.success()
            || !text.contains("All nodes agree")
            || !text.contains("All 16384 slots covered")
        {
            return false;
        }
        live.iter().all(|&p| {
            let info = cli(p, &["INFO", "replication"]);
            cli(p, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && (info.contains("role:master") || info.contains("master_link_status:up"))
        })
    }

    /// Ports of nodes that answer PING.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.ping())
            .map(|n| n.port)
            .collect()
    }

    /// `CLUSTER NODES` as seen by the first live node.
    pub fn nodes_text(&self) -> String {
        for p in self.live_ports() {
            let t = cli(p, &["CLUSTER", "NODES"]);
            if !t.trim().is_empty() {
                return t;
            }
        }
        String::new()
    }

    /// The topology as seen by the first live node (or by `port`'s node).
    pub fn topology(&self) -> Vec<NodeInfo> {
        parse_nodes(&self.nodes_text())
    }

    /// The topology as `port`'s node sees it.
    pub fn topology_from(&self, port: u16) -> Vec<NodeInfo> {
        parse_nodes(&cli(port, &["CLUSTER", "NODES"]))
    }

    /// The port of the master serving `slot` (per the first live node).
    pub fn master_of_slot(&self, slot: u16) -> Option<u16> {
        self.topology()
            .into_iter()
            .find(|n| n.master && !n.failed && n.serves(slot))
            .map(|n| n.port)
    }

    /// The port of the master serving `key`.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        self.master_of_slot(keyslot(key))
    }

    /// A replica (port) of the master on `master_port`.
    pub fn replica_of(&self, master_port: u16) -> Option<u16> {
        let topo = self.topology();
        let id = topo.iter().find(|n| n.port == master_port)?.id.clone();
        topo.iter()
            .find(|n| n.master_id.as_deref() == Some(id.as_str()) && !n.failed)
            .map(|n| n.port)
    }

    /// Ports of the current masters.
    pub fn master_ports(&self) -> Vec<u16> {
        self.topology()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect()
    }

    /// The locker's node URL: every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("valkey-cluster://{}", hosts.join(","))
    }

    pub fn node_mut(&mut self, port: u16) -> &mut ValkeyServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// A cluster-aware admin client (follows MOVED/ASK, reconnects).
    pub async fn admin(&self) -> Client {
        let hosts: Vec<(String, u16)> = self
            .live_ports()
            .into_iter()
            .map(|p| ("127.0.0.1".to_owned(), p))
            .collect();
        let config = Config {
            server: ServerConfig::new_clustered(hosts),
            ..Config::default()
        };
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
            .set_policy(ReconnectPolicy::new_constant(0, 100))
            .build()
            .expect("cluster client");
        client.init().await.expect("cluster admin connect");
        client
    }

    /// `CLUSTER FAILOVER` on `replica_port` (a coordinated switch, no data
    /// loss), then waits until every live node sees it as master of its
    /// slots and the cluster is stable again.
    pub fn manual_failover(&self, replica_port: u16) {
        let reply = cli(replica_port, &["CLUSTER", "FAILOVER"]);
        assert!(reply.contains("OK"), "CLUSTER FAILOVER: {reply}");
        self.wait_promoted(replica_port, Duration::from_secs(10));
        self.wait_stable(Duration::from_secs(10));
    }

    /// Waits until the replica on `replica_port` is a master (after its
    /// master was killed) as seen by every live node.
    pub fn wait_promoted(&self, replica_port: u16, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let ok = self.live_ports().iter().all(|&p| {
                self.topology_from(p)
                    .iter()
                    .any(|n| n.port == replica_port && n.master && !n.slots.is_empty())
            });
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{replica_port} not promoted within {within:?}:\n{}",
                self.nodes_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Moves `slot` (and its keys) from the master on `from` to the master on
    /// `to` the way `valkey-cli --cluster reshard` does: `SETSLOT IMPORTING`
    /// on the target, `SETSLOT MIGRATING` on the source, `MIGRATE` of each
    /// key, then `SETSLOT NODE` on both and on every other master. `between`
    /// runs after the keys moved and before ownership changes (the ASK window).
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16, between: impl FnOnce()) {
        let topo = self.topology();
        let id = |port: u16| {
            topo.iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .expect("node id")
        };
        let (from_id, to_id) = (id(from), id(to));
        let s = slot.to_string();
        let ok = |r: String, what: &str| assert!(r.contains("OK"), "{what}: {r}");
        ok(
            cli(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]),
            "SETSLOT IMPORTING",
        );
        ok(
            cli(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]),
            "SETSLOT MIGRATING",
        );
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]);
            let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            let r = cli(from, &args);
            assert!(r.contains("OK") || r.contains("NOKEY"), "MIGRATE: {r}");
        }
        between();
        for port in [to, from] {
            ok(
                cli(port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]),
                "SETSLOT NODE",
            );
        }
        for n in topo
            .iter()
            .filter(|n| n.master && n.port != to && n.port != from)
        {
            let _ = cli(n.port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]);
        }
        self.wait_stable(Duration::from_secs(10));
    }
}

/// Standalone connections to single nodes (cluster nodes, instances,
/// sentinels), opened on demand and dropped when they fail (a killed node),
/// for reading keys where they really are.
#[derive(Default)]
pub struct NodeReader {
    clients: HashMap<u16, Client>,
    /// Send `READONLY` on each new connection (cluster replicas then answer
    /// reads instead of redirecting).
    readonly: bool,
}

impl NodeReader {
    /// For cluster nodes (`READONLY` on each connection).
    pub fn cluster() -> NodeReader {
        NodeReader {
            clients: HashMap::new(),
            readonly: true,
        }
    }

    /// For standalone servers and sentinels.
    pub fn standalone() -> NodeReader {
        NodeReader::default()
    }

    async fn client(&mut self, port: u16) -> Result<Client, Error> {
        if let Some(c) = self.clients.get(&port) {
            return Ok(c.clone());
        }
        let c = node_client(port).await?;
        if self.readonly {
            command(&c, &["READONLY"]).await?;
        }
        self.clients.insert(port, c.clone());
        Ok(c)
    }

    fn forget(&mut self, port: u16) {
        if let Some(c) = self.clients.remove(&port) {
            tokio::spawn(async move {
                let _ = c.quit().await;
            });
        }
    }

    /// `GET key` on the node at `port`. `Err` when the node is unreachable
    /// or redirects.
    pub async fn get(&mut self, port: u16, key: &str) -> Result<Option<String>, Error> {
        let client = self.client(port).await?;
        let r = client.get::<Option<String>, _>(key).await;
        if let Err(e) = &r {
            if *e.kind() != ErrorKind::Cluster {
                self.forget(port);
            }
        }
        r
    }

    /// A raw command on the node at `port`.
    pub async fn command(&mut self, port: u16, args: &[&str]) -> Result<Value, Error> {
        let client = self.client(port).await?;
        let r = command(&client, args).await;
        if r.is_err() {
            self.forget(port);
        }
        r
    }

    pub async fn close(&mut self) {
        for (_, c) in self.clients.drain() {
            let _ = c.quit().await;
        }
    }
}
