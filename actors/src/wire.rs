//! A direct connection of our own: one TCP socket that the callers' tasks
//! drive themselves, with no connection task between them and it.
//!
//! Why: fred hands every command to its connection task, which writes it
//! with a flush of its own, and hands every reply back the same way; per
//! command that is two wake-ups of that task and a write of its own. Here a
//! caller's command is written from the caller's task, in the poll that
//! makes it, and its reply is read by whichever caller's task the socket
//! wakes (BENCHMARKS.md, "What limits", item 2, measured the difference).
//!
//! How callers share it: commands are written in the order they are made,
//! and replies come back in that order, so a queue of the commands still
//! waiting for a reply (`State::waiting`) tells whose each reply is. The socket
//! keeps one waker for reading: that of the last task that found nothing to
//! read. A caller whose reply came leaves that place to the oldest command
//! still waiting, or, when none is, to the connection's watcher (`watch`,
//! the task that opened it), which is how a connection closed while idle is
//! noticed at once, without a wake-up per reply. A reply read by one caller
//! for another is kept for it, and its task woken.
//!
//! A command whose reply is later than the locker's `timeout` fails with a
//! timeout (its outcome unknown, as with fred's command timeout); its reply,
//! when it comes, is read and dropped, and the connection lives on, so that
//! what the core sends next for that key (the delete of an acquisition it
//! gave up on) still goes behind it on the same connection.
//!
//! What ends it: the server closing it, an error on the socket, bytes that
//! are no reply (`resp::Malformed`), a reply with no command waiting for it,
//! or a reply overdue past `node::unresponsive_after` (fred's check of a
//! dead link, `overdue`). Then every command still waiting fails, the
//! socket is closed, and its opener's task ends, which takes it out of its
//! node's slot (`direct::Closing`).
//!
//! Not here: TLS (a node over TLS gets a fred client as its direct
//! connection), RESP3 (replies come back in RESP2; invalidations go to the
//! engine's connection by redirect, not here).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use fred::error::{Error, ErrorKind};
use fred::types::scripts::Script;
use fred::types::{Key, Value};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::addr::NodeAddr;
use crate::exec::Exec;
use crate::resp::{self, Frame};

/// The most bytes read and not yet a whole reply; our replies are a few
/// hundred bytes. Past it the connection ends (`resp::MAX_LEN` bounds one
/// string, this bounds a reply of many).
const MAX_BUFFERED: usize = 4 << 20;

/// The least room each read asks for.
const READ_CHUNK: usize = 4096;

/// One direct connection.
#[derive(Debug)]
pub(crate) struct Wire {
    state: Mutex<State>,
    /// A command whose reply takes longer fails with a timeout.
    timeout: Duration,
}

#[derive(Debug)]
struct State {
    link: Link,
    /// The commands sent, oldest first, each until its reply is read.
    waiting: VecDeque<Sent>,
    /// Replies read for commands whose callers have not taken them yet.
    answered: Vec<(u64, Result<Value, Error>)>,
    /// The replies one pump read, before they are handed out (kept for its
    /// room).
    frames: Vec<Frame>,
    next_id: u64,
    /// The task that opened the connection, woken when it ends, and the
    /// socket's reader while no command waits.
    watcher: Option<Waker>,
}

/// The socket, or why there is none.
#[derive(Debug)]
enum Link {
    Open(Socket),
    Ended(Error),
}

#[derive(Debug)]
struct Socket {
    stream: TcpStream,
    /// Bytes of commands not yet written, and how many of them were.
    out: Vec<u8>,
    written: usize,
    /// Bytes read, not yet a whole reply.
    input: Vec<u8>,
}

/// A command sent, waiting for its reply.
#[derive(Debug)]
struct Sent {
    id: u64,
    /// When it was queued to be written.
    at: Instant,
    waiter: Waiter,
}

/// Who waits for a command's reply.
#[derive(Debug)]
enum Waiter {
    /// Its caller, with the waker of its last poll.
    Caller(Option<Waker>),
    /// Its caller stopped waiting: the reply is read and dropped.
    Gone,
}

impl Wire {
    /// Connects to `addr`'s instance and readies the connection: the
    /// credentials, the database, and tracking redirected to the engine's
    /// connection `redirect` (with `NOLOOP` if `no_loop`), when `tracking`.
    pub(crate) async fn connect(
        addr: &NodeAddr,
        timeout: Duration,
        tracking: Option<(u64, bool)>,
    ) -> Result<Wire, Error> {
        let (host, port) = addr
            .hosts
            .first()
            .ok_or_else(|| Error::new(ErrorKind::Config, "no host"))?;
        let stream = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(io_error)?;
        stream.set_nodelay(true).map_err(io_error)?;
        let wire = Wire {
            state: Mutex::new(State {
                link: Link::Open(Socket {
                    stream,
                    out: Vec::with_capacity(512),
                    written: 0,
                    input: Vec::with_capacity(READ_CHUNK),
                }),
                waiting: VecDeque::new(),
                answered: Vec::new(),
                frames: Vec::new(),
                next_id: 0,
                watcher: None,
            }),
            timeout,
        };
        if let Some(password) = &addr.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &addr.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            wire.command(&args).await?;
        }
        if let Some(db) = addr.db {
            let db = db.to_string();
            wire.command(&[&b"SELECT"[..], db.as_bytes()]).await?;
        }
        if let Some((redirect, no_loop)) = tracking {
            let id = redirect.to_string();
            let mut args: Vec<&[u8]> =
                vec![b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", id.as_bytes()];
            if no_loop {
                args.push(b"NOLOOP");
            }
            wire.command(&args).await?;
        }
        Ok(wire)
    }

    /// Gives the connection over to a subscription (`listen`): `command`
    /// (a `SUBSCRIBE`) is written, and from then on every frame the server
    /// sends is read as it comes, none of them a reply to a caller's
    /// command. For a connection no caller has used since `connect`.
    pub(crate) fn subscribe(self, command: &[&[u8]]) -> Result<Subscription, Error> {
        let state = self
            .state
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.link {
            Link::Open(mut socket) => {
                resp::encode(&mut socket.out, command.iter().copied());
                Ok(Subscription(socket))
            }
            Link::Ended(e) => Err(e),
        }
    }

    /// Sends one command and waits for its reply, for the locker's
    /// `timeout` at most: past it the command fails with a timeout, and its
    /// reply is dropped when it comes.
    pub(crate) async fn command(&self, args: &[&[u8]]) -> Result<Value, Error> {
        self.send(&Args(args)).await
    }

    /// [`Wire::command`], for a command that writes itself.
    async fn send(&self, cmd: &dyn Encode) -> Result<Value, Error> {
        let [reply] = self.send_all::<1>(cmd).await?;
        reply
    }

    /// Sends the `N` commands `cmds` writes, in one write, and waits for
    /// their replies, for the locker's `timeout` at most: each reply, or why
    /// none came (the connection ended, or the time ran out: then the
    /// outcome of every one is unknown).
    async fn send_all<const N: usize>(
        &self,
        cmds: &dyn Encode,
    ) -> Result<[Result<Value, Error>; N], Error> {
        let mut call = Call {
            wire: self,
            ids: None,
        };
        let replies =
            tokio::time::timeout(self.timeout, std::future::poll_fn(|cx| call.poll(cx, cmds)))
                .await;
        replies.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Timeout,
                "no reply within the timeout on a direct connection",
            ))
        })
    }

    /// Runs as long as the connection: ready once a reply is overdue by
    /// `after` (looked for every `every`), when it has ended the connection
    /// for it; or once the connection has ended otherwise.
    pub(crate) async fn overdue(&self, after: Duration, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut state = self.lock();
            if matches!(state.link, Link::Ended(_)) {
                return;
            }
            let oldest = state.waiting.front().map(|sent| sent.at);
            if oldest.is_some_and(|at| at.elapsed() >= after) {
                state.end(Error::new(
                    ErrorKind::Timeout,
                    "a reply overdue: the direct connection is taken for dead",
                ));
                return;
            }
        }
    }

    /// Runs as long as the connection: ready once it has ended (the server
    /// closed it, an error, a reply overdue, `end`). Meanwhile, whenever no
    /// command waits, it is the socket's reader, so that a close comes to
    /// light at once.
    pub(crate) async fn watch(&self) {
        std::future::poll_fn(|cx| match self.watcher_poll(cx) {
            (true, _) => Poll::Ready(()),
            (false, _) => Poll::Pending,
        })
        .await
    }

    /// Ready once no caller waits for a reply (or the connection ended).
    pub(crate) async fn quiet(&self) {
        std::future::poll_fn(|cx| match self.watcher_poll(cx) {
            (true, _) | (_, false) => Poll::Ready(()),
            _ => Poll::Pending,
        })
        .await
    }

    /// The watcher's poll: it reads the socket if no caller does. Whether
    /// the connection ended, and whether a caller waits.
    fn watcher_poll(&self, cx: &mut Context<'_>) -> (bool, bool) {
        let mut state = self.lock();
        state.watcher = Some(cx.waker().clone());
        if state.next_reader().is_none() {
            state.pump(None, cx.waker());
        }
        let ended = matches!(state.link, Link::Ended(_));
        (ended, state.next_reader().is_some())
    }

    /// Ends the connection, for `why`: every command waiting fails with it.
    pub(crate) fn end(&self, why: Error) {
        self.lock().end(why);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::context::lock(&self.state)
    }
}

impl State {
    /// Writes what is not written yet and reads what came; the socket keeps
    /// `waker` if it must wait. Replies read are handed to their commands,
    /// whose callers are woken, but for the commands `running`, whose caller
    /// is the one polling now (it finds its replies on return).
    fn pump(&mut self, running: Option<Range<u64>>, waker: &Waker) {
        let mut cx = Context::from_waker(waker);
        let mut frames = std::mem::take(&mut self.frames);
        let ended = match &mut self.link {
            Link::Open(socket) => socket.pump(&mut cx, &mut frames),
            Link::Ended(_) => return,
        };
        for frame in frames.drain(..) {
            self.answer(frame, running.as_ref());
        }
        self.frames = frames;
        if let Some(why) = ended {
            self.end(why);
        }
    }

    /// Hands one reply to the oldest command waiting.
    fn answer(&mut self, frame: Frame, running: Option<&Range<u64>>) {
        let reply = match frame {
            Frame::Push => return,
            Frame::Reply(reply) => reply,
        };
        match self.waiting.pop_front() {
            Some(Sent {
                id,
                waiter: Waiter::Caller(waker),
                ..
            }) => {
                self.answered.push((id, reply));
                if !running.is_some_and(|ids| ids.contains(&id)) {
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
            }
            Some(Sent {
                waiter: Waiter::Gone,
                ..
            }) => {}
            None => self.end(Error::new(
                ErrorKind::Protocol,
                "a reply no command waited for",
            )),
        }
    }

    /// The socket's reader from now on, once the caller polling no longer
    /// waits: the oldest caller waiting, else the watcher. Its waker goes to
    /// the socket; what came meanwhile is read, and every caller it answers
    /// woken (that one included: it is not the one running).
    fn hand_over(&mut self) {
        if let Some(waker) = self.next_reader().or_else(|| self.watcher.clone()) {
            self.pump(None, &waker);
        }
    }

    /// The waker of the oldest command whose caller waits.
    fn next_reader(&self) -> Option<Waker> {
        self.waiting.iter().find_map(|sent| match &sent.waiter {
            Waiter::Caller(Some(waker)) => Some(waker.clone()),
            _ => None,
        })
    }

    fn end(&mut self, why: Error) {
        if matches!(self.link, Link::Ended(_)) {
            return;
        }
        tracing::debug!(error = %why, "direct connection ended");
        // Dropping the socket closes it.
        self.link = Link::Ended(why);
        for sent in self.waiting.drain(..) {
            if let Waiter::Caller(Some(waker)) = sent.waiter {
                waker.wake();
            }
        }
        if let Some(watcher) = &self.watcher {
            watcher.wake_by_ref();
        }
    }
}

impl Socket {
    /// Writes and reads what the socket takes and has without waiting; the
    /// replies read go to `frames`. Why the connection must end, if it must.
    fn pump(&mut self, cx: &mut Context<'_>, frames: &mut Vec<Frame>) -> Option<Error> {
        if let Err(e) = self.write(cx) {
            return Some(e);
        }
        loop {
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return None,
                Poll::Ready(Err(e)) => return Some(io_error(e)),
                Poll::Ready(Ok(())) => {}
            }
            match self.read() {
                Ok(0) => {
                    let closed = Error::new(ErrorKind::IO, "the server closed the connection");
                    return Some(closed);
                }
                Ok(_) => {
                    if let Err(e) = self.frames(frames) {
                        return Some(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(io_error(e)),
            }
        }
    }

    /// Reads what the socket has, into `input`'s spare room (at least
    /// `READ_CHUNK` bytes, not zeroed first). A read that does not fill the
    /// room took all there was: the socket is then taken as drained, as
    /// tokio's own reads take it, so that finding so costs no second
    /// system call (tokio keeps it ready if something came meanwhile).
    /// Measured with a throwaway loop of lock + release: 2.00 receive calls
    /// per operation with one task instead of 4.00, and about 0.35 instead
    /// of 0.70 with ten (BENCHMARKS.md, "What limits", item 2).
    fn read(&mut self) -> io::Result<usize> {
        let Socket { stream, input, .. } = self;
        input.reserve(READ_CHUNK);
        let room = input.capacity() - input.len();
        let mut short = None;
        let read = stream.try_io(Interest::READABLE, || match stream.try_read_buf(input) {
            Ok(n) if n > 0 && n < room => {
                short = Some(n);
                Err(io::ErrorKind::WouldBlock.into())
            }
            other => other,
        });
        match short {
            Some(n) => Ok(n),
            None => read,
        }
    }

    /// Writes the commands not written yet, as far as the socket takes them.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        while self.written < self.out.len() {
            match self.stream.try_write(&self.out[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match self.stream.poll_write_ready(cx) {
                        Poll::Pending => return Ok(()),
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Err(io_error(e)),
                    }
                }
                Err(e) => return Err(io_error(e)),
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Takes the whole replies off the front of what was read.
    fn frames(&mut self, frames: &mut Vec<Frame>) -> Result<(), Error> {
        let mut at = 0;
        let result = loop {
            match resp::parse(&self.input[at..]) {
                Ok(Some((frame, used))) => {
                    frames.push(frame);
                    at += used;
                }
                Ok(None) if self.input.len() - at > MAX_BUFFERED => {
                    break Err(Error::new(ErrorKind::Protocol, "a reply too long"));
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Error::new(ErrorKind::Protocol, e.to_string())),
            }
        };
        self.input.drain(..at);
        result
    }
}

/// A connection given over to a subscription ([`Wire::subscribe`]), read by
/// one task.
#[derive(Debug)]
pub(crate) struct Subscription(Socket);

impl Subscription {
    /// Waits for the server's next frames and appends them to `frames`;
    /// why the connection ended, if it did (closed, failed, bytes that are
    /// no frame).
    pub(crate) async fn next(&mut self, frames: &mut Vec<Frame>) -> Result<(), Error> {
        std::future::poll_fn(|cx| match self.0.pump(cx, frames) {
            Some(e) => Poll::Ready(Err(e)),
            None if frames.is_empty() => Poll::Pending,
            None => Poll::Ready(Ok(())),
        })
        .await
    }
}

/// Commands on the connection, from their caller's side.
struct Call<'w> {
    wire: &'w Wire,
    /// Their ids, set once their bytes are queued.
    ids: Option<Range<u64>>,
}

impl Call<'_> {
    /// Queues the `N` commands `cmds` writes on the first poll, one after
    /// the other in the connection's buffer, so that they go out in one
    /// write; ready once every one of them has its reply.
    fn poll<const N: usize>(
        &mut self,
        cx: &mut Context<'_>,
        cmds: &dyn Encode,
    ) -> Poll<Result<[Result<Value, Error>; N], Error>> {
        let mut state = self.wire.lock();
        let ids = match &self.ids {
            Some(ids) => ids.clone(),
            None => {
                let first = state.next_id;
                match &mut state.link {
                    Link::Open(socket) => cmds.encode(&mut socket.out),
                    Link::Ended(why) => return Poll::Ready(Err(why.clone())),
                }
                let ids = first..first + N as u64;
                state.next_id = ids.end;
                let at = Instant::now();
                for id in ids.clone() {
                    state.waiting.push_back(Sent {
                        id,
                        at,
                        waiter: Waiter::Caller(None),
                    });
                }
                self.ids = Some(ids.clone());
                ids
            }
        };
        state.pump(Some(ids.clone()), cx.waker());
        let answered = |state: &State| {
            ids.clone()
                .all(|id| state.answered.iter().any(|(i, _)| *i == id))
        };
        if answered(&state) {
            self.ids = None;
            let replies = std::array::from_fn(|k| {
                let id = ids.start + k as u64;
                match state.answered.iter().position(|(i, _)| *i == id) {
                    Some(at) => state.answered.swap_remove(at).1,
                    None => Err(Error::new(ErrorKind::Unknown, "a reply went missing")),
                }
            });
            state.hand_over();
            return Poll::Ready(Ok(replies));
        }
        if let Link::Ended(why) = &state.link {
            let why = why.clone();
            self.ids = None;
            state.answered.retain(|(i, _)| !ids.contains(i));
            return Poll::Ready(Err(why));
        }
        for sent in state
            .waiting
            .iter_mut()
            .filter(|sent| ids.contains(&sent.id))
        {
            sent.waiter = Waiter::Caller(Some(cx.waker().clone()));
        }
        Poll::Pending
    }
}

impl Drop for Call<'_> {
    /// A caller that stops waiting (dropped, or past its time) leaves its
    /// replies to be read and dropped, and the socket's reading to the next.
    fn drop(&mut self) {
        let Some(ids) = self.ids.take() else {
            return;
        };
        let mut state = self.wire.lock();
        state.answered.retain(|(i, _)| !ids.contains(i));
        for sent in state
            .waiting
            .iter_mut()
            .filter(|sent| ids.contains(&sent.id))
        {
            sent.waiter = Waiter::Gone;
        }
        state.hand_over();
    }
}

fn io_error(e: io::Error) -> Error {
    Error::new(ErrorKind::IO, e.to_string())
}

/// A command, as it writes itself on the wire: straight into the
/// connection's buffer, so that sending it allocates nothing.
trait Encode: Sync {
    fn encode(&self, out: &mut Vec<u8>);
}

/// A command's arguments, each a bulk string.
struct Args<'a>(&'a [&'a [u8]]);

impl Encode for Args<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        resp::encode(out, self.0.iter().copied());
    }
}

/// `EVALSHA sha numkeys key… arg…`, its arguments strings or integers
/// (`Evalsha::new` checks).
struct Evalsha<'a> {
    sha: &'a [u8],
    keys: &'a [Key],
    args: &'a [Value],
}

impl<'a> Evalsha<'a> {
    fn new(sha: &'a [u8], keys: &'a [Key], args: &'a [Value]) -> Result<Evalsha<'a>, Error> {
        let writable =
            |v: &Value| matches!(v, Value::Bytes(_) | Value::String(_) | Value::Integer(_));
        match args.iter().all(writable) {
            true => Ok(Evalsha { sha, keys, args }),
            false => Err(Error::new(
                ErrorKind::InvalidArgument,
                "an argument that is not a string or an integer",
            )),
        }
    }
}

impl Encode for Evalsha<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        resp::push_array(out, 3 + self.keys.len() + self.args.len());
        resp::push_bulk(out, b"EVALSHA");
        resp::push_bulk(out, self.sha);
        resp::push_bulk_int(out, self.keys.len() as i64);
        for key in self.keys {
            resp::push_bulk(out, key.as_bytes());
        }
        for arg in self.args {
            match arg {
                Value::Bytes(b) => resp::push_bulk(out, b),
                Value::String(s) => resp::push_bulk(out, s.as_bytes()),
                Value::Integer(n) => resp::push_bulk_int(out, *n),
                // Checked out by `Evalsha::new`; written empty all the
                // same, so that the array keeps its length.
                _ => resp::push_bulk(out, b""),
            }
        }
    }
}

/// The acquisition of a free key as plain commands written together (see
/// [`Exec::acquire_free`]): `SET key token NX <PX|PXAT> ttl`, `GET key`,
/// `EXISTS {key}:q`.
struct FreeAcquire<'a> {
    key: &'a [u8],
    token: &'a [u8],
    /// `PX` or `PXAT`.
    expiry: &'a [u8],
    ttl: i64,
}

impl Encode for FreeAcquire<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        resp::push_array(out, 6);
        resp::push_bulk(out, b"SET");
        resp::push_bulk(out, self.key);
        resp::push_bulk(out, self.token);
        resp::push_bulk(out, b"NX");
        resp::push_bulk(out, self.expiry);
        resp::push_bulk_int(out, self.ttl);
        resp::encode(out, [&b"GET"[..], self.key].into_iter());
        // `{key}:q`, written in place.
        resp::push_array(out, 2);
        resp::push_bulk(out, b"EXISTS");
        resp::push_bulk_parts(out, &[b"{", self.key, b"}:q"]);
    }
}

impl Exec for Wire {
    fn run_script(
        &self,
        script: &Script,
        keys: Vec<Key>,
        args: Vec<Value>,
    ) -> impl Future<Output = Result<Value, Error>> + Send {
        let sha = script.sha1().clone();
        async move {
            let cmd = Evalsha::new(sha.as_bytes(), &keys, &args)?;
            self.send(&cmd).await
        }
    }

    fn load_script(&self, script: &Script) -> impl Future<Output = Result<(), Error>> + Send {
        let body = script.lua().cloned();
        async move {
            let body =
                body.ok_or_else(|| Error::new(ErrorKind::Unknown, "a script without its body"))?;
            self.command(&[&b"SCRIPT"[..], b"LOAD", body.as_bytes()])
                .await
                .map(drop)
        }
    }

    async fn get_key(&self, key: &str) -> Result<Value, Error> {
        self.command(&[&b"GET"[..], key.as_bytes()]).await
    }

    async fn acquire_free(
        &self,
        key: &[u8],
        token: &[u8],
        expiry: &[u8],
        ttl: i64,
    ) -> Option<Result<[Result<Value, Error>; 3], Error>> {
        let cmds = FreeAcquire {
            key,
            token,
            expiry,
            ttl,
        };
        Some(self.send_all::<3>(&cmds).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_server::Server;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn addr(port: u16) -> NodeAddr {
        NodeAddr::parse(&format!("redis://127.0.0.1:{port}")).expect("a node URL")
    }

    async fn connect(port: u16, timeout: Duration) -> Arc<Wire> {
        let wire = Wire::connect(&addr(port), timeout, None).await;
        Arc::new(wire.expect("connect"))
    }

    /// Polls `done` every 10 ms for `within` at most.
    async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
        let until = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < until {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_sharing_a_connection_each_get_their_own_reply() {
        // Tasks on two workers send commands at once, some three written
        // together, some giving up on theirs before the reply (their replies
        // are read and dropped): every reply taken is the one its own
        // command asked for.
        let server = Server::start();
        let wire = connect(server.port, Duration::from_secs(5)).await;
        let watcher = tokio::spawn({
            let wire = wire.clone();
            async move { wire.watch().await }
        });
        let mut tasks = Vec::new();
        for task in 0..8 {
            let wire = wire.clone();
            tasks.push(tokio::spawn(async move {
                let (mut answered, mut dropped) = (0, 0);
                for i in 0..300 {
                    let text = format!("{task}-{i}-{}", "x".repeat(i % 50));
                    let args = [&b"ECHO"[..], text.as_bytes()];
                    let call = wire.command(&args);
                    if (task + i) % 7 == 0 {
                        // Polled once (written), then dropped.
                        let mut call = std::pin::pin!(call);
                        let mut cx = Context::from_waker(Waker::noop());
                        if let Poll::Ready(reply) = call.as_mut().poll(&mut cx) {
                            assert_eq!(reply.unwrap(), Value::String(text.clone().into()));
                        }
                        dropped += 1;
                        continue;
                    }
                    if i % 3 == 1 {
                        // Three commands written together, their three
                        // replies theirs, in order.
                        drop(call);
                        let key = format!("k-{text}");
                        let replies = wire
                            .acquire_free(key.as_bytes(), text.as_bytes(), b"PX", 60_000)
                            .await
                            .expect("a connection of our own writes them together")
                            .expect("replies");
                        let [set, now, queued] = replies.map(Result::unwrap);
                        assert_eq!(set, Value::String("OK".into()));
                        assert_eq!(now, Value::String(text.into()));
                        assert_eq!(queued, Value::Integer(0));
                        answered += 1;
                        continue;
                    }
                    let reply = call.await.unwrap();
                    assert_eq!(reply, Value::String(text.into()));
                    answered += 1;
                }
                (answered, dropped)
            }));
        }
        let (mut answered, mut dropped) = (0, 0);
        for task in tasks {
            let (a, d) = task.await.expect("no task panicked");
            answered += a;
            dropped += d;
        }
        assert!(answered > 2000 && dropped > 300, "{answered} / {dropped}");
        // Still whole after all that: a command gets its reply, and the
        // watcher is still waiting.
        let pong = wire.command(&[&b"PING"[..]]).await.unwrap();
        assert_eq!(pong, Value::String("PONG".into()));
        assert!(!watcher.is_finished());
        wire.end(Error::new(ErrorKind::Canceled, "test over"));
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .expect("the watcher ends with the connection")
            .unwrap();
    }

    /// Counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(std::sync::atomic::AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    fn woken(count: &Count) -> usize {
        count.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_caller_that_leaves_hands_the_reading_to_the_next() {
        // The socket wakes only the last task that polled it. Here that is
        // a caller that leaves (its reply taken, or given up on) while
        // another still waits: that one must be woken by its reply all the
        // same. Replies come in the order the commands went, so the one
        // still waiting sends a command the server answers late. Each
        // command is polled as a task would be: when its waker is woken.
        let server = Server::start();
        let fast: &[&[u8]] = &[b"ECHO", b"fast"];
        let slow: &[&[u8]] = &[b"BLPOP", b"no-such-list", b"0.3"];
        for give_up in [false, true] {
            // Far past the bounds below: no reply here comes by a timeout.
            let wire = connect(server.port, Duration::from_secs(60)).await;
            let (nf, wf) = counting();
            let (ns, ws) = counting();
            let mut cf = Some(Box::pin(wire.command(fast)));
            let mut cs = Box::pin(wire.command(slow));
            let (mut fcx, mut scx) = (Context::from_waker(&wf), Context::from_waker(&ws));
            let mut fast_left = if give_up {
                // The slow one goes first; the fast one, polled last,
                // gives up.
                assert!(cs.as_mut().poll(&mut scx).is_pending());
                assert!(cf.as_mut().unwrap().as_mut().poll(&mut fcx).is_pending());
                cf = None;
                true
            } else {
                // The fast one goes first and polls again last.
                let f = cf.as_mut().unwrap();
                assert!(f.as_mut().poll(&mut fcx).is_pending());
                assert!(cs.as_mut().poll(&mut scx).is_pending());
                f.as_mut().poll(&mut fcx).is_ready()
            };
            let (mut seen_f, mut seen_s) = (0, 0);
            let mut slow_reply = None;
            let done = eventually(Duration::from_secs(5), || {
                if let (false, Some(f)) = (fast_left, cf.as_mut()) {
                    if woken(&nf) > seen_f {
                        seen_f = woken(&nf);
                        fast_left = f.as_mut().poll(&mut fcx).is_ready();
                    }
                }
                if woken(&ns) > seen_s {
                    seen_s = woken(&ns);
                    if let Poll::Ready(reply) = cs.as_mut().poll(&mut scx) {
                        slow_reply = Some(reply);
                    }
                }
                slow_reply.is_some()
            })
            .await;
            assert!(
                done,
                "give_up {give_up}: the caller still waiting was never woken"
            );
            assert!(fast_left);
            assert_eq!(slow_reply.unwrap().unwrap(), Value::Null);
        }
    }

    #[tokio::test]
    async fn a_reply_longer_than_one_read_is_read_whole() {
        // A reply of many reads' worth (each read asks for `READ_CHUNK`
        // bytes or more, and one that fills its room reads again), behind
        // and ahead of short ones on the same connection.
        let server = Server::start();
        let wire = connect(server.port, Duration::from_secs(5)).await;
        let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let set = wire.command(&[&b"SET"[..], b"big", &big]).await.unwrap();
        assert_eq!(set, Value::String("OK".into()));
        for _ in 0..3 {
            let ping: &[&[u8]] = &[b"PING"];
            let get: &[&[u8]] = &[b"GET", b"big"];
            let echo: &[&[u8]] = &[b"ECHO", b"after"];
            let (pong, got, echo) =
                tokio::join!(wire.command(ping), wire.command(get), wire.command(echo));
            assert_eq!(pong.unwrap(), Value::String("PONG".into()));
            match got.unwrap() {
                Value::String(s) => assert!(s.as_bytes() == big.as_slice(), "{} bytes", s.len()),
                Value::Bytes(b) => assert!(b[..] == big[..], "{} bytes", b.len()),
                other => panic!("{other:?}"),
            }
            assert_eq!(echo.unwrap(), Value::String("after".into()));
        }
    }

    #[tokio::test]
    async fn a_script_runs_here_as_through_fred() {
        // The same script, keys and arguments (a key, a byte string, a
        // string, an integer) through the trait on both connections: the
        // same reply, and `NOSCRIPT` (what `node::evalsha` reloads on)
        // before the script is loaded.
        let server = Server::start();
        let wire = connect(server.port, Duration::from_secs(5)).await;
        let fred = server.client().await;
        let script = Script::from_lua("return {KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]) + 1}");
        let run = |on: &'static str| {
            let keys = vec![Key::from("k{1}")];
            let args = vec![
                Value::Bytes(fred::bytes::Bytes::from_static(b"\x00b")),
                Value::String(on.into()),
                Value::Integer(-7),
            ];
            (keys, args)
        };
        let (keys, args) = run("wire");
        let missing = wire.run_script(&script, keys, args).await.unwrap_err();
        assert!(missing.details().starts_with("NOSCRIPT"), "{missing:?}");
        wire.load_script(&script).await.unwrap();
        let (keys, args) = run("wire");
        let ours = wire.run_script(&script, keys, args).await.unwrap();
        let (keys, args) = run("wire");
        let theirs = fred.run_script(&script, keys, args).await.unwrap();
        assert_eq!(ours, theirs);
        assert_eq!(
            ours,
            Value::Array(vec![
                Value::String("k{1}".into()),
                Value::String("\u{0}b".into()),
                Value::String("wire".into()),
                Value::Integer(-6),
            ])
        );
        // An argument no command can carry is refused before anything is
        // sent.
        let refused = wire
            .run_script(&script, vec![], vec![Value::Null])
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), &ErrorKind::InvalidArgument);
        assert_eq!(wire.get_key("k{1}").await.unwrap(), Value::Null);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_noticed_at_once() {
        // Nothing is sent on it when the server closes it: its watcher,
        // the socket's reader while no command waits, sees the close.
        let server = Server::start();
        let wire = connect(server.port, Duration::from_secs(5)).await;
        let Value::Integer(id) = wire.command(&[&b"CLIENT"[..], b"ID"]).await.unwrap() else {
            panic!("CLIENT ID");
        };
        let watcher = tokio::spawn({
            let wire = wire.clone();
            async move { wire.watch().await }
        });
        for _ in 0..3 {
            wire.command(&[&b"PING"[..]]).await.unwrap();
        }
        let admin = connect(server.port, Duration::from_secs(5)).await;
        let id = id.to_string();
        admin
            .command(&[&b"CLIENT"[..], b"KILL", b"ID", id.as_bytes()])
            .await
            .unwrap();
        let noticed = eventually(Duration::from_secs(5), || watcher.is_finished()).await;
        assert!(noticed, "the close went unnoticed");
        let after = wire.command(&[&b"PING"[..]]).await.unwrap_err();
        assert_eq!(after.kind(), &ErrorKind::IO, "{after:?}");
    }

    /// A peer that reads one command and answers it with `reply`, then
    /// keeps the connection open.
    async fn peer(reply: &'static [u8]) -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket.write_all(reply).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        (port, task)
    }

    #[tokio::test]
    async fn bytes_that_are_no_reply_end_the_connection_not_the_engine() {
        for (bytes, kind) in [
            (&b"?what\r\n"[..], ErrorKind::Protocol),
            (b"$99999999999\r\n", ErrorKind::Protocol),
            (
                b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
                ErrorKind::Protocol,
            ),
            (b"+OK\r\n+OK\r\n", ErrorKind::Protocol),
        ] {
            let (port, peer) = peer(bytes).await;
            let wire = connect(port, Duration::from_secs(5)).await;
            let watcher = tokio::spawn({
                let wire = wire.clone();
                async move { wire.watch().await }
            });
            let reply = wire.command(&[&b"PING"[..]]).await;
            let two_oks = bytes == b"+OK\r\n+OK\r\n";
            if two_oks {
                // The first is the reply; the second answers nothing.
                assert_eq!(reply.unwrap(), Value::String("OK".into()));
            } else {
                assert_eq!(reply.unwrap_err().kind(), &kind, "{bytes:?}");
            }
            let ended = eventually(Duration::from_secs(5), || watcher.is_finished()).await;
            assert!(ended, "{bytes:?}: the connection did not end");
            let after = wire.command(&[&b"PING"[..]]).await.unwrap_err();
            assert_eq!(after.kind(), &ErrorKind::Protocol, "{bytes:?}");
            peer.abort();
        }
    }

    #[tokio::test]
    async fn a_late_reply_fails_its_command_and_is_dropped_when_it_comes() {
        // The peer answers the first command only once it has failed for
        // want of a reply, and the second at once. The connection lives on,
        // and the second command gets its own reply, not the late one.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (failed, first_failed) = tokio::sync::oneshot::channel::<()>();
        let (late, late_sent) = tokio::sync::oneshot::channel::<()>();
        let peer = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = first_failed.await;
            socket.write_all(b"+late\r\n").await.unwrap();
            let _ = late.send(());
            let _ = socket.read(&mut buf).await;
            socket.write_all(b"+second\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let wire = connect(port, Duration::from_secs(1)).await;
        let first = wire.command(&[&b"PING"[..]]).await.unwrap_err();
        assert_eq!(first.kind(), &ErrorKind::Timeout);
        failed.send(()).unwrap();
        late_sent.await.unwrap();
        let second = wire.command(&[&b"PING"[..]]).await.unwrap();
        assert_eq!(second, Value::String("second".into()));
        peer.abort();
    }

    #[tokio::test]
    async fn a_reply_overdue_past_the_dead_link_bound_ends_the_connection() {
        let (port, peer) = peer(b"").await;
        let wire = connect(port, Duration::from_millis(200)).await;
        let (first, second) = tokio::join!(wire.command(&[b"PING"]), wire.command(&[b"PING"]));
        for reply in [first, second] {
            assert_eq!(reply.unwrap_err().kind(), &ErrorKind::Timeout);
        }
        // Not ended yet: one more command is written, and times out too.
        let third = wire.command(&[&b"PING"[..]]).await.unwrap_err();
        assert!(third.details().contains("within the timeout"), "{third:?}");
        let dead = tokio::time::timeout(
            Duration::from_secs(10),
            wire.overdue(Duration::from_millis(600), Duration::from_millis(100)),
        )
        .await;
        assert!(
            dead.is_ok(),
            "an unanswered connection was not taken for dead"
        );
        let after = wire.command(&[&b"PING"[..]]).await.unwrap_err();
        assert!(after.details().contains("taken for dead"), "{after:?}");
        peer.abort();
    }
}
