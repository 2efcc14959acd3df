//! BuildKit progress (`--progress=rawjson` or `plain`) → [`BuildEvent`]s, with secret values
//! scrubbed from every line and error.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::BuildkitError;
use crate::events::{BuildEvent, EventSink};

/// Which progress output the client writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgressFormat {
    /// BuildKit's `SolveStatus` objects as JSON (buildx ≥ 0.12).
    #[default]
    RawJson,
    /// `#N ...` lines.
    Plain,
}

/// Replaces secret values with `***` in text that leaves the build (logs, errors).
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values)", self.needles.len())
    }
}

impl Redactor {
    /// Scrubs each value, and each line of 4+ characters of a multi-line value.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Redactor {
        let mut needles = Vec::new();
        for value in values {
            let text = String::from_utf8_lossy(value);
            let trimmed = text.trim();
            if !trimmed.is_empty() {
                needles.push(trimmed.to_string());
            }
            if trimmed.contains('\n') {
                needles.extend(
                    trimmed
                        .lines()
                        .map(str::trim)
                        .filter(|l| l.len() >= 4)
                        .map(str::to_string),
                );
            }
        }
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        needles.dedup();
        Redactor { needles }
    }

    /// `text` with every secret value replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for needle in &self.needles {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), "***");
            }
        }
        out
    }
}

#[derive(Deserialize)]
struct SolveStatus {
    #[serde(default)]
    vertexes: Vec<RawVertex>,
    #[serde(default)]
    logs: Vec<RawLog>,
    #[serde(default)]
    warnings: Vec<RawWarning>,
}

#[derive(Deserialize)]
struct RawVertex {
    digest: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    started: Option<String>,
    #[serde(default)]
    completed: Option<String>,
    #[serde(default)]
    cached: bool,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct RawLog {
    vertex: String,
    #[serde(default)]
    stream: i64,
    #[serde(default)]
    data: String,
}

#[derive(Deserialize)]
struct RawWarning {
    #[serde(default)]
    short: String,
}

#[derive(Default)]
struct Vertex {
    name: String,
    announced: bool,
    cache_reported: bool,
    done_reported: bool,
}

/// Turns a progress stream into events, remembering what failed.
pub(crate) struct ProgressParser {
    format: ProgressFormat,
    events: Arc<dyn EventSink>,
    redactor: Redactor,
    buf: Vec<u8>,
    vertices: HashMap<String, Vertex>,
    partial: HashMap<(String, i64), String>,
    failed_step: Option<(String, String)>,
    errors: Vec<String>,
    tail: Vec<String>,
}

const TAIL_LINES: usize = 40;

impl ProgressParser {
    pub(crate) fn new(
        format: ProgressFormat,
        events: Arc<dyn EventSink>,
        redactor: Redactor,
    ) -> ProgressParser {
        ProgressParser {
            format,
            events,
            redactor,
            buf: Vec::new(),
            vertices: HashMap::new(),
            partial: HashMap::new(),
            failed_step: None,
            errors: Vec::new(),
            tail: Vec::new(),
        }
    }

    /// Consumes more output.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.drain(false);
    }

    /// Consumes what is left at the end of the stream.
    pub(crate) fn finish(&mut self) {
        self.drain(true);
        let partial: Vec<((String, i64), String)> = self.partial.drain().collect();
        for ((_, stream), line) in partial {
            if !line.is_empty() {
                self.log(stream, &line);
            }
        }
    }

    /// The error for a failed build (the process exited non-zero).
    pub(crate) fn failure(&self) -> BuildkitError {
        let final_error = self
            .errors
            .last()
            .cloned()
            .or_else(|| {
                self.tail
                    .iter()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .cloned()
            })
            .unwrap_or_else(|| "the BuildKit client exited with an error".to_string());
        match &self.failed_step {
            Some((step, message)) => BuildkitError::StepFailed {
                step: step.clone(),
                message: message.clone(),
            },
            None => BuildkitError::Failed {
                message: final_error,
            },
        }
    }

    fn drain(&mut self, at_end: bool) {
        loop {
            let start = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.drain(..start);
            if self.buf.is_empty() {
                return;
            }
            if self.format == ProgressFormat::RawJson && self.buf[0] == b'{' {
                let mut stream =
                    serde_json::Deserializer::from_slice(&self.buf).into_iter::<SolveStatus>();
                match stream.next() {
                    Some(Ok(status)) => {
                        let used = stream.byte_offset();
                        self.buf.drain(..used);
                        self.status(status);
                        continue;
                    }
                    Some(Err(e)) if e.is_eof() && !at_end => return,
                    _ => {}
                }
            }
            // A text line (plain progress, or the client's own messages after the JSON).
            let end = match self.buf.iter().position(|b| *b == b'\n') {
                Some(n) => n,
                None if at_end => self.buf.len(),
                None => return,
            };
            let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
            self.buf.drain(..(end + 1).min(self.buf.len()));
            self.text_line(&line);
        }
    }

    fn status(&mut self, status: SolveStatus) {
        for v in status.vertexes {
            self.vertex(v);
        }
        for log in status.logs {
            let Ok(data) = base64::engine::general_purpose::STANDARD.decode(log.data.as_bytes())
            else {
                continue;
            };
            let text = String::from_utf8_lossy(&data).into_owned();
            let key = (log.vertex, log.stream);
            let mut pending = self.partial.remove(&key).unwrap_or_default();
            pending.push_str(&text);
            while let Some(n) = pending.find('\n') {
                let line: String = pending.drain(..=n).collect();
                self.log(key.1, line.trim_end_matches(['\n', '\r']));
            }
            if !pending.is_empty() {
                self.partial.insert(key, pending);
            }
        }
        for warning in status.warnings {
            let Ok(short) =
                base64::engine::general_purpose::STANDARD.decode(warning.short.as_bytes())
            else {
                continue;
            };
            self.events.event(BuildEvent::Warning {
                message: self.redactor.redact(&String::from_utf8_lossy(&short)),
            });
        }
    }

    fn vertex(&mut self, v: RawVertex) {
        let name = self.redactor.redact(&v.name);
        let entry = self.vertices.entry(v.digest).or_default();
        if !name.is_empty() {
            entry.name = name;
        }
        let name = entry.name.clone();
        let label = step_label(&name);
        let mut out = Vec::new();
        if let Some((index, total)) = label {
            if !entry.announced && (v.started.is_some() || v.cached) {
                entry.announced = true;
                out.push(BuildEvent::Step {
                    index,
                    total,
                    name: name.clone(),
                });
            }
        }
        if v.cached && !entry.cache_reported && label.is_some() {
            entry.cache_reported = true;
            out.push(BuildEvent::Cache {
                kind: nullspace_api::CacheKind::Layer,
                status: nullspace_api::CacheStatus::Hit,
                reason: None,
                subject: format!("buildkit {name}"),
            });
        }
        if label.is_none()
            && v.completed.is_some()
            && v.error.is_none()
            && !entry.done_reported
            && !name.starts_with("[internal]")
            && !name.is_empty()
        {
            entry.done_reported = true;
            out.push(BuildEvent::Message {
                message: format!("buildkit: {name}"),
            });
        }
        if let Some(error) = v.error {
            let error = self.redactor.redact(&error);
            // "context canceled" follows the first real failure in sibling vertices.
            if self.failed_step.is_none() && !error.contains("context canceled") {
                self.failed_step = Some((name.clone(), error));
            }
        }
        for event in out {
            self.events.event(event);
        }
    }

    fn log(&self, stream: i64, line: &str) {
        self.events.event(BuildEvent::Log {
            stream: if stream == 2 { "stderr" } else { "stdout" },
            message: self.redactor.redact(line),
        });
    }

    fn text_line(&mut self, line: &str) {
        let line = self.redactor.redact(line);
        if let Some(error) = line.strip_prefix("ERROR: ") {
            self.errors.push(error.to_string());
        }
        if self.format == ProgressFormat::Plain {
            self.plain_line(&line);
        }
        self.tail.push(line);
        if self.tail.len() > TAIL_LINES {
            self.tail.remove(0);
        }
    }

    /// `#5 [2/3] RUN x`, `#5 CACHED`, `#5 0.123 output`, `#5 ERROR: ...`, `#5 DONE 0.1s`.
    fn plain_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix('#') else {
            return;
        };
        let Some((id, body)) = rest.split_once(' ') else {
            return;
        };
        let id = format!("#{id}");
        if body.starts_with('[') || (!self.vertices.contains_key(&id) && !body.is_empty()) {
            if !self.vertices.contains_key(&id) {
                self.vertex(RawVertex {
                    digest: id,
                    name: body.to_string(),
                    started: Some(String::new()),
                    completed: None,
                    cached: false,
                    error: None,
                });
            }
            return;
        }
        let vertex = |cached: bool, completed: bool, error: Option<String>| RawVertex {
            digest: id.clone(),
            name: String::new(),
            started: Some(String::new()),
            completed: completed.then(String::new),
            cached,
            error,
        };
        if body == "CACHED" {
            self.vertex(vertex(true, true, None));
        } else if let Some(error) = body.strip_prefix("ERROR: ") {
            self.vertex(vertex(false, true, Some(error.to_string())));
        } else if body.starts_with("DONE ") {
            self.vertex(vertex(false, true, None));
        } else if let Some((time, text)) = body.split_once(' ') {
            if time.parse::<f64>().is_ok() {
                self.events.event(BuildEvent::Log {
                    stream: "stdout",
                    message: text.to_string(),
                });
            }
        }
    }
}

/// `[stage-1 2/3] RUN ...` → (2, 3).
fn step_label(name: &str) -> Option<(usize, usize)> {
    let inner = name.strip_prefix('[')?.split(']').next()?;
    let last = inner.split_whitespace().last()?;
    let (i, n) = last.split_once('/')?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Mutex;

    fn collect(format: ProgressFormat, chunks: &[&[u8]]) -> (Vec<BuildEvent>, BuildkitError) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            Arc::new(move |e| seen.lock().unwrap().push(e))
        };
        let mut p = ProgressParser::new(format, sink, Redactor::new([b"s3cr3t".as_slice()]));
        for c in chunks {
            p.feed(c);
        }
        p.finish();
        let err = p.failure();
        let events = seen.lock().unwrap().clone();
        (events, err)
    }

    #[test]
    fn rawjson_steps_cache_logs_and_errors() {
        let data = base64::engine::general_purpose::STANDARD.encode("out s3cr3t\npart");
        let text = format!(
            r#"{{"vertexes":[{{"digest":"a","name":"[stage-1 2/3] RUN x","started":"t"}}]}}
{{"vertexes":[{{"digest":"b","name":"[1/3] FROM debian","started":"t","completed":"t","cached":true}}]}}
{{"logs":[{{"vertex":"a","stream":1,"data":"{data}"}}]}}
{{"vertexes":[{{"digest":"a","name":"[stage-1 2/3] RUN x","error":"exit code: 2 s3cr3t"}}]}}
ERROR: failed to solve: boom
"#
        );
        let bytes = text.as_bytes();
        // Fed in awkward pieces, as a pipe delivers them.
        let chunks: Vec<&[u8]> = bytes.chunks(7).collect();
        let (events, err) = collect(ProgressFormat::RawJson, &chunks);
        let json = serde_json::to_string(&events).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(matches!(
            events[0],
            BuildEvent::Step {
                index: 2,
                total: 3,
                ..
            }
        ));
        assert!(events.iter().any(|e| matches!(
            e,
            BuildEvent::Cache {
                status: nullspace_api::CacheStatus::Hit,
                ..
            }
        )));
        assert!(events
            .iter()
            .any(|e| matches!(e, BuildEvent::Log { message, .. } if message == "out ***")));
        assert!(events
            .iter()
            .any(|e| matches!(e, BuildEvent::Log { message, .. } if message == "part")));
        let msg = err.to_string();
        assert!(
            msg.contains("[stage-1 2/3] RUN x") && msg.contains("***") && !msg.contains("s3cr3t"),
            "{msg}"
        );
    }

    #[test]
    fn plain_lines() {
        let text = b"#5 [2/3] RUN echo hi\n#5 0.120 hi\n#5 DONE 0.2s\n#6 [3/3] COPY a b\n#6 CACHED\nERROR: failed to solve: x\n";
        let (events, err) = collect(ProgressFormat::Plain, &[text]);
        assert!(matches!(events[0], BuildEvent::Step { index: 2, .. }));
        assert!(events
            .iter()
            .any(|e| matches!(e, BuildEvent::Log { message, .. } if message == "hi")));
        assert!(events.iter().any(|e| matches!(
            e,
            BuildEvent::Cache {
                status: nullspace_api::CacheStatus::Hit,
                ..
            }
        )));
        assert!(err.to_string().contains("failed to solve: x"));
    }

    #[test]
    fn redactor_debug_hides_values() {
        let r = Redactor::new([b"line-one\nline-two".as_slice()]);
        assert!(!format!("{r:?}").contains("line"));
        assert_eq!(r.redact("x line-two y"), "x *** y");
    }
}
