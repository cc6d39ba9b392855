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
//! the kernel, preemptively, whatever the application does. It is also
//! faster: the hops of a lock between actors, the command pump and fred's
//! connection stay on one thread instead of bouncing between the workers of a
//! multi-thread runtime (BENCHMARKS.md).
//!
//! One current-thread runtime, shared by every locker of the process: the
//! engine's work per lock is a few microseconds between network waits, so
//! one thread keeps up with the wire, and a pool (or a thread per locker)
//! would bring back the cross-thread wake-ups between lockers that wait on
//! each other. The thread starts with the first locker and ends once the
//! last one, and the last task that closes one, is gone.
//!
//! The user's calls cross into it through the actors' mailboxes (unbounded
//! channels, which work between runtimes) and come back through oneshot and
//! watch channels, which any runtime can await.

use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::error::Error;

/// The thread's name, as `top` and a debugger show it.
const THREAD_NAME: &str = "valkeylock-engine";

/// How long the tasks still running when the engine's thread stops get to
/// finish.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// The process's engine thread, while any locker uses it.
static SHARED: Mutex<Weak<EngineThread>> = Mutex::new(Weak::new());

/// The thread and its runtime; dropping the last reference ends the thread.
#[derive(Debug)]
struct EngineThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl EngineThread {
    fn start() -> Result<EngineThread, Error> {
        let failed = |e: std::io::Error| Error::Connection {
            message: format!("cannot start the engine's thread: {e}"),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(failed)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                // A current-thread runtime runs its tasks only inside
                // `block_on`: this is where the engine lives.
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(failed)?;
        Ok(EngineThread {
            handle,
            stop: Some(stop),
        })
    }
}

impl Drop for EngineThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The runtime one engine's actors, timers and connections are spawned on.
#[derive(Debug, Clone)]
pub(crate) struct EngineRuntime {
    handle: Handle,
    /// The shared thread this engine keeps alive (`None` on the caller's
    /// runtime).
    _thread: Option<Arc<EngineThread>>,
}

impl EngineRuntime {
    /// The process's engine thread, started if no locker runs one.
    pub(crate) fn dedicated() -> Result<EngineRuntime, Error> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let thread = match shared.upgrade() {
            Some(thread) => thread,
            None => {
                let thread = Arc::new(EngineThread::start()?);
                *shared = Arc::downgrade(&thread);
                thread
            }
        };
        Ok(EngineRuntime {
            handle: thread.handle.clone(),
            _thread: Some(thread),
        })
    }

    /// The caller's runtime (`LockerOptions::dedicated_runtime` off).
    pub(crate) fn caller() -> Result<EngineRuntime, Error> {
        match Handle::try_current() {
            Ok(handle) => Ok(EngineRuntime {
                handle,
                _thread: None,
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

    /// Whether this engine runs on a thread of the library's own.
    #[cfg(test)]
    fn is_dedicated(&self) -> bool {
        self._thread.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a task spawned on `rt` still runs, from a thread without a
    /// runtime.
    fn runs(rt: &EngineRuntime) -> Option<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        rx.recv_timeout(Duration::from_secs(2)).ok().flatten()
    }

    #[test]
    fn lockers_share_one_thread_which_ends_with_the_last() {
        let a = EngineRuntime::dedicated().unwrap();
        let b = EngineRuntime::dedicated().unwrap();
        assert!(a.is_dedicated() && b.is_dedicated());
        // No runtime on this thread: the tasks run on the engine's.
        assert_eq!(runs(&a).as_deref(), Some(THREAD_NAME));
        assert_eq!(runs(&b).as_deref(), Some(THREAD_NAME));
        let thread = |r: &EngineRuntime| Arc::as_ptr(r._thread.as_ref().unwrap());
        assert_eq!(thread(&a), thread(&b), "a second thread was started");
        // A clone (what a closing task holds) keeps it alive too.
        let closing = a.clone();
        drop(a);
        drop(b);
        assert_eq!(runs(&closing).as_deref(), Some(THREAD_NAME));
        let handle = closing.handle().clone();
        drop(closing);
        // Once the last is gone, the thread ends and spawned work no longer
        // runs (a `Handle` does not keep its runtime alive).
        let stale = EngineRuntime {
            handle,
            _thread: None,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while runs(&stale).is_some() {
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
