//! Readiness probes, run in the guest beside the start command: attempts every interval, each
//! bounded by the probe's timeout; failures during the start period don't count; the probe
//! fails after `retries` counted failures (at least one). The start command ending stops it
//! (the host reports that as a startup failure).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nullspace_init::protocol::{AgentMessage, Probe, ProbeCheck};

use crate::start::Agent;

/// Runs `probe` until it passes, fails for good or the start command exits.
pub fn run(agent: &Agent, probe: &Probe, started: Instant) {
    let interval = Duration::from_millis(probe.interval_ms.max(1));
    let timeout = Duration::from_millis(probe.timeout_ms.max(1));
    let start_period = Duration::from_millis(probe.start_period_ms);
    let mut attempt = 0u32;
    let mut counted = 0u32;
    loop {
        if agent.exited.load(Ordering::SeqCst) {
            return;
        }
        attempt = attempt.saturating_add(1);
        let (ok, detail) = check(agent, &probe.check, timeout, started);
        agent.host.log(AgentMessage::ProbeResult {
            attempt,
            ok,
            detail: detail.clone(),
        });
        if ok {
            agent.host.send(AgentMessage::Ready {
                after_ms: started.elapsed().as_millis() as u64,
            });
            return;
        }
        if started.elapsed() >= start_period {
            counted += 1;
            if counted >= probe.retries.max(1) {
                agent.host.send(AgentMessage::NotReady {
                    attempts: attempt,
                    detail,
                });
                return;
            }
        }
        std::thread::sleep(interval);
    }
}

fn check(agent: &Agent, check: &ProbeCheck, timeout: Duration, started: Instant) -> (bool, String) {
    match check {
        ProbeCheck::Tcp { port } => tcp(*port, timeout),
        ProbeCheck::Http { url } => http(url, timeout),
        ProbeCheck::File { path } => {
            let ok = std::path::Path::new(path).exists();
            (
                ok,
                format!("{path} {}", if ok { "exists" } else { "does not exist" }),
            )
        }
        ProbeCheck::Process { name } => match find_process(name) {
            Some(pid) => (true, format!("process {name:?} runs as pid {pid}")),
            None => (false, format!("no process named {name:?}")),
        },
        ProbeCheck::Wait { ms } => {
            let wait = Duration::from_millis(*ms);
            while started.elapsed() < wait {
                if agent.exited.load(Ordering::SeqCst) {
                    return (false, "the start command exited".into());
                }
                std::thread::sleep((wait - started.elapsed()).min(Duration::from_millis(50)));
            }
            (true, format!("waited {ms} ms"))
        }
        ProbeCheck::Command { command } => {
            match crate::exec::run(&agent.children, &agent.runtime(), command, timeout) {
                Ok(outcome) if outcome.timed_out => {
                    (false, format!("{command:?} timed out after {timeout:?}"))
                }
                Ok(outcome) => {
                    let last = |text: &str| {
                        text.lines()
                            .last()
                            .unwrap_or("")
                            .chars()
                            .take(300)
                            .collect::<String>()
                    };
                    let output = [last(&outcome.stdout), last(&outcome.stderr)]
                        .into_iter()
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                        .join(" / ");
                    let code = outcome
                        .code
                        .map_or("a signal".to_string(), |c| c.to_string());
                    (
                        outcome.code == Some(0),
                        format!("{command:?} exited {code}: {output}"),
                    )
                }
                Err(e) => (false, e),
            }
        }
    }
}

fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&v4, timeout).or_else(|_| {
        TcpStream::connect_timeout(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)), timeout)
    })
}

fn tcp(port: u16, timeout: Duration) -> (bool, String) {
    match connect(port, timeout) {
        Ok(_) => (true, format!("port {port} accepts connections")),
        Err(e) => (false, format!("port {port}: {e}")),
    }
}

/// A GET of an `http://HOST:PORT/path` URL whose host is loopback (the request rules allow
/// only `localhost`, `127.0.0.1` and `0.0.0.0`), always sent to the guest's own loopback.
fn http(url: &str, timeout: Duration) -> (bool, String) {
    let Some(rest) = url.strip_prefix("http://") else {
        return (false, format!("{url}: not an http:// URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some(port) = authority
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
    else {
        return (false, format!("{url}: no port"));
    };
    let result = (|| -> std::io::Result<String> {
        let mut stream = connect(port, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 512];
        let mut got = 0;
        while got < head.len() {
            let n = stream.read(&mut head[got..])?;
            if n == 0 || head[..got + n].contains(&b'\n') {
                got += n;
                break;
            }
            got += n;
        }
        let text = String::from_utf8_lossy(&head[..got]);
        Ok(text.lines().next().unwrap_or("").to_string())
    })();
    match result {
        Ok(status_line) => {
            let code = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u16>().ok());
            match code {
                Some(code) if (200..400).contains(&code) => {
                    (true, format!("GET {url}: {status_line}"))
                }
                _ => (false, format!("GET {url}: {status_line:?}")),
            }
        }
        Err(e) => (false, format!("GET {url}: {e}")),
    }
}

/// A process whose `comm` or `argv[0]` base name is `name`.
fn find_process(name: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or(&[]);
        let base = String::from_utf8_lossy(argv0.rsplit(|b| *b == b'/').next().unwrap_or(&[]))
            .into_owned();
        if comm.trim_end() == name || base == name {
            return Some(pid);
        }
    }
    None
}
