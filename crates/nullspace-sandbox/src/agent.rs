//! The agent channel of a running sandbox, shared by every request at once: requests carry
//! ids, and one task routes each answer to the request that waits for it. When the channel
//! closes (the VM died), every waiting request sees the end of its answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nullspace_init::protocol::{AgentMessage, HostMessage};
use nullspace_vm::channel::{AgentChannel, AgentSender};
use tokio::sync::{mpsc, watch};

use crate::error::SandboxError;

/// Answers buffered per request before the router waits for its reader.
const ROUTE_QUEUE: usize = 256;
/// The route of messages that carry no id (hello, clock set).
const CONTROL: u64 = 0;

/// The routes, and why the channel closed once it has (both under one lock, so a route is
/// never added after the close cleared them).
#[derive(Default)]
struct RouteTable {
    routes: HashMap<u64, mpsc::Sender<AgentMessage>>,
    closed: Option<String>,
}

type Routes = Arc<Mutex<RouteTable>>;

/// A multiplexed agent channel.
pub struct AgentMux {
    sender: tokio::sync::Mutex<AgentSender>,
    routes: Routes,
    next_id: AtomicU64,
    closed: watch::Receiver<Option<String>>,
}

/// The request id an agent message answers, [`CONTROL`] for the rest.
fn route_of(message: &AgentMessage) -> u64 {
    match message {
        AgentMessage::RunStarted { id, .. }
        | AgentMessage::Output { id, .. }
        | AgentMessage::RunEnded { id, .. }
        | AgentMessage::FileWritten { id, .. }
        | AgentMessage::FileData { id, .. }
        | AgentMessage::DirListing { id, .. }
        | AgentMessage::FileFailed { id, .. }
        | AgentMessage::ExecResult { id, .. } => *id,
        _ => CONTROL,
    }
}

/// Answers to one request.
pub struct Answers {
    id: u64,
    receiver: mpsc::Receiver<AgentMessage>,
    routes: Routes,
}

impl Answers {
    /// The request's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next answer; `None` once the channel closed.
    pub async fn next(&mut self) -> Option<AgentMessage> {
        self.receiver.recv().await
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        if let Ok(mut table) = self.routes.lock() {
            table.routes.remove(&self.id);
        }
    }
}

impl AgentMux {
    /// Takes over `channel` and starts routing its messages.
    pub fn new(channel: AgentChannel) -> Arc<AgentMux> {
        let (sender, mut incoming) = channel.split();
        let routes: Routes = Arc::default();
        let (close, closed) = watch::channel(None);
        let router_routes = routes.clone();
        tokio::spawn(async move {
            let reason = loop {
                match incoming.recv().await {
                    None => break "the channel closed".to_string(),
                    Some(Err(e)) => break e,
                    Some(Ok(message)) => {
                        let route = route_of(&message);
                        let target = router_routes
                            .lock()
                            .ok()
                            .and_then(|t| t.routes.get(&route).cloned());
                        // Answers nobody waits for any more (an ended command's late output,
                        // the start command's logs) are dropped.
                        if let Some(target) = target {
                            let _ = target.send(message).await;
                        }
                    }
                }
            };
            if let Ok(mut table) = router_routes.lock() {
                table.routes.clear();
                table.closed = Some(reason.clone());
            }
            let _ = close.send(Some(reason));
        });
        Arc::new(AgentMux {
            sender: tokio::sync::Mutex::new(sender),
            routes,
            next_id: AtomicU64::new(CONTROL + 1),
            closed,
        })
    }

    /// Why the channel closed, once it has.
    pub fn closed(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    /// A receiver that sees the channel close.
    pub fn watch_closed(&self) -> watch::Receiver<Option<String>> {
        self.closed.clone()
    }

    fn register(&self, id: u64) -> Result<Answers, SandboxError> {
        let (deliver, receiver) = mpsc::channel(ROUTE_QUEUE);
        let mut table = self
            .routes
            .lock()
            .map_err(|_| SandboxError::Agent("the route table is unavailable".into()))?;
        if let Some(reason) = &table.closed {
            return Err(SandboxError::Agent(reason.clone()));
        }
        table.routes.insert(id, deliver);
        drop(table);
        Ok(Answers {
            id,
            receiver,
            routes: self.routes.clone(),
        })
    }

    /// Sends the request `build` makes with a fresh id; its answers come from the result.
    pub async fn request(
        &self,
        build: impl FnOnce(u64) -> HostMessage,
    ) -> Result<Answers, SandboxError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let answers = self.register(id)?;
        self.send(&build(id)).await?;
        Ok(answers)
    }

    /// Sends a request without an id and returns the control answers (only one control
    /// request may wait at a time: callers hold the sandbox's control lock).
    pub async fn control(&self, message: &HostMessage) -> Result<Answers, SandboxError> {
        let answers = self.register(CONTROL)?;
        self.send(message).await?;
        Ok(answers)
    }

    /// Sends a message that gets no answer.
    pub async fn send(&self, message: &HostMessage) -> Result<(), SandboxError> {
        self.sender
            .lock()
            .await
            .send(message)
            .await
            .map_err(|e| SandboxError::Agent(e.to_string()))
    }
}
