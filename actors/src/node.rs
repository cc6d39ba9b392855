//! NodeActor: owns one fred `Client` (RESP3, tracking on) for one Valkey
//! instance; runs lock scripts for `LockActor`s and routes invalidations to them.
//!
//! Reconnection has one owner, the Supervisor: the client is built without a
//! fred reconnect policy, so a broken connection ends its task, this actor fails,
//! and the Supervisor starts a fresh one with backoff. A fresh connection re-arms
//! tracking (fred would not) and the Supervisor tells every `LockActor` to
//! re-check, because invalidations sent during the gap are gone.
//!
//! Lock commands (the acquiring `SET`, verify, release) go through the node's
//! command lane: an unbounded queue into the pump, one task this actor spawns
//! and owns, which drives all of the node's calls at once (fred pipelines them
//! on the one connection) and casts each reply to its `LockActor`, stamped with
//! the instant it was sent. The actor publishes the lane in the shared table
//! when its connection is up and withdraws it when the connection ends or the
//! actor stops, so a `LockActor` reaches the connection in one hop and a down
//! node answers at once. Why not the mailbox: on tokio's multi-thread runtime
//! each hop of a chain of tasks can wake the other worker thread, and a
//! lock + unlock is two such chains (see BENCHMARKS.md, "What limits
//! valkeylock's performance"). Extensions (the `PEXPIRE`s) still go through
//! the mailbox: they are batched per node per tick, which is this actor's job.
//!
//! The command pump is one long-lived task rather than a task per call: a
//! spawn on the multi-thread runtime can wake the other worker too.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, TrackingInterface};
use fred::prelude::{Config, ServerConfig};
use fred::types::config::{ConnectionConfig, PerformanceConfig, TcpConfig, UnresponsiveConfig};
use fred::types::scripts::Script;
use fred::types::{Builder, Key, RespVersion, Value};
use futures_util::future::Either;
use futures_util::stream::{FuturesUnordered, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::addr::{NodeAddr, Topology};
use crate::context::{count_send, AbortOnDrop, NodeLane, Shared};
use crate::core::{Claim, CmdId, Op, Outcome, Place, Queue};
use crate::election::Record;
use crate::exec::Exec;
use crate::failure::NodeFailure;
use crate::keys::{self, KeyName};
use crate::metrics::NodeMetrics;
use crate::msg::{
    Connection, EngineNews, ExtendItem, Job, LockMsg, NodeMsg, NodeReply, Reading, SupervisorMsg,
};
use crate::scripts::{
    parse_acquire, parse_acquire_one, parse_fence, parse_fence_write, parse_inspect,
    parse_key_state, parse_log, parse_queued, parse_released, parse_released_many,
    parse_verified_many, queued_reply, read_free_acquire, FreeAcquired, Look, SetMode, Token,
};

pub(crate) struct NodeActor;

/// How long a node collects extensions before sending them as one script
/// call. Lock actors tick on a shared grid, so one window catches them all.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// Keys per script call of a batch: bounds the time one call holds the
/// server (a few hundred microseconds).
const BATCH_KEYS: usize = 500;

pub(crate) struct NodeState {
    index: usize,
    addr: String,
    client: Client,
    connected: bool,
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    /// Helper tasks (connect, watcher, invalidation forwarder); aborted on
    /// drop, which also closes the connection when the actor is killed.
    tasks: Vec<AbortOnDrop>,
    /// The command pump's queue.
    pump: mpsc::UnboundedSender<Job>,
    /// This actor's id (for withdrawing its lane).
    actor: Option<ractor::ActorId>,
    batch: Vec<ExtendItem>,
    flush_armed: bool,
    /// A Valkey Cluster: batches are split by hash slot.
    cluster: bool,
    metrics: NodeMetrics,
}

impl Drop for NodeState {
    /// Withdraws the lane, and marks the node down in the health table if
    /// the connection was this actor's, even when the actor is killed (no
    /// `post_stop`).
    fn drop(&mut self) {
        if let Some(id) = self.actor {
            self.shared.clear_lane(self.index, id);
            self.shared
                .node_lost(self.index, id, "the node's actor stopped");
        }
    }
}

pub(crate) struct NodeArgs {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) supervisor: ActorRef<SupervisorMsg>,
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let settings = &args.shared.settings;
        let addr = &settings.nodes[args.index];
        let client = build_client(addr, settings, Role::Engine)?;
        let cluster = addr.topology == Topology::Cluster;
        let metrics = NodeMetrics::new(&addr.display());
        // Connecting is I/O: do it on a task so spawning this actor never blocks
        // the Supervisor, and commands meanwhile fail fast as "unavailable".
        let connect = {
            let client = client.clone();
            let shared = args.shared.clone();
            let me = myself.clone();
            let addr = addr.clone();
            let metrics = metrics.clone();
            let supervisor = args.supervisor.clone();
            tokio::spawn(async move {
                let result = connect(&client, &shared, &addr, &me, &supervisor, metrics).await;
                let _ = me.cast(NodeMsg::Connected(result));
            })
        };
        let (lane, jobs) = mpsc::unbounded_channel();
        // Exempt from tokio's cooperative budget: the pump multiplexes every
        // lock's calls, and throttled to one task's share it fell behind
        // thousands of lock actors (10,000 acquisitions at once took seconds
        // and timed out). `FuturesUnordered` still yields after a full pass.
        //
        // Not aborted with this actor: once its state and the shared table
        // drop their senders, the pump finishes the calls in flight (they fail
        // fast when the connection task is gone) and every `LockActor` gets its
        // answer now rather than from its backstop timer.
        let pump = run_pump(client.clone(), args.shared.clone(), jobs, cluster);
        tokio::spawn(tokio::task::unconstrained(pump));
        Ok(NodeState {
            index: args.index,
            addr: addr.display(),
            client,
            connected: false,
            shared: args.shared,
            supervisor: args.supervisor,
            tasks: vec![AbortOnDrop::new(&connect)],
            pump: lane,
            actor: Some(myself.get_id()),
            batch: Vec::new(),
            flush_armed: false,
            cluster,
            metrics,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Connected(Ok(conn)) => {
                state.connected = true;
                state.shared.set_lane(
                    state.index,
                    NodeLane {
                        owner: myself.get_id(),
                        lane: state.pump.clone(),
                        conn: conn.conn,
                    },
                );
                state.tasks.push(AbortOnDrop::new(&conn.handle));
                if let Some(forwarder) = &conn.forwarder {
                    state.tasks.push(AbortOnDrop::new(forwarder));
                }
                for w in &conn.watchers {
                    state.tasks.push(AbortOnDrop::new(w));
                }
                let watcher = {
                    let me = myself.clone();
                    let handle = conn.handle;
                    tokio::spawn(async move {
                        let why = match handle.await {
                            Ok(Ok(())) => "connection closed".to_owned(),
                            Ok(Err(e)) => format!("connection lost: {e}"),
                            Err(e) => format!("connection task ended: {e}"),
                        };
                        let _ = me.cast(NodeMsg::ConnectionEnded(why));
                    })
                };
                state.tasks.push(AbortOnDrop::new(&watcher));
                state.shared.node_up(state.index, myself.get_id());
                info!(node = %state.addr, index = state.index, "node connected");
                state.metrics.connected();
                let _ = state.supervisor.cast(SupervisorMsg::NodeUp {
                    node: state.index,
                    actor: myself.get_id(),
                });
            }
            NodeMsg::Connected(Err(e)) => {
                let why = format!("connect to {} failed: {e}", state.addr);
                let failure = NodeFailure::from_fred(e);
                warn!(
                    node = %state.addr,
                    index = state.index,
                    error = %failure.source,
                    kind = failure.kind.as_str(),
                    permanent = failure.permanent,
                    "node connection failed"
                );
                state
                    .shared
                    .node_failed(state.index, &failure.source.to_string());
                state.metrics.connect_failed();
                let _ = state.supervisor.cast(SupervisorMsg::NodeDown {
                    node: state.index,
                    actor: myself.get_id(),
                    failure,
                });
                return Err(why.into());
            }
            NodeMsg::Extend(item) => {
                if !state.connected {
                    fail_items(vec![item], "node not connected");
                    return Ok(());
                }
                state.batch.push(item);
                if !state.flush_armed {
                    state.flush_armed = true;
                    myself.send_after(BATCH_WINDOW, || NodeMsg::Flush);
                }
            }
            NodeMsg::Flush => {
                state.flush_armed = false;
                let batch = std::mem::take(&mut state.batch);
                if !state.connected {
                    fail_items(batch, "node not connected");
                    return Ok(());
                }
                for chunk in chunks(batch, state.cluster) {
                    let client = state.client.clone();
                    let shared = state.shared.clone();
                    let metrics = state.metrics.clone();
                    tokio::spawn(
                        async move { extend_batch(&client, &shared, &metrics, chunk).await },
                    );
                }
            }
            NodeMsg::ConnectionEnded(why) => {
                state.connected = false;
                state.shared.clear_lane(state.index, myself.get_id());
                state.shared.node_lost(state.index, myself.get_id(), &why);
                warn!(node = %state.addr, index = state.index, reason = %why, "node disconnected");
                state.metrics.disconnected();
                return Err(why.into());
            }
            NodeMsg::Inspect {
                keys,
                fence_key,
                waiters,
                reply,
            } => {
                if !state.connected {
                    let _ = reply.send(Reading {
                        keys: keys
                            .iter()
                            .map(|_| Look::unreadable("node not connected".to_owned()))
                            .collect(),
                        fence: None,
                    });
                    return Ok(());
                }
                let (client, shared) = (state.client.clone(), state.shared.clone());
                tokio::spawn(async move {
                    let _ = reply.send(inspect(&client, &shared, &keys, &fence_key, waiters).await);
                });
            }
            NodeMsg::Log {
                key,
                write,
                after,
                reply,
            } => {
                if !state.connected {
                    let _ = reply.send(Err("node not connected".to_owned()));
                    return Ok(());
                }
                let (client, shared) = (state.client.clone(), state.shared.clone());
                tokio::spawn(async move {
                    let _ = reply.send(log(&client, &shared, &key, write.as_ref(), after).await);
                });
            }
            NodeMsg::Delete { keys, reply } => {
                if !state.connected {
                    let _ = reply.send(Err("node not connected".to_owned()));
                    return Ok(());
                }
                let (client, cluster) = (state.client.clone(), state.cluster);
                let shared = state.shared.clone();
                tokio::spawn(async move {
                    let deleted = delete(&client, &keys, cluster).await;
                    // With NOLOOP our own DEL sends this connection no
                    // invalidation: a holder in this locker hears of it now,
                    // as one elsewhere would, not at its next extension.
                    if deleted.is_ok() {
                        for key in &keys {
                            route_invalidation(&shared, key.as_bytes());
                        }
                    }
                    let _ = reply.send(deleted);
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<NodeMsg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        if state.connected {
            let _ = tokio::time::timeout(Duration::from_millis(200), state.client.quit()).await;
        }
        state.tasks.clear();
        Ok(())
    }
}

/// What a node's client is for, which sets how many of fred's events it
/// keeps for a slow reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The engine's connection: it reads the node's invalidations (those of
    /// the direct connections too, redirected to it) and hand-over
    /// messages, which come in bursts.
    Engine,
    /// A direct connection (`direct`): its tracking is redirected to the
    /// engine's connection and it subscribes to nothing, so no event of
    /// its own is read.
    Direct,
}

impl Role {
    /// The capacity of each of fred's event channels. fred allocates every
    /// slot of its nine channels when the client is built: at 4096, 2.8 MB
    /// of memory and 1.6 ms per client, against 71 kB and 0.07 ms at fred's
    /// default of 32 (measured by building clients in a loop and reading
    /// the process's resident memory). The engine's connection keeps what
    /// the locker's `event_buffer` says (a lag is handled, everything
    /// re-checked, but costs a round of commands); a direct connection
    /// takes fred's default, as nobody reads its channels.
    fn event_capacity(self, settings: &crate::options::Settings) -> usize {
        match self {
            Role::Engine => settings.event_buffer,
            Role::Direct => PerformanceConfig::default().broadcast_channel_capacity,
        }
    }
}

pub(crate) fn build_client(
    addr: &NodeAddr,
    settings: &crate::options::Settings,
    role: Role,
) -> Result<Client, fred::error::Error> {
    let config = Config {
        version: RespVersion::RESP3,
        server: match &addr.topology {
            Topology::Standalone => {
                ServerConfig::new_centralized(addr.hosts[0].0.clone(), addr.hosts[0].1)
            }
            Topology::Cluster => ServerConfig::new_clustered(addr.hosts.clone()),
            Topology::Sentinel { service } => {
                ServerConfig::new_sentinel(addr.hosts.clone(), service.clone())
            }
        },
        username: addr.username.clone(),
        password: addr.password.clone(),
        database: addr.db,
        fail_fast: true,
        ..Config::default()
    };
    #[cfg(feature = "tls")]
    let config = Config {
        tls: if addr.tls {
            Some(tls_config(settings)?)
        } else {
            None
        },
        ..config
    };
    let connection = ConnectionConfig {
        connection_timeout: settings.connect_timeout,
        internal_command_timeout: settings.connect_timeout,
        // A lock command is never re-sent behind our back: the LockActor decides
        // what to retry, with a fresh timestamp.
        max_command_attempts: if addr.topology == Topology::Cluster {
            // fred spends an attempt on each ASK/MOVED redirection; with one,
            // a slot migration would end the whole cluster connection. Our
            // scripts are idempotent and stamped before the first write, so
            // a retry only makes the validity estimate more conservative.
            3
        } else {
            1
        },
        // A reply overdue this long means the link is dead even without an RST
        // (a silent partition): close it so the Supervisor reconnects.
        unresponsive: UnresponsiveConfig {
            max_timeout: Some(unresponsive_after(settings)),
            interval: unresponsive_check(settings),
        },
        tcp: TcpConfig {
            nodelay: Some(true),
            ..TcpConfig::default()
        },
        ..ConnectionConfig::default()
    };
    let performance = PerformanceConfig {
        default_command_timeout: settings.timeout,
        broadcast_channel_capacity: role.event_capacity(settings),
        ..PerformanceConfig::default()
    };
    Builder::from_config(config)
        .set_connection_config(connection)
        .set_performance_config(performance)
        .build()
}

/// How overdue a reply must be for its connection to count as dead (a
/// silent partition): five `timeout`s, at least a second. A command past
/// `timeout` alone fails, and its connection lives on, as one slow reply
/// does not make a dead link.
pub(crate) fn unresponsive_after(settings: &crate::options::Settings) -> Duration {
    (settings.timeout * 5).max(Duration::from_secs(1))
}

/// How often a connection's overdue replies are looked for.
pub(crate) fn unresponsive_check(settings: &crate::options::Settings) -> Duration {
    settings.timeout.max(Duration::from_millis(100))
}

/// rustls with the configured CA file, or the system's roots.
#[cfg(feature = "tls")]
fn tls_config(
    settings: &crate::options::Settings,
) -> Result<fred::types::config::TlsConfig, fred::error::Error> {
    use fred::error::{Error, ErrorKind};
    use fred::types::config::{TlsConfig, TlsConnector, TlsHostMapping};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let connector = match &settings.tls_ca_file {
        None => TlsConnector::default_rustls()?,
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::new(ErrorKind::Config, format!("tls_ca_file {path:?}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    Error::new(ErrorKind::Config, format!("tls_ca_file {path:?}: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    Error::new(ErrorKind::Config, format!("tls_ca_file {path:?}: {e}"))
                })?;
            }
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth()
                .into()
        }
    };
    Ok(TlsConfig {
        connector,
        hostnames: TlsHostMapping::None,
    })
}

/// Connects, loads the scripts, subscribes to invalidations and turns tracking
/// on (default mode, like valkeylock's OPTOUT: every read is tracked).
async fn connect(
    client: &Client,
    shared: &Arc<Shared>,
    addr: &NodeAddr,
    me: &ActorRef<NodeMsg>,
    supervisor: &ActorRef<SupervisorMsg>,
    metrics: NodeMetrics,
) -> Result<Connection, fred::error::Error> {
    let handle = client.init().await?;
    let mut forwarder = None;
    let mut handover = None;
    let ready = async {
        shared.scripts.acquire.load(client).await?;
        shared.scripts.verify.load(client).await?;
        shared.scripts.release.load(client).await?;
        // Loaded now, not on the first burst: a burst's first call would
        // fail with NOSCRIPT and run after the jobs queued behind it (and
        // the checks after a reconnect are such a burst).
        shared.scripts.release_many.load(client).await?;
        shared.scripts.verify_many.load(client).await?;
        if shared.settings.handover.is_some() {
            shared.scripts.release_handover.load(client).await?;
        }
        if shared.settings.fencing {
            shared.scripts.fence_write.load(client).await?;
        }
        if let Some(channel) = &shared.settings.handover {
            // Hand-over: this locker's claims name this channel; a claim
            // handed while nobody listens holds its key for a validity, so
            // the connection is up only once the subscription is confirmed.
            use fred::interfaces::PubsubInterface;
            handover = Some(start_handover_forwarder(client, shared, supervisor));
            client.subscribe(&**channel).await?;
            confirm_subscribed(client, channel).await?;
        }
        if shared.settings.tracking {
            // Subscribe before tracking is on, so no invalidation is missed.
            forwarder = Some(start_forwarder(client, shared, metrics));
            client
                .start_tracking(
                    fred::types::MultipleStrings::from(Vec::<String>::new()),
                    false,
                    false,
                    false,
                    shared.settings.no_loop,
                )
                .await?;
        }
        Ok::<(), fred::error::Error>(())
    };
    let result = tokio::time::timeout(shared.settings.connect_timeout, ready).await;
    match result {
        Ok(Ok(())) => {
            // Direct connections redirect their tracking here (see
            // `direct`): a single instance only, and only if they are on.
            // Without the id (an ACL without `+client|id`) they are not
            // used.
            let s = &shared.settings;
            let conn = if addr.topology == Topology::Standalone && s.tracking && s.direct {
                client_id(client).await
            } else {
                0
            };
            let mut watchers: Vec<_> = handover.into_iter().collect();
            match &addr.topology {
                Topology::Standalone => {}
                // A connection fred opens later (a promoted master, a node
                // found after MOVED) would have no tracking: start over on
                // any topology change, so tracking is armed everywhere and
                // every lock re-checks.
                Topology::Cluster => {
                    let mut changes = client.cluster_change_rx();
                    let me = me.clone();
                    watchers.push(tokio::spawn(async move {
                        let why = match changes.recv().await {
                            Ok(c) => format!("cluster topology changed ({} changes)", c.len()),
                            Err(e) => format!("cluster change stream ended: {e}"),
                        };
                        let _ = me.cast(NodeMsg::ConnectionEnded(why));
                    }));
                }
                // After a failover the old primary keeps accepting writes
                // until Sentinel reconfigures it: follow `+switch-master`.
                // Subscribed before the node counts as up (see watch_sentinels).
                Topology::Sentinel { service } => {
                    match watch_sentinels(addr, service.clone(), shared, me.clone()).await {
                        Ok(watcher) => watchers.push(watcher),
                        Err(e) => {
                            handle.abort();
                            if let Some(f) = forwarder {
                                f.abort();
                            }
                            return Err(e);
                        }
                    }
                }
            }
            Ok(Connection {
                handle,
                forwarder,
                watchers,
                conn,
            })
        }
        Ok(Err(e)) => {
            handle.abort();
            for f in forwarder.into_iter().chain(handover) {
                f.abort();
            }
            Err(e)
        }
        Err(_) => {
            handle.abort();
            for f in forwarder.into_iter().chain(handover) {
                f.abort();
            }
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                "timed out setting up the connection",
            ))
        }
    }
}

/// Subscribes to `+switch-master` on the first Sentinel that accepts, and
/// returns the task that watches it: a switch of `service`, or the end of the
/// watcher's own connection (closed, reset, killed), ends the node's
/// connection (`NodeMsg::ConnectionEnded`), so the Supervisor reconnects to
/// the current primary, every lock re-checks its keys there, and the next
/// connection subscribes afresh. A watcher that stopped watching without
/// saying so would let a failover go unseen while the old primary still
/// accepts writes.
///
/// Part of connecting, not a task started after it: when no Sentinel accepts
/// the subscription (wrong credentials, all unreachable) the connect attempt
/// fails. The node then never reports itself up, so the Supervisor's failure
/// count keeps growing and its backoff applies (up to 2 s), instead of a
/// restart every 50 ms for ever (it resets the count on each `NodeUp`). An
/// authentication error is permanent, so `Locker::connect` reports it.
///
/// Not covered: a silent partition of the watcher's link (no RST) goes
/// unnoticed until the node's own connection breaks, and a switch between
/// fred's lookup of the primary and this subscription is not seen.
async fn watch_sentinels(
    addr: &NodeAddr,
    service: String,
    shared: &Arc<Shared>,
    me: ActorRef<NodeMsg>,
) -> Result<tokio::task::JoinHandle<()>, fred::error::Error> {
    use fred::interfaces::PubsubInterface;
    let timeout = shared.settings.connect_timeout;
    let mut failures = Vec::new();
    for (host, port) in &addr.hosts {
        let sentinel = format!("{host}:{port}");
        let subscribed = async {
            let client = sentinel_client(addr, &shared.settings, host, *port)?;
            let handle = match tokio::time::timeout(timeout, client.init()).await {
                Ok(Ok(handle)) => handle,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(timed_out("connecting")),
            };
            let abort = AbortOnDrop::new(&handle);
            let messages = client.message_rx();
            match tokio::time::timeout(timeout, client.subscribe("+switch-master")).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(timed_out("subscribing")),
            }
            match tokio::time::timeout(timeout, confirm_subscribed(&client, "+switch-master")).await
            {
                Ok(Ok(())) => Ok((client, handle, abort, messages)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(timed_out("confirming the subscription")),
            }
        };
        let (client, handle, abort, messages) = match subscribed.await {
            Ok(watch) => watch,
            Err(e) => {
                debug!(sentinel = %sentinel, error = %e, "no +switch-master subscription at this Sentinel");
                failures.push((sentinel, e));
                continue;
            }
        };
        debug!(sentinel = %sentinel, service = %service, "watching +switch-master");
        return Ok(tokio::spawn(follow_switches(
            client, handle, abort, messages, service, sentinel, me,
        )));
    }
    // The last error's kind and text, so an authentication error stays
    // recognisable (`failure::classify`); every Sentinel's in the message.
    let kind = failures
        .last()
        .map(|(_, e)| e.kind().clone())
        .unwrap_or(fred::error::ErrorKind::Sentinel);
    let detail = failures
        .iter()
        .map(|(at, e)| format!("{at}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(fred::error::Error::new(
        kind,
        format!("no Sentinel accepted the +switch-master subscription ({detail})"),
    ))
}

/// The server's id of `client`'s connection (`CLIENT ID`); 0 if it cannot
/// be read.
async fn client_id(client: &Client) -> u64 {
    use fred::types::{ClusterHash, CustomCommand};
    let id = client
        .custom::<Value, _>(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec!["ID"],
        )
        .await;
    match id {
        Ok(Value::Integer(id)) => u64::try_from(id).unwrap_or(0),
        Ok(other) => {
            debug!(reply = ?other, "unexpected reply to CLIENT ID");
            0
        }
        Err(e) => {
            debug!(error = %e, "CLIENT ID failed: no direct connections to this node");
            0
        }
    }
}

/// Checks with `CLIENT INFO` that the connection really is subscribed
/// (`sub=1`). fred's `subscribe` returns `Ok` without waiting for the
/// server's answer: when the server refuses (an ACL without `+subscribe`
/// answers `NOPERM`), the error comes back as the reply to the next command,
/// this one, or is dropped. A watcher that believes it watches is worse than
/// none, so anything but a confirmed subscription fails the connect attempt;
/// the Sentinel user therefore needs `+client|info` besides `+subscribe`.
async fn confirm_subscribed(client: &Client, what: &str) -> Result<(), fred::error::Error> {
    use fred::types::{ClusterHash, CustomCommand};
    let info = client
        .custom::<Value, _>(
            CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
            vec!["INFO"],
        )
        .await
        .map_err(|e| {
            fred::error::Error::new(
                e.kind().clone(),
                format!("confirming the {what} subscription with CLIENT INFO: {e}"),
            )
        })?;
    let text = info.as_string().unwrap_or_default();
    let subscribed = text
        .split_whitespace()
        .find_map(|field| field.strip_prefix("sub="))
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    if subscribed {
        Ok(())
    } else {
        Err(fred::error::Error::new(
            fred::error::ErrorKind::Sentinel,
            format!("the server did not subscribe us to {what} (is SUBSCRIBE to it allowed to this user?)"),
        ))
    }
}

fn timed_out(doing: &str) -> fred::error::Error {
    fred::error::Error::new(
        fred::error::ErrorKind::Timeout,
        format!("timed out {doing}"),
    )
}

/// The watcher task of [`watch_sentinels`]: runs until `service` switches or
/// the watcher's connection ends, then ends the node's connection with the
/// reason. Owns the Sentinel client; aborting the task closes it.
async fn follow_switches(
    client: Client,
    mut handle: fred::types::ConnectHandle,
    abort: AbortOnDrop,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    service: String,
    sentinel: String,
    me: ActorRef<NodeMsg>,
) {
    let _keep = (client, abort);
    let why = loop {
        tokio::select! {
            m = messages.recv() => match m {
                Ok(m) => {
                    let text = m.value.as_string().unwrap_or_default();
                    if text.split_whitespace().next() == Some(service.as_str()) {
                        break format!("Sentinel switched the primary: {text}");
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => {
                    break format!("lost the Sentinel subscription at {sentinel}");
                }
            },
            end = &mut handle => {
                break match end {
                    Ok(Ok(())) => format!("the Sentinel watcher's connection to {sentinel} closed"),
                    Ok(Err(e)) => format!("the Sentinel watcher's connection to {sentinel} was lost: {e}"),
                    Err(e) => format!("the Sentinel watcher's connection task for {sentinel} ended: {e}"),
                };
            }
        }
    };
    info!(sentinel = %sentinel, reason = %why, "Sentinel watcher ending the node's connection");
    let _ = me.cast(NodeMsg::ConnectionEnded(why));
}

/// A client for one Sentinel, authenticated and encrypted as the node's own
/// client reaches the sentinels: fred looks up the primary with the node's
/// credentials (the URL's user and password; without fred's `sentinel-auth`
/// feature there are no separate Sentinel credentials) and its TLS settings.
/// RESP3, so the connection still takes ordinary commands while subscribed
/// (the check in [`confirm_subscribed`]).
fn sentinel_client(
    addr: &NodeAddr,
    settings: &crate::options::Settings,
    host: &str,
    port: u16,
) -> Result<Client, fred::error::Error> {
    let config = Config {
        version: RespVersion::RESP3,
        server: ServerConfig::new_centralized(host.to_owned(), port),
        username: addr.username.clone(),
        password: addr.password.clone(),
        fail_fast: true,
        ..Config::default()
    };
    #[cfg(feature = "tls")]
    let config = Config {
        tls: if addr.tls {
            Some(tls_config(settings)?)
        } else {
            None
        },
        ..config
    };
    Builder::from_config(config)
        .with_connection_config(|c| {
            c.connection_timeout = settings.connect_timeout;
            c.internal_command_timeout = settings.connect_timeout;
        })
        .with_performance_config(|p| p.default_command_timeout = settings.connect_timeout)
        .build()
}

/// Tells whoever in this locker follows `key` that it changed: its
/// `LockActor` (which re-checks it), the watchers of its name, the other
/// sides of a read-write lock, an election's observers.
fn route_invalidation(shared: &Shared, key: &[u8]) {
    let s = &shared.settings;
    let (prefix, total) = (s.prefix.as_str(), s.total);
    let Some((index, name)) = keys::parse_key(prefix, total, key) else {
        // An election's log: a new term for its observers.
        if let Some(election) = crate::election::of_log_key(prefix, key) {
            shared.wake_watchers(&crate::election::lock_name(election));
        }
        // A read-write lock's key: its own actor, and the other sides it
        // may let in.
        if let Some((index, lock)) = crate::rwlock::parse_key(prefix, total, key) {
            if let Some(actor) = shared.lock(&lock) {
                let _ = actor.cast(LockMsg::Invalidated { index });
            }
            shared.wake_related(key);
        }
        return;
    };
    if let Some(lock) = shared.lock(name) {
        let _ = lock.cast(LockMsg::Invalidated { index });
    }
    shared.wake_watchers(name);
}

/// A hand-over's message, read: the claim's command, the fencing counter
/// the release moved (if it did), the token and the key.
type HandedOver<'a> = (CmdId, Option<u64>, Token, &'a [u8]);

/// Reads a hand-over's message (`scripts::RELEASE_HANDOVER_LUA`):
/// `<cmd>[:<fence>] <token> <key>`. `None` for anything else: a message on
/// our channel is an outsider's to write as well, and must not panic or
/// mislead the engine (a token we do not know is only ever deleted under
/// itself).
fn parse_handover(msg: &[u8]) -> Option<HandedOver<'_>> {
    let mut parts = msg.splitn(3, |b| *b == b' ');
    let head = std::str::from_utf8(parts.next()?).ok()?;
    let (cmd, fence) = match head.split_once(':') {
        Some((cmd, fence)) => (cmd, Some(fence.parse::<u64>().ok()?)),
        None => (head, None),
    };
    let cmd = cmd.parse::<u64>().ok()?;
    let token = Token::from_wire(parts.next()?)?;
    Some((CmdId(cmd), fence, token, parts.next()?))
}

/// A hand-over's message, read and its key named: the lock's name, the
/// key's index, the token, the claim's command and the fencing counter.
pub(crate) struct Handover<'a> {
    pub(crate) name: &'a str,
    pub(crate) index: usize,
    pub(crate) token: Token,
    pub(crate) cmd: CmdId,
    pub(crate) fence: Option<u64>,
}

/// Reads a hand-over's message on this locker's channel; `None` (logged)
/// for anything that is not one of a lock key's.
pub(crate) fn read_handover<'a>(shared: &Shared, msg: &'a [u8]) -> Option<Handover<'a>> {
    let s = &shared.settings;
    let Some((cmd, fence, token, key)) = parse_handover(msg) else {
        debug!(len = msg.len(), "not a hand-over message; ignored");
        return None;
    };
    let Some((index, name)) = keys::parse_key(&s.prefix, s.total, key) else {
        debug!("hand-over of a key that is not a lock's; ignored");
        return None;
    };
    Some(Handover {
        name,
        index,
        token,
        cmd,
        fence,
    })
}

/// Hands a hand-over's message to the `LockActor` of its key.
fn route_handover(shared: &Shared, supervisor: &ActorRef<SupervisorMsg>, msg: &[u8]) {
    let Some(Handover {
        name,
        index,
        token,
        cmd,
        fence,
    }) = read_handover(shared, msg)
    else {
        return;
    };
    let s = &shared.settings;
    tracing::trace!(
        lock = name,
        key = index,
        token = token.short(),
        fence,
        "handed over"
    );
    crate::metrics::handover_message();
    let handed = LockMsg::Handed {
        index,
        token,
        cmd,
        fence,
    };
    // Counted like a request, so that the actor does not retire with it on
    // its way (see `context::try_retire`).
    let handed = match shared.lock_route(name) {
        Some(route) if count_send(route.port.sent()) => match route.actor.cast(handed) {
            Err(ractor::MessagingErr::SendErr(back)) => back,
            _ => return,
        },
        _ => handed,
    };
    // The name's actor retired (its waiters gave up, leaving their claims):
    // the Supervisor starts one, whose core gives the key back under the
    // token, which hands it on. Dropped, the key stayed handed to nobody
    // until the claim lapsed. Only for a name a lock of ours could claim
    // under (elections and read-write locks never claim): nobody else
    // makes the Supervisor start actors.
    let claimable = keys::validate_name(&s.prefix, name, s.total).is_ok()
        && !crate::rwlock::is_reserved(name)
        && crate::election::of_lock(name).is_none();
    if !claimable {
        debug!("hand-over of a name no lock of ours claims under; ignored");
        return;
    }
    if let LockMsg::Handed {
        index,
        token,
        cmd,
        fence,
    } = handed
    {
        let name = Arc::from(name);
        let _ = supervisor.cast(SupervisorMsg::Handed {
            name,
            index,
            token,
            cmd,
            fence,
        });
    }
}

/// Routes hand-over messages on this locker's channel to `LockActor`s. Runs
/// until the client is dropped. A lag means some were dropped: every lock
/// re-checks, and a waiter whose key was handed finds it its own.
fn start_handover_forwarder(
    client: &Client,
    shared: &Arc<Shared>,
    supervisor: &ActorRef<SupervisorMsg>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = client.message_rx();
    let shared = shared.clone();
    let supervisor = supervisor.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(m) => {
                    if Some(&*m.channel) != shared.settings.handover.as_deref() {
                        continue;
                    }
                    if let Some(bytes) = m.value.as_bytes() {
                        route_handover(&shared, &supervisor, bytes);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    warn!(
                        skipped = n,
                        "hand-over channel lagged; re-checking every lock"
                    );
                    shared.recheck_all(None);
                }
                Err(RecvError::Closed) => break,
            }
        }
    })
}

/// Routes invalidations to `LockActor`s. Runs until the client is dropped (its
/// broadcast channel closes). A lag means some invalidations were dropped, so
/// every lock re-checks.
fn start_forwarder(
    client: &Client,
    shared: &Arc<Shared>,
    metrics: NodeMetrics,
) -> tokio::task::JoinHandle<()> {
    let mut rx = client.invalidation_rx();
    let shared = shared.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(inv) => {
                    tracing::trace!(keys = inv.keys.len(), "invalidation");
                    metrics.invalidations(inv.keys.len());
                    for key in &inv.keys {
                        route_invalidation(&shared, key.as_bytes());
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    metrics.invalidation_lag();
                    warn!(
                        skipped = n,
                        "invalidation channel lagged; re-checking every lock"
                    );
                    shared.recheck_all(None);
                    shared.wake_all_watchers();
                }
                Err(RecvError::Closed) => break,
            }
        }
    })
}

/// Reads `keys` and the fencing counter for `inspect`, all at once (fred
/// pipelines them), and with `waiters` who waits beside each key.
/// Read-only; the reads arm tracking on the keys, so a change to any of
/// them reaches the forwarder, which wakes the name's watchers. Each call
/// is bounded by the command timeout.
async fn inspect(
    client: &Client,
    shared: &Shared,
    keys: &[Arc<str>],
    fence_key: &str,
    waiters: bool,
) -> Reading {
    let script = &shared.scripts.inspect;
    let flag = if waiters { "1" } else { "0" };
    let reads = keys.iter().map(|key| async move {
        match evalsha(client, script, || {
            (vec![(&**key).into()], vec![flag.into()])
        })
        .await
        {
            Ok(v) => parse_inspect(&v),
            Err(e) => {
                debug!(key = %key, error = %e, "inspect failed");
                Look::unreadable(e.to_string())
            }
        }
    });
    let fence = async {
        match client.get::<Value, _>(fence_key).await {
            Ok(v) => parse_fence(&v),
            Err(e) => {
                debug!(key = %fence_key, error = %e, "reading the fencing counter failed");
                None
            }
        }
    };
    let (keys, fence) =
        futures_util::future::join(futures_util::future::join_all(reads), fence).await;
    Reading { keys, fence }
}

/// Runs an election's log script: adds `write` (a term's record) if given,
/// then reads the terms above `after`. The read arms tracking on the log;
/// with NOLOOP our own write sends this connection no invalidation, so the
/// caller wakes this locker's observers itself.
async fn log(
    client: &Client,
    shared: &Shared,
    key: &str,
    write: Option<&Record>,
    after: u64,
) -> Result<Vec<Record>, String> {
    let (term, member) = match write {
        Some(r) => (r.term.to_string(), r.member()),
        None => (String::new(), String::new()),
    };
    let keep = crate::election::LOG_LEN.to_string();
    let after = after.to_string();
    evalsha(client, &shared.scripts.log, || {
        (
            vec![key.into()],
            vec![
                term.as_str().into(),
                member.as_str().into(),
                keep.as_str().into(),
                after.as_str().into(),
            ],
        )
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|v| parse_log(&v))
}

/// Deletes `keys` whoever holds them: one `DEL` for all (atomic on this
/// node, so a holder that notices midway cannot beat us to the rest), or
/// one per key on a cluster (a `DEL` cannot cross slots).
async fn delete(client: &Client, keys: &[Arc<str>], cluster: bool) -> Result<usize, String> {
    let count = |n: i64| usize::try_from(n).unwrap_or(0);
    if !cluster {
        let keys: Vec<Key> = keys.iter().map(|k| (&**k).into()).collect();
        return client
            .del::<i64, _>(keys)
            .await
            .map(count)
            .map_err(|e| e.to_string());
    }
    let dels = keys.iter().map(|k| client.del::<i64, _>(&**k));
    let mut deleted = 0;
    for result in futures_util::future::join_all(dels).await {
        deleted += count(result.map_err(|e| e.to_string())?);
    }
    Ok(deleted)
}

/// Splits a batch into script calls of at most `BATCH_KEYS` keys of one TTL
/// (the script takes one; locks with their own `LockRequest::validity` go
/// in calls of their own); on a cluster, each call holds keys of one hash
/// slot only (a script cannot cross slots).
fn chunks(batch: Vec<ExtendItem>, cluster: bool) -> Vec<Vec<ExtendItem>> {
    grouped(batch, |item| (item.ttl, slot_of(&item.key, cluster)))
}

/// The hash slot of `key` on a cluster; 0 elsewhere (one server takes any
/// keys in one script call).
fn slot_of(key: &KeyName, cluster: bool) -> u16 {
    if cluster {
        fred::util::redis_keyslot(key.as_bytes())
    } else {
        0
    }
}

/// Splits `items` into script calls of at most `BATCH_KEYS` items that share
/// one `group` (a TTL, a hash slot), each call keeping the items' order.
fn grouped<T, G: std::hash::Hash + Eq>(items: Vec<T>, group: impl Fn(&T) -> G) -> Vec<Vec<T>> {
    let mut groups: std::collections::HashMap<G, Vec<T>> = std::collections::HashMap::new();
    for item in items {
        groups.entry(group(&item)).or_default().push(item);
    }
    let mut out = Vec::new();
    for group in groups.into_values() {
        let mut group = group.into_iter().peekable();
        while group.peek().is_some() {
            out.push(group.by_ref().take(BATCH_KEYS).collect());
        }
    }
    out
}

/// Answers every item with a failure.
fn fail_items(items: Vec<ExtendItem>, why: &'static str) {
    for item in items {
        answer(item, Outcome::Failed(why));
    }
}

/// Feeds `item`'s outcome to its lock's state, here and now (see
/// `LockPort::engine_news`); nothing if the lock's actor has stopped.
fn answer(item: ExtendItem, outcome: Outcome) {
    if let Some(port) = item.port.upgrade() {
        port.engine_news(EngineNews::Reply(NodeReply {
            cmd: item.cmd,
            outcome,
        }));
    }
}

/// Extends a batch of keys (of many locks) in one script call and feeds
/// each lock's state the answer for its key.
async fn extend_batch(
    client: &Client,
    shared: &Shared,
    metrics: &NodeMetrics,
    items: Vec<ExtendItem>,
) {
    let s = &shared.settings;
    // One TTL per call (see `chunks`).
    let ttl = items.first().map_or(s.validity, |i| i.ttl);
    let call = evalsha(client, &shared.scripts.acquire, || {
        let keys: Vec<Key> = items.iter().map(|i| i.key.wire()).collect();
        let mut args = Vec::with_capacity(3 + 2 * items.len());
        args.push(ttl_value(s, ttl));
        args.push(expiry_mode(s));
        args.push(Value::from_static_str("0"));
        for item in &items {
            args.push(item.token.value());
            args.push(Value::from_static_str(item.mode.as_arg()));
        }
        (keys, args)
    });
    let started = std::time::Instant::now();
    let states = match tokio::time::timeout(s.timeout, call).await {
        Ok(Ok(v)) => parse_acquire(&v, items.len(), false),
        Ok(Err(e)) => {
            debug!(keys = items.len(), error = %e, "extension batch failed");
            None
        }
        Err(_) => None,
    };
    match states {
        Some(states) => {
            let mut refused = 0usize;
            for (item, state) in items.into_iter().zip(states) {
                let outcome = match state {
                    Ok(state) => Outcome::Key(state),
                    Err(error) => {
                        // One key's error fails that key only; the other
                        // locks of the batch get their own answers.
                        if refused == 0 {
                            warn!(key = %item.key, error = %error, "the server refused a key in an extension batch");
                        }
                        refused += 1;
                        Outcome::Failed(KEY_REFUSED)
                    }
                };
                answer(item, outcome);
            }
            if refused > 1 {
                warn!(
                    refused,
                    "keys refused in one extension batch (first one logged above)"
                );
            }
            metrics.extension(started.elapsed(), refused);
        }
        None => {
            metrics.extension(started.elapsed(), items.len());
            fail_items(items, "extension batch failed");
        }
    }
}

/// `Outcome::Failed` reason of a key the server refused inside the acquire
/// script (`WRONGTYPE`, `OOM`); the server's text is logged where it arrives.
const KEY_REFUSED: &str = "the server refused a command on this key";

/// How the scripts read [`ttl_value`]: `PX` (milliseconds from now) or
/// `PXAT` (a Unix time in milliseconds).
fn expiry_mode(s: &crate::options::Settings) -> Value {
    Value::from_static_str(if s.relative { "PX" } else { "PXAT" })
}

/// The TTL argument for `ttl`: milliseconds (`PX`), or an absolute Unix
/// time in milliseconds from this machine's clock (`PXAT`). A number goes on
/// the wire as the same digits a string would, without a string of its own.
///
/// Exact for `PX`: validation only lets whole milliseconds through as
/// `key_validity` or `LockRequest::validity`, so nothing counted in
/// `valid_until` is cut off here. For `PXAT` the wall clock is truncated to
/// the millisecond, up to 1 ms lost, which validation covers by requiring a
/// `clock_drift` of at least 2 ms.
fn ttl_value(s: &crate::options::Settings, ttl: Duration) -> Value {
    let ms = ttl.as_millis() as u64;
    let arg = if s.relative {
        ms
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        now + ms
    };
    Value::Integer(i64::try_from(arg).unwrap_or(i64::MAX))
}

/// The command pump: drives every queued call concurrently on `client` and
/// casts each outcome to its `LockActor`. Ends once every sender (the actor's
/// state, its lane in the shared table) is gone and the calls in flight are
/// answered.
///
/// Plain acquisitions, releases and checks of keys that it finds queued
/// together (a burst of `lock()` or `release()` calls, a locker closing
/// with many locks, every lock re-checking its keys after a reconnect) go
/// in script calls of many keys ([`Many`]). One call per key made 10,000 of
/// them queue at the server and in this thread for longer than the time
/// limit each counts from its queueing: releases reported
/// `ReleaseUnconfirmed` for deletes that ran, and after a reconnect with a
/// 1 s validity thousands of locks were lost while their keys were still
/// theirs (BENCHMARKS.md, "Holding many locks"). A lone job keeps its
/// one-key script. Order is kept: a stretch of such jobs goes out where it
/// was, before the jobs queued after it (a release then the acquisition
/// that follows it on the same key reach the server in that order).
async fn run_pump(
    client: Client,
    shared: Arc<Shared>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    cluster: bool,
) {
    let (client, shared) = (&client, &*shared);
    let mut running = FuturesUnordered::new();
    // The stretch of jobs of one kind taken but not yet started; the vector
    // is kept for its capacity.
    let mut stretch: (Many, Vec<Job>) = (Many::Release, Vec::new());
    std::future::poll_fn(|cx| {
        // Starts the stretch taken so far: a lone job as its own call,
        // several in calls of many keys.
        let start = |(kind, jobs): &mut (Many, Vec<Job>)| match jobs.len() {
            0 => {}
            1 => {
                if let Some(job) = jobs.pop() {
                    running.push(Either::Left(run_job(client, shared, job)));
                }
            }
            _ => {
                let group = |j: &Job| (slot_of(&j.key, cluster), Many::ttl(&j.op));
                for keys in grouped(std::mem::take(jobs), group) {
                    running.push(Either::Right(run_many(client, shared, *kind, keys)));
                }
            }
        };
        // Take every queued job before polling, so a burst is written to the
        // connection in one go; then drive whatever is ready.
        let closed = loop {
            match jobs.poll_recv(cx) {
                Poll::Ready(Some(job)) => match Many::of(&job) {
                    Some(kind) => {
                        if kind != stretch.0 {
                            start(&mut stretch);
                            stretch.0 = kind;
                        }
                        stretch.1.push(job);
                    }
                    None => {
                        start(&mut stretch);
                        running.push(Either::Left(run_job(client, shared, job)));
                    }
                },
                Poll::Ready(None) => break true,
                Poll::Pending => break false,
            }
        };
        start(&mut stretch);
        while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
        if closed && running.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// The commands a pump sends for many keys in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Many {
    /// A plain acquisition (`ACQUIRE_LUA`, which takes a token and a mode per
    /// key): neither fenced, queued nor gated, as those have scripts or
    /// counters of their own.
    Acquire,
    /// Compare-and-delete (`RELEASE_MANY_LUA`).
    Release,
    /// The read-only check (`VERIFY_MANY_LUA`).
    Verify,
}

impl Many {
    fn of(job: &Job) -> Option<Many> {
        match &job.op {
            Op::Acquire {
                fence: false,
                queue: None,
                ..
            } if job.gates.is_none() => Some(Many::Acquire),
            Op::Release { .. } => Some(Many::Release),
            Op::Verify { .. } => Some(Many::Verify),
            _ => None,
        }
    }

    /// What a call of this kind must share besides the hash slot: the TTL
    /// of an acquisition (the script takes one).
    fn ttl(op: &Op) -> Option<Duration> {
        match op {
            Op::Acquire { ttl, .. } => Some(*ttl),
            _ => None,
        }
    }

    /// The script's arguments for `jobs`, with the expiry read from the
    /// clock now; `None` unless every job is of this kind (and, for
    /// acquisitions, of one TTL).
    fn args(self, s: &crate::options::Settings, jobs: &[Job]) -> Option<Vec<Value>> {
        match self {
            Many::Acquire => {
                let ttl = Many::ttl(&jobs.first()?.op)?;
                let mut args = Vec::with_capacity(3 + 2 * jobs.len());
                args.push(ttl_value(s, ttl));
                args.push(expiry_mode(s));
                args.push(Value::from_static_str("0"));
                for job in jobs {
                    match &job.op {
                        Op::Acquire {
                            token,
                            mode,
                            ttl: t,
                            claim,
                            ..
                        } if *t == ttl && Many::of(job) == Some(self) => {
                            args.push(token.value());
                            args.push(mode_arg(s, *mode, claim.as_ref(), job.cmd));
                        }
                        _ => return None,
                    }
                }
                Some(args)
            }
            Many::Release | Many::Verify => {
                let mut args: Vec<Value> = jobs
                    .iter()
                    .map(|job| match (self, &job.op) {
                        (Many::Release, Op::Release { token, .. })
                        | (Many::Verify, Op::Verify { token }) => Some(token.value()),
                        _ => None,
                    })
                    .collect::<Option<_>>()?;
                // With hand-over on one instance, each key's fencing
                // counter after the tokens (`RELEASE_HANDOVER_LUA`).
                if self == Many::Release && jobs.iter().any(|job| job.fence_key.is_some()) {
                    args.extend(jobs.iter().map(|job| match &job.fence_key {
                        Some(k) => Value::from(&**k),
                        None => Value::from(""),
                    }));
                }
                Some(args)
            }
        }
    }

    fn script<'a>(
        self,
        s: &crate::options::Settings,
        scripts: &'a crate::scripts::Scripts,
    ) -> &'a Script {
        match self {
            Many::Acquire => &scripts.acquire,
            Many::Release if s.handover.is_some() => &scripts.release_handover,
            Many::Release => &scripts.release_many,
            Many::Verify => &scripts.verify_many,
        }
    }

    /// Per key, the outcome the one-key command would give, or the
    /// server's refusal; `None` if the reply has the wrong shape.
    fn outcomes(self, reply: &Value, keys: usize) -> Option<Vec<Result<Outcome, String>>> {
        Some(match self {
            Many::Acquire => parse_acquire(reply, keys, false)?
                .into_iter()
                .map(|r| r.map(Outcome::Key))
                .collect(),
            Many::Release => parse_released_many(reply, keys)?
                .into_iter()
                .map(|r| r.map(Outcome::Released))
                .collect(),
            Many::Verify => parse_verified_many(reply, keys)?
                .into_iter()
                .map(|r| r.map(Outcome::Key))
                .collect(),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Many::Acquire => "acquire",
            Many::Release => "release",
            Many::Verify => "verify",
        }
    }
}

async fn run_job(client: &Client, shared: &Shared, job: Job) {
    let outcome = outcome_of(client, shared, &job).await;
    finish_job(shared, job, outcome);
}

/// Runs `job`'s command on `client`; its outcome.
pub(crate) async fn outcome_of(client: &impl Exec, shared: &Shared, job: &Job) -> Outcome {
    run(
        client,
        shared,
        &job.op,
        &job.key,
        job.fence_key.as_ref(),
        job.gates.as_deref(),
        job.cmd,
    )
    .await
}

/// Hands a job's outcome to its `LockActor`, after the wake-ups its command
/// owes this locker's own watchers.
fn finish_job(shared: &Shared, job: Job, outcome: Outcome) {
    wake_for(shared, &job);
    let _ = job.reply_to.cast(LockMsg::Reply(NodeReply {
        cmd: job.cmd,
        outcome,
    }));
}

/// The wake-ups `job`'s command owes this locker's own watchers, once
/// answered.
pub(crate) fn wake_for(shared: &Shared, job: &Job) {
    // With NOLOOP (the default) this connection's own writes send it no
    // invalidation: tell this locker's watchers of the name directly.
    if matches!(job.op, Op::Acquire { .. } | Op::Release { .. }) {
        shared.wake_watchers_of_key(&job.key);
    }
    // The same for the other sides of a read-write lock in this locker: a
    // released key may let them in.
    if job.gates.is_some() || matches!(job.op, Op::Release { .. }) {
        shared.wake_related(job.key.as_bytes());
    }
}

/// Runs `kind` for many keys in one script call and answers each job. A key
/// the server refuses fails that key only.
async fn run_many(client: &Client, shared: &Shared, kind: Many, jobs: Vec<Job>) {
    // Every job is of `kind` (see `run_pump`); were one not, no call is
    // made. An acquisition's expiry is read once, here: a retry after
    // `NOSCRIPT` sends the same, later than the core stamped the send.
    let result = match kind.args(&shared.settings, &jobs) {
        Some(args) => evalsha(
            client,
            kind.script(&shared.settings, &shared.scripts),
            || (jobs.iter().map(|j| j.key.wire()).collect(), args.clone()),
        )
        .await
        .map(|v| kind.outcomes(&v, jobs.len())),
        None => Ok(None),
    };
    let outcomes: Vec<Outcome> = match result {
        Ok(Some(replies)) => {
            let refused: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
            if let Some(first) = refused.first() {
                warn!(
                    refused = refused.len(),
                    error = %first,
                    command = kind.name(),
                    "the server refused keys in a call of many keys"
                );
            }
            replies
                .into_iter()
                .map(|r| r.unwrap_or(Outcome::Failed(KEY_REFUSED)))
                .collect()
        }
        Ok(None) => vec![Outcome::Failed("unexpected reply to a call of many keys"); jobs.len()],
        Err(e) => {
            debug!(keys = jobs.len(), command = kind.name(), error = %e, "call of many keys failed");
            vec![command_failed(&e); jobs.len()]
        }
    };
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        finish_job(shared, job, outcome);
    }
}

/// The outcome of a command fred could not complete.
fn command_failed(e: &fred::error::Error) -> Outcome {
    if e.kind() == &fred::error::ErrorKind::Timeout {
        Outcome::Unanswered
    } else {
        Outcome::Failed("command failed")
    }
}

/// Runs one lock command on `client`: the engine's fred client or a direct
/// connection. Bounded by the connection's command timeout, the locker's
/// `timeout` either way (fred's `default_command_timeout`, set in
/// [`build_client`], or `wire`'s own); no second timer here.
async fn run(
    client: &impl Exec,
    shared: &Shared,
    op: &Op,
    key: &KeyName,
    fence_key: Option<&KeyName>,
    gates: Option<&crate::rwlock::Gates>,
    cmd: CmdId,
) -> Outcome {
    let (wire_key, fence_wire) = (key, fence_key);
    let (key, fence_key) = KeyName::texts(key, fence_key);
    let s = &shared.settings;
    let scripts = &shared.scripts;
    let result = match op {
        // A free key of a read-write lock is taken only through its gates
        // (an acquisition, or a lost key taken back at an extension).
        Op::Acquire {
            token,
            mode: SetMode::Nx,
            ttl,
            ..
        }
        | Op::Extend {
            token,
            mode: SetMode::Nx,
            ttl,
        } if gates.is_some() => {
            let gates = gates.expect("checked");
            rw_acquire(client, shared, key, fence_key, token, *ttl, gates)
                .await
                .map(|v| acquired(key, &v, fence_key.is_some()))
        }
        Op::Acquire {
            token,
            mode: set,
            ttl,
            queue: Some(queue),
            ..
        } => fair_acquire(
            client, shared, wire_key, fence_wire, token, *set, *ttl, queue,
        )
        .await
        .map(|v| acquired(key, &v, fence_key.is_some())),
        Op::Enqueue { places, life } => evalsha(client, &scripts.fair, || {
            let args = FairArgs {
                life: *life,
                places,
                ..FairArgs::new("E")
            };
            (fair_keys(key, None), args.values(s))
        })
        .await
        .map(|v| queued(key, &v)),
        Op::Dequeue { members, life } => evalsha(client, &scripts.fair, || {
            let args = FairArgs {
                life: *life,
                members,
                ..FairArgs::new("D")
            };
            (fair_keys(key, None), args.values(s))
        })
        .await
        .map(|v| queued(key, &v)),
        Op::Acquire {
            token,
            mode: set,
            ttl,
            claim,
            ..
        } => {
            let mode = mode_arg(s, *set, claim.as_ref(), cmd);
            plain_acquire(client, shared, wire_key, fence_wire, token, mode, *ttl)
                .await
                .map(|v| acquired(key, &v, fence_key.is_some()))
        }
        Op::Extend {
            token,
            mode: set,
            ttl,
        } => {
            let mode = Value::from_static_str(set.as_arg());
            plain_acquire(client, shared, wire_key, fence_wire, token, mode, *ttl)
                .await
                .map(|v| acquired(key, &v, fence_key.is_some()))
        }
        Op::Verify { token } => evalsha(client, &scripts.verify, || {
            (vec![wire_key.wire()], vec![token.value()])
        })
        .await
        .map(|v| match parse_key_state(&v, true) {
            Some(state) => Outcome::Key(state),
            None => Outcome::Failed("unexpected reply to verify"),
        }),
        // With hand-over, the script of many keys for one: a key with a
        // claim on it goes to the claimant.
        Op::Release { token, .. } if s.handover.is_some() => {
            evalsha(client, &scripts.release_handover, || {
                let mut args = vec![token.value()];
                // The fencing counter a key handed over moves (one
                // instance), after the one token.
                if let Some(fence) = fence_key {
                    args.push(Value::from(fence));
                }
                (vec![wire_key.wire()], args)
            })
            .await
            .map(|v| match parse_released_many(&v, 1).as_deref() {
                Some([Ok(deleted)]) => Outcome::Released(*deleted),
                Some([Err(_)]) => Outcome::Failed(KEY_REFUSED),
                _ => Outcome::Failed("unexpected reply to release"),
            })
        }
        Op::Release { token, .. } => evalsha(client, &scripts.release, || {
            (vec![wire_key.wire()], vec![token.value()])
        })
        .await
        .map(|v| match parse_released(&v) {
            Some(deleted) => Outcome::Released(deleted),
            None => Outcome::Failed("unexpected reply to release"),
        }),
        Op::Unclaim { token } => match &s.handover {
            Some(channel) => evalsha(client, &scripts.unclaim, || {
                (
                    vec![wire_key.wire()],
                    vec![Value::from(&**channel), token.value()],
                )
            })
            .await
            .map(|v| match v {
                Value::Integer(_) => Outcome::Unclaimed,
                _ => Outcome::Failed("unexpected reply to unclaim"),
            }),
            None => Ok(Outcome::Failed("no hand-over channel")),
        },
        Op::FenceRead => client.get_key(key).await.map(|v| match parse_fence(&v) {
            Some(n) => Outcome::Fence(n),
            None => Outcome::Failed("fencing counter is not a number"),
        }),
        Op::FenceWrite { value } => evalsha(client, &scripts.fence_write, || {
            (vec![key.into()], vec![value.to_string().into()])
        })
        .await
        .map(|v| match parse_fence_write(&v) {
            Some((raised, value)) => Outcome::FenceWritten { raised, value },
            None => Outcome::Failed("unexpected reply to fence write"),
        }),
    };
    match result {
        Ok(outcome) => outcome,
        Err(e) => {
            debug!(key, error = %e, "script failed");
            command_failed(&e)
        }
    }
}

/// `ACQUIRE_LUA` on one key (and the fencing counter); a plain `NX` without
/// one goes as plain commands first where the connection can
/// (`free_acquire`).
async fn plain_acquire(
    client: &impl Exec,
    shared: &Shared,
    key: &KeyName,
    fence_key: Option<&KeyName>,
    token: &Token,
    set: Value,
    ttl: Duration,
) -> Result<Value, fred::error::Error> {
    let s = &shared.settings;
    let mode = expiry_mode(s);
    // Read from the clock once: the script, if it must run after the plain
    // commands, sets the expiry they would have set.
    let ttl = ttl_value(s, ttl);
    let plain = matches!(&set, Value::String(m) if m.as_bytes() == b"NX");
    if plain && fence_key.is_none() {
        let free = free_acquire(client, &shared.scripts.release, key, token, &mode, &ttl);
        if let Some(reply) = free.await {
            return reply;
        }
    }
    evalsha(client, &shared.scripts.acquire, || {
        let mut keys = Vec::with_capacity(2);
        keys.push(key.wire());
        if let Some(f) = fence_key {
            keys.push(f.wire());
        }
        let args = vec![
            ttl.clone(),
            mode.clone(),
            Value::from_static_str(if fence_key.is_some() { "1" } else { "0" }),
            token.value(),
            set.clone(),
        ];
        (keys, args)
    })
    .await
}

/// A plain `NX` acquisition of `key` as plain commands written together
/// (`Exec::acquire_free`), where the connection can, read as the acquire
/// script's reply (`scripts::FreeAcquired`): `None` where the connection
/// cannot, for a key with braces of its own (the script does not look for
/// its queue), or when the replies leave it to the script. A key taken
/// while waiters queue for it is given back first, by `release`'s
/// compare-and-delete on the same connection; if that fails, so does the
/// acquisition (its outcome unknown, as with any command that failed).
async fn free_acquire(
    client: &impl Exec,
    release: &Script,
    key: &KeyName,
    token: &Token,
    expiry: &Value,
    ttl: &Value,
) -> Option<Result<Value, fred::error::Error>> {
    let (Value::String(expiry), Value::Integer(ttl)) = (expiry, ttl) else {
        return None;
    };
    if key.contains(['{', '}']) {
        return None;
    }
    let token_bytes = token.as_str().as_bytes();
    let replies = match client
        .acquire_free(key.as_bytes(), token_bytes, expiry.as_bytes(), *ttl)
        .await?
    {
        Ok(replies) => replies,
        Err(e) => return Some(Err(e)),
    };
    match read_free_acquire(&replies, token_bytes) {
        FreeAcquired::Reply(reply) => Some(Ok(reply)),
        FreeAcquired::Script => None,
        FreeAcquired::GiveBack => {
            let given = evalsha(client, release, || (vec![key.wire()], vec![token.value()])).await;
            debug!(
                key = &**key,
                token = token.short(),
                given_back = given.is_ok(),
                "taken while waiters queue for it"
            );
            Some(given.map(|_| queued_reply()))
        }
    }
}

/// The acquire script's mode for a key: `NX`, `FORCE` or `XX`, or, for an
/// acquisition that leaves a claim (hand-over), `NX` with the claimant, the
/// waiter's arrival, the command's id and whether it claimed before
/// (`scripts::ACQUIRE_LUA`).
fn mode_arg(
    s: &crate::options::Settings,
    set: SetMode,
    claim: Option<&Claim>,
    cmd: CmdId,
) -> Value {
    match (claim, &s.handover) {
        (Some(c), Some(channel)) if set == SetMode::Nx => Value::from(format!(
            "NX|{channel}|{}|{}|{}",
            c.arrival_us,
            cmd.0,
            u8::from(c.before)
        )),
        _ => Value::from_static_str(set.as_arg()),
    }
}

/// `RW_ACQUIRE_LUA` on one key of a read-write lock, gated by `gates`.
async fn rw_acquire(
    client: &impl Exec,
    shared: &Shared,
    key: &str,
    fence_key: Option<&str>,
    token: &Token,
    ttl: Duration,
    gates: &crate::rwlock::Gates,
) -> Result<Value, fred::error::Error> {
    let s = &shared.settings;
    let mode = expiry_mode(s);
    let intent = u64::try_from(s.validity.as_millis()).unwrap_or(u64::MAX);
    evalsha(client, &shared.scripts.rw_acquire, || {
        let mut keys: Vec<Key> = Vec::with_capacity(gates.keys.len() + 2);
        keys.push(key.into());
        if let Some(f) = fence_key {
            keys.push(f.into());
        }
        keys.extend(gates.keys.iter().map(|g| Key::from(&**g)));
        let args = vec![
            ttl_value(s, ttl),
            mode.clone(),
            Value::from_static_str(if fence_key.is_some() { "1" } else { "0" }),
            token.value(),
            Value::from_static_str(gates.side.as_arg()),
            intent.to_string().into(),
        ];
        (keys, args)
    })
    .await
}

/// A `FAIR_LUA` reply that is the server's refusal for want of a
/// permission (an ACL user without the queue's commands or keys).
fn denied(value: &Value) -> bool {
    matches!(parse_queued(value), Some(Err(m)) if refused_permission(&m))
}

/// A server's error text that says an ACL refused a command or key
/// (`NOPERM …`, or in a script `ERR ACL failure in script: … no
/// permissions …`).
fn refused_permission(text: &str) -> bool {
    text.contains("NOPERM") || text.contains("ACL failure") || text.contains("no permissions")
}

/// Reads the reply of an acquisition of one key (either script).
fn acquired(key: &str, value: &Value, fence: bool) -> Outcome {
    match parse_acquire_one(value, fence) {
        Some(Ok(state)) => Outcome::Key(state),
        Some(Err(error)) => {
            warn!(key, error = %error, "the server refused the key in an acquisition");
            Outcome::Failed(KEY_REFUSED)
        }
        None => Outcome::Failed("unexpected reply to acquire"),
    }
}

/// Reads the reply of a fair queue update.
fn queued(key: &str, value: &Value) -> Outcome {
    match parse_queued(value) {
        Some(Ok(())) => Outcome::Queued,
        Some(Err(error)) => {
            warn!(key, error = %error, "the server refused a fair queue update");
            Outcome::Failed(KEY_REFUSED)
        }
        None => Outcome::Failed("unexpected reply to a fair queue update"),
    }
}

/// A fair-queue member: a waiter's random id, in hex.
fn member(id: u64) -> String {
    format!("{id:016x}")
}

/// The keys of `FAIR_LUA`: the lock key, its queue, its deadlines and the
/// time it last changed (the braces put them on the lock key's cluster
/// slot), and the fencing counter.
fn fair_keys(key: &str, fence_key: Option<&str>) -> Vec<Key> {
    let mut keys: Vec<Key> = vec![
        key.into(),
        format!("{{{key}}}:q").into(),
        format!("{{{key}}}:qd").into(),
        format!("{{{key}}}:qt").into(),
    ];
    if let Some(f) = fence_key {
        keys.push(f.into());
    }
    keys
}

/// The arguments of one `FAIR_LUA` call, in the order its documentation
/// gives them.
struct FairArgs<'a> {
    op: &'static str,
    ttl: Duration,
    fence: bool,
    token: &'a str,
    mode: SetMode,
    candidate: Option<u64>,
    life: Duration,
    settle: Duration,
    places: &'a [Place],
    members: &'a [u64],
}

impl<'a> FairArgs<'a> {
    /// `op` with every other argument empty.
    fn new(op: &'static str) -> FairArgs<'a> {
        FairArgs {
            op,
            ttl: Duration::ZERO,
            fence: false,
            token: "",
            mode: SetMode::Nx,
            candidate: None,
            life: Duration::ZERO,
            settle: Duration::ZERO,
            places: &[],
            members: &[],
        }
    }

    fn values(&self, s: &crate::options::Settings) -> Vec<Value> {
        let ms = |d: Duration| Value::from((d.as_millis() as u64).to_string());
        let mut args = vec![
            ttl_value(s, self.ttl),
            expiry_mode(s),
            Value::from_static_str(if self.fence { "1" } else { "0" }),
            Value::from_static_str(self.op),
            self.token.into(),
            Value::from_static_str(self.mode.as_arg()),
            self.candidate
                .map_or_else(|| Value::from_static_str(""), |c| member(c).into()),
            ms(self.life),
            ms(self.settle),
            self.places.len().to_string().into(),
        ];
        for p in self.places {
            args.push(member(p.member).into());
            args.push(p.since_us.to_string().into());
        }
        args.extend(self.members.iter().map(|m| Value::from(member(*m))));
        args
    }
}

/// An acquisition through the key's fair queue (`FAIR_LUA`). An ACL user
/// without the queue's commands or keys acquires without the queue rather
/// than never (see docs/SAFETY.md, "Security").
#[allow(clippy::too_many_arguments)]
async fn fair_acquire(
    client: &impl Exec,
    shared: &Shared,
    wire_key: &KeyName,
    fence_wire: Option<&KeyName>,
    token: &Token,
    set: SetMode,
    ttl: Duration,
    queue: &Queue,
) -> Result<Value, fred::error::Error> {
    let (key, fence_key) = KeyName::texts(wire_key, fence_wire);
    let reply = evalsha(client, &shared.scripts.fair, || {
        let args = FairArgs {
            op: if queue.rejoin { "R" } else { "A" },
            ttl,
            fence: fence_key.is_some(),
            token: token.as_str(),
            mode: set,
            candidate: queue.candidate,
            life: queue.life,
            settle: queue.settle,
            places: &queue.places,
            members: &queue.members,
        };
        (fair_keys(key, fence_key), args.values(&shared.settings))
    })
    .await;
    let refused = match &reply {
        Ok(v) => denied(v),
        Err(e) => refused_permission(e.details()),
    };
    if !refused {
        return reply;
    }
    warn!(
        key,
        "fair queue refused by the server's ACL; acquiring without it"
    );
    let set = Value::from_static_str(set.as_arg());
    plain_acquire(client, shared, wire_key, fence_wire, token, set, ttl).await
}

/// `EVALSHA`, loading the script first if the server does not know it (a
/// restarted or flushed server). Unlike fred's `evalsha_with_reload`, which
/// clones the keys and arguments of every call in case it must retry, this
/// builds them again only for the retry.
async fn evalsha<F>(
    client: &impl Exec,
    script: &Script,
    args: F,
) -> Result<Value, fred::error::Error>
where
    F: Fn() -> (Vec<Key>, Vec<Value>),
{
    let (keys, values) = args();
    match client.run_script(script, keys, values).await {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            client.load_script(script).await?;
            let (keys, values) = args();
            client.run_script(script, keys, values).await
        }
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-over's message is read only when it has the script's shape:
    /// a command id (with the fencing counter after a colon when the
    /// release moved it), a token's shape, a key (which may hold spaces).
    /// Anything an outsider publishes otherwise is `None`, never a panic.
    #[test]
    fn hand_over_messages_are_read_only_in_their_shape() {
        let token = Token::new(false);
        let ok = format!("42 {} valkeylock:0:a name", token.as_str());
        let (cmd, fence, t, key) = parse_handover(ok.as_bytes()).expect("a hand-over");
        assert_eq!(
            (cmd, fence, &t, key),
            (CmdId(42), None, &token, &b"valkeylock:0:a name"[..])
        );
        let fenced = format!("42:7 {} valkeylock:0:a", token.as_str());
        let (cmd, fence, t, key) = parse_handover(fenced.as_bytes()).expect("a hand-over");
        assert_eq!(
            (cmd, fence, &t, key),
            (CmdId(42), Some(7), &token, &b"valkeylock:0:a"[..])
        );
        let long = "f".repeat(200);
        for bad in [
            String::new(),
            "42".into(),
            format!("42 {}", token.as_str()),
            format!("x {} k", token.as_str()),
            format!("-1 {} k", token.as_str()),
            format!("99999999999999999999 {} k", token.as_str()),
            "42 short k".into(),
            format!("42 {long} k"),
            format!("42  {} k", token.as_str()),
            format!("42: {} k", token.as_str()),
            format!("42:x {} k", token.as_str()),
            format!("42:-1 {} k", token.as_str()),
            format!("42:1:2 {} k", token.as_str()),
            format!(":7 {} k", token.as_str()),
            format!("42:99999999999999999999 {} k", token.as_str()),
        ] {
            assert!(parse_handover(bad.as_bytes()).is_none(), "{bad:?}");
        }
        let tab = format!("42 {}\tx k", &token.as_str()[..50]);
        assert!(parse_handover(tab.as_bytes()).is_none(), "{tab:?}");
        assert!(parse_handover(&[0xff, b' ', 0xfe, b' ', b'k']).is_none());
    }

    /// A plain `NX` acquisition sent as plain commands on a direct
    /// connection (`free_acquire`) answers as the acquire script does, and
    /// leaves the same key, for every outcome, each set up alike on an empty
    /// server: free (with an expiry ahead or already past), another owner's,
    /// ours already, queued for (free: taken and given back; another
    /// owner's; free with an expiry already past), a hash (`WRONGTYPE`),
    /// writes refused under `maxmemory` (the key free, or another owner's),
    /// and keys with braces of their own (`test_server::FREE_KEY_OUTCOMES`,
    /// which the script's own test runs too). The cases the plain commands
    /// answer are checked to be answered there, not left to the script.
    #[tokio::test]
    async fn a_free_acquisition_in_plain_commands_answers_as_the_script() {
        let server = crate::test_server::Server::start();
        let client = server.client().await;
        let addr = crate::addr::NodeAddr::parse(&format!("redis://127.0.0.1:{}", server.port))
            .expect("a node URL");
        let wire = crate::wire::Wire::connect(&addr, Duration::from_secs(5), None)
            .await
            .expect("a direct connection");
        let scripts = crate::scripts::Scripts::new();
        let token = Token::new(false);
        let ours = token.as_str().to_owned();
        let owned = |args: &[&str]| args.iter().map(|a| a.replace("OURS", &ours)).collect();
        // The outcomes the plain commands answer themselves; the others
        // (ours already, a refusal, braces of the key's own) go to the script.
        let answered = |case: &str| {
            matches!(
                case,
                "free"
                    | "free, PXAT ahead"
                    | "free, PXAT past"
                    | "another owner's"
                    | "queued for"
                    | "queued for, PXAT past"
                    | "queued for, another owner's"
            )
        };
        for (case, key, expiry, setup) in crate::test_server::FREE_KEY_OUTCOMES {
            let key = KeyName::new(key);
            let mut seen = Vec::new();
            for plain in [false, true] {
                let steps = setup.iter().map(|(name, args)| (*name, owned(args)));
                crate::test_server::fresh(&client, steps).await;
                let (ttl, mode) = crate::test_server::expiry(expiry);
                let (ttl, mode) = (Value::Integer(ttl), Value::from_static_str(mode));
                let script = || {
                    let args = vec![
                        ttl.clone(),
                        mode.clone(),
                        Value::from_static_str("0"),
                        token.value(),
                        Value::from_static_str("NX"),
                    ];
                    (vec![key.wire()], args)
                };
                let reply = if plain {
                    let free =
                        free_acquire(&wire, &scripts.release, &key, &token, &mode, &ttl).await;
                    assert_eq!(
                        free.is_some(),
                        answered(case),
                        "{case}: answered by plain commands"
                    );
                    match free {
                        Some(reply) => reply,
                        None => evalsha(&wire, &scripts.acquire, script).await,
                    }
                } else {
                    evalsha(&client, &scripts.acquire, script).await
                };
                let reply = reply.unwrap_or_else(|e| panic!("{case}: {e}"));
                let reply = parse_acquire_one(&reply, false);
                let left = crate::test_server::key_left(&client, &key).await;
                seen.push((reply, left));
            }
            assert_eq!(
                seen[0], seen[1],
                "{case}: the acquire script (left) against plain commands"
            );
        }
    }

    /// A batch of releases with hand-over on one instance with fencing
    /// carries each key's fencing counter after the tokens
    /// (`RELEASE_HANDOVER_LUA`); without counters, the tokens alone.
    #[tokio::test]
    async fn a_batch_of_releases_names_each_keys_counter() {
        use crate::msg::testing::{job, Sink};
        use ractor::Actor;
        let (sink, handle) = Actor::spawn(None, Sink, ()).await.expect("spawn");
        let settings = crate::options::LockerOptions::new(["redis://127.0.0.1:1"])
            .with_key_majority(1)
            .with_handover(true)
            .with_fencing(true)
            .settings()
            .expect("settings");
        let release = |name: &str, fence: bool| {
            let mut j = job(&sink);
            j.key = KeyName::new(format!("valkeylock:0:{name}"));
            j.op = Op::Release {
                token: Token::new(false),
                fence,
            };
            j.fence_key = fence.then(|| KeyName::new(format!("valkeylock:fence:{name}")));
            j
        };
        let jobs = vec![release("a", true), release("b", true)];
        let args = Many::of(&jobs[0])
            .and_then(|m| m.args(&settings, &jobs))
            .expect("a batch of releases");
        let text: Vec<String> = args.iter().filter_map(|v| v.as_string()).collect();
        assert_eq!(text.len(), 4, "{args:?}");
        assert_eq!(text[2..], ["valkeylock:fence:a", "valkeylock:fence:b"]);
        let jobs = vec![release("a", false), release("b", false)];
        let args = Many::Release.args(&settings, &jobs).expect("a batch");
        assert_eq!(args.len(), 2, "the tokens alone: {args:?}");
        sink.stop(None);
        let _ = handle.await;
    }

    /// Script calls of a batch hold one group each (a TTL, a hash slot), at
    /// most `BATCH_KEYS` items, in the order the items came; none is lost
    /// or repeated.
    #[test]
    fn grouped_keeps_order_within_a_call_and_bounds_its_size() {
        let cases: [(usize, u16); 4] =
            [(0, 1), (1, 1), (BATCH_KEYS + 1, 1), (2 * BATCH_KEYS + 7, 3)];
        for (n, groups) in cases {
            let items: Vec<(u16, usize)> = (0..n).map(|i| ((i % 7) as u16 % groups, i)).collect();
            let calls = grouped(items, |&(g, _)| g);
            let mut seen: Vec<usize> = Vec::new();
            for call in &calls {
                assert!(
                    !call.is_empty() && call.len() <= BATCH_KEYS,
                    "{n}: {}",
                    call.len()
                );
                assert!(
                    call.iter().all(|&(g, _)| g == call[0].0),
                    "{n}: groups mixed"
                );
                assert!(call.windows(2).all(|w| w[0].1 < w[1].1), "{n}: order lost");
                seen.extend(call.iter().map(|&(_, i)| i));
            }
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..n).collect::<Vec<_>>(),
                "{n}: items lost or repeated"
            );
            let least = n.div_ceil(BATCH_KEYS);
            assert!(
                calls.len() >= least && calls.len() <= least + usize::from(groups),
                "{n}: {} calls",
                calls.len()
            );
        }
    }
}
