//! Dockerfile builds: what the user sends and the server allows ([`spec`]), and the parser
//! that the checks before BuildKit read the Dockerfile with ([`parse`]).

pub mod parse;
pub mod spec;

/// The build backend a request names (`native` rejects Dockerfiles).
pub use nullspace_api::BuildBackend;
pub use parse::{Dockerfile, FromLine, Instruction};
pub use spec::*;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn spec(text: &str) -> DockerfileSpec {
        DockerfileSpec::new(DockerfileSource::Content(text.into()))
    }

    fn err(spec: &DockerfileSpec) -> String {
        spec.validate(&BuildkitPolicy::default(), Some(true))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_continuations_comments_and_heredocs() {
        let text = "# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm\nFROM $BASE AS build\nRUN echo a \\\n# a comment\n  && echo b\nRUN <<EOF\nFROM not-an-instruction\nEOF\nCOPY <<-'X' /f\n\tbody\n\tX\nFROM build\n";
        let d = Dockerfile::parse(text).unwrap();
        let kw: Vec<_> = d
            .instructions
            .iter()
            .map(|i| (i.line, i.keyword.as_str()))
            .collect();
        assert_eq!(
            kw,
            [
                (2, "ARG"),
                (3, "FROM"),
                (4, "RUN"),
                (7, "RUN"),
                (10, "COPY"),
                (13, "FROM")
            ]
        );
        assert_eq!(d.instructions[2].args, "echo a && echo b");
        assert_eq!(d.instructions[3].heredocs, ["EOF"]);
        assert_eq!(d.instructions[4].heredocs, ["X"]);
        assert_eq!(d.syntax_directive, Some(1));
        assert!(!d.effective_text.contains("syntax"));
        assert_eq!(d.final_base().as_deref(), Some("debian:bookworm"));
        let froms = d.from_lines();
        assert_eq!(froms[0].stage.as_deref(), Some("build"));
        assert_eq!(
            d.from_hosts(&BTreeMap::new())
                .into_iter()
                .collect::<Vec<_>>(),
            ["docker.io"]
        );
    }

    #[test]
    fn native_backend_is_rejected() {
        let mut s = spec("FROM debian:bookworm\n");
        s.build_backend = Some(BuildBackend::Native);
        assert!(err(&s).contains("build_backend"));
    }

    #[test]
    fn secret_mounts_need_their_secret() {
        let s =
            spec("FROM debian:bookworm\n\nRUN --mount=type=secret,id=npm cat /run/secrets/npm\n");
        let e = err(&s);
        assert!(e.contains("line 3") && e.contains("\"npm\""), "{e}");
        let mut s = s;
        s.build_secrets.insert("npm".into(), SecretValue::new("x"));
        assert!(s.validate(&BuildkitPolicy::default(), Some(true)).is_ok());
        let t =
            spec("FROM debian:bookworm\nRUN --mount=type=secret,target=/run/secrets/tok true\n");
        assert!(err(&t).contains("\"tok\""));
    }

    #[test]
    fn ssh_mounts_follow_the_policy() {
        let s = spec("FROM debian:bookworm\nRUN --mount=type=ssh ssh-add -l\n");
        assert!(err(&s).contains("line 2"));
        let policy = BuildkitPolicy {
            allow_ssh: true,
            ..BuildkitPolicy::default()
        };
        assert!(s.validate(&policy, Some(true)).is_ok());
    }

    #[test]
    fn cache_mounts_only_where_builds_share_no_tenants() {
        let s = spec("FROM debian:bookworm\nRUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --mount=target=/b true\n");
        assert!(s.validate(&BuildkitPolicy::local(), Some(true)).is_ok());
        let e = err(&s);
        assert!(e.contains("line 2") && e.contains("cache mounts"), "{e}");
        let s =
            spec("FROM debian:bookworm\nRUN --mount=type=tmpfs,target=/t --mount=target=/b true\n");
        assert!(s.validate(&BuildkitPolicy::default(), Some(true)).is_ok());
        let bad = spec("FROM debian:bookworm\nRUN --network=host true\n");
        assert!(err(&bad).contains("--network=host"));
    }

    #[test]
    fn a_shared_server_pulls_from_no_private_address_its_operator_did_not_allow() {
        let s = spec("FROM debian\nFROM 127.0.0.1:2375/x/y AS a\nFROM [::1]:5000/z\n");
        let e = err(&s);
        assert!(e.contains("line 2") && e.contains("not allowed"), "{e}");
        assert!(s.validate(&BuildkitPolicy::local(), Some(true)).is_ok());
        let allowed = BuildkitPolicy {
            from_addresses: nullspace_oci::AddressPolicy::public_only(vec![
                "127.0.0.1:2375".into(),
                "[::1]:5000".into(),
            ]),
            ..BuildkitPolicy::default()
        };
        assert!(s.validate(&allowed, Some(true)).is_ok());
        let metadata = spec("FROM 169.254.169.254/latest\n");
        assert!(err(&metadata).contains("link-local"));
    }

    #[test]
    fn registry_auth_must_match_a_from_host() {
        let mut s = spec("FROM reg.example:5000/a/b AS x\nFROM x\nFROM debian\n");
        s.registry_auth.push(RegistryAuth {
            registry: "other.example".into(),
            username: "u".into(),
            password: SecretValue::new("hunter2"),
        });
        let e = err(&s);
        assert!(
            e.contains("other.example") && e.contains("reg.example:5000"),
            "{e}"
        );
        assert!(!e.contains("hunter2"));
        s.registry_auth[0].registry = "reg.example:5000".into();
        assert!(s.validate(&BuildkitPolicy::default(), Some(true)).is_ok());
        s.registry_auth[0].registry = "index.docker.io".into();
        assert!(s.validate(&BuildkitPolicy::default(), Some(true)).is_ok());
    }

    #[test]
    fn heredocs_need_frontend_support() {
        let s = spec("FROM debian\nRUN <<EOF\ntrue\nEOF\n");
        let e = s
            .validate(&BuildkitPolicy::default(), Some(false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("heredoc"), "{e}");
        let open = spec("FROM debian\nRUN <<EOF\ntrue\n");
        assert!(err(&open).contains("never closed"));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let v = SecretValue::new("hunter2");
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
