//! Shows build events: a bar per layer on a terminal, plain lines otherwise (always on stderr).

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use nullspace_build::BuildEvent;

/// Renders events for a person.
pub enum Display {
    /// Progress bars on a terminal.
    Bars(Mutex<Bars>),
    /// One line per milestone.
    Lines,
}

/// Bars state: one bar per layer.
pub struct Bars {
    multi: MultiProgress,
    layers: Vec<(String, ProgressBar)>,
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

impl Display {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn for_stderr() -> Display {
        if std::io::stderr().is_terminal() {
            Display::Bars(Mutex::new(Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                layers: Vec::new(),
            }))
        } else {
            Display::Lines
        }
    }

    /// Shows one event.
    pub fn show(&self, event: BuildEvent) {
        match self {
            Display::Lines => show_line(&event),
            Display::Bars(bars) => {
                if let Ok(mut bars) = bars.lock() {
                    bars.show(event);
                }
            }
        }
    }
}

/// Plain-line mode: milestones only; per-byte progress is left to the bars.
fn show_line(event: &BuildEvent) {
    if !matches!(
        event,
        BuildEvent::Download { .. } | BuildEvent::Apply { .. }
    ) {
        eprintln!("{}", line(event));
    }
}

impl Bars {
    fn show(&mut self, event: BuildEvent) {
        let style = ProgressStyle::with_template(
            "{prefix:>14} {msg:9} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        match event {
            BuildEvent::Resolved { ref layers, .. } => {
                let _ = self.multi.println(line(&event));
                for (digest, size) in layers {
                    let bar = self.multi.add(ProgressBar::new(*size));
                    bar.set_style(style.clone());
                    bar.set_prefix(short(digest).to_string());
                    bar.set_message("waiting");
                    self.layers.push((digest.clone(), bar));
                }
            }
            BuildEvent::Download { index, bytes, .. } => {
                if let Some((_, bar)) = self.layers.get(index) {
                    bar.set_message("download");
                    bar.set_position(bytes);
                }
            }
            BuildEvent::Downloaded { index, cached } => {
                if let Some((_, bar)) = self.layers.get(index) {
                    bar.set_message(if cached { "cached" } else { "fetched" });
                    bar.set_position(bar.length().unwrap_or(0));
                }
            }
            BuildEvent::Apply { index, bytes, .. } => {
                if let Some((_, bar)) = self.layers.get(index) {
                    if bar.message() != "apply" {
                        bar.set_message("apply");
                        bar.reset();
                    }
                    bar.set_position(bytes);
                }
            }
            BuildEvent::Applied { index, .. } => {
                if let Some((_, bar)) = self.layers.get(index) {
                    bar.set_message("done");
                    bar.finish();
                }
            }
            other => {
                let _ = self.multi.println(line(&other));
            }
        }
    }
}

fn line(event: &BuildEvent) -> String {
    match event {
        BuildEvent::Resolved {
            reference,
            digest,
            platform,
            layers,
        } => format!(
            "resolved {reference} to {digest} ({platform}, {} layers)",
            layers.len()
        ),
        BuildEvent::Cache {
            kind,
            status,
            reason: Some(reason),
            subject,
        } => format!("cache {kind} {status} ({reason}): {subject}"),
        BuildEvent::Cache {
            kind,
            status,
            subject,
            ..
        } => format!("cache {kind} {status}: {subject}"),
        BuildEvent::Warning { message } => format!("warning: {message}"),
        BuildEvent::Message { message } => message.clone(),
        BuildEvent::Step { name, .. } => format!("step {name}"),
        BuildEvent::Log { message, .. } => format!("  | {message}"),
        BuildEvent::Vm { phase, message, .. } => format!("vm {phase}: {message}"),
        BuildEvent::GuestOutput { line, .. } => format!("  > {line}"),
        BuildEvent::Downloaded { index, cached } => format!(
            "layer {}: {}",
            index + 1,
            if *cached {
                "already in the store"
            } else {
                "downloaded"
            }
        ),
        BuildEvent::Applied { index, entries } => {
            format!("layer {}: applied ({entries} entries)", index + 1)
        }
        other => format!("{other:?}"),
    }
}
