//! Fault toolkit for the network: a loopback TCP proxy that sits between a
//! locker and a `valkey-server`, and a tiny RESP client that talks to a server
//! without any client library (so it keeps working across kills and restarts).
//!
//! A [`Proxy`] forwards bytes both ways. On command it can:
//! - [`freeze`](Proxy::freeze): stop forwarding in both directions while
//!   keeping every socket open (a silent partition: no RST, no FIN; bytes are
//!   held back, as TCP would retransmit them, and delivered on `heal`);
//!   [`freeze_requests`](Proxy::freeze_requests) /
//!   [`freeze_replies`](Proxy::freeze_replies) do one direction only;
//! - [`delay`](Proxy::delay): add latency to every chunk, each way;
//! - [`drop_all`](Proxy::drop_all): close every connection (both sockets);
//! - [`refuse`](Proxy::refuse): close new connections at once;
//! - [`heal`](Proxy::heal): back to plain forwarding.
//!
//! Only 127.0.0.1 is used, on both sides.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The indices of `ports` (loopback servers) in key-placement rank order.
fn by_rank(ports: &[u16]) -> Vec<usize> {
    let options =
        valkeylock::LockerOptions::new(ports.iter().map(|p| format!("redis://127.0.0.1:{p}")))
            .with_key_majority(ports.len().max(1));
    (0..ports.len())
        .map(|rank| options.node_of_key(rank).expect("valid options"))
        .collect()
}

/// What a proxy does with traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Client → server bytes are held back.
    pub requests_frozen: bool,
    /// Server → client bytes are held back.
    pub replies_frozen: bool,
    /// Added to every chunk, each way.
    pub delay: Duration,
    /// New connections are closed at once.
    pub refuse: bool,
}

/// A loopback TCP proxy to `127.0.0.1:{upstream}`. Stops (closing every
/// connection) when dropped.
pub struct Proxy {
    pub port: u16,
    pub upstream: u16,
    state: watch::Sender<LinkState>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
    tap: Arc<Mutex<Option<Vec<u8>>>>,
    accept: AbortHandle,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("port", &self.port)
            .field("upstream", &self.upstream)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl Proxy {
    /// Starts a proxy on a free loopback port. Must be called inside a tokio
    /// runtime, which runs its tasks.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy port");
        Proxy::on(listener, upstream)
    }

    /// One proxy per upstream port, `result[j]` to `upstreams[j]`, whose
    /// addresses rank for key placement (`LockerOptions::node_of_key`) as
    /// their upstreams' do: a locker listing the proxies puts every key on
    /// the same server as one listing the servers. Placement ranks nodes by
    /// address, and free ports come in any order, so a plain `start` per
    /// server would not.
    pub async fn start_all(upstreams: &[u16]) -> Vec<Proxy> {
        let mut listeners = Vec::new();
        for _ in upstreams {
            listeners.push(
                TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind proxy port"),
            );
        }
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("proxy addr").port())
            .collect();
        let (by_rank_up, by_rank_proxy) = (by_rank(upstreams), by_rank(&ports));
        let mut slots: Vec<Option<TcpListener>> = listeners.into_iter().map(Some).collect();
        let mut out: Vec<Option<Proxy>> = upstreams.iter().map(|_| None).collect();
        for (up, listener) in by_rank_up.into_iter().zip(by_rank_proxy) {
            let listener = slots[listener].take().expect("each listener once");
            out[up] = Some(Proxy::on(listener, upstreams[up]));
        }
        out.into_iter()
            .map(|p| p.expect("every upstream"))
            .collect()
    }

    fn on(listener: TcpListener, upstream: u16) -> Proxy {
        let port = listener.local_addr().expect("proxy addr").port();
        let (state, _) = watch::channel(LinkState::default());
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let tap: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let accept = {
            let state = state.clone();
            let conns = conns.clone();
            let accepted = accepted.clone();
            let tap = tap.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if state.borrow().refuse {
                        drop(inbound);
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let rx = state.subscribe();
                    let tap = tap.clone();
                    let task = tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let (ci, co) = inbound.into_split();
                        let (si, so) = outbound.into_split();
                        tokio::join!(
                            pump(ci, so, rx.clone(), Direction::Requests, Some(tap)),
                            pump(si, co, rx, Direction::Replies, None),
                        );
                    });
                    let mut list = conns.lock().expect("conns");
                    list.retain(|h| !h.is_finished());
                    list.push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        Proxy {
            port,
            upstream,
            state,
            conns,
            accepted,
            tap,
            accept,
        }
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis://{userinfo}@127.0.0.1:{port}`.
    pub fn url_with(&self, userinfo: &str) -> String {
        format!("redis://{userinfo}@127.0.0.1:{}", self.port)
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    fn update(&self, f: impl FnOnce(&mut LinkState)) {
        self.state.send_modify(f);
    }

    /// Silent partition: nothing passes either way; sockets stay open.
    pub fn freeze(&self) {
        self.update(|s| {
            s.requests_frozen = true;
            s.replies_frozen = true;
        });
    }

    /// Requests are held back; replies still pass.
    pub fn freeze_requests(&self) {
        self.update(|s| s.requests_frozen = true);
    }

    /// Replies are held back; requests still reach the server.
    pub fn freeze_replies(&self) {
        self.update(|s| s.replies_frozen = true);
    }

    /// Adds `d` of latency to each chunk, each way.
    pub fn delay(&self, d: Duration) {
        self.update(|s| s.delay = d);
    }

    /// New connections are accepted and closed at once while `on`.
    pub fn refuse(&self, on: bool) {
        self.update(|s| s.refuse = on);
    }

    /// Plain forwarding again; held-back bytes are delivered.
    pub fn heal(&self) {
        self.update(|s| *s = LinkState::default());
    }

    /// Closes every open connection (both sockets). New ones are accepted as
    /// usual unless [`refuse`](Proxy::refuse) is on.
    pub fn drop_all(&self) -> usize {
        let mut list = self.conns.lock().expect("conns");
        let n = list.iter().filter(|h| !h.is_finished()).count();
        for h in list.drain(..) {
            h.abort();
        }
        n
    }

    /// Connections accepted so far (reconnects show up here).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.conns
            .lock()
            .expect("conns")
            .iter()
            .filter(|h| !h.is_finished())
            .count()
    }

    /// Starts recording client → server bytes (of new and existing connections).
    pub fn start_tap(&self) {
        *self.tap.lock().expect("tap") = Some(Vec::new());
    }

    /// The bytes recorded since [`start_tap`](Proxy::start_tap).
    pub fn tapped(&self) -> Vec<u8> {
        self.tap.lock().expect("tap").clone().unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_all();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Requests,
    Replies,
}

fn frozen(s: &LinkState, dir: Direction) -> bool {
    match dir {
        Direction::Requests => s.requests_frozen,
        Direction::Replies => s.replies_frozen,
    }
}

/// Waits until `dir` may pass and the chunk read at `at` has waited out the
/// delay. A freeze that starts during the delay holds the chunk too.
async fn wait_turn(st: &mut watch::Receiver<LinkState>, dir: Direction, at: Instant) -> bool {
    loop {
        let s = *st.borrow_and_update();
        if frozen(&s, dir) {
            if st.changed().await.is_err() {
                return false;
            }
            continue;
        }
        let due = at + s.delay;
        if Instant::now() >= due {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            r = st.changed() => if r.is_err() { return false },
        }
    }
}

/// Forwards one direction: a reader that timestamps chunks, and a writer
/// that releases them according to the link state (order is kept).
async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    mut st: watch::Receiver<LinkState>,
    dir: Direction,
    tap: Option<Arc<Mutex<Option<Vec<u8>>>>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(tap) = &tap {
                        if let Some(t) = tap.lock().expect("tap").as_mut() {
                            t.extend_from_slice(&buf[..n]);
                        }
                    }
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        Instant::now()
    };
    let write = async move {
        while let Some((at, bytes)) = rx.recv().await {
            if !wait_turn(&mut st, dir, at).await {
                return;
            }
            if w.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // The peer closed: pass the FIN on, but not through a freeze.
        if wait_turn(&mut st, dir, Instant::now()).await {
            let _ = w.shutdown().await;
        }
    };
    tokio::join!(read, write);
}

// ===== a minimal RESP client =====

/// A RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The value as text (simple strings, bulk strings, integers).
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Int(n) => Some(n.to_string()),
            _ => None,
        }
    }

    pub fn int(&self) -> Option<i64> {
        match self {
            Resp::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn is_nil(&self) -> bool {
        matches!(self, Resp::Bulk(None) | Resp::Array(None))
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Resp::Error(_))
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| p + from)
}

/// Parses one RESP2 value from the front of `buf`: `Some((value, used))`, or
/// `None` when more bytes are needed (or the bytes are not RESP).
pub fn parse_resp(buf: &[u8]) -> Option<(Resp, usize)> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], at: usize) -> Option<(Resp, usize)> {
    let kind = *buf.get(at)?;
    let end = find_crlf(buf, at + 1)?;
    let line = std::str::from_utf8(&buf[at + 1..end]).ok()?;
    let next = end + 2;
    match kind {
        b'+' => Some((Resp::Simple(line.to_owned()), next)),
        b'-' => Some((Resp::Error(line.to_owned()), next)),
        b':' => Some((Resp::Int(line.parse().ok()?), next)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Resp::Bulk(None), next));
            }
            let n = n as usize;
            if buf.len() < next + n + 2 {
                return None;
            }
            Some((Resp::Bulk(Some(buf[next..next + n].to_vec())), next + n + 2))
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Resp::Array(None), next));
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut pos = next;
            for _ in 0..n {
                let (v, p) = parse_at(buf, pos)?;
                items.push(v);
                pos = p;
            }
            Some((Resp::Array(Some(items)), pos))
        }
        _ => None,
    }
}

/// Splits a client → server byte stream (as recorded by a tap) into commands,
/// each a list of arguments. Stops at the first incomplete command.
pub fn parse_commands(mut bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        // An inline command (`HELLO 3\r\n`): words up to the line end.
        if bytes.first().is_some_and(|&b| b != b'*') {
            let Some(end) = find_crlf(bytes, 0) else {
                break;
            };
            out.push(
                bytes[..end]
                    .split(|&b| b == b' ')
                    .filter(|w| !w.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect(),
            );
            bytes = &bytes[end + 2..];
            continue;
        }
        let Some((v, used)) = parse_resp(bytes) else {
            break;
        };
        if let Resp::Array(Some(items)) = v {
            out.push(
                items
                    .into_iter()
                    .filter_map(|i| match i {
                        Resp::Bulk(Some(b)) => Some(b),
                        _ => None,
                    })
                    .collect(),
            );
        }
        bytes = &bytes[used..];
    }
    out
}

fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One plain RESP2 connection to `127.0.0.1:{port}` (no client library, no
/// reconnects: open a new one after a restart).
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects, authenticating with `auth` (`[password]` or `[user, password]`).
    pub async fn connect(port: u16, auth: &[&str]) -> Result<RawConn, String> {
        let stream = tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| format!("connect to {port}: timed out"))?
        .map_err(|e| format!("connect to {port}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut c = RawConn {
            stream,
            buf: Vec::new(),
        };
        if !auth.is_empty() {
            let mut args = vec!["AUTH"];
            args.extend_from_slice(auth);
            if let Resp::Error(e) = c.cmd(&args).await? {
                return Err(format!("AUTH: {e}"));
            }
        }
        Ok(c)
    }

    /// Sends a command and reads its reply (5 s limit).
    pub async fn cmd(&mut self, args: &[&str]) -> Result<Resp, String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd_bytes(&args, Duration::from_secs(5)).await
    }

    /// Sends a command of byte arguments and reads its reply within `limit`.
    pub async fn cmd_bytes(&mut self, args: &[&[u8]], limit: Duration) -> Result<Resp, String> {
        self.stream
            .write_all(&encode(args))
            .await
            .map_err(|e| format!("write: {e}"))?;
        tokio::time::timeout(limit, self.read_reply())
            .await
            .map_err(|_| "no reply in time".to_owned())?
    }

    /// Sends `commands` in one write and reads their replies, in order,
    /// with no time limit: what a connection that writes several commands
    /// at once does (the lanes bench's `lean` transport times it, and a
    /// timer per call would be part of what it measures).
    pub async fn together(&mut self, commands: &[&[&[u8]]]) -> Result<Vec<Resp>, String> {
        let bytes: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
        self.stream
            .write_all(&bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    async fn read_reply(&mut self) -> Result<Resp, String> {
        loop {
            if let Some((v, used)) = parse_resp(&self.buf) {
                self.buf.drain(..used);
                return Ok(v);
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Runs one command on a fresh connection to `port`.
pub async fn command(port: u16, args: &[&str]) -> Result<Resp, String> {
    RawConn::connect(port, &[]).await?.cmd(args).await
}

/// Runs one command with credentials on a fresh connection to `port`.
pub async fn command_auth(port: u16, auth: &[&str], args: &[&str]) -> Result<Resp, String> {
    RawConn::connect(port, auth).await?.cmd(args).await
}
