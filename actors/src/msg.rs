//! The messages actors exchange, in one module below all of them, so that no
//! actor imports another: the Supervisor, `NodeActor` and `LockActor` each
//! depend on this vocabulary, and on nothing of each other's.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorId, ActorRef, RpcReplyPort};
use tokio::sync::oneshot;

use crate::core::{CmdId, Op, Outcome, ReqId, RequestKind, Terms, Time};
use crate::election::Record;
use crate::error::Error;
use crate::failure::{NodeFailure, NodeReport};
use crate::few::OneOrMore;
use crate::keys::KeyName;
use crate::rwlock::Gates;
use crate::scripts::{Look, SetMode, Token};
use crate::status::StatusRx;

/// The first characters of a grant's token ([`Token::short`]), for logs:
/// enough to correlate with the key in Valkey, never the whole token (which
/// would let a reader of the logs release or extend the lock).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TokenTag {
    bytes: [u8; 8],
    len: u8,
}

impl TokenTag {
    pub(crate) fn of(token: &Token) -> TokenTag {
        let short = token.short().as_bytes();
        let mut bytes = [0u8; 8];
        let len = short.len().min(8);
        bytes[..len].copy_from_slice(&short[..len]);
        TokenTag {
            bytes,
            len: len as u8,
        }
    }
}

impl std::fmt::Display for TokenTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `short()` is ASCII hex, cut on a byte boundary.
        f.write_str(std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("?"))
    }
}

impl std::fmt::Debug for TokenTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTag({self})")
    }
}

/// A grant as it leaves its `LockActor`: what the caller's `Lease` is made of.
#[derive(Debug)]
pub(crate) struct GrantParts {
    pub(crate) name: Arc<str>,
    /// For the caller's `hold` and `release` spans.
    pub(crate) token: TokenTag,
    pub(crate) holder: u64,
    /// Where its release goes: the lock's state.
    pub(crate) lock: Arc<dyn LockPort>,
    /// What the holder sees: the grant's status and its token.
    pub(crate) status: StatusRx,
    pub(crate) fence: u64,
    /// When its maximum hold ends it, if it has one.
    pub(crate) hold_until: Option<Time>,
}

/// The way into a `LockActor`'s state for its callers: requests and
/// releases feed it on the caller's own thread (see `lock`'s module doc).
pub(crate) trait LockPort: Send + Sync + std::fmt::Debug {
    /// A caller wants the lock; what it sends on direct connections, for
    /// the caller to drive. Handed back if the actor has stopped.
    // Handed back only when the actor has stopped (rare): boxing it would
    // cost every request an allocation.
    #[allow(clippy::result_large_err)]
    fn request(&self, request: Request) -> Result<Sends, Request>;

    /// Holder `holder` releases; `reply` is answered once its deletes are.
    /// What it sends on direct connections, for the caller to drive; `None`
    /// if the actor has stopped (its holders were told then).
    fn release(&self, holder: u64, reply: Option<oneshot::Sender<Released>>) -> Option<Sends>;

    /// The requests sent to the actor, counted by their senders, and the
    /// mark it sets when it retires (see `context::try_retire`).
    fn sent(&self) -> &std::sync::atomic::AtomicU64;

    /// The reply to command `cmd`, sent on a direct connection; then, if
    /// `recheck` names a node, a re-check of this lock's keys there (the
    /// engine's connection to it changed while the command was out).
    /// What that sends next on direct connections comes back.
    fn reply(&self, cmd: CmdId, outcome: Outcome, recheck: Option<usize>) -> Sends;

    /// A hand-over's message, read on a caller's runtime (`listen`): key
    /// `key` set to `token` for the claim sent as `cmd`. Taken only if none
    /// of the lock's commands is out on the engine's connection, and only
    /// if its other copy, on the engine's, has not been taken first; what
    /// it sends on direct connections is handed to them on this thread.
    /// False if not taken (the engine's copy will be), or if the actor has
    /// stopped.
    fn handed(&self, key: usize, token: Token, cmd: CmdId, fence: Option<u64>) -> bool;

    /// The engine's own news for the lock, fed here and now by the task
    /// that has it (a node's answers to a batch of extensions, a
    /// reconnect's re-check), as the actor's handler would: not a message
    /// per lock through the actor's mailbox. Why: each such message wakes
    /// one actor's task, and a batch answers hundreds of locks at once.
    /// After a reconnect with 10,000 held locks, those wake-ups held up the
    /// extensions of the locks whose validity was running out, and locks
    /// were lost while their keys were still theirs (BENCHMARKS.md, "A
    /// reconnect with 10,000 held locks"). Nothing if the actor has
    /// stopped (its holders were told then).
    fn engine_news(&self, news: EngineNews);
}

/// What the engine's tasks feed a lock's state directly (see
/// [`LockPort::engine_news`]).
#[derive(Debug)]
pub(crate) enum EngineNews {
    /// A node answered a command.
    Reply(NodeReply),
    /// Node `node` reconnected: the lock re-checks its keys there.
    Recheck { node: usize },
}

/// A caller waiting for a grant.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) id: ReqId,
    pub(crate) kind: RequestKind,
    /// Its own terms (`LockRequest`), or `None` for the locker's.
    pub(crate) terms: Option<Terms>,
    pub(crate) reply: oneshot::Sender<Result<GrantParts, Error>>,
    /// The caller's runtime, if its acquisitions may go on a direct
    /// connection (see `direct`): also when the request is fed on the
    /// engine's thread (a name's first, through the Supervisor).
    pub(crate) caller: Option<tokio::runtime::Handle>,
}

/// Messages of a `LockActor`.
/// How a release went: keys deleted, and keys whose delete got no answer
/// (left to expire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Released {
    pub(crate) deleted: usize,
    pub(crate) unconfirmed: usize,
}

#[derive(Debug)]
pub(crate) enum LockMsg {
    /// A caller wants the lock.
    Request(Request),
    /// A waiting caller gave up.
    Cancel { id: ReqId },
    /// A node answered a command.
    Reply(NodeReply),
    /// Key `index` of this lock changed on its node.
    Invalidated { index: usize },
    /// Hand-over: a release gave key `index` to `token` under the claim
    /// command `cmd` left, and moved the fencing counter to `fence` if it
    /// did.
    Handed {
        index: usize,
        token: Token,
        cmd: CmdId,
        fence: Option<u64>,
    },
    /// A direct connection to a node ended (`Some`), or invalidations may
    /// have been dropped (`None`, all nodes). A reconnect's re-check is fed
    /// to the state directly instead (`EngineNews::Recheck`).
    Recheck { node: Option<usize> },
    /// The core's timer is due.
    Timeout,
    /// The locker is closing.
    Close,
    /// For `inspect`: the token of this actor's attempt or grant, if any.
    OwnToken {
        reply: oneshot::Sender<Option<Token>>,
    },
    /// Fault injection: fail, as a handler that returned an error would.
    #[cfg(feature = "fault-injection")]
    Fail,
}

/// A node's answer to command `cmd`.
#[derive(Debug)]
pub(crate) struct NodeReply {
    pub(crate) cmd: CmdId,
    pub(crate) outcome: Outcome,
}

/// One command for a node's command pump.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) op: Op,
    /// The lock key, or the fencing counter.
    pub(crate) key: KeyName,
    /// The fencing counter, for an acquisition that moves it.
    pub(crate) fence_key: Option<KeyName>,
    /// A read-write lock's side and the keys that gate this key (see
    /// `rwlock`): an acquisition of a free key goes through them.
    pub(crate) gates: Option<Arc<Gates>>,
    pub(crate) cmd: CmdId,
    pub(crate) reply_to: ActorRef<LockMsg>,
}

/// A command for a direct connection (see `direct`), run as a future on
/// its caller's runtime: by the caller itself while it waits for its
/// answer, on a task of its own otherwise. Its reply is fed to the lock's
/// state there, not sent to the actor on the engine's thread.
#[derive(Debug)]
pub(crate) struct DirectCmd {
    /// The connection it goes on.
    pub(crate) link: Arc<dyn DirectLink>,
    pub(crate) job: Job,
    /// Where its reply is fed; gone once the actor has stopped (its holders
    /// were told then).
    pub(crate) port: std::sync::Weak<dyn LockPort>,
    /// The caller's runtime, where it runs if its caller does not drive it.
    pub(crate) runtime: tokio::runtime::Handle,
    /// When the engine's thread made it, if it did: it then runs on a task
    /// of its own, and how long that took to write it and read its reply
    /// tells how busy the runtime is (`context::Pace`).
    pub(crate) made: Option<std::time::Instant>,
}

impl Drop for DirectCmd {
    /// Counted out until run or dropped unrun (see `direct::MAX_OUT`).
    fn drop(&mut self) {
        self.link.done();
    }
}

/// The commands for direct connections that one event produced: usually
/// none or one, kept inline.
pub(crate) type Sends = OneOrMore<DirectCmd>;

/// A future that runs a direct connection's command.
pub(crate) type Running = std::pin::Pin<Box<dyn std::future::Future<Output = Sends> + Send>>;

/// A direct connection, as its commands see it (it is `direct`'s to open
/// and close; defined here, below the lock's state, which makes them).
pub(crate) trait DirectLink: Send + Sync + std::fmt::Debug {
    /// Runs `cmd` on this connection and feeds its reply to its lock's
    /// state; what that sends next.
    fn run(&self, cmd: DirectCmd) -> Running;

    /// A command made for this connection is done (run or dropped).
    fn done(&self);
}

/// One key's extension, waiting for the node's next batch.
#[derive(Debug)]
pub(crate) struct ExtendItem {
    pub(crate) key: KeyName,
    pub(crate) token: Token,
    pub(crate) mode: SetMode,
    /// The TTL to set: a batch groups items of one TTL.
    pub(crate) ttl: Duration,
    pub(crate) cmd: CmdId,
    /// The lock's state, which the batch's answer is fed to (see
    /// [`LockPort::engine_news`]).
    pub(crate) port: std::sync::Weak<dyn LockPort>,
}

/// A live connection: fred's connection task, our invalidation forwarder, and
/// topology watchers.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) handle: fred::types::ConnectHandle,
    pub(crate) forwarder: Option<tokio::task::JoinHandle<()>>,
    pub(crate) watchers: Vec<tokio::task::JoinHandle<()>>,
    /// The server's id of the connection (`CLIENT ID`); 0 where direct
    /// connections do not redirect to it (they are off, not a single
    /// instance, no tracking, or the id could not be read).
    pub(crate) conn: u64,
}

/// Messages of a `NodeActor`.
#[derive(Debug)]
pub(crate) enum NodeMsg {
    /// Extend (or retake) one key in this node's next batch.
    Extend(ExtendItem),
    /// Send the batch of extensions collected so far.
    Flush,
    /// The connect task finished.
    Connected(Result<Connection, fred::error::Error>),
    /// The connection task ended: the socket closed or was force-closed as
    /// unresponsive.
    ConnectionEnded(String),
    /// Read `keys` (with `INSPECT_LUA`) and the fencing counter `fence_key`,
    /// for `inspect`; answered on `reply`.
    Inspect {
        keys: Vec<Arc<str>>,
        fence_key: Arc<str>,
        /// Read who waits beside each key, too.
        waiters: bool,
        reply: oneshot::Sender<Reading>,
    },
    /// Run an election's log script on `key`: add `write` if given, then
    /// read the terms above `after`; answered with the records, or why not.
    Log {
        key: Arc<str>,
        write: Option<Record>,
        after: u64,
        reply: oneshot::Sender<Result<Vec<Record>, String>>,
    },
    /// Delete `keys` whoever holds them (`release --force`); answered with
    /// the number deleted, or why not.
    Delete {
        keys: Vec<Arc<str>>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
}

/// What one node read for `inspect`: each key asked for (and who waits
/// beside it), in order, and the fencing counter.
#[derive(Debug)]
pub(crate) struct Reading {
    pub(crate) keys: Vec<Look>,
    pub(crate) fence: Option<u64>,
}

/// Messages of the Supervisor.
#[derive(Debug)]
pub(crate) enum SupervisorMsg {
    /// Route a request to the name's `LockActor`, spawning it if needed.
    Request { name: Arc<str>, request: Request },
    /// Withdraw a request.
    Cancel { name: Arc<str>, id: ReqId },
    /// A `LockActor` finished closing.
    LockClosed { name: Arc<str> },
    /// Hand-over: a release gave key `index` of lock `name` to `token` (see
    /// `LockMsg::Handed`), and the name has no live `LockActor` (it retired
    /// after its waiters gave up, their claims standing): start one, whose
    /// core gives the key back under the token, and so hands it on.
    Handed {
        name: Arc<str>,
        index: usize,
        token: Token,
        cmd: CmdId,
        fence: Option<u64>,
    },
    /// A `NodeActor` connected.
    NodeUp { node: usize, actor: ActorId },
    /// A `NodeActor` failed to connect (and is about to fail).
    NodeDown {
        node: usize,
        actor: ActorId,
        failure: NodeFailure,
    },
    /// Start node `node` again.
    Respawn { node: usize },
    /// Answer once every node reported its first connection attempt, or
    /// after `within` with what is known then.
    AwaitReady {
        reply: RpcReplyPort<Vec<Option<NodeReport>>>,
        within: Duration,
    },
    /// Time is up for `AwaitReady`.
    ReadyDeadline,
    /// Close the locker.
    Close { reply: RpcReplyPort<()> },
    /// Closing took too long.
    CloseDeadline,
}

/// Stand-ins that the unit tests of the actors' modules share.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::scripts::{SetMode, Token};
    use ractor::{Actor, ActorProcessingErr};

    /// A `LockActor` stand-in: only its address is needed.
    pub(crate) struct Sink;

    impl Actor for Sink {
        type Msg = LockMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<LockMsg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    /// An acquisition of `valkeylock:0:x` whose reply goes to `reply_to`.
    pub(crate) fn job(reply_to: &ActorRef<LockMsg>) -> Job {
        Job {
            op: Op::Acquire {
                token: Token::new(false),
                mode: SetMode::Nx,
                fence: false,
                ttl: Duration::from_secs(1),
                claim: None,
                queue: None,
            },
            gates: None,
            key: KeyName::new("valkeylock:0:x"),
            fence_key: None,
            cmd: CmdId(1),
            reply_to: reply_to.clone(),
        }
    }
}
