//! A small Dockerfile parser that knows what we must police: parser directives
//! (`# syntax=`, `# escape=`), line continuations, comments, heredocs, `FROM` images and stage
//! names, and the flags of `RUN` (`--mount`, `--network`, `--security`). Everything else is
//! BuildKit's business.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::error::BuildError;

/// The error of a request field.
pub(super) fn invalid(field: &str, message: impl Into<String>) -> BuildError {
    BuildError::InvalidRequest {
        field: field.into(),
        message: message.into(),
    }
}

/// One instruction of a Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// The keyword, upper-cased (`RUN`).
    pub keyword: String,
    /// Everything after the keyword, continuation lines joined.
    pub args: String,
    /// Heredoc names it opens (`<<EOF` → `EOF`).
    pub heredocs: Vec<String>,
}

/// The parts of a Dockerfile we police.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// Instructions in order.
    pub instructions: Vec<Instruction>,
    /// Line of a `# syntax=` directive, which we drop (it would pull a frontend image).
    pub syntax_directive: Option<usize>,
    /// The text BuildKit gets: the input minus any `# syntax=` directive.
    pub effective_text: String,
}

/// A `FROM` line's image and the stage it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FromLine {
    /// 1-based line.
    pub line: usize,
    /// The image (or earlier stage, or named context), ARG defaults substituted.
    pub image: String,
    /// `AS name`, lower-cased.
    pub stage: Option<String>,
}

impl Dockerfile {
    /// Splits `text` into instructions. Errors name the line.
    pub fn parse(text: &str) -> Result<Dockerfile, BuildError> {
        let lines: Vec<&str> = text.lines().collect();
        let mut escape = '\\';
        let mut syntax_directive = None;
        let mut index = 0;
        // Parser directives: `# key=value` lines at the very top.
        while let Some(line) = lines.get(index) {
            let Some(rest) = line.trim().strip_prefix('#') else {
                break;
            };
            let Some((key, value)) = rest.split_once('=') else {
                break;
            };
            let key = key.trim().to_ascii_lowercase();
            match key.as_str() {
                "syntax" => syntax_directive = Some(index + 1),
                "escape" => {
                    escape = match value.trim() {
                        "`" => '`',
                        "\\" => '\\',
                        other => {
                            return Err(invalid(
                                "dockerfile",
                                format!("line {}: invalid escape directive {other:?}", index + 1),
                            ))
                        }
                    }
                }
                "check" => {}
                _ => break,
            }
            index += 1;
        }
        let mut instructions = Vec::new();
        while index < lines.len() {
            let start = index;
            let first = lines[index].trim();
            index += 1;
            if first.is_empty() || first.starts_with('#') {
                continue;
            }
            let mut joined = String::new();
            let mut current = first.to_string();
            loop {
                let trimmed = current.trim_end();
                if let Some(body) = trimmed.strip_suffix(escape) {
                    joined.push_str(body);
                    // Continuation: comment and empty lines inside are skipped.
                    let mut next = None;
                    while index < lines.len() {
                        let candidate = lines[index].trim_start();
                        index += 1;
                        if candidate.starts_with('#') || candidate.trim().is_empty() {
                            continue;
                        }
                        next = Some(candidate.to_string());
                        break;
                    }
                    match next {
                        Some(n) => current = n,
                        None => break,
                    }
                } else {
                    joined.push_str(trimmed);
                    break;
                }
            }
            let (keyword, args) = match joined.split_once(char::is_whitespace) {
                Some((k, a)) => (k.to_ascii_uppercase(), a.trim().to_string()),
                None => (joined.to_ascii_uppercase(), String::new()),
            };
            let heredocs = if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD")
                && !args.trim_start().starts_with('[')
            {
                heredoc_names(&args)
            } else {
                Vec::new()
            };
            for name in &heredocs {
                // The body runs to a line equal to the name (leading tabs allowed for `<<-`).
                let mut closed = false;
                while index < lines.len() {
                    let body = lines[index];
                    index += 1;
                    if body.trim_start_matches('\t').trim_end() == name {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(invalid(
                        "dockerfile",
                        format!("line {}: heredoc <<{name} is never closed", start + 1),
                    ));
                }
            }
            instructions.push(Instruction {
                line: start + 1,
                keyword,
                args,
                heredocs,
            });
        }
        if !instructions.iter().any(|i| i.keyword == "FROM") {
            return Err(invalid("dockerfile", "no FROM instruction"));
        }
        let effective_text = match syntax_directive {
            Some(line) => text
                .lines()
                .enumerate()
                .map(|(i, l)| if i + 1 == line { "" } else { l })
                .collect::<Vec<_>>()
                .join("\n"),
            None => text.to_string(),
        };
        Ok(Dockerfile {
            instructions,
            syntax_directive,
            effective_text,
        })
    }

    /// `FROM` lines in order, with global `ARG` defaults substituted.
    pub fn from_lines(&self) -> Vec<FromLine> {
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        let mut seen_from = false;
        let mut out = Vec::new();
        for instruction in &self.instructions {
            match instruction.keyword.as_str() {
                "ARG" if !seen_from => {
                    for word in instruction.args.split_whitespace() {
                        if let Some((k, v)) = word.split_once('=') {
                            args.insert(k.to_string(), v.trim_matches('"').to_string());
                        }
                    }
                }
                "FROM" => {
                    seen_from = true;
                    let words: Vec<&str> = instruction
                        .args
                        .split_whitespace()
                        .filter(|w| !w.starts_with("--"))
                        .collect();
                    let image = substitute(words.first().copied().unwrap_or(""), &args);
                    let stage = match words.as_slice() {
                        [_, as_kw, name, ..] if as_kw.eq_ignore_ascii_case("as") => {
                            Some(name.to_ascii_lowercase())
                        }
                        _ => None,
                    };
                    out.push(FromLine {
                        line: instruction.line,
                        image,
                        stage,
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// Registry hosts of the `FROM` images that are neither earlier stages, named contexts nor
    /// `scratch` (unresolvable `$VAR` images are left out).
    pub fn from_hosts(&self, named_contexts: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
        self.registry_images(named_contexts)
            .into_iter()
            .map(|(_, r)| r.registry)
            .collect()
    }

    /// The registry images `FROM` names, with their lines.
    pub fn registry_images(
        &self,
        named_contexts: &BTreeMap<String, PathBuf>,
    ) -> Vec<(usize, nullspace_oci::Reference)> {
        let mut stages = BTreeSet::new();
        let mut out = Vec::new();
        for from in self.from_lines() {
            let lower = from.image.to_ascii_lowercase();
            if !(stages.contains(&lower)
                || named_contexts.contains_key(&from.image)
                || lower == "scratch"
                || from.image.contains('$'))
            {
                if let Ok(reference) = nullspace_oci::Reference::parse(&from.image) {
                    out.push((from.line, reference));
                }
            }
            if let Some(stage) = from.stage {
                stages.insert(stage);
            }
        }
        out
    }

    /// The image the final stage starts from, following stage names back to a registry image.
    pub fn final_base(&self) -> Option<String> {
        let froms = self.from_lines();
        let mut image = froms.last()?.image.clone();
        for from in froms.iter().rev() {
            if from.stage.as_deref() == Some(image.to_ascii_lowercase().as_str()) {
                image = from.image.clone();
            }
        }
        Some(image)
    }
}

/// `<<EOF`, `<<-EOF`, `<<"EOF"`, `<<'EOF'` names in an instruction's arguments, in order.
fn heredoc_names(args: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = args;
    while let Some(pos) = rest.find("<<") {
        let mut after = &rest[pos + 2..];
        after = after.strip_prefix('-').unwrap_or(after);
        let quote = after.chars().next().filter(|c| *c == '"' || *c == '\'');
        let body = match quote {
            Some(q) => after[1..].split(q).next().unwrap_or(""),
            None => after
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or(""),
        };
        if !body.is_empty() && body.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            names.push(body.to_string());
        }
        rest = &rest[pos + 2..];
    }
    names
}

/// Replaces `$NAME` and `${NAME}` with known values (others stay as they are).
fn substitute(word: &str, args: &BTreeMap<String, String>) -> String {
    let mut out = word.to_string();
    for (k, v) in args {
        out = out
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    out
}
