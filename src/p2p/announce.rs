//! The metrics endpoint a node announces to its peers, so that one Prometheus job can find
//! every node through any one of them (`GET /api/v1/sd`).
//!
//! The announcement rides in identify's agent version, which every peer receives on each
//! connection anyway: `zerostate/<version> metrics=<url>`. It is there only when
//! `metrics.announce_url` is set. What a peer announces is validated like an address it
//! announces for dialing ([`dialable`]): an `http` or `https` URL whose host is an IP literal
//! our address policy accepts (no DNS names, no private ranges unless
//! `allow_private_addrs`), a non-zero port, a short plain path, and nothing else (no user,
//! query or fragment), at most [`MAX_URL_BYTES`] long; and the host must be the IP address the
//! peer is connected from, so that a peer cannot name a third party's host as a scrape target.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::addrs::dialable;

/// Longest metrics URL announced or accepted, in bytes.
pub const MAX_URL_BYTES: usize = 200;
/// What separates the agent name from the announced URL in the agent version.
const FIELD: &str = " metrics=";

/// Why an announced metrics URL was refused; [`AnnounceError::label`] is its metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// Not a URL of the accepted shape.
    #[error("{0}")]
    Malformed(&'static str),
    /// A well-formed URL whose host our address policy refuses.
    #[error(
        "its host is not an address peers may announce (private, loopback or reserved ranges need allow_private_addrs = true)"
    )]
    Filtered,
    /// A host other than the address the peer is connected from.
    #[error("its host is not the address the peer is connected from")]
    ForeignHost,
}

impl AnnounceError {
    /// The `outcome` label of `zerostate_p2p_metrics_announcements_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Filtered => "filtered",
            Self::ForeignHost => "foreign_host",
        }
    }
}

/// A validated metrics URL: scheme, socket address and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsUrl {
    https: bool,
    addr: SocketAddr,
    path: String,
}

impl MetricsUrl {
    /// Parses and validates `text` as a metrics URL a peer announced (port 0 is refused).
    pub fn parse(text: &str, allow_private: bool) -> Result<Self, AnnounceError> {
        let url = Self::parse_shape(text)?;
        if url.addr.port() == 0 {
            return Err(AnnounceError::Malformed("the port is 0"));
        }
        url.check_host(allow_private)?;
        Ok(url)
    }

    /// Parses and validates this node's own `metrics.announce_url`, where port 0 stands for
    /// the port `/metrics` is served on (see [`MetricsUrl::with_bound_port`]).
    pub fn parse_own(text: &str, allow_private: bool) -> Result<Self, AnnounceError> {
        let url = Self::parse_shape(text)?;
        url.check_host(allow_private)?;
        // Peers must accept it once the port is filled in (up to 4 more digits).
        if url.addr.port() == 0 && url.to_string().len() + 4 > MAX_URL_BYTES {
            return Err(AnnounceError::Malformed(
                "longer than 200 bytes with its port",
            ));
        }
        Ok(url)
    }

    fn parse_shape(text: &str) -> Result<Self, AnnounceError> {
        use AnnounceError::Malformed;
        if text.len() > MAX_URL_BYTES {
            return Err(Malformed("longer than 200 bytes"));
        }
        let url = url::Url::parse(text).map_err(|_| Malformed("not a URL"))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(Malformed("the scheme is not http or https")),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Malformed("it carries a user name or password"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Malformed("it has a query or a fragment"));
        }
        let ip: IpAddr = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.into(),
            Some(url::Host::Ipv6(ip)) => ip.into(),
            _ => return Err(Malformed("its host is not an IP address")),
        };
        let port = url
            .port_or_known_default()
            .ok_or(Malformed("it has no port"))?;
        let path = url.path();
        if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
        {
            return Err(Malformed(
                "its path has characters other than A-Z a-z 0-9 / - _ . ~",
            ));
        }
        Ok(Self {
            https,
            addr: SocketAddr::new(ip, port),
            path: path.to_owned(),
        })
    }

    /// The same filter as for addresses peers announce for dialing.
    fn check_host(&self, allow_private: bool) -> Result<(), AnnounceError> {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) => Protocol::Ip4(ip),
            IpAddr::V6(ip) => Protocol::Ip6(ip),
        };
        // The port does not matter to the policy; 0 (our own, not yet bound) is not dialable.
        let addr = Multiaddr::empty()
            .with(ip)
            .with(Protocol::Tcp(self.addr.port().max(1)));
        if dialable(&addr, allow_private) {
            Ok(())
        } else {
            Err(AnnounceError::Filtered)
        }
    }

    /// `http://<addr>/metrics`: the endpoint of this node's own HTTP server bound to `addr`
    /// (an unspecified address, such as 0.0.0.0, becomes loopback).
    pub fn of_http_server(addr: SocketAddr) -> Self {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            });
        }
        Self {
            https: false,
            addr,
            path: "/metrics".to_owned(),
        }
    }

    /// This URL with port 0 replaced by `port` (the port `/metrics` is served on).
    pub fn with_bound_port(mut self, port: u16) -> Self {
        if self.addr.port() == 0 {
            self.addr.set_port(port);
        }
        self
    }

    /// The host.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// `host:port`, as Prometheus wants a target (IPv6 in brackets).
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &'static str {
        if self.https { "https" } else { "http" }
    }

    /// The path of the metrics endpoint, e.g. `/metrics`.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for MetricsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme(), self.addr, self.path)
    }
}

impl serde::Serialize for MetricsUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The agent version announced through identify: `zerostate/<version>`, followed by
/// ` metrics=<url>` when this node announces its metrics endpoint.
pub fn agent_version(metrics: Option<&MetricsUrl>) -> String {
    let agent = format!("zerostate/{}", env!("CARGO_PKG_VERSION"));
    match metrics {
        Some(url) => format!("{agent}{FIELD}{url}"),
        None => agent,
    }
}

/// The metrics URL a peer announced in its agent version: `None` when it announced none,
/// otherwise the validated URL or why it was refused. `connected_from` says whether the peer
/// has a connection from an IP address: only its own address is accepted, so that it cannot
/// point our Prometheus at a third party's host.
pub fn from_agent(
    agent: &str,
    allow_private: bool,
    connected_from: impl Fn(IpAddr) -> bool,
) -> Option<Result<MetricsUrl, AnnounceError>> {
    let (_, rest) = agent.split_once(FIELD)?;
    // The URL is the rest of the agent, up to the next space (room for later fields).
    let text = rest.split(' ').next().unwrap_or_default();
    Some(MetricsUrl::parse(text, allow_private).and_then(|url| {
        if connected_from(url.ip()) {
            Ok(url)
        } else {
            Err(AnnounceError::ForeignHost)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_url_round_trips_through_the_agent_version() {
        let url = MetricsUrl::parse("http://192.0.2.7:9464/metrics", false).unwrap_err();
        // 192.0.2.0/24 is a documentation range, refused like any reserved address.
        assert_eq!(url, AnnounceError::Filtered);
        let url = MetricsUrl::parse("http://8.8.8.8:9464/metrics", false).unwrap();
        let agent = agent_version(Some(&url));
        assert!(
            agent.starts_with("zerostate/")
                && agent.ends_with(" metrics=http://8.8.8.8:9464/metrics")
        );
        let from_google = |ip: IpAddr| ip == IpAddr::from([8, 8, 8, 8]);
        assert_eq!(
            from_agent(&agent, false, from_google),
            Some(Ok(url.clone()))
        );
        assert_eq!(
            from_agent(&agent, false, |_| false),
            Some(Err(AnnounceError::ForeignHost))
        );
        assert_eq!(url.target(), "8.8.8.8:9464");
        assert_eq!((url.scheme(), url.path()), ("http", "/metrics"));
        assert_eq!(from_agent(&agent_version(None), false, from_google), None);
        assert_eq!(from_agent("rust-libp2p/0.1", false, from_google), None);
    }

    #[test]
    fn private_hosts_need_allow_private_addrs() {
        for text in [
            "http://127.0.0.1:9464/metrics",
            "http://10.0.0.1:1/m",
            "http://[::1]:9464/metrics",
        ] {
            assert_eq!(
                MetricsUrl::parse(text, false),
                Err(AnnounceError::Filtered),
                "{text}"
            );
            assert!(MetricsUrl::parse(text, true).is_ok(), "{text}");
        }
        let v6 = MetricsUrl::parse("https://[::1]:9464/metrics", true).unwrap();
        assert_eq!(v6.target(), "[::1]:9464");
        assert_eq!(v6.to_string(), "https://[::1]:9464/metrics");
    }

    #[test]
    fn anything_but_a_plain_ip_url_is_refused_as_malformed() {
        let long = format!("http://8.8.8.8:1/{}", "a".repeat(MAX_URL_BYTES));
        for text in [
            "",
            "metrics",
            "ftp://8.8.8.8:21/metrics",
            "http://example.com:9464/metrics",
            "http://user:pw@8.8.8.8:9464/metrics",
            "http://8.8.8.8:9464/metrics?x=1",
            "http://8.8.8.8:9464/metrics#top",
            "http://8.8.8.8:9464/me%0Atrics",
            "http://8.8.8.8:0/metrics",
            long.as_str(),
        ] {
            let refused = MetricsUrl::parse(text, true);
            assert!(
                matches!(refused, Err(AnnounceError::Malformed(_))),
                "{text}: {refused:?}"
            );
        }
        // Without a port, http's default applies.
        let url = MetricsUrl::parse("http://8.8.8.8/metrics", false).unwrap();
        assert_eq!(url.target(), "8.8.8.8:80");
    }

    #[test]
    fn our_own_url_may_leave_the_port_to_the_http_server() {
        assert!(MetricsUrl::parse("http://127.0.0.1:0/metrics", true).is_err());
        let own = MetricsUrl::parse_own("http://127.0.0.1:0/metrics", true).unwrap();
        assert_eq!(own.with_bound_port(9464).target(), "127.0.0.1:9464");
        let fixed = MetricsUrl::parse_own("http://127.0.0.1:9100/metrics", true).unwrap();
        assert_eq!(fixed.with_bound_port(9464).target(), "127.0.0.1:9100");
        assert_eq!(
            MetricsUrl::parse_own("http://127.0.0.1:0/metrics", false),
            Err(AnnounceError::Filtered)
        );
        // Our own URL must still fit once its port is filled in, or peers would refuse it.
        let base = "http://127.0.0.1:0/";
        let near_limit = format!("{base}{}", "a".repeat(MAX_URL_BYTES - base.len()));
        assert!(MetricsUrl::parse_own(&near_limit, true).is_err());
        let fits = format!("{base}{}", "a".repeat(MAX_URL_BYTES - base.len() - 4));
        let own = MetricsUrl::parse_own(&fits, true)
            .unwrap()
            .with_bound_port(65535);
        assert!(MetricsUrl::parse(&own.to_string(), true).is_ok());
    }
}
