//! The Rust `.dockerignore` matcher answers every case of `testdata/dockerignore_cases.json`
//! as Docker does; the SDK's test (`sdk/python/tests/test_dockerignore_parity.py`) runs the
//! same cases through the Python matcher, so the two cannot drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use nullspace_client::DockerIgnore;

#[derive(serde::Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    dockerignore: String,
    path: String,
    excluded: bool,
}

fn cases() -> Vec<Case> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/dockerignore_cases.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let cases: Cases = serde_json::from_str(&text).unwrap();
    assert!(cases.cases.len() >= 40, "{} cases", cases.cases.len());
    cases.cases
}

#[test]
fn every_case_is_answered_as_docker_does() {
    let mut wrong = Vec::new();
    for case in cases() {
        let ignore = DockerIgnore::parse(&case.dockerignore)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        if ignore.excluded(&case.path) != case.excluded {
            wrong.push(format!(
                "{}: {:?} on {:?} should be excluded={}",
                case.name, case.dockerignore, case.path, case.excluded
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Patterns that make a backtracking matcher take exponential time finish at once here: on
/// a 4,000-character path, a backtracking matcher would not finish within the test run.
#[test]
fn pathological_patterns_match_in_linear_time() {
    let long = "a".repeat(4000);
    let segments = vec!["a"; 2000].join("/");
    for (pattern, path) in [
        ("a*a*a*a*a*a*a*a*a*a*a*a*b", long.as_str()),
        ("**/a/**/a/**/a/**/a/**/a/**/b", segments.as_str()),
        ("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c", long.as_str()),
    ] {
        let ignore = DockerIgnore::parse(pattern).unwrap();
        assert!(!ignore.excluded(path), "{pattern}");
    }
}
