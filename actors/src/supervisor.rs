//! Supervisor: the root of one locker's actors.
//!
//! ```text
//! Supervisor
//! ├── NodeActor 0 … N−1   one per Valkey instance; restarted with backoff when
//! │                        its connection breaks, it fails to connect, or it is
//! │                        killed
//! └── LockActor per name   spawned on first use, stopped when idle; a killed
//!                          one ends its grant (holder told EngineStopped) and
//!                          its waiters ask again
//! ```
//!
//! It owns the two routing tables in [`Shared`] (nodes, locks) and is the only
//! writer. Requests for a name go through it, so a `LockActor` is never stopped
//! while a request is on its way: the actor reports `Idle` with the count of
//! requests it saw, and is stopped only if that equals the count sent to it
//! (`Engine::acquire` sends directly to a known actor, counting as it goes).
//!
//! It keeps no table of its own beside them: a child that stops is a node
//! actor if a node slot holds it, else a lock actor, whose name comes with
//! the state ractor hands back. A handler that failed, or a kill that cut
//! one short, brings back no state: the name is then found by a search of
//! the lock table. Its own tables, one keyed by name and one by actor, cost
//! (with a separate request counter per lock) 159 bytes per held lock at
//! 10,000 locks (BENCHMARKS.md, section 6).

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, info, warn};

use crate::context::{count_send, retired, AbortOnDrop, LockRoute, Shared};
use crate::core::quorum;
use crate::error::Error;
use crate::failure::{NodeFailure, NodeReport};
use crate::lock::{LockActor, LockArgs, LockCell, LockHome};
use crate::metrics;
use crate::msg::{LockMsg, NodeMsg, SupervisorMsg};
use crate::node::{NodeActor, NodeArgs};

pub(crate) struct Supervisor;

pub(crate) struct SupervisorArgs {
    pub(crate) shared: Arc<Shared>,
}

struct NodeSlot {
    actor: Option<ActorRef<NodeMsg>>,
    failures: u32,
    report: Option<NodeReport>,
    respawn: Option<AbortOnDrop>,
    /// It was up once (a later `NodeUp` is a reconnection).
    was_up: bool,
}

enum Closing {
    Open,
    Locks(Vec<RpcReplyPort<()>>),
    Nodes(Vec<RpcReplyPort<()>>),
}

pub(crate) struct SupervisorState {
    shared: Arc<Shared>,
    nodes: Vec<NodeSlot>,
    ready: Vec<RpcReplyPort<Vec<Option<NodeReport>>>>,
    closing: Closing,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let n = args.shared.settings.nodes.len();
        let mut st = SupervisorState {
            shared: args.shared,
            nodes: (0..n)
                .map(|_| NodeSlot {
                    actor: None,
                    failures: 0,
                    report: None,
                    respawn: None,
                    was_up: false,
                })
                .collect(),
            ready: Vec::new(),
            closing: Closing::Open,
        };
        for i in 0..n {
            st.spawn_node(&myself, i).await;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Request { name, request } => {
                if !matches!(st.closing, Closing::Open) {
                    let _ = request.reply.send(Err(Error::Closed));
                    return Ok(());
                }
                if let Some(LockMsg::Request(request)) =
                    st.route(&myself, name, LockMsg::Request(request)).await
                {
                    let _ = request.reply.send(Err(Error::Closed));
                }
            }
            SupervisorMsg::Handed {
                name,
                index,
                token,
                cmd,
                fence,
            } => {
                // Closing: the locker's keys are given back by its close.
                if matches!(st.closing, Closing::Open) {
                    let handed = LockMsg::Handed {
                        index,
                        token,
                        cmd,
                        fence,
                    };
                    if st.route(&myself, name.clone(), handed).await.is_some() {
                        warn!(lock = %name, "a key handed over found no lock actor");
                    }
                }
            }
            SupervisorMsg::Cancel { name, id } => {
                if let Some(actor) = st.shared.lock(&name) {
                    let _ = actor.cast(LockMsg::Cancel { id });
                }
            }
            SupervisorMsg::LockClosed { name } => {
                // Sent only while closing, when no new actor takes a name.
                if let Some(actor) = st.shared.lock(&name) {
                    st.shared.remove_lock(&name, actor.get_id());
                }
                st.continue_close(&myself);
            }
            SupervisorMsg::NodeUp { node, actor } => {
                let slot = &mut st.nodes[node];
                if slot.actor.as_ref().is_some_and(|a| a.get_id() == actor) {
                    slot.failures = 0;
                    if std::mem::replace(&mut slot.was_up, true) {
                        metrics::node_reconnected(&st.shared.settings.nodes[node].display());
                    }
                    if slot.report.is_none() {
                        slot.report = Some(NodeReport::Up);
                        st.answer_ready();
                    }
                    // Invalidations sent while we were away are lost: every
                    // lock re-checks its keys there, and waiters retry.
                    st.shared.recheck_reconnected(node);
                }
            }
            SupervisorMsg::NodeDown {
                node,
                actor,
                failure,
            } => {
                // The actor has failed by now, and ractor delivers that
                // supervision event before this message: no id check, any
                // first report counts.
                let _ = actor;
                let slot = &mut st.nodes[node];
                if slot.report.is_none() {
                    slot.report = Some(NodeReport::Down(failure));
                    st.answer_ready();
                }
            }
            SupervisorMsg::Respawn { node } => {
                st.nodes[node].respawn = None;
                if matches!(st.closing, Closing::Open) && st.nodes[node].actor.is_none() {
                    st.spawn_node(&myself, node).await;
                }
            }
            SupervisorMsg::AwaitReady { reply, within } => {
                st.ready.push(reply);
                st.answer_ready();
                if !st.ready.is_empty() {
                    myself.send_after(within, || SupervisorMsg::ReadyDeadline);
                }
            }
            SupervisorMsg::ReadyDeadline => st.answer_ready_now(),
            SupervisorMsg::Close { reply } => match &mut st.closing {
                Closing::Locks(waiting) | Closing::Nodes(waiting) => waiting.push(reply),
                Closing::Open => {
                    let locks = st.shared.all_locks();
                    info!(locks = locks.len(), "closing locker");
                    st.closing = Closing::Locks(vec![reply]);
                    for lock in locks {
                        let _ = lock.cast(LockMsg::Close);
                    }
                    let bound = st.shared.settings.timeout * 3 + Duration::from_secs(1);
                    myself.send_after(bound, || SupervisorMsg::CloseDeadline);
                    st.continue_close(&myself);
                }
            },
            SupervisorMsg::CloseDeadline => {
                warn!("closing took too long; stopping anyway");
                st.finish_close(&myself);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, state, why) = match evt {
            SupervisionEvent::ActorTerminated(cell, state, reason) => {
                (cell, state, reason.unwrap_or_default())
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, None, err.to_string()),
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let node = st
            .nodes
            .iter()
            .position(|n| n.actor.as_ref().is_some_and(|a| a.get_id() == id));
        match node {
            Some(i) => {
                st.nodes[i].actor = None;
                st.shared.set_node(i, None);
                if matches!(st.closing, Closing::Open) {
                    let slot = &mut st.nodes[i];
                    let delay = quorum::jitter(
                        quorum::backoff(
                            slot.failures,
                            Duration::from_millis(50),
                            Duration::from_secs(2),
                        ),
                        20,
                        u64::from(id.pid() as u32),
                    );
                    slot.failures = slot.failures.saturating_add(1);
                    warn!(node = %st.shared.settings.nodes[i].display(), index = i, reason = %why, delay_ms = delay.as_millis() as u64, "node actor stopped; restarting");
                    let timer =
                        myself.send_after(delay, move || SupervisorMsg::Respawn { node: i });
                    slot.respawn = Some(AbortOnDrop::new(&timer));
                } else {
                    st.continue_close(&myself);
                }
            }
            // Our other children are lock actors.
            None => {
                // The state is dropped last, as before it came back to us:
                // its holders are told once the route is gone.
                let home = state.and_then(|mut s| s.take::<LockHome>().ok());
                let name = match &home {
                    Some(home) => Some(home.name().clone()),
                    None => st.shared.lock_name_of(id),
                };
                if let Some(name) = name {
                    st.shared.remove_lock(&name, id);
                    if !why.is_empty() && why != "closed" {
                        debug!(lock = %name, reason = %why, "lock actor stopped");
                    }
                }
                drop(home);
                st.continue_close(&myself);
            }
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn spawn_node(&mut self, myself: &ActorRef<SupervisorMsg>, i: usize) {
        let args = NodeArgs {
            index: i,
            shared: self.shared.clone(),
            supervisor: myself.clone(),
        };
        match Actor::spawn_linked(None, NodeActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.shared.set_node(i, Some(actor.clone()));
                self.nodes[i].actor = Some(actor);
            }
            Err(e) => {
                let slot = &mut self.nodes[i];
                warn!(index = i, error = %e, "cannot start node actor");
                if slot.report.is_none() {
                    slot.report = Some(NodeReport::Down(NodeFailure::not_started(format!(
                        "cannot start the node's actor: {e}"
                    ))));
                    self.answer_ready();
                }
                let slot = &mut self.nodes[i];
                let delay = quorum::backoff(
                    slot.failures,
                    Duration::from_millis(50),
                    Duration::from_secs(2),
                );
                slot.failures = slot.failures.saturating_add(1);
                let timer = myself.send_after(delay, move || SupervisorMsg::Respawn { node: i });
                slot.respawn = Some(AbortOnDrop::new(&timer));
            }
        }
    }

    /// Sends `msg` to the `LockActor` of `name`, starting one if it has none
    /// or if it retired; the message back if no actor took it.
    async fn route(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: Arc<str>,
        msg: LockMsg,
    ) -> Option<LockMsg> {
        let mut msg = msg;
        for _ in 0..2 {
            let mut route = self.shared.lock_route(&name);
            // A retiring actor takes no more requests: replace it.
            if let Some(r) = route.take_if(|r| retired(r.port.sent())) {
                self.shared.remove_lock(&name, r.actor.get_id());
            }
            let route = match route {
                Some(route) => route,
                None => match self.spawn_lock(myself, &name).await {
                    Some(route) => route,
                    None => break,
                },
            };
            if !count_send(route.port.sent()) {
                // It retired just now: start over with a fresh one.
                continue;
            }
            match route.actor.cast(msg) {
                Ok(()) => return None,
                Err(ractor::MessagingErr::SendErr(back)) => {
                    // Dead but its exit not processed yet: replace it.
                    self.shared.remove_lock(&name, route.actor.get_id());
                    msg = back;
                }
                Err(_) => return None,
            }
        }
        Some(msg)
    }

    /// Starts the `LockActor` of `name` and routes the name to it.
    async fn spawn_lock(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        name: &Arc<str>,
    ) -> Option<LockRoute> {
        let cell = Arc::new(LockCell::new());
        let args = LockArgs {
            name: name.clone(),
            shared: self.shared.clone(),
            supervisor: myself.clone(),
            cell: cell.clone(),
        };
        match Actor::spawn_linked(None, LockActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                let route = LockRoute { actor, port: cell };
                self.shared.set_lock(name.clone(), route.clone());
                Some(route)
            }
            Err(e) => {
                warn!(lock = %name, error = %e, "cannot start lock actor");
                None
            }
        }
    }

    fn answer_ready(&mut self) {
        if self.nodes.iter().all(|n| n.report.is_some()) {
            self.answer_ready_now();
        }
    }

    fn answer_ready_now(&mut self) {
        let reports: Vec<_> = self.nodes.iter().map(|n| n.report.clone()).collect();
        for reply in self.ready.drain(..) {
            let _ = reply.send(reports.clone());
        }
    }

    fn continue_close(&mut self, myself: &ActorRef<SupervisorMsg>) {
        match &mut self.closing {
            Closing::Locks(waiting) if self.shared.lock_count() == 0 => {
                let waiting = std::mem::take(waiting);
                for slot in &mut self.nodes {
                    slot.respawn = None;
                    if let Some(a) = &slot.actor {
                        a.stop(Some("closed".into()));
                    }
                }
                self.closing = Closing::Nodes(waiting);
                self.continue_close(myself);
            }
            Closing::Nodes(_) if self.nodes.iter().all(|n| n.actor.is_none()) => {
                self.finish_close(myself)
            }
            _ => {}
        }
    }

    fn finish_close(&mut self, myself: &ActorRef<SupervisorMsg>) {
        let waiting = match std::mem::replace(&mut self.closing, Closing::Nodes(Vec::new())) {
            Closing::Locks(w) | Closing::Nodes(w) => w,
            Closing::Open => Vec::new(),
        };
        for reply in waiting {
            let _ = reply.send(());
        }
        myself.stop(Some("closed".into()));
    }
}
