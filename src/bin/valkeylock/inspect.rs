//! `status` and `release --force`: plain commands on each node (no locker,
//! no tracking), each key on the node the engine places it on
//! (`LockerOptions::node_of_key`).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use fred::prelude::{Client, ClientLike, Config, KeysInterface, ServerConfig};
use fred::types::config::ConnectionConfig;
use fred::types::Builder;
use valkeylock::{LockerOptions, NodeAddr, Topology};

use crate::args::{EXIT_NOT_HELD, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE};

/// One node: where it is (for messages, without the password), and its client
/// or why there is none.
struct Node {
    shown: String,
    client: Result<Client, String>,
}

/// Connects to every node, each bounded by `connect_timeout`.
async fn connect_all(options: &LockerOptions) -> Vec<Node> {
    let timeout = options.connect_timeout;
    let command_timeout = options.connect_timeout.max(options.try_next_after);
    let tasks = options.nodes.iter().cloned().map(|url| async move {
        let addr = match NodeAddr::parse(&url) {
            Ok(addr) => addr,
            Err(e) => {
                return Node {
                    shown: e.url().to_owned(),
                    client: Err(e.kind().to_string()),
                }
            }
        };
        let shown = addr.redacted_url();
        let client = async {
            if addr.tls {
                return Err("TLS nodes are not supported by `status` and `release` yet".to_owned());
            }
            let server = match &addr.topology {
                Topology::Standalone => {
                    ServerConfig::new_centralized(addr.hosts[0].0.clone(), addr.hosts[0].1)
                }
                Topology::Cluster => ServerConfig::new_clustered(addr.hosts.clone()),
                Topology::Sentinel { service } => {
                    ServerConfig::new_sentinel(addr.hosts.clone(), service.clone())
                }
                other => {
                    return Err(format!(
                        "{other:?} nodes are not supported by `status` and `release`"
                    ))
                }
            };
            let config = Config {
                server,
                username: addr.username,
                password: addr.password,
                database: addr.db,
                fail_fast: true,
                ..Config::default()
            };
            let client = Builder::from_config(config)
                .set_connection_config(ConnectionConfig {
                    connection_timeout: timeout,
                    internal_command_timeout: timeout,
                    max_command_attempts: 1,
                    ..ConnectionConfig::default()
                })
                .with_performance_config(|p| p.default_command_timeout = command_timeout)
                .build()
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(timeout + Duration::from_millis(100), client.init()).await {
                Ok(Ok(_)) => Ok(client),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        }
        .await;
        Node { shown, client }
    });
    join_all(tasks).await
}

/// Runs the futures concurrently (each on its own task) and collects their outputs in order.
async fn join_all<F: std::future::Future<Output = T> + Send + 'static, T: Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("connect task panicked"));
    }
    out
}

async fn quit_all(nodes: &[Node]) {
    for node in nodes {
        if let Ok(c) = &node.client {
            let _ = tokio::time::timeout(Duration::from_millis(200), c.quit()).await;
        }
    }
}

/// Options checks and the lock name check shared by both commands; returns
/// the node (index into `options.nodes`) of each key of a lock.
fn check(options: &LockerOptions, name: &str) -> Result<Vec<usize>, u8> {
    // Validated first: `key_majority` is then within 1..=64.
    let placement = options.validate().and_then(|()| {
        (0..2 * options.key_majority - 1)
            .map(|i| options.node_of_key(i))
            .collect::<Result<Vec<_>, _>>()
    });
    let placement = match placement {
        Ok(p) => p,
        Err(e) => {
            eprintln!("valkeylock: {e}");
            return Err(EXIT_USAGE);
        }
    };
    if name.is_empty() {
        eprintln!("valkeylock: the lock name must not be empty");
        return Err(EXIT_USAGE);
    }
    Ok(placement)
}

fn key(options: &LockerOptions, index: usize, name: &str) -> String {
    format!("{}:{index}:{name}", options.key_prefix)
}

fn short(token: &str) -> String {
    token.chars().take(8).collect()
}

/// The configuration a locker of this library wrote after its token
/// (`<hex>:m<key_majority>n<nodes>`), if the value has one.
fn written_with(token: &str) -> Option<&str> {
    let (_, fingerprint) = token.rsplit_once(':')?;
    let rest = fingerprint.strip_prefix('m')?;
    let (m, n) = rest.split_once('n')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(m) && digits(n)).then_some(fingerprint)
}

/// What one key looked like.
enum KeyState {
    Present { token: String, ttl_ms: i64 },
    Absent,
    Unknown(String),
}

/// `valkeylock status NAME`.
pub(crate) async fn status(options: LockerOptions, name: &str) -> u8 {
    let placement = match check(&options, name) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let nodes = connect_all(&options).await;
    if nodes.iter().all(|n| n.client.is_err()) {
        for n in &nodes {
            if let Err(e) = &n.client {
                eprintln!("valkeylock: cannot connect to Valkey at {}: {e}", n.shown);
            }
        }
        return EXIT_UNAVAILABLE;
    }
    let majority = options.key_majority;
    let total = 2 * majority - 1;
    let mut keys = Vec::with_capacity(total);
    for (i, &on) in placement.iter().enumerate() {
        let node = &nodes[on];
        let k = key(&options, i, name);
        let state = match &node.client {
            Err(e) => KeyState::Unknown(e.clone()),
            Ok(c) => {
                let got: Result<(Option<String>, i64), _> = async {
                    let v: Option<String> = c.get(&k).await?;
                    let ttl: i64 = c.pttl(&k).await?;
                    Ok::<_, fred::error::Error>((v, ttl))
                }
                .await;
                match got {
                    Ok((Some(token), ttl_ms)) if ttl_ms != -2 => {
                        KeyState::Present { token, ttl_ms }
                    }
                    Ok(_) => KeyState::Absent,
                    Err(e) => KeyState::Unknown(e.to_string()),
                }
            }
        };
        keys.push((k, on, state));
    }
    let fence_key = format!("{}:fence:{name}", options.key_prefix);
    let mut fences = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if let Ok(c) = &node.client {
            if let Ok(Some(v)) = c.get::<Option<String>, _>(&fence_key).await {
                fences.push((i, v));
            }
        }
    }
    quit_all(&nodes).await;

    let mut by_token: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unknown = 0;
    for (_, _, state) in &keys {
        match state {
            KeyState::Present { token, .. } => *by_token.entry(token.as_str()).or_default() += 1,
            KeyState::Unknown(_) => unknown += 1,
            KeyState::Absent => {}
        }
    }
    let owner = by_token
        .iter()
        .max_by_key(|(_, n)| **n)
        .filter(|(_, n)| **n >= majority)
        .map(|(t, _)| *t);
    match owner {
        Some(t) => println!(
            "lock {name:?}: held by token {} ({} of {total} keys, {majority} needed)",
            short(t),
            by_token[t]
        ),
        None if unknown > 0 => println!(
            "lock {name:?}: unknown ({unknown} of {total} keys unreadable, {majority} needed)"
        ),
        None => println!("lock {name:?}: not held ({majority} of {total} keys needed)"),
    }
    let ours = format!("m{majority}n{}", nodes.len());
    for (k, node, state) in &keys {
        let shown = &nodes[*node].shown;
        match state {
            KeyState::Present { token, ttl_ms } => {
                let ttl = if *ttl_ms < 0 {
                    "no expiry".to_owned()
                } else {
                    format!("ttl {:.3}s", *ttl_ms as f64 / 1000.0)
                };
                let config = match written_with(token) {
                    Some(fp) if fp != ours => {
                        format!(
                            " (written with {fp}: key_majority and node count differ from {ours})"
                        )
                    }
                    _ => String::new(),
                };
                println!(
                    "  {k} on node {node} ({shown}): present, {ttl}, token {}{config}",
                    short(token)
                );
            }
            KeyState::Absent => println!("  {k} on node {node} ({shown}): absent"),
            KeyState::Unknown(e) => println!("  {k} on node {node} ({shown}): unreadable: {e}"),
        }
    }
    match by_token.len() {
        0 => println!("no key present"),
        1 => println!(
            "all present keys belong to token {}",
            short(by_token.keys().next().expect("one token"))
        ),
        n => println!(
            "present keys belong to {n} different tokens: {}",
            by_token
                .keys()
                .map(|t| short(t))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    if fences.is_empty() {
        println!("fencing counter {fence_key}: absent");
    } else {
        let list: Vec<String> = fences
            .iter()
            .map(|(i, v)| format!("{v} (node {i})"))
            .collect();
        println!("fencing counter {fence_key}: {}", list.join(", "));
    }
    for n in &nodes {
        if let Err(e) = &n.client {
            eprintln!("valkeylock: cannot connect to Valkey at {}: {e}", n.shown);
        }
    }
    match owner {
        Some(_) => EXIT_OK,
        None if unknown > 0 => EXIT_UNAVAILABLE,
        None => EXIT_NOT_HELD,
    }
}

/// `valkeylock release --force [--yes] NAME`.
pub(crate) async fn release(options: LockerOptions, name: &str, yes: bool) -> u8 {
    let placement = match check(&options, name) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if !yes && std::io::stdin().is_terminal() {
        eprintln!(
            "valkeylock: this deletes the keys of lock {name:?} whoever holds it (its holder loses it); add --yes to confirm"
        );
        return EXIT_USAGE;
    }
    let nodes = connect_all(&options).await;
    let total = placement.len();
    let mut deleted = 0;
    let mut failed = 0;
    // One DEL per node for all of its keys: atomic on that node, so a holder
    // that notices the loss midway cannot beat us to the rest.
    for (n, node) in nodes.iter().enumerate() {
        let keys: Vec<String> = (0..total)
            .filter(|&i| placement[i] == n)
            .map(|i| key(&options, i, name))
            .collect();
        if keys.is_empty() {
            continue;
        }
        match &node.client {
            Ok(c) => match c.del::<i64, _>(keys.clone()).await {
                Ok(d) => deleted += d,
                Err(e) => {
                    failed += keys.len();
                    eprintln!("valkeylock: DEL on {}: {e}", node.shown);
                }
            },
            Err(e) => {
                failed += keys.len();
                eprintln!(
                    "valkeylock: cannot connect to Valkey at {}: {e} ({} not deleted)",
                    node.shown,
                    keys.join(", ")
                );
            }
        }
    }
    quit_all(&nodes).await;
    println!(
        "lock {name:?}: deleted {deleted} of {total} keys{} (the fencing counter is kept)",
        if failed > 0 {
            format!(", {failed} unreachable")
        } else {
            String::new()
        }
    );
    if failed > 0 {
        EXIT_UNAVAILABLE
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        let hex = "ab".repeat(24);
        assert_eq!(written_with(&format!("{hex}:m2n3")), Some("m2n3"));
        assert_eq!(written_with(&format!("F{hex}:m1n1")), Some("m1n1"));
        assert_eq!(written_with(&hex), None);
        assert_eq!(written_with("a:b"), None);
        assert_eq!(written_with("x:mn"), None);
    }
}
