//! The agent's end of the virtio-serial port: a reader thread turning frames into
//! [`HostMessage`]s and a writer thread draining a bounded queue, so that nothing else ever
//! blocks on the host (writes block while no host is connected). Log lines that do not fit
//! the queue are dropped and counted.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use nullspace_init::protocol::{read_frame, write_frame, AgentMessage, FrameError, HostMessage};
use nullspace_init::PORT_NAME;

/// Messages waiting for the host, at most.
const QUEUE: usize = 4096;

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Sender {
    queue: SyncSender<AgentMessage>,
    dropped: Arc<AtomicU64>,
}

impl Sender {
    /// Queues a message the host must get (waits while the queue is full).
    pub fn send(&self, message: AgentMessage) {
        let _ = self.queue.send(message);
    }

    /// Queues a log line, or drops and counts it when the queue is full.
    pub fn log(&self, message: AgentMessage) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            if let Err(TrySendError::Full(_)) = self
                .queue
                .try_send(AgentMessage::LogsDropped { count: dropped })
            {
                self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
                return;
            }
        }
        if let Err(TrySendError::Full(_)) = self.queue.try_send(message) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The open port.
pub struct Channel {
    sender: Sender,
    incoming: Receiver<HostMessage>,
}

fn find_port() -> Option<PathBuf> {
    for entry in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            return Some(PathBuf::from("/dev").join(entry.file_name()));
        }
    }
    None
}

impl Channel {
    /// Opens the port (waiting for it to appear) and starts the reader and writer threads.
    pub fn open() -> Result<Channel, String> {
        let mut waited = 0;
        let path = loop {
            if let Some(path) = find_port().filter(|p| p.exists()) {
                break path;
            }
            if waited > 3000 {
                return Err(format!("no virtio-serial port named {PORT_NAME}"));
            }
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        };
        let open = || {
            File::options()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        let mut reader = open()?;
        let mut writer = reader
            .try_clone()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let (queue, outgoing) = sync_channel::<AgentMessage>(QUEUE);
        std::thread::spawn(move || {
            for message in outgoing {
                // A failed write (host gone mid-frame) loses that message only.
                if let Err(e) = write_frame(&mut writer, &message) {
                    crate::console(&format!("writing to the host: {e}"));
                }
            }
        });
        let (deliver, incoming) = sync_channel::<HostMessage>(64);
        std::thread::spawn(move || loop {
            match read_frame::<HostMessage>(&mut reader) {
                Ok(message) => {
                    if deliver.send(message).is_err() {
                        return;
                    }
                }
                // No host connected: reads return end-of-file until one is.
                Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    crate::console(&format!("reading from the host: {e}"));
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Ok(Channel {
            sender: Sender {
                queue,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            incoming,
        })
    }

    /// A sender for other threads.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Queues a message for the host.
    pub fn send(&self, message: AgentMessage) {
        self.sender.send(message);
    }

    /// The host's messages, in order.
    pub fn incoming(&self) -> impl Iterator<Item = HostMessage> + '_ {
        self.incoming.iter()
    }
}
