//! Which network addresses the client may reach on behalf of whoever wrote the URL.
//!
//! On a user's own machine every address is fine (a registry on localhost is normal). A build
//! server takes registry hosts, token realms, redirects, GCP `token_uri`s, ECR endpoints and
//! foreign-layer URLs from tenants, any of which could aim it at the host's own services, the
//! cloud metadata endpoint or the private network. There it reaches public addresses only,
//! plus the hosts its operator allowlists. IP literals are checked before each request; names
//! are checked after resolution by the client's resolver, so a name that resolves (or later
//! re-resolves) to a private address is refused at connect time too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;

use crate::error::Error;

/// The operator's environment variable naming the allowlisted hosts, for messages.
pub const ALLOWLIST_VARIABLE: &str = "NULLSPACE_SERVER_ALLOWED_HOSTS";

/// Where requests may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Whether loopback, private, link-local and other non-public addresses may be reached
    /// (true on a user's own machine, false on a shared server).
    pub private_allowed: bool,
    /// Hosts (`host` or `host:port`) reachable even on non-public addresses.
    pub allowed_hosts: Vec<String>,
}

impl Default for AddressPolicy {
    /// Everything may be reached: the policy of a user's own machine.
    fn default() -> Self {
        AddressPolicy {
            private_allowed: true,
            allowed_hosts: Vec::new(),
        }
    }
}

impl AddressPolicy {
    /// Public addresses only, plus `allowed_hosts`.
    pub fn public_only(allowed_hosts: Vec<String>) -> Self {
        AddressPolicy {
            private_allowed: false,
            allowed_hosts,
        }
    }

    /// Whether `host` (no brackets) on `port` is allowlisted.
    pub fn allowlisted(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed_hosts.iter().any(|entry| {
            let (entry_host, entry_port) = split_host_port(entry);
            entry_host.eq_ignore_ascii_case(host) && (entry_port.is_none() || entry_port == port)
        })
    }

    /// Checks a URL's host before a request: IP literals and `localhost` names are judged here,
    /// other names when they resolve.
    pub fn check_url(&self, url: &Url) -> Result<(), Error> {
        if self.private_allowed {
            return Ok(());
        }
        let port = url.port_or_known_default();
        let refused = |reason: &str| Error::AddressNotAllowed {
            url: url.as_str().to_owned(),
            reason: reason.to_owned(),
        };
        match url.host() {
            None => Err(refused("the URL has no host")),
            Some(_) if self.allowlisted(url.host_str().unwrap_or_default(), port) => Ok(()),
            Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
                Err(refused(non_public_reason(IpAddr::V4(ip))))
            }
            Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
                Err(refused(non_public_reason(IpAddr::V6(ip))))
            }
            Some(url::Host::Domain(name)) if is_localhost_name(name) => {
                Err(refused("it names this host (localhost)"))
            }
            Some(_) => Ok(()),
        }
    }

    /// Checks a registry host (`host[:port]`, as in an image reference) like
    /// [`AddressPolicy::check_url`].
    pub fn check_registry_host(&self, host_port: &str) -> Result<(), Error> {
        let url = Url::parse(&format!("https://{host_port}/"))
            .map_err(|e| Error::Config(format!("registry host {host_port:?}: {e}")))?;
        self.check_url(&url)
    }

    /// The addresses of `name` this policy lets a connection use.
    pub fn filter_resolved(
        &self,
        name: &str,
        addresses: impl IntoIterator<Item = SocketAddr>,
    ) -> Vec<SocketAddr> {
        if self.private_allowed || self.allowlisted(name, None) {
            return addresses.into_iter().collect();
        }
        addresses
            .into_iter()
            .filter(|a| is_public(a.ip()) || self.allowlisted(&a.ip().to_string(), Some(a.port())))
            .collect()
    }
}

/// `host[:port]` → (`host`, port); brackets come off IPv6 hosts.
fn split_host_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn is_localhost_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// Whether `ip` is a globally routable unicast address (not loopback, private, link-local,
/// shared, reserved, documentation, multicast or unspecified; IPv4 inside IPv6 judged as IPv4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network"
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // shared (carrier-grade NAT)
        || (a == 169 && b == 254)              // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 88 && c == 99)    // 6to4 relay anycast
        || (a == 192 && b == 168)              // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|x| *x == 0) {
        return is_public_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6].iter().all(|x| *x == 0)     // IPv4-compatible (deprecated)
        || (s[0] & 0xfe00) == 0xfc00           // unique local
        || (s[0] & 0xffc0) == 0xfe80           // link-local
        || (s[0] & 0xffc0) == 0xfec0           // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00           // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8)  // documentation
        || (s[0] == 0x0100 && s[1..4].iter().all(|x| *x == 0)) // discard
        || s[0] == 0x2002) // 6to4: may carry a private IPv4 address
}

fn non_public_reason(ip: IpAddr) -> &'static str {
    if ip.is_loopback() {
        "it is a loopback address of this host"
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_link_local())
        || matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
    {
        "it is a link-local address (cloud metadata lives there)"
    } else {
        "it is not a public address (private, shared, reserved or multicast)"
    }
}

/// A resolver that drops the addresses a policy refuses, so a name cannot lead a connection
/// to a private address (DNS rebinding included: every connection resolves anew).
#[derive(Clone, Debug)]
pub(crate) struct PolicyResolver {
    policy: Arc<AddressPolicy>,
}

impl PolicyResolver {
    /// A resolver enforcing `policy`.
    pub(crate) fn new(policy: AddressPolicy) -> Self {
        PolicyResolver {
            policy: Arc::new(policy),
        }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = policy.filter_resolved(&host, resolved);
            if allowed.is_empty() {
                let message = format!(
                    "{host} resolves to no public address; this server reaches private, loopback and link-local addresses only for hosts its operator lists in {ALLOWLIST_VARIABLE}"
                );
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    message,
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            let addresses: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn non_public_ranges_are_refused_and_public_ones_pass() {
        for private in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.9",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2002:a00:1::1",
            "100::1",
        ] {
            assert!(!is_public(ip(private)), "{private} passed");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip(public)), "{public} refused");
        }
    }

    #[test]
    fn urls_are_checked_by_literal_and_allowlist() {
        let policy = AddressPolicy::public_only(vec!["127.0.0.1:5000".into(), "reg.lan".into()]);
        let check = |u: &str| {
            policy.check_url(
                &Url::parse(u)
                    .unwrap_or_else(|_| Url::parse("http://x").unwrap_or_else(|_| unreachable!())),
            )
        };
        for refused in [
            "http://127.0.0.1:5001/v2/",
            "http://169.254.169.254/computeMetadata/v1/",
            "http://[::1]:5000/",
            "https://10.0.0.1/token",
            "http://localhost:5000/",
            "http://api.localhost/",
            "http://[::ffff:7f00:1]:5000/",
            "http://0x7f.1/",
            "http://2130706433/",
        ] {
            let error = check(refused)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains("not allowed"), "{refused}: {error:?}");
        }
        for allowed in [
            "http://127.0.0.1:5000/v2/",
            "https://reg.lan/v2/",
            "https://reg.lan:8443/v2/",
            "https://registry-1.docker.io/v2/",
            "https://8.8.8.8/",
        ] {
            assert!(check(allowed).is_ok(), "{allowed}");
        }
        assert!(AddressPolicy::default()
            .check_url(&Url::parse("http://127.0.0.1:9/").unwrap_or_else(|_| unreachable!()))
            .is_ok());
    }

    #[test]
    fn resolved_private_addresses_are_dropped_unless_the_name_is_allowlisted() {
        let policy = AddressPolicy::public_only(vec!["registry.internal".into()]);
        let addresses: Vec<SocketAddr> = ["10.0.0.5:0", "93.184.216.34:0", "127.0.0.1:0"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let kept = policy.filter_resolved("rebind.example", addresses.clone());
        assert_eq!(
            kept,
            vec!["93.184.216.34:0".parse().unwrap_or(addresses[1])]
        );
        assert_eq!(
            policy
                .filter_resolved("registry.internal", addresses.clone())
                .len(),
            3
        );
        assert!(policy
            .filter_resolved("only-private.example", addresses[..1].to_vec())
            .is_empty());
    }
}
