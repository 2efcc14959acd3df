//! A QEMU Machine Protocol client over a unix socket: greeting, `qmp_capabilities`, then one
//! command at a time; events in between are skipped. Replies are bounded in size.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::error::VmError;

/// Longest reply line accepted.
const MAX_LINE: usize = 1 << 20;

/// A connected monitor.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to `socket` (waiting up to `wait` for QEMU to create it) and negotiates.
    pub async fn connect(socket: &Path, wait: Duration) -> Result<Qmp, VmError> {
        let stream = connect_unix(socket, wait).await?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(read),
            writer,
        };
        let greeting = qmp.line().await?;
        if greeting.get("QMP").is_none() {
            return Err(VmError::Qmp(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    async fn line(&mut self) -> Result<Value, VmError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| VmError::Qmp(format!("reading: {e}")))?;
        if read == 0 {
            return Err(VmError::Qmp("QEMU closed the monitor (it exited)".into()));
        }
        serde_json::from_slice(&line).map_err(|e| VmError::Qmp(format!("bad reply: {e}")))
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, VmError> {
        let mut request = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))
            .map_err(|e| VmError::Qmp(e.to_string()))?;
        request.push(b'\n');
        self.writer
            .write_all(&request)
            .await
            .map_err(|e| VmError::Qmp(format!("{command}: {e}")))?;
        loop {
            let reply = self.line().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            let why = reply
                .pointer("/error/desc")
                .and_then(Value::as_str)
                .unwrap_or("no description");
            return Err(VmError::Qmp(format!("{command}: {why}")));
        }
    }

    /// The VM's run state (`running`, `paused`, `inmigrate`, `internal-error`, ...).
    pub async fn status(&mut self) -> Result<String, VmError> {
        let reply = self.execute("query-status", json!({})).await?;
        Ok(reply
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string())
    }
}

/// Connects to a unix socket that a process we started is about to create.
pub(crate) async fn connect_unix(socket: &Path, wait: Duration) -> Result<UnixStream, VmError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(VmError::Io {
                    path: socket.to_path_buf(),
                    source: e,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
