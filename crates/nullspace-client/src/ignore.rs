//! `.dockerignore` matching, as Docker (moby's `patternmatcher` and `ignorefile`) does it:
//! lines starting with `#` are comments, lines are trimmed, `!` re-includes, each pattern is
//! cleaned like Go's `filepath.Clean` and anchored at the context root, the last matching
//! pattern wins, and a pattern that matches a directory excludes everything beneath it.
//!
//! Docker translates each pattern into a regular expression (`*` → `[^/]*`, `?` → `[^/]`,
//! `**` → any number of segments, `[...]` kept as a regex class, so `[!a]` is not a
//! negation and `[^/]` classes may match `/`). We do the same and match with the `regex`
//! crate, whose automata run in time linear in the path: no pattern can make matching
//! backtrack. (globset, also linear, gives classes other meanings than Docker does.)
//! The SDK's matcher follows the same rules; `testdata/dockerignore_cases.json` holds the
//! cases both must answer as Docker does.

use std::path::Path;

use regex::Regex;

use crate::error::{io_at, ClientError};

/// A parsed `.dockerignore`.
#[derive(Clone, Debug, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    matcher: Regex,
    negated: bool,
}

impl DockerIgnore {
    /// Parses the file's text; a pattern Docker would refuse (an unclosed `[`, a lone `!`)
    /// is an error naming it.
    pub fn parse(text: &str) -> Result<DockerIgnore, ClientError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = |message: String| ClientError::Ignore {
                file: format!(".dockerignore line {}", index + 1),
                message,
            };
            let (negated, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            if pattern.is_empty() {
                return Err(bad(format!("{line:?}: an exclusion needs a pattern")));
            }
            let mut cleaned = go_clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let matcher = Regex::new(&to_regex(&cleaned))
                .map_err(|e| bad(format!("pattern {line:?} is invalid: {e}")))?;
            rules.push(Rule { matcher, negated });
        }
        Ok(DockerIgnore { rules })
    }

    /// The rules of `root/.dockerignore` (none when it does not exist).
    pub fn load(root: &Path) -> Result<DockerIgnore, ClientError> {
        let path = root.join(".dockerignore");
        match std::fs::read_to_string(&path) {
            Ok(text) => DockerIgnore::parse(&text).map_err(|e| match e {
                ClientError::Ignore { file, message } => ClientError::Ignore {
                    file: file.replacen(".dockerignore", &path.display().to_string(), 1),
                    message,
                },
                other => other,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Whether some rule re-includes (then excluded directories must still be walked).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|rule| rule.negated)
    }

    /// Whether the context path `path` (`a/b.txt`) is excluded: the last rule that matches
    /// it, or one of its parent directories, decides.
    pub fn excluded(&self, path: &str) -> bool {
        let mut candidates: Vec<&str> = path
            .char_indices()
            .filter(|&(_, c)| c == '/')
            .map(|(i, _)| &path[..i])
            .collect();
        candidates.push(path);
        let mut excluded = false;
        for rule in &self.rules {
            if candidates.iter().any(|p| rule.matcher.is_match(p)) {
                excluded = !rule.negated;
            }
        }
        excluded
    }
}

/// Go's `filepath.Clean` on a `/`-separated path: no empty or `.` elements, `..` removes the
/// element before it (kept at the start of a relative path, dropped at the root).
fn go_clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// The regular expression Docker makes of a cleaned pattern.
fn to_regex(pattern: &str) -> String {
    let mut out = String::from("^");
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `**/` is `**`.
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    out.push_str(".*");
                } else {
                    out.push_str("(.*/)?");
                }
            }
            '*' => out.push_str("[^/]*"),
            '?' => out.push_str("[^/]"),
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '\\' => match chars.next() {
                Some(escaped) => out.push_str(&regex::escape(&escaped.to_string())),
                None => out.push_str("\\\\"),
            },
            other => out.push(other),
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_clean_like_go() {
        for (input, cleaned) in [
            ("a/./b//c", "a/b/c"),
            ("a/../b", "b"),
            ("../x", "../x"),
            ("/../x", "/x"),
            ("./", "."),
            ("a/b/", "a/b"),
        ] {
            assert_eq!(go_clean(input), cleaned, "{input}");
        }
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = DockerIgnore::parse("ok\nfile[.txt\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("file[.txt"), "{err}");
        assert!(DockerIgnore::parse("!").is_err());
    }
}
