//! The host's end of the agent channel (QEMU's chardev socket of the virtio-serial port). A
//! task reads frames into a bounded queue; the guest is untrusted, so frames are bounded by the
//! protocol and a flood only fills the queue.

use std::path::Path;
use std::time::Duration;

use nullspace_init::protocol::{body_length, decode, encode, AgentMessage, HostMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::error::VmError;
use crate::qmp::connect_unix;

/// Messages buffered from the agent: with frames of at most 1 MiB, a guest that floods the
/// channel holds at most 64 MiB of the host's memory until the host reads.
const QUEUE: usize = 64;

/// The agent's messages as they arrive (an error ends them: the channel closed or broke).
pub type AgentMessages = mpsc::Receiver<Result<AgentMessage, String>>;

/// The sending half of a channel split with [`AgentChannel::split`].
pub struct AgentSender {
    writer: OwnedWriteHalf,
}

impl AgentSender {
    /// Sends a message to the agent.
    pub async fn send(&mut self, message: &HostMessage) -> Result<(), VmError> {
        let frame = encode(message).map_err(|e| VmError::Agent(e.to_string()))?;
        self.writer
            .write_all(&frame)
            .await
            .map_err(|e| VmError::Agent(format!("sending: {e}")))
    }
}

/// A connected agent channel.
pub struct AgentChannel {
    sender: AgentSender,
    incoming: AgentMessages,
}

impl AgentChannel {
    /// Connects to QEMU's socket for the port.
    pub async fn connect(socket: &Path, wait: Duration) -> Result<AgentChannel, VmError> {
        let stream = connect_unix(socket, wait).await?;
        let (mut reader, writer) = stream.into_split();
        let (deliver, incoming) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            loop {
                let mut header = [0u8; 4];
                if let Err(e) = reader.read_exact(&mut header).await {
                    let _ = deliver.send(Err(format!("channel closed: {e}"))).await;
                    return;
                }
                let message = match body_length(header) {
                    Ok(length) => {
                        let mut body = vec![0u8; length];
                        match reader.read_exact(&mut body).await {
                            Ok(_) => decode::<AgentMessage>(&body).map_err(|e| e.to_string()),
                            Err(e) => Err(format!("channel closed: {e}")),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                };
                let failed = message.is_err();
                if deliver.send(message).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(AgentChannel {
            sender: AgentSender { writer },
            incoming,
        })
    }

    /// Sends a message to the agent.
    pub async fn send(&mut self, message: &HostMessage) -> Result<(), VmError> {
        self.sender.send(message).await
    }

    /// Splits into a sender and the incoming messages, for a caller that serves several
    /// requests at once and routes the answers itself.
    pub fn split(self) -> (AgentSender, AgentMessages) {
        (self.sender, self.incoming)
    }

    /// The next message, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<AgentMessage>, VmError> {
        match tokio::time::timeout(timeout, self.incoming.recv()).await {
            Err(_) => Ok(None),
            Ok(None) => Err(VmError::Agent("channel closed".into())),
            Ok(Some(Ok(message))) => Ok(Some(message)),
            Ok(Some(Err(e))) => Err(VmError::Agent(e)),
        }
    }

    /// Sends `request` and waits (up to `timeout`) for the first message `pick` accepts; other
    /// messages go to `other`.
    pub async fn request<T>(
        &mut self,
        request: &HostMessage,
        timeout: Duration,
        mut pick: impl FnMut(&AgentMessage) -> Option<T>,
        mut other: impl FnMut(AgentMessage),
    ) -> Result<T, VmError> {
        self.send(request).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(message) => match pick(&message) {
                    Some(found) => return Ok(found),
                    None => other(message),
                },
                None => {
                    return Err(VmError::TimedOut {
                        what: format!("the agent's answer to {request:?}"),
                        seconds: timeout.as_secs(),
                    })
                }
            }
        }
    }
}
