//! `LockerOptions`: what a user configures (builder methods and serde), and
//! `Settings`: the same after validation, with every default resolved. Nothing
//! invalid gets past [`LockerOptions::validate`], so the actors never re-check.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::addr::{redact_url, NodeAddr, Topology};
use crate::core::quorum;
use crate::duration::format_duration;
use crate::error::Error;
use crate::keys;
use crate::scripts::Fingerprint;

/// Options of a locker. Build with [`LockerOptions::new`] and the `with_*`
/// methods, or deserialize from TOML/JSON (durations as `"5s"`, `"250ms"`,
/// `"1m30s"`). All lockers that share a name must agree on `key_prefix`,
/// `key_majority` and the nodes (named the same way); a `key_majority` or
/// node-count disagreement among lockers of this library is detected
/// (`Error::ConfigMismatch`).
///
/// `#[non_exhaustive]`: options are added without a breaking change, so
/// build them with [`LockerOptions::new`] (or `Default`) and the `with_*`
/// methods, or deserialize them, rather than with a struct literal.
///
/// Nothing is checked until `Locker::connect` (or
/// [`validate`](LockerOptions::validate)), which fails with
/// [`Error::InvalidOptions`] naming the field.
///
/// # Examples
/// With the builder:
/// ```
/// # use valkeylock_actors as valkeylock;
/// use std::time::Duration;
/// use valkeylock::LockerOptions;
///
/// let options = LockerOptions::new(["redis://127.0.0.1:6379"])
///     .with_key_majority(1)                          // one instance
///     .with_key_validity(Duration::from_secs(10))
///     .with_try_next_after(Duration::from_millis(500))
///     .with_fencing(true);
/// assert!(options.validate().is_ok());
/// assert_eq!(options.extend_interval, None); // key_validity / 2
/// ```
///
/// From a configuration file (any serde format; JSON here, TOML alike).
/// Missing fields take their defaults; an unknown field is an error:
/// ```
/// # use valkeylock_actors as valkeylock;
/// use std::time::Duration;
/// use valkeylock::LockerOptions;
///
/// let options: LockerOptions = serde_json::from_str(r#"{
///     "nodes": ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"],
///     "key_validity": "10s",
///     "try_next_after": "500ms"
/// }"#).unwrap();
/// assert_eq!(options.key_majority, 2);
/// assert_eq!(options.key_validity, Duration::from_secs(10));
/// assert!(serde_json::from_str::<LockerOptions>(r#"{"nodez": []}"#).is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LockerOptions {
    /// Valkey instances: `redis://` or `valkey://` URLs with optional
    /// `user:password@` and `/db`. Their order does not matter: key `i` of a
    /// lock lives on the node [`node_of_key`](LockerOptions::node_of_key)
    /// names, the nodes ranked by address.
    pub nodes: Vec<String>,
    /// First part of every key: `{key_prefix}:{i}:{name}`. Default `"valkeylock"`.
    pub key_prefix: String,
    /// Keys needed to hold a lock, `M`; a lock uses `2·M − 1` keys. Default 2.
    /// Use 1 with a single instance.
    pub key_majority: usize,
    /// TTL of each key, renewed while held. Default 5 s.
    #[serde(with = "duration_str")]
    pub key_validity: Duration,
    /// How often a held lock is extended. Default `key_validity / 2`.
    #[serde(with = "opt_duration_str")]
    pub extend_interval: Option<Duration>,
    /// Time limit of one command to one node (acquire, extend, verify, release),
    /// and the polling period of waiters when `disable_cache` is set. Default
    /// 200 ms: ten times a slow loopback round trip, and enough for links of up
    /// to about 100 ms RTT. Raise it on slower links (valkeylock's 20 ms fails
    /// there, rueidis #630).
    #[serde(with = "duration_str")]
    pub try_next_after: Duration,
    /// How much faster a server's clock may run than ours over one TTL.
    /// Subtracted from every key's expiry. Default 1 % of `key_validity` + 2 ms.
    #[serde(with = "opt_duration_str")]
    pub clock_drift: Option<Duration>,
    /// Adds `NOLOOP` to `CLIENT TRACKING` (Valkey ≥ 7.0.5 / Redis ≥ 7.0.5), so a
    /// connection is not told about its own writes. Default true. With false,
    /// our own writes come back as invalidations; they trigger one read-only
    /// check each, never another write, so there is no extend storm.
    pub no_loop_tracking: bool,
    /// Use relative `PX`/`PEXPIRE` (true, the default) instead of absolute
    /// `PXAT`/`PEXPIREAT` computed from this machine's wall clock (false). With
    /// false, `clock_drift` must also cover the wall-clock offset between this
    /// machine and the servers.
    pub fallback_set_px: bool,
    /// Do not use client-side caching: no `CLIENT TRACKING`, waiters poll every
    /// `try_next_after`, and a lost lock is noticed at the next extension. For
    /// providers without RESP3 tracking.
    pub disable_cache: bool,
    /// How long `connect` waits for the first connection to each node. Default 2 s.
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    /// How many times in a row a released lock may be handed straight to the
    /// next caller waiting in this process (same keys, no server round trip)
    /// before it is really released so other processes get a turn; hand-overs
    /// also stop 10 ms after the keys were acquired, so long critical sections
    /// do not keep other processes out. 0 turns local hand-over off. Default
    /// 128, measured (`cargo bench --bench locks -- handover`, BENCHMARKS.md):
    /// a hand-over costs a few microseconds and a real release with its
    /// pause hundreds, so ten tasks of one locker ran 1.2 to 6.7 times faster
    /// than with 32. Another process's waiter still gets a turn at every real
    /// release; what it gives up is its share: against nine busy tasks of one
    /// locker, a lone task of another got about a seventh of what each of
    /// them got (with 32, about two thirds). Set 8 to 32 where every task of
    /// every process should get an equal share.
    ///
    /// The same budget bounds a chain of acquisitions sent right behind this
    /// process's own deletes (README, "A release nobody waits for"): a guard
    /// dropped with nobody waiting, then a `lock()` of the name before the
    /// delete is answered. 0 turns those off too.
    pub local_handover_limit: u32,
    /// Give every grant a fencing token (`LockGuard::fencing_token`) that is
    /// strictly greater than every token granted before it for the same name,
    /// across lockers and processes that also use fencing. Off by default;
    /// when off it costs nothing. On one instance the counter moves in the same
    /// atomic step as the acquisition; on several it costs two more round
    /// trips per acquisition (read a majority, then raise a majority), and
    /// local hand-over is off (each grant needs a new token). The counter
    /// lives in `{key_prefix}:fence:{name}` and never expires.
    pub fencing: bool,
    /// For `rediss://` / `valkeys://` nodes: a PEM file of the certificate
    /// authorities to trust instead of the system's (the `tls` feature).
    pub tls_ca_file: Option<String>,
    /// Run the engine (its actors, timers and connections) on a thread of its
    /// own, with a tokio runtime of its own. Default true: the locks are then
    /// extended, and their loss noticed, on time however busy the
    /// application's runtime is; a holder whose task blocks its runtime for
    /// longer than the validity still holds the lock. With false the engine
    /// runs on the runtime that calls `connect`, saving a thread; a busy or
    /// blocked runtime then delays extensions, and a lock can expire under
    /// its holder (who is told when its runtime runs again).
    pub dedicated_runtime: bool,
    /// Serve the waiters of every process in the order they started waiting
    /// (a fair lock), instead of whoever retries first. Each lock key gets a
    /// queue of waiters beside it (`{key}:q`, `{key}:qd`, `{key}:qt`, and
    /// `{key}:qs` while a lost queue is rebuilt), and
    /// only the waiter at its head may take the key. A waiter that stops
    /// refreshing its place (its process died) holds the queue up for at
    /// most `key_validity`. Costs no extra round trip per grant; local
    /// hand-over is off. Every locker of a name should agree: a locker without it (or
    /// the Go valkeylock) ignores the queues and can take a free lock ahead
    /// of the queue. Off by default; see the README, "Fair queueing".
    pub fair_queueing: bool,
    /// Send each acquisition and release from the caller's runtime, on a
    /// connection of its own to the node (one per locker and node, opened by
    /// the first caller), instead of through the engine's thread: a call
    /// then waits for one round trip, without crossing to the engine's
    /// thread and back. The connection's client-side caching is redirected
    /// to the engine's connection (`CLIENT TRACKING ON REDIRECT`), so a lost
    /// key is noticed as before; extensions, checks and the notice at
    /// `valid_until` stay on the engine's thread. Used with single
    /// instances (not Cluster or Sentinel nodes) and `disable_cache` off,
    /// with the engine on its own thread or on the caller's runtime
    /// (`dedicated_runtime`); elsewhere it has no effect. Default true. See
    /// the README, "Direct connections".
    pub direct_connections: bool,
    /// How many events the engine's connection to each node keeps for its
    /// reader: the invalidations of this locker's keys, and hand-over
    /// messages. A burst of more than that (more of its keys changed at
    /// once) outruns the reader; every lock of the locker then re-checks
    /// its keys on that node, which costs a round of commands and loses
    /// nothing. fred allocates every slot when it connects, in each of its
    /// nine event channels: 4,096 cost about 2.8 MB per node, 32 about
    /// 71 kB (BENCHMARKS.md, "What a locker costs before it holds
    /// anything"). A locker that holds a few locks can keep fewer; the
    /// command-line tool keeps 64. Rounded up to a power of two. Default
    /// 4096; 1 to 1,048,576.
    pub event_buffer: usize,
    /// Hand a released lock to the waiter of another process that has
    /// waited longest, on the server, instead of deleting it and letting
    /// the waiters race for it: a waiter that finds the lock held leaves a
    /// claim beside each key (a hash, `{key}:c`), and a release of a
    /// locker with `handover` sets the key to the oldest live claim's token
    /// and tells that waiter's locker on its channel
    /// (`{key_prefix}:handover:<random>`, `PUBLISH`), which grants the
    /// lock on that message, without a round trip of its own. Waiters of
    /// other processes are then served in the order they started waiting.
    /// Claims are refreshed while their waiters wait, taken back when they
    /// give up, and lapse one `key_validity` after they were last made; a
    /// claimant nobody hears for (its process died, its locker closed) is
    /// passed over. A key with a fair queue is deleted as before (the queue
    /// decides). While its claims stand, a waiter does not look at a
    /// claimed key when it changes (a hand-over or an extension needs
    /// nothing of it): a key freed otherwise (a release of a locker without
    /// `handover`, an expiry) is found within `try_next_after`. With
    /// `fencing`, a key handed over gets its token as any acquisition does
    /// (the fencing step after the message; in the acquire script when the
    /// waiter's next run finds the key first). Not on a cluster. The waiters of lockers without it
    /// (and of the Go valkeylock) leave no claim, and can wait while
    /// claimants are served. Off by default; see the README, "Hand-over
    /// across processes".
    pub handover: bool,
}

/// Every field, with the passwords in `nodes` replaced by `***`: options are
/// logged (`tracing::debug!(?options)`) far more often than they should hold
/// secrets in clear.
impl std::fmt::Debug for LockerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("LockerOptions")
            .field("nodes", &nodes)
            .field("key_prefix", &self.key_prefix)
            .field("key_majority", &self.key_majority)
            .field("key_validity", &self.key_validity)
            .field("extend_interval", &self.extend_interval)
            .field("try_next_after", &self.try_next_after)
            .field("clock_drift", &self.clock_drift)
            .field("no_loop_tracking", &self.no_loop_tracking)
            .field("fallback_set_px", &self.fallback_set_px)
            .field("disable_cache", &self.disable_cache)
            .field("connect_timeout", &self.connect_timeout)
            .field("local_handover_limit", &self.local_handover_limit)
            .field("fencing", &self.fencing)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("dedicated_runtime", &self.dedicated_runtime)
            .field("fair_queueing", &self.fair_queueing)
            .field("handover", &self.handover)
            .field("direct_connections", &self.direct_connections)
            .field("event_buffer", &self.event_buffer)
            .finish()
    }
}

impl Default for LockerOptions {
    fn default() -> Self {
        LockerOptions {
            nodes: Vec::new(),
            key_prefix: "valkeylock".to_owned(),
            key_majority: 2,
            key_validity: Duration::from_secs(5),
            extend_interval: None,
            try_next_after: Duration::from_millis(200),
            clock_drift: None,
            no_loop_tracking: true,
            fallback_set_px: true,
            disable_cache: false,
            connect_timeout: Duration::from_secs(2),
            local_handover_limit: 128,
            fencing: false,
            tls_ca_file: None,
            dedicated_runtime: true,
            fair_queueing: false,
            handover: false,
            direct_connections: true,
            event_buffer: DEFAULT_EVENT_BUFFER,
        }
    }
}

impl LockerOptions {
    /// Options for the given nodes, with every other field at its default.
    /// Each `with_*` method then sets the field of the same name (see its
    /// documentation above for what it does and its default).
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::LockerOptions;
    ///
    /// let options = LockerOptions::new(["valkey://127.0.0.1:6379"]).with_key_majority(1);
    /// assert_eq!(options.key_prefix, "valkeylock");
    /// ```
    pub fn new<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LockerOptions {
            nodes: nodes.into_iter().map(Into::into).collect(),
            ..LockerOptions::default()
        }
    }

    /// Sets `event_buffer`.
    pub fn with_event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events;
        self
    }

    /// Sets `dedicated_runtime`.
    pub fn with_dedicated_runtime(mut self, on: bool) -> Self {
        self.dedicated_runtime = on;
        self
    }

    /// Sets `direct_connections`.
    pub fn with_direct_connections(mut self, on: bool) -> Self {
        self.direct_connections = on;
        self
    }

    /// Sets `key_prefix`.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }
    /// Sets `key_majority`.
    pub fn with_key_majority(mut self, majority: usize) -> Self {
        self.key_majority = majority;
        self
    }
    /// Sets `key_validity`.
    pub fn with_key_validity(mut self, validity: Duration) -> Self {
        self.key_validity = validity;
        self
    }
    /// Sets `extend_interval`.
    pub fn with_extend_interval(mut self, interval: Duration) -> Self {
        self.extend_interval = Some(interval);
        self
    }
    /// Sets `try_next_after`.
    pub fn with_try_next_after(mut self, timeout: Duration) -> Self {
        self.try_next_after = timeout;
        self
    }
    /// Sets `clock_drift`.
    pub fn with_clock_drift(mut self, drift: Duration) -> Self {
        self.clock_drift = Some(drift);
        self
    }
    /// Sets `no_loop_tracking`.
    pub fn with_no_loop_tracking(mut self, on: bool) -> Self {
        self.no_loop_tracking = on;
        self
    }
    /// Sets `fallback_set_px`.
    pub fn with_fallback_set_px(mut self, on: bool) -> Self {
        self.fallback_set_px = on;
        self
    }
    /// Sets `disable_cache`.
    pub fn with_disable_cache(mut self, on: bool) -> Self {
        self.disable_cache = on;
        self
    }
    /// Sets `fair_queueing`.
    pub fn with_fair_queueing(mut self, fair: bool) -> Self {
        self.fair_queueing = fair;
        self
    }
    /// Sets `handover`.
    pub fn with_handover(mut self, on: bool) -> Self {
        self.handover = on;
        self
    }
    /// Sets `local_handover_limit`.
    pub fn with_local_handover_limit(mut self, limit: u32) -> Self {
        self.local_handover_limit = limit;
        self
    }
    /// Sets `fencing`.
    pub fn with_fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }
    /// Sets `tls_ca_file`.
    pub fn with_tls_ca_file(mut self, path: impl Into<String>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }
    /// Sets `connect_timeout`.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Checks every option, as `connect` does, without connecting.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] naming the first field that is wrong.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::{Error, LockerOptions};
    ///
    /// // Three nodes, but key_majority 1 means one key per lock.
    /// let options = LockerOptions::new(["redis://a", "redis://b", "redis://c"]).with_key_majority(1);
    /// assert!(matches!(options.validate(), Err(Error::InvalidOptions { field: "nodes", .. })));
    /// assert!(options.with_key_majority(2).validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        self.settings().map(|_| ())
    }

    /// Which of [`nodes`](LockerOptions::nodes) (an index into that list)
    /// holds key `index` (`{key_prefix}:{index}:{name}`) of every lock. The
    /// placement does not depend on the order the nodes are listed in: the
    /// nodes are ranked by their normalized address (see
    /// [`NodeAddr::placement_key`]) and key `i` goes to the node of rank
    /// `i mod N`. So lockers that name the same servers the same way agree,
    /// whatever their list order.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] when the options are invalid (as
    /// [`validate`](LockerOptions::validate)).
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::LockerOptions;
    ///
    /// let listed = LockerOptions::new(["redis://10.0.0.2", "redis://10.0.0.1", "redis://10.0.0.3"]);
    /// let sorted = LockerOptions::new(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"]);
    /// // Key 0 lives on 10.0.0.1 whatever the list order.
    /// assert_eq!(listed.nodes[listed.node_of_key(0).unwrap()], "redis://10.0.0.1");
    /// assert_eq!(sorted.nodes[sorted.node_of_key(0).unwrap()], "redis://10.0.0.1");
    /// ```
    pub fn node_of_key(&self, index: usize) -> Result<usize, Error> {
        Ok(self.settings()?.node_of_key(index))
    }

    /// Checks every option and resolves defaults.
    pub(crate) fn settings(&self) -> Result<Settings, Error> {
        let bad =
            |field: &'static str, reason: String| Err(Error::InvalidOptions { field, reason });
        if self.nodes.is_empty() {
            return bad("nodes", "at least one Valkey URL is needed".into());
        }
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for url in &self.nodes {
            match NodeAddr::parse(url) {
                Ok(addr) => nodes.push(addr),
                Err(e) => return bad("nodes", e.to_string()),
            }
        }
        if self.key_prefix.is_empty() {
            return bad("key_prefix", "must not be empty".into());
        }
        if self.key_majority == 0 {
            return bad("key_majority", "must be at least 1".into());
        }
        if self.key_majority > 64 {
            return bad("key_majority", "must be at most 64".into());
        }
        let total = quorum::total_keys(self.key_majority);
        if nodes.len() > total {
            return bad(
                "nodes",
                format!(
                    "{} nodes but only {total} keys per lock (2·key_majority − 1): the extra nodes would hold nothing",
                    nodes.len()
                ),
            );
        }
        if keys::all_keys_share_slot(&self.key_prefix, "name", total) {
            return bad(
                "key_prefix",
                "a {hash tag} in the prefix would put every key of a lock on one cluster slot"
                    .into(),
            );
        }
        // One upper bound for every duration, before any arithmetic: the
        // engine adds and multiplies them (`connect_timeout + 2 s`,
        // `try_next_after * 5`, `Instant + key_validity`), and a huge value
        // would overflow there (a panic) instead of failing here.
        for (field, value) in [
            ("key_validity", Some(self.key_validity)),
            ("extend_interval", self.extend_interval),
            ("try_next_after", Some(self.try_next_after)),
            ("clock_drift", self.clock_drift),
            ("connect_timeout", Some(self.connect_timeout)),
        ] {
            if value.is_some_and(|d| d > MAX_DURATION) {
                return bad(
                    field,
                    format!("must be at most {}", format_duration(MAX_DURATION)),
                );
            }
        }
        let validity = self.key_validity;
        if let Some(problem) = ttl_problem(validity) {
            return bad("key_validity", problem);
        }
        let extend = self.extend_interval.unwrap_or(validity / 2);
        if extend.is_zero() || extend >= validity {
            return bad(
                "extend_interval",
                format!("must be above 0 and below key_validity ({validity:?}), got {extend:?}"),
            );
        }
        if self.try_next_after.is_zero() || self.try_next_after >= validity {
            return bad(
                "try_next_after",
                format!("must be above 0 and below key_validity ({validity:?})"),
            );
        }
        let drift = self
            .clock_drift
            .unwrap_or_else(|| quorum::default_drift(validity));
        if drift >= validity {
            return bad("clock_drift", "must be below key_validity".into());
        }
        // Servers keep expiries in whole milliseconds, and with absolute
        // PXAT this machine's wall clock is read in whole milliseconds too:
        // each rounding may cost up to a millisecond of the key's life, which
        // valid_until must not count.
        let min_drift = if self.fallback_set_px {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(2)
        };
        if drift < min_drift {
            return bad(
                "clock_drift",
                format!(
                    "must be at least {} with fallback_set_px = {} (got {drift:?}): expiries are kept in whole milliseconds{}",
                    format_duration(min_drift),
                    self.fallback_set_px,
                    if self.fallback_set_px {
                        ""
                    } else {
                        ", and PXAT reads this machine's clock in whole milliseconds"
                    }
                ),
            );
        }
        // An extension must be able to land before the last one runs out.
        if !extensions_fit(extend, self.try_next_after, validity, drift) {
            return bad(
                "extend_interval",
                format!(
                    "extend_interval ({extend:?}) + try_next_after ({:?}) must be below key_validity − clock_drift ({:?}), or the lock would lapse between extensions",
                    self.try_next_after,
                    validity - drift
                ),
            );
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be above 0".into());
        }
        // fred's event channels panic on a capacity of 0, and allocate
        // every slot of a large one at once.
        if !(1..=MAX_EVENT_BUFFER).contains(&self.event_buffer) {
            return bad(
                "event_buffer",
                format!(
                    "must be from 1 to {MAX_EVENT_BUFFER} (got {})",
                    self.event_buffer
                ),
            );
        }
        if self.handover && nodes.iter().any(|n| n.topology == Topology::Cluster) {
            return bad(
                "handover",
                "not on a cluster: a claim's keys and the hand-over's message are not routed by slot yet".into(),
            );
        }
        let rank = placement_order(&nodes);
        Ok(Settings {
            rank,
            nodes,
            prefix: self.key_prefix.clone(),
            majority: self.key_majority,
            total,
            validity,
            extend,
            timeout: self.try_next_after,
            drift,
            drift_option: self.clock_drift,
            no_loop: self.no_loop_tracking,
            relative: self.fallback_set_px,
            tracking: !self.disable_cache,
            connect_timeout: self.connect_timeout,
            handover_limit: if self.fencing {
                0
            } else {
                self.local_handover_limit
            },
            fencing: self.fencing,
            tls_ca_file: self.tls_ca_file.clone(),
            dedicated_runtime: self.dedicated_runtime,
            fair: self.fair_queueing,
            direct: self.direct_connections,
            event_buffer: self.event_buffer,
            handover: self.handover.then(|| claimant_channel(&self.key_prefix)),
        })
    }
}

/// A locker's hand-over channel: `{prefix}:handover:` and 16 random hex
/// digits, its name in the claims it leaves.
fn claimant_channel(prefix: &str) -> std::sync::Arc<str> {
    let mut bytes = [0u8; 8];
    // As for tokens: without the OS generator nothing here is safe.
    getrandom::getrandom(&mut bytes)
        .expect("the operating system's random number generator failed");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}:handover:{hex}").into()
}

/// What is wrong with a key TTL, if anything: below 10 ms nothing useful
/// fits in it, and the servers get it in whole milliseconds. The rule of
/// `key_validity` and of `LockRequest::validity`.
pub(crate) fn ttl_problem(ttl: Duration) -> Option<String> {
    if ttl < Duration::from_millis(10) {
        return Some("must be at least 10ms".into());
    }
    if ttl.subsec_nanos() % 1_000_000 != 0 {
        return Some(format!(
            "must be a whole number of milliseconds (got {ttl:?}): keys get their TTL in milliseconds, and a cut-off fraction would still be counted in valid_until"
        ));
    }
    None
}

/// Whether an extension every `extend`, each answered within `timeout`, lands
/// before keys written with `ttl` (less `drift`) run out, so that a held lock
/// does not lapse between extensions.
pub(crate) fn extensions_fit(
    extend: Duration,
    timeout: Duration,
    ttl: Duration,
    drift: Duration,
) -> bool {
    extend + timeout < ttl.saturating_sub(drift)
}

/// The largest value any duration option may take (the longest
/// `key_validity`). Far below what the engine's sums and products of
/// durations (`connect_timeout + 2 s`, `try_next_after * 5`, `Instant + d`)
/// can hold.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// `event_buffer`'s default: a burst of up to 4,096 changed keys is read
/// without a re-check of every lock, for 2.8 MB per node.
const DEFAULT_EVENT_BUFFER: usize = 4096;

/// `event_buffer`'s upper bound: about 700 MB per node at this size.
const MAX_EVENT_BUFFER: usize = 1 << 20;

/// The nodes in placement order: `rank[r]` is the index (in the user's list)
/// of the node of rank `r`, ranked by [`NodeAddr::placement_key`]; equal keys
/// (one server listed twice) keep their list order.
fn placement_order(nodes: &[NodeAddr]) -> Vec<usize> {
    let keys: Vec<String> = nodes.iter().map(NodeAddr::placement_key).collect();
    let mut rank: Vec<usize> = (0..nodes.len()).collect();
    rank.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
    rank
}

/// Validated options with every default resolved. Shared read-only by all actors.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) nodes: Vec<NodeAddr>,
    /// Placement order: `rank[r]` is the list index of the node of rank `r`.
    rank: Vec<usize>,
    pub(crate) prefix: String,
    pub(crate) majority: usize,
    pub(crate) total: usize,
    pub(crate) validity: Duration,
    pub(crate) extend: Duration,
    pub(crate) timeout: Duration,
    pub(crate) drift: Duration,
    /// `clock_drift` as given (`None`: each validity gets its default).
    pub(crate) drift_option: Option<Duration>,
    pub(crate) no_loop: bool,
    pub(crate) relative: bool,
    pub(crate) tracking: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) handover_limit: u32,
    pub(crate) fencing: bool,
    /// Read only with the `tls` feature.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) tls_ca_file: Option<String>,
    pub(crate) dedicated_runtime: bool,
    pub(crate) fair: bool,
    /// Direct connections are on (`direct_connections`).
    pub(crate) direct: bool,
    /// `event_buffer`: the engine connection's events per channel.
    pub(crate) event_buffer: usize,
    /// Hand-over (`handover`): this locker's channel, which its claims name.
    pub(crate) handover: Option<std::sync::Arc<str>>,
}

impl Settings {
    /// The node (an index into `nodes`, the user's list) that holds key
    /// `index` of every lock: the node of rank `index mod N` in placement
    /// order, so the order the nodes were listed in does not matter.
    pub(crate) fn node_of_key(&self, index: usize) -> usize {
        self.rank[quorum::node_of_key(index, self.rank.len())]
    }

    /// What this locker writes into its keys' values, so that an attempt can
    /// tell a holder configured differently.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        Fingerprint::new(self.majority, self.nodes.len())
    }

    /// How many of the `total` keys of a lock live on nodes that are up, given
    /// one flag per node (in the user's order).
    pub(crate) fn keys_on_live_nodes(&self, node_up: &[bool]) -> usize {
        (0..self.total)
            .filter(|&i| node_up.get(self.node_of_key(i)).copied().unwrap_or(false))
            .count()
    }

    /// A Valkey Cluster among the nodes.
    pub(crate) fn is_cluster(&self) -> bool {
        self.nodes.iter().any(|n| n.topology == Topology::Cluster)
    }

    /// The fencing counter moves inside the acquire script: one node that is
    /// one instance (standalone or behind Sentinel). On a cluster the counter
    /// and key 0 live in different slots, so it takes the two-phase step.
    pub(crate) fn fencing_in_script(&self) -> bool {
        self.fencing && self.nodes.len() == 1 && self.nodes[0].topology != Topology::Cluster
    }
}

mod duration_str {
    use crate::duration::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

mod opt_duration_str {
    use crate::duration::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn field_of(o: LockerOptions) -> &'static str {
        match o.settings() {
            Err(Error::InvalidOptions { field, .. }) => field,
            other => panic!("expected InvalidOptions, got {other:?}"),
        }
    }

    #[test]
    fn validation() {
        let base = || LockerOptions::new(["redis://127.0.0.1:6379"]);
        let s = base().settings().unwrap();
        assert_eq!(
            (s.majority, s.total, s.extend, s.drift),
            (2, 3, ms(2500), ms(52))
        );
        assert!(s.no_loop && s.relative && s.tracking);

        assert_eq!(field_of(LockerOptions::default()), "nodes");
        assert_eq!(field_of(base().with_key_majority(0)), "key_majority");
        assert_eq!(field_of(base().with_key_majority(65)), "key_majority");
        assert_eq!(field_of(base().with_key_prefix("")), "key_prefix");
        assert_eq!(field_of(base().with_key_prefix("{tag}")), "key_prefix");
        assert_eq!(field_of(base().with_key_validity(ms(5))), "key_validity");
        assert_eq!(
            field_of(base().with_extend_interval(ms(5000))),
            "extend_interval"
        );
        assert_eq!(
            field_of(base().with_extend_interval(ms(0))),
            "extend_interval"
        );
        assert_eq!(
            field_of(base().with_extend_interval(ms(4900))),
            "extend_interval"
        );
        assert_eq!(
            field_of(base().with_try_next_after(ms(0))),
            "try_next_after"
        );
        assert_eq!(field_of(base().with_clock_drift(ms(6000))), "clock_drift");
        assert_eq!(
            field_of(base().with_connect_timeout(ms(0))),
            "connect_timeout"
        );
        // fred's event channels panic at 0 and allocate every slot at once.
        assert_eq!(field_of(base().with_event_buffer(0)), "event_buffer");
        assert_eq!(
            field_of(base().with_event_buffer(MAX_EVENT_BUFFER + 1)),
            "event_buffer"
        );
        assert_eq!(
            field_of(base().with_event_buffer(usize::MAX)),
            "event_buffer"
        );
        for events in [1, 64, DEFAULT_EVENT_BUFFER, MAX_EVENT_BUFFER] {
            let s = base()
                .with_event_buffer(events)
                .settings()
                .expect("in range");
            assert_eq!(s.event_buffer, events);
        }
        assert_eq!(field_of(LockerOptions::new(["nope"])), "nodes");
        assert_eq!(
            field_of(LockerOptions::new(["redis://a", "redis://b"]).with_key_majority(1)),
            "nodes"
        );
        assert!(LockerOptions::new(["redis://a", "redis://b", "redis://c"])
            .validate()
            .is_ok());
    }

    /// Every duration option at `Duration::MAX` is refused with its own
    /// field named, before any of the engine's arithmetic (sums, `timeout *
    /// 5`, `Instant + d`) can overflow. With the others at their defaults.
    #[test]
    fn durations_are_bounded() {
        let base = || LockerOptions::new(["redis://127.0.0.1:6379"]);
        let max = Duration::MAX;
        let cases: [(&str, LockerOptions); 5] = [
            ("key_validity", base().with_key_validity(max)),
            ("extend_interval", base().with_extend_interval(max)),
            ("try_next_after", base().with_try_next_after(max)),
            ("clock_drift", base().with_clock_drift(max)),
            ("connect_timeout", base().with_connect_timeout(max)),
        ];
        for (want, options) in cases {
            assert_eq!(field_of(options), want);
        }
        // Just past the bound, and on it.
        let over = MAX_DURATION + Duration::from_nanos(1);
        assert_eq!(
            field_of(base().with_connect_timeout(over)),
            "connect_timeout"
        );
        assert_eq!(field_of(base().with_key_validity(over)), "key_validity");
        let s = base()
            .with_connect_timeout(MAX_DURATION)
            .settings()
            .expect("connect_timeout at the bound");
        // The largest sums and products the engine forms stay finite.
        let _ = s.connect_timeout + Duration::from_secs(2);
        let _ = s.timeout * 5 + Duration::from_secs(2);
        let _ = tokio::time::Instant::now() + s.connect_timeout + s.validity;
    }

    /// The servers take TTLs in whole milliseconds and keep expiries in whole
    /// milliseconds; with `PXAT` this machine's wall clock is read in whole
    /// milliseconds too. The validity arithmetic must not count what the
    /// wire cuts off.
    #[test]
    fn millisecond_granularity() {
        let base = || LockerOptions::new(["redis://127.0.0.1:6379"]);
        let us = Duration::from_micros;
        let cases: [(LockerOptions, Option<&str>); 10] = [
            (
                base().with_key_validity(us(1_000_500)),
                Some("key_validity"),
            ),
            (base().with_key_validity(ms(1001)), None),
            (base().with_clock_drift(ms(0)), Some("clock_drift")),
            (base().with_clock_drift(us(999)), Some("clock_drift")),
            (base().with_clock_drift(ms(1)), None),
            (
                base().with_fallback_set_px(false).with_clock_drift(ms(1)),
                Some("clock_drift"),
            ),
            (
                base()
                    .with_fallback_set_px(false)
                    .with_clock_drift(us(1999)),
                Some("clock_drift"),
            ),
            (
                base().with_fallback_set_px(false).with_clock_drift(ms(2)),
                None,
            ),
            // The default drift (1 % + 2 ms) always passes, in either mode.
            (
                base()
                    .with_fallback_set_px(false)
                    .with_key_validity(ms(10))
                    .with_try_next_after(ms(1)),
                None,
            ),
            (
                base().with_key_validity(ms(10)).with_try_next_after(ms(1)),
                None,
            ),
        ];
        for (i, (options, want)) in cases.into_iter().enumerate() {
            match (options.settings(), want) {
                (Ok(_), None) => {}
                (Err(Error::InvalidOptions { field, reason }), Some(want)) => {
                    assert_eq!(field, want, "case {i}: {reason}");
                    assert!(reason.contains("millisecond"), "case {i}: {reason}");
                }
                (got, want) => panic!("case {i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn placement_ignores_list_order() {
        let urls = [
            "redis://10.0.0.2:6379",
            "valkey://user:pw@10.0.0.1:6380/0",
            "redis://10.0.0.1:6379",
        ];
        let place = |order: [usize; 3]| {
            let listed: Vec<&str> = order.iter().map(|&i| urls[i]).collect();
            let s = LockerOptions::new(listed.clone())
                .with_key_majority(3)
                .settings()
                .unwrap();
            (0..5)
                .map(|k| {
                    NodeAddr::parse(listed[s.node_of_key(k)])
                        .unwrap()
                        .placement_key()
                })
                .collect::<Vec<_>>()
        };
        let want = place([0, 1, 2]);
        // Ranked by host, then port; scheme, credentials and `/0` do not count.
        assert_eq!(
            want,
            [
                "standalone 10.0.0.1:06379 db0",
                "standalone 10.0.0.1:06380 db0",
                "standalone 10.0.0.2:06379 db0",
                "standalone 10.0.0.1:06379 db0",
                "standalone 10.0.0.1:06380 db0",
            ]
        );
        for order in [[0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            assert_eq!(place(order), want, "{order:?}");
        }
        let key = |u: &str| NodeAddr::parse(u).unwrap().placement_key();
        assert_eq!(
            key("valkey-cluster://B:7001,a:7000"),
            key("redis-cluster://A:7000,b:7001")
        );
        assert_ne!(key("redis://h/1"), key("redis://h"));
        assert_ne!(key("redis-sentinel://h/m1"), key("redis-sentinel://h/m2"));
        assert_eq!(key("redis://[::1]:6380"), "standalone [::1]:06380 db0");
    }

    #[test]
    fn keys_on_live_nodes() {
        // Two nodes, three keys: the node of rank 0 (10.0.0.1) holds two.
        let s = LockerOptions::new(["redis://10.0.0.2", "redis://10.0.0.1"])
            .settings()
            .unwrap();
        assert_eq!(s.node_of_key(0), 1);
        assert_eq!(s.node_of_key(1), 0);
        assert_eq!(s.node_of_key(2), 1);
        assert_eq!(s.keys_on_live_nodes(&[true, false]), 1);
        assert_eq!(s.keys_on_live_nodes(&[false, true]), 2);
        assert_eq!(s.keys_on_live_nodes(&[true, true]), 3);
        assert_eq!(s.keys_on_live_nodes(&[]), 0);
        let s = LockerOptions::new([
            "redis://a",
            "redis://b",
            "redis://c",
            "redis://d",
            "redis://e",
        ])
        .with_key_majority(3)
        .settings()
        .unwrap();
        assert_eq!(s.keys_on_live_nodes(&[true, true, true, false, false]), 3);
    }

    #[test]
    fn debug_hides_passwords() {
        let o = LockerOptions::new([
            "redis://user:s3cret@127.0.0.1:6379/2",
            "valkey-sentinel://:p%40ss@10.0.0.1:26379,10.0.0.2/mymaster",
            "redis://127.0.0.1:6380",
        ]);
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("p%40ss"),
            "{shown}"
        );
        assert!(
            shown.contains("redis://user:***@127.0.0.1:6379/2"),
            "{shown}"
        );
        assert!(shown.contains("valkey-sentinel://:***@10.0.0.1:26379,10.0.0.2/mymaster"));
        assert!(shown.contains("redis://127.0.0.1:6380"));
        let a = NodeAddr::parse("redis://u:hunter2@h:1").unwrap();
        let shown = format!("{a:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(a.password.as_deref(), Some("hunter2"));
        let settings = o.settings().unwrap();
        assert!(!format!("{settings:?}").contains("s3cret"));
        // Not a URL: left alone, nothing to find.
        assert_eq!(redact_url("no scheme"), "no scheme");
        assert_eq!(redact_url("redis://user@h"), "redis://user@h");
    }

    #[test]
    fn serde_forms() {
        let json = r#"{"nodes":["redis://127.0.0.1:6379"],"key_majority":1,"key_validity":"2s","extend_interval":"500ms"}"#;
        let o: LockerOptions = serde_json::from_str(json).unwrap();
        assert_eq!(o.key_validity, ms(2000));
        assert_eq!(o.extend_interval, Some(ms(500)));
        assert_eq!(o.try_next_after, ms(200));
        let back: LockerOptions =
            serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
        assert_eq!(back, o);
        assert!(
            serde_json::from_str::<LockerOptions>(r#"{"key_validity":"5 lightyears"}"#).is_err()
        );
        assert!(serde_json::from_str::<LockerOptions>(r#"{"unknown":1}"#).is_err());
    }
}
