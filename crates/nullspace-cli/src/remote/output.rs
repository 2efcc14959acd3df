//! How client-mode commands print what the server answers.

use nullspace_api::LogEntry;
use serde_json::Value;

/// A string value without quotes (other values as JSON).
pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One log entry as a line: `[offset] kind level: message`.
pub(crate) fn entry_line(entry: &Value) -> String {
    let mut line = format!(
        "[{}] {} {}: {}",
        entry["offset"],
        text(&entry["kind"]),
        text(&entry["level"]),
        text(&entry["message"])
    );
    if let Some(detail) = entry.get("error_detail").filter(|d| !d.is_null()) {
        line.push_str(&format!(" ({detail})"));
    }
    line
}

/// Prints one streamed log entry (one JSON object a line with `--json`).
pub(crate) fn print_entry(entry: &LogEntry, json_output: bool) -> Result<(), serde_json::Error> {
    let value = serde_json::to_value(entry)?;
    if json_output {
        println!("{value}");
    } else {
        println!("{}", entry_line(&value));
    }
    Ok(())
}
