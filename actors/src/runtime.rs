//! Where the engine's tasks run: by default a tokio runtime of its own, on a
//! thread of its own.
//!
//! Why: a lock's safety rests on tasks that must run on time — the timer that
//! extends the keys, the one that tells the holder at `valid_until`, the
//! connection that reads invalidations. On the application's runtime they
//! queue behind its work: a holder on a current-thread runtime that computes
//! for three validities, or a multi-thread runtime with every worker busy,
//! extends nothing, and another process takes the lock while the holder still
//! believes it holds it. On a thread of its own, the engine is scheduled by
//! the kernel, preemptively, whatever the application does.
//!
//! The cost: a call that needs the network crosses threads twice (its
//! command in, its answer out), unless it goes on a direct connection (see
//! `direct`), which the caller's runtime drives. On the 2-core VM of BENCHMARKS.md that makes
//! the one-task loop slower than with the engine on the caller's runtime
//! ("Runtime flavour"); an experiment on another machine, quoted in issue
//! #11, found it faster, as the hops between actors, the command pump and
//! fred's connection then stay on one thread. A local hand-over between
//! tasks of one process crosses nothing: requests and releases feed the
//! name's lock core on the caller's thread (see `lock`'s module doc).
//!
//! One current-thread runtime per locker: the engine's work per lock is a few
//! microseconds between network waits, so one thread keeps up with the wire;
//! a pool would bring back the cross-thread wake-ups. Not one thread for the
//! whole process: it was faster, but it handled the invalidations of the
//! lockers that wait on one another in the same order every time, and four
//! lockers contending for one name then served two of them.
//!
//! The user's requests and releases feed the name's `LockActor` state
//! under its mutex, on the user's thread; the commands they produce go to the
//! node's command pump (an unbounded channel, which works between runtimes),
//! and answers come back through oneshot channels and the grant's status
//! cell (`status`), which any runtime can await. Everything else reaches
//! the actors through their mailboxes. What keeps the lock — extensions,
//! the notice at `valid_until`, invalidations — never waits for the
//! application's runtime: the mutex is held only while the core runs, never
//! across a wait.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::{ConnectionErrorKind, Error};

thread_local! {
    /// Set on an engine's own thread.
    static ENGINE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// How many [`EngineScope`]s are open on this thread.
    static ENGINE_SCOPES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// True on the thread of a dedicated engine runtime (any locker's), and
/// inside a `LockActor`'s handler wherever it runs ([`EngineScope`]): what
/// runs there is the engine's work, not a caller's, so a command it makes
/// is nobody's to drive (see `direct`).
pub(crate) fn on_engine_thread() -> bool {
    ENGINE_THREAD.with(std::cell::Cell::get) || ENGINE_SCOPES.with(std::cell::Cell::get) > 0
}

/// Marks the code that runs while it lives as the engine's, for
/// [`on_engine_thread`]. With `dedicated_runtime` off a `LockActor`'s
/// handler runs on a worker of the application's runtime, which callers
/// use too: without the mark, a command the actor made there would be
/// counted as handed to its connection at once, as a caller's is, while it
/// waits for a task of its own (`LockCore::went_direct`). Opened and closed
/// within one poll: never held across an `.await`.
pub(crate) struct EngineScope(());

impl EngineScope {
    pub(crate) fn enter() -> EngineScope {
        ENGINE_SCOPES.with(|n| n.set(n.get() + 1));
        EngineScope(())
    }
}

impl Drop for EngineScope {
    fn drop(&mut self) {
        ENGINE_SCOPES.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// The thread's name, as `top` and a debugger show it.
const THREAD_NAME: &str = "valkeylock-engine";

/// How long the tasks still running when the engine stops get to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// The runtime the engine's actors, timers and connections are spawned on.
#[derive(Debug)]
pub(crate) struct EngineRuntime {
    handle: Handle,
    /// Dedicated runtimes only: firing (or dropping) it ends the thread.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl EngineRuntime {
    /// A current-thread runtime on a new thread, running until the sender
    /// [`EngineRuntime::take_stop`] hands out fires, or until it is dropped.
    pub(crate) fn dedicated() -> Result<EngineRuntime, Error> {
        let failed = |e: std::io::Error| Error::Connection {
            kind: ConnectionErrorKind::Other,
            node: None,
            message: "cannot start the engine's thread".into(),
            source: Some(std::sync::Arc::new(e)),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (started, handle) = std::sync::mpsc::channel();
        // The runtime is built, run and dropped on its own thread: a tokio
        // runtime dropped inside the caller's async context would panic.
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                ENGINE_THREAD.with(|on| on.set(true));
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                let _ = started.send(Ok(rt.handle().clone()));
                // A current-thread runtime runs its tasks only inside
                // `block_on`: this is where the engine lives.
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(failed)?;
        // Waits the few microseconds the thread takes to build the runtime.
        let handle = match handle.recv() {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => return Err(failed(std::io::Error::other("the thread ended at once"))),
        };
        Ok(EngineRuntime {
            handle,
            stop: Mutex::new(Some(stop)),
        })
    }

    /// The caller's runtime (`LockerOptions::dedicated_runtime` off).
    pub(crate) fn caller() -> Result<EngineRuntime, Error> {
        match Handle::try_current() {
            Ok(handle) => Ok(EngineRuntime {
                handle,
                stop: Mutex::new(None),
            }),
            Err(_) => Err(Error::InvalidOptions {
                field: "dedicated_runtime",
                reason: "off, but the locker is not being built inside a tokio runtime".into(),
            }),
        }
    }

    /// Runs `future` on the engine's runtime; its output comes back to
    /// whoever awaits, on whichever runtime.
    pub(crate) fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// The handle, for tasks that must run beside the engine.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Takes the means to end a dedicated runtime, so that whoever closes the
    /// engine fires it once the actors have stopped. `None` for the caller's
    /// runtime, or when already taken.
    pub(crate) fn take_stop(&self) -> Option<oneshot::Sender<()>> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_scope_marks_its_thread_until_the_last_one_closes() {
        assert!(!on_engine_thread(), "a caller's thread");
        let outer = EngineScope::enter();
        let inner = EngineScope::enter();
        assert!(on_engine_thread());
        drop(inner);
        assert!(on_engine_thread(), "the outer scope is still open");
        // Another thread is not marked.
        assert!(!std::thread::spawn(on_engine_thread).join().unwrap());
        drop(outer);
        assert!(!on_engine_thread());
    }

    #[test]
    fn a_dedicated_runtime_runs_without_the_callers_and_ends_when_stopped() {
        let rt = EngineRuntime::dedicated().unwrap();
        // No runtime on this thread: the task still runs, on the engine's.
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let name = std::thread::current().name().map(str::to_owned);
            tx.send((name, on_engine_thread())).unwrap();
        });
        let (name, marked) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(name.as_deref(), Some(THREAD_NAME));
        // Its thread is the engine's without a scope.
        assert!(marked, "not marked as the engine's thread");
        let stop = rt.take_stop().unwrap();
        assert!(rt.take_stop().is_none());
        stop.send(()).unwrap();
        // Once stopped, spawned work no longer runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            drop(rt.spawn(async move {
                let _ = tx.send(());
            }));
            if rx.recv_timeout(Duration::from_millis(50)).is_err() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still running");
        }
    }

    #[test]
    fn the_callers_runtime_needs_one() {
        assert!(matches!(
            EngineRuntime::caller(),
            Err(Error::InvalidOptions {
                field: "dedicated_runtime",
                ..
            })
        ));
    }
}
