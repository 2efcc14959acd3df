//! Every rejected request shape names the JSON path of the bad field.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use nullspace_api::request::{BuildRequestBody, RetryBody};
use nullspace_api::{from_json, RequestError};

fn field_of(body: &str) -> (String, String) {
    match from_json::<BuildRequestBody>(body.as_bytes()) {
        Err(RequestError::Invalid(e)) => (e.field, e.message),
        other => panic!("{body}: expected a field error, got {other:?}"),
    }
}

#[test]
fn bad_fields_are_named_by_their_json_path() {
    let cases = [
        (r#"{"name": "d", "bogus": 1}"#, "bogus", "unknown field"),
        (r#"{"name": 5}"#, "name", "expected a string"),
        (r#"{"tags": "stable"}"#, "tags", "expected a sequence"),
        (r#"{"tags": ["a", 3]}"#, "tags[1]", "expected a string"),
        (r#"{"disk_mb": -1}"#, "disk_mb", "expected u64"),
        (r#"{"cpu_count": 5000000000}"#, "cpu_count", "u32"),
        (
            r#"{"internet_access": "yes"}"#,
            "internet_access",
            "expected a boolean",
        ),
        (
            r#"{"build_backend": "docker"}"#,
            "build_backend",
            "unknown variant `docker`",
        ),
        (
            r#"{"base": {"kind": "alpine_image"}}"#,
            "base.kind",
            "unknown variant",
        ),
        (
            r#"{"base": {"kind": "image", "value": "x", "extra": 1}}"#,
            "base.extra",
            "unknown field",
        ),
        (r#"{"base": {"value": "x"}}"#, "base.kind", "is required"),
        (
            r#"{"steps": [{"type": "run_cmd"}]}"#,
            "steps[0].cmd",
            "is required",
        ),
        (
            r#"{"steps": [{"type": "run_cmd", "cmd": "x"}, {"type": "teleport"}]}"#,
            "steps[1].type",
            "unknown variant `teleport`",
        ),
        (
            r#"{"steps": [{"type": "run_cmd", "cmd": "x", "shell": "zsh"}]}"#,
            "steps[0].shell",
            "unknown field",
        ),
        (
            r#"{"steps": [{"type": "copy", "src": "a", "dst": "/a", "uid": 1}]}"#,
            "steps[0].uid",
            "unknown field",
        ),
        (
            r#"{"build_envs": {"A": 1}}"#,
            "build_envs.A",
            "expected a string",
        ),
        (
            r#"{"runtime_envs": ["A=1"]}"#,
            "runtime_envs",
            "expected a map",
        ),
        (
            r#"{"readiness": {"kind": "tcp", "port": "80"}}"#,
            "readiness.port",
            "expected u64",
        ),
        (
            r#"{"readiness": {"kind": "dns"}}"#,
            "readiness.kind",
            "unknown variant `dns`",
        ),
        (
            r#"{"readiness": {"kind": "tcp", "port": 1, "bogus": 1}}"#,
            "readiness.bogus",
            "unknown field",
        ),
        (
            r#"{"base_image_auth": {"username": "u", "token": "t"}}"#,
            "base_image_auth.token",
            "unknown field",
        ),
        (
            r#"{"base_image_auth": {"kind": "azure"}}"#,
            "base_image_auth.kind",
            "unknown variant `azure`",
        ),
        (
            r#"{"registry_auth": [{"registry": "r", "username": "u"}]}"#,
            "registry_auth[0].password",
            "is required",
        ),
        (
            r#"{"registry_auth": {"registry": "r"}}"#,
            "registry_auth",
            "expected a sequence",
        ),
        (
            r#"{"build_secrets": [{"id": "a", "value": "b", "from": "env"}]}"#,
            "build_secrets[0].from",
            "unknown field",
        ),
        (
            r#"{"build_secrets": {"tok": 5}}"#,
            "build_secrets.tok",
            "a string value",
        ),
        (
            r#"{"build_secrets": {"tok": {"value": "v", "env": "X"}}}"#,
            "build_secrets.tok.env",
            "unknown field",
        ),
        (
            r#"{"build_secrets": "tok"}"#,
            "build_secrets",
            "a list of {id, value}",
        ),
        (
            r#"{"build_context": {"entries": [{"type": "fifo", "path": "p"}]}}"#,
            "build_context.entries[0].type",
            "unknown variant `fifo`",
        ),
        (
            r#"{"build_context": {"entries": [], "root": "/"}}"#,
            "build_context.root",
            "unknown field",
        ),
        (
            r#"{"build_contexts": {"shared": {"entries": [{"type": "dir", "path": "a"}]}}}"#,
            "build_contexts.shared.entries[0].mode",
            "is required",
        ),
    ];
    for (body, field, needle) in cases {
        let (got_field, message) = field_of(body);
        assert_eq!(got_field, field, "{body}: {message}");
        assert!(message.contains(needle), "{body}: {got_field}: {message}");
        assert!(!message.contains(" at line "), "{message}");
    }
}

#[test]
fn retry_bodies_are_checked_the_same_way() {
    let err = from_json::<RetryBody>(br#"{"tags": 5}"#).unwrap_err();
    let RequestError::Invalid(e) = err else {
        panic!("{err:?}")
    };
    assert_eq!(e.field, "tags");
    let err = from_json::<RetryBody>(br#"{"name": "x"}"#).unwrap_err();
    assert_eq!(err.to_string(), "name: unknown field");
    let ok: RetryBody = from_json(b"  ").unwrap();
    assert_eq!(ok, RetryBody::default());
}

#[test]
fn malformed_json_is_a_body_error() {
    for body in ["{", "[1, 2]", "{} {}", "null"] {
        let err = from_json::<BuildRequestBody>(body.as_bytes()).unwrap_err();
        assert!(matches!(err, RequestError::Body(_)), "{body}: {err:?}");
        assert!(err.to_string().starts_with("the request body"), "{err}");
    }
}

#[test]
fn secrets_parse_in_both_shapes_and_never_print() {
    let list: BuildRequestBody =
        from_json(br#"{"build_secrets": [{"id": "tok", "value": "hunter2"}]}"#).unwrap();
    let map: BuildRequestBody =
        from_json(br#"{"build_secrets": {"tok": {"value": "hunter2", "source": "env"}}}"#).unwrap();
    assert_eq!(list.build_secrets, map.build_secrets);
    let with_source: BuildRequestBody =
        from_json(br#"{"build_secrets": [{"id": "tok", "value": "hunter2", "source": "env"}]}"#)
            .unwrap();
    assert_eq!(
        with_source.build_secrets.unwrap().0[0].value.expose(),
        "hunter2"
    );
    assert!(!format!("{list:?}").contains("hunter2"));
    let sent = serde_json::to_value(&list).unwrap();
    assert_eq!(sent["build_secrets"][0]["value"], "hunter2");
}
