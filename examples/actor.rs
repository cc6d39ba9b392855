//! Message-based locking: a ractor actor asks for a lock and receives
//! `Acquired` and `Lost` in its own mailbox, never awaiting a future in its
//! handler.
//!
//! `cargo run --example actor -- redis://127.0.0.1:6379`

use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use valkeylock::{LockEvent, LockGuard, Locker, LockerOptions};

/// The worker's messages: its own commands plus lock events.
enum WorkerMsg {
    Start,
    Lock(LockEvent),
}

impl From<LockEvent> for WorkerMsg {
    fn from(e: LockEvent) -> Self {
        WorkerMsg::Lock(e)
    }
}

struct Worker {
    locker: Locker,
    name: String,
    done: tokio::sync::mpsc::UnboundedSender<String>,
}

struct WorkerState {
    guard: Option<LockGuard>,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _me: ActorRef<WorkerMsg>,
        _: (),
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState { guard: None })
    }

    async fn handle(
        &self,
        me: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Start => {
                // Returns at once; the events arrive as messages.
                self.locker.lock_for(&self.name, me);
            }
            WorkerMsg::Lock(LockEvent::Acquired(guard)) => {
                let _ = self.done.send(format!(
                    "acquired {} (valid until {:?})",
                    guard.name(),
                    guard.valid_until()
                ));
                st.guard = Some(guard);
            }
            WorkerMsg::Lock(LockEvent::Lost { name, reason }) => {
                st.guard = None;
                let _ = self.done.send(format!("lost {name}: {reason}"));
            }
            WorkerMsg::Lock(LockEvent::Failed { name, error }) => {
                let _ = self.done.send(format!("failed {name}: {error}"));
            }
            WorkerMsg::Lock(_) => {}
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let locker = Locker::connect(LockerOptions::new([url.clone()]).with_key_majority(1)).await?;
    let name = format!("actor-demo-{}", std::process::id());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (worker, handle) = Actor::spawn(
        None,
        Worker {
            locker: locker.clone(),
            name: name.clone(),
            done: tx,
        },
        (),
    )
    .await?;
    worker.cast(WorkerMsg::Start)?;
    println!("{}", rx.recv().await.unwrap_or_default());

    // Someone else deletes the key: the actor gets `Lost` as a message.
    let admin = fred::clients::Client::new(
        fred::types::config::Config::from_url(&url)?,
        None,
        None,
        None,
    );
    admin.init().await?;
    let _: i64 = admin.del(format!("valkeylock:0:{name}")).await?;
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(line)) => println!("{line}"),
        _ => println!("no loss event within 5 s"),
    }
    admin.quit().await?;
    worker.stop(None);
    handle.await?;
    locker.close().await;
    Ok(())
}
