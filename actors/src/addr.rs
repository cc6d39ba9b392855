//! Node URLs: [`NodeAddr`], the one grammar the locker and the command-line
//! tool read them with, its typed error [`ParseNodeError`], and
//! [`redact_url`] for logs.
//!
//! The URL itself is taken apart by the `url` crate (the one fred parses its
//! own URLs with); this module only adds what is ours: the schemes and their
//! default ports, the `host,host` list form, and the checks that turn a
//! URL into a node the engine can use.

use std::fmt;

use url::{Host, Url};

/// How one configured node reaches Valkey.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One instance.
    Standalone,
    /// A Valkey Cluster, through its seed nodes: keys spread over its masters.
    Cluster,
    /// A primary found through Sentinel, by service name.
    Sentinel {
        /// The service (primary) name the sentinels know it by.
        service: String,
    },
}

/// One node's address, parsed from its URL by [`NodeAddr::parse`] (the
/// locker and the command-line tool read node URLs the same way). Its
/// `Debug` hides the password.
///
/// # Examples
/// ```
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::{NodeAddr, Topology};
///
/// let a = NodeAddr::parse("valkey-cluster://10.0.0.1:7000,10.0.0.2:7000").unwrap();
/// assert_eq!(a.topology, Topology::Cluster);
/// assert_eq!(a.hosts.len(), 2);
/// assert!(!a.tls);
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeAddr {
    /// The URL as given.
    pub url: String,
    /// Standalone, cluster or Sentinel.
    pub topology: Topology,
    /// The instance, the cluster's seed nodes, or the sentinels, in the order
    /// written (the URL's host first, then the others).
    pub hosts: Vec<(String, u16)>,
    /// The user name, if any (percent-decoded).
    pub username: Option<String>,
    /// The password, if any (percent-decoded).
    pub password: Option<String>,
    /// The database number, if any (never set for a cluster).
    pub db: Option<u8>,
    /// `rediss://` and the other TLS schemes.
    pub tls: bool,
}

impl fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeAddr")
            .field("url", &redact_url(&self.url))
            .field("topology", &self.topology)
            .field("hosts", &self.hosts)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .finish()
    }
}

/// A node URL that [`NodeAddr::parse`] refused: the URL (its password
/// replaced by `***`) and what is wrong with it.
///
/// # Examples
/// ```
/// # use valkeylock_actors as valkeylock;
/// use valkeylock::{NodeAddr, NodeUrlErrorKind};
///
/// let e = NodeAddr::parse("redis://u:secret@host:99999").unwrap_err();
/// assert_eq!(e.url(), "redis://u:***@host:99999");
/// assert!(matches!(e.kind(), NodeUrlErrorKind::InvalidPort(_)));
/// println!("{e}"); // invalid node URL "redis://u:***@host:99999": …
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseNodeError {
    url: String,
    kind: NodeUrlErrorKind,
}

impl ParseNodeError {
    /// The URL as given, with the password of its `user:password@` part
    /// replaced by `***`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What is wrong with it.
    pub fn kind(&self) -> &NodeUrlErrorKind {
        &self.kind
    }
}

impl fmt::Display for ParseNodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid node URL {:?}: {}", self.url, self.kind)
    }
}

impl std::error::Error for ParseNodeError {}

/// What is wrong with a node URL (see [`NodeAddr::parse`] for the grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeUrlErrorKind {
    /// No `scheme://` in front (`127.0.0.1:6379` instead of
    /// `redis://127.0.0.1:6379`).
    MissingScheme,
    /// A scheme this library does not read (`http`, `redis+unix`…).
    UnsupportedScheme(String),
    /// A TLS scheme (`rediss://`, `valkeys://`…) in a build without the
    /// `tls` cargo feature.
    TlsNotEnabled,
    /// Not a well-formed URL; the text says where (from the `url` crate).
    Syntax(String),
    /// No host, or an empty one in a host list.
    MissingHost,
    /// A port that is not a number from 1 to 65535.
    InvalidPort(String),
    /// A database that is not a number from 0 to 255 (or, for a cluster,
    /// anything but 0).
    InvalidDatabase(String),
    /// More path than the scheme takes (the text is the path).
    UnexpectedPath(String),
    /// A Sentinel URL without the service name of the primary.
    MissingServiceName,
    /// A standalone URL naming more than one host (list one URL per
    /// instance instead).
    SeveralHosts,
    /// A query parameter this library does not read, or one that does not
    /// apply to the URL's scheme (the text is its name).
    UnsupportedParameter(String),
    /// A `#fragment`.
    UnexpectedFragment,
    /// A user name or password that is not UTF-8 once percent-decoded.
    InvalidCredentials,
}

impl fmt::Display for NodeUrlErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeUrlErrorKind::MissingScheme => f.write_str(
                "missing scheme (expected redis://, valkey://, valkey-cluster:// or valkey-sentinel://)",
            ),
            NodeUrlErrorKind::UnsupportedScheme(s) => write!(
                f,
                "unsupported scheme {s:?} (expected redis://, valkey://, valkey-cluster:// or valkey-sentinel://, or their TLS forms rediss:// …)"
            ),
            NodeUrlErrorKind::TlsNotEnabled => {
                f.write_str("TLS URLs need the `tls` cargo feature of valkeylock")
            }
            NodeUrlErrorKind::Syntax(s) => write!(f, "not a valid URL: {s}"),
            NodeUrlErrorKind::MissingHost => f.write_str("missing host"),
            NodeUrlErrorKind::InvalidPort(p) => {
                write!(f, "bad port {p:?} (a number from 1 to 65535)")
            }
            NodeUrlErrorKind::InvalidDatabase(db) => write!(
                f,
                "bad database {db:?} (a number from 0 to 255; a cluster has only database 0)"
            ),
            NodeUrlErrorKind::UnexpectedPath(p) => write!(f, "unexpected path {p:?}"),
            NodeUrlErrorKind::MissingServiceName => f.write_str(
                "a Sentinel URL needs the service name: valkey-sentinel://host:26379/mymaster or ?sentinelServiceName=mymaster",
            ),
            NodeUrlErrorKind::SeveralHosts => f.write_str(
                "one host per redis:// URL (list several URLs for several instances, or use valkey-cluster://)",
            ),
            NodeUrlErrorKind::UnsupportedParameter(p) => write!(
                f,
                "unsupported query parameter {p:?} (this library reads `node` and `sentinelServiceName`; separate Sentinel credentials are not supported)"
            ),
            NodeUrlErrorKind::UnexpectedFragment => f.write_str("fragments (#…) are not supported"),
            NodeUrlErrorKind::InvalidCredentials => {
                f.write_str("the user name or password is not UTF-8 once percent-decoded")
            }
        }
    }
}

/// The schemes, and what each one means.
fn scheme(name: &str) -> Option<(TopologyKind, bool)> {
    Some(match name {
        "redis" | "valkey" => (TopologyKind::Standalone, false),
        "rediss" | "valkeys" => (TopologyKind::Standalone, true),
        "redis-cluster" | "valkey-cluster" => (TopologyKind::Cluster, false),
        "rediss-cluster" | "valkeys-cluster" => (TopologyKind::Cluster, true),
        "redis-sentinel" | "valkey-sentinel" => (TopologyKind::Sentinel, false),
        "rediss-sentinel" | "valkeys-sentinel" => (TopologyKind::Sentinel, true),
        _ => return None,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TopologyKind {
    Standalone,
    Cluster,
    Sentinel,
}

impl NodeAddr {
    /// Parses one node URL. The grammar (the same as fred's
    /// `Config::from_url`, plus a comma-separated host list):
    ///
    /// ```text
    /// standalone: redis|valkey[s]://[user[:password]@]host[:port][/db]
    /// cluster:    redis|valkey[s]-cluster://[user[:password]@]host[:port][,host[:port]…][/0][?node=host:port…]
    /// sentinel:   redis|valkey[s]-sentinel://[user[:password]@]host[:port][,host[:port]…]/service[/db][?node=host:port…]
    ///             redis|valkey[s]-sentinel://[user[:password]@]host[:port][/db]?sentinelServiceName=service[&node=host:port…]
    /// ```
    ///
    /// - `redis` and `valkey` are the same; an `s` after either (`rediss`,
    ///   `valkeys-cluster`…) means TLS (the `tls` cargo feature).
    /// - Ports default to 6379, and to 26379 for sentinels. A host is a name,
    ///   an IPv4 address or an IPv6 address in brackets (`[::1]:6380`).
    /// - User name and password are percent-decoded (`p%40ss` is `p@ss`).
    ///   For Sentinel they are the primary's, and are also used at the
    ///   sentinels.
    /// - More hosts (cluster seed nodes, sentinels) go after the first one,
    ///   separated by commas, or in `node=host:port` query parameters, fred's
    ///   form; both may be mixed.
    /// - A database is a number from 0 to 255; a cluster has only database
    ///   0, so `/0` is the only path it takes.
    /// - Other query parameters, `#fragments` and `redis+unix://` sockets are
    ///   refused rather than ignored: a parameter that changed nothing would
    ///   be a surprise.
    ///
    /// # Errors
    /// A [`ParseNodeError`] whose [`kind`](ParseNodeError::kind) names the
    /// part of the URL that is wrong.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::{NodeAddr, Topology};
    /// let a = NodeAddr::parse("valkey-sentinel://:pw@10.0.0.1,10.0.0.2:26380/mymaster").unwrap();
    /// assert_eq!(a.topology, Topology::Sentinel { service: "mymaster".into() });
    /// assert_eq!(a.hosts, [("10.0.0.1".into(), 26379), ("10.0.0.2".into(), 26380)]);
    /// assert!(NodeAddr::parse("127.0.0.1:6379").is_err());
    /// ```
    pub fn parse(url: &str) -> Result<NodeAddr, ParseNodeError> {
        parse(url).map_err(|kind| ParseNodeError {
            url: redact_url(url),
            kind,
        })
    }

    /// The normalized address that ranks this node for key placement:
    /// topology (with the Sentinel service name), the hosts in lower case
    /// with their ports (five digits), sorted, and the database (0 when none
    /// is given), e.g. `standalone 10.0.0.1:06379 db0`; nodes are ranked by
    /// this text.
    /// Scheme spelling (`redis`/`valkey`, TLS or not) and credentials do not
    /// count. Two spellings of one server that normalize differently
    /// (`localhost` and `127.0.0.1`, a proxy's address) rank differently: all
    /// lockers of a name must name the servers the same way.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::NodeAddr;
    ///
    /// let a = NodeAddr::parse("valkey://user:pw@Cache.Example:6380/2").unwrap();
    /// assert_eq!(a.placement_key(), "standalone cache.example:06380 db2");
    /// let b = NodeAddr::parse("redis://cache.example:6380/2").unwrap();
    /// assert_eq!(a.placement_key(), b.placement_key());
    /// ```
    pub fn placement_key(&self) -> String {
        let topology = match &self.topology {
            Topology::Standalone => "standalone".to_owned(),
            Topology::Cluster => "cluster".to_owned(),
            Topology::Sentinel { service } => format!("sentinel/{service}"),
        };
        let mut hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|(h, p)| {
                let h = h.to_ascii_lowercase();
                if h.contains(':') {
                    format!("[{h}]:{p:05}")
                } else {
                    format!("{h}:{p:05}")
                }
            })
            .collect();
        hosts.sort();
        format!("{topology} {} db{}", hosts.join(","), self.db.unwrap_or(0))
    }

    /// The URL as given, with its passwords replaced by `***`, for messages.
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::NodeAddr;
    ///
    /// let a = NodeAddr::parse("redis://app:secret@10.0.0.1:6379").unwrap();
    /// assert_eq!(a.redacted_url(), "redis://app:***@10.0.0.1:6379");
    /// ```
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Where it points, without credentials, for logs and errors.
    ///
    /// # Panics
    /// If [`hosts`](NodeAddr::hosts) is empty, which [`NodeAddr::parse`]
    /// never returns (only a `hosts` emptied by hand is).
    ///
    /// # Examples
    /// ```
    /// # use valkeylock_actors as valkeylock;
    /// use valkeylock::NodeAddr;
    ///
    /// let a = NodeAddr::parse("valkey-sentinel://:pw@10.0.0.1/mymaster").unwrap();
    /// assert_eq!(a.display(), "sentinel mymaster@10.0.0.1:26379");
    /// ```
    pub fn display(&self) -> String {
        let (h, p) = &self.hosts[0];
        let h = if h.contains(':') {
            format!("[{h}]")
        } else {
            h.clone()
        };
        match &self.topology {
            Topology::Standalone => format!("{h}:{p}"),
            Topology::Cluster => format!("cluster {h}:{p}"),
            Topology::Sentinel { service } => format!("sentinel {service}@{h}:{p}"),
        }
    }
}

fn parse(text: &str) -> Result<NodeAddr, NodeUrlErrorKind> {
    // The comma form (`host:1,host:2`) is not a URL: the extra hosts are
    // taken out of the authority first, and read like `node=` values.
    let (text_one_host, listed) = split_host_list(text);
    let url = Url::parse(&text_one_host).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => NodeUrlErrorKind::MissingScheme,
        url::ParseError::EmptyHost => NodeUrlErrorKind::MissingHost,
        url::ParseError::InvalidPort => NodeUrlErrorKind::InvalidPort(port_text(&text_one_host)),
        other => NodeUrlErrorKind::Syntax(other.to_string()),
    })?;
    let (kind, tls) = scheme(url.scheme())
        .ok_or_else(|| NodeUrlErrorKind::UnsupportedScheme(url.scheme().to_owned()))?;
    if tls && !cfg!(feature = "tls") {
        return Err(NodeUrlErrorKind::TlsNotEnabled);
    }
    if url.fragment().is_some() {
        return Err(NodeUrlErrorKind::UnexpectedFragment);
    }
    let default_port = if kind == TopologyKind::Sentinel {
        26379
    } else {
        6379
    };
    let mut hosts = vec![host_port(&url, default_port)?];
    for extra in listed {
        hosts.push(extra_host(&extra, default_port)?);
    }
    let mut service_param = None;
    for (key, value) in url.query_pairs() {
        match (key.as_ref(), kind) {
            ("node", TopologyKind::Cluster | TopologyKind::Sentinel) => {
                hosts.push(extra_host(&value, default_port)?)
            }
            ("node", TopologyKind::Standalone) => return Err(NodeUrlErrorKind::SeveralHosts),
            ("sentinelServiceName", TopologyKind::Sentinel) if !value.is_empty() => {
                service_param = Some(value.into_owned())
            }
            ("sentinelServiceName", TopologyKind::Sentinel) => {
                return Err(NodeUrlErrorKind::MissingServiceName)
            }
            (other, _) => return Err(NodeUrlErrorKind::UnsupportedParameter(other.to_owned())),
        }
    }
    let username = Some(url.username())
        .filter(|u| !u.is_empty())
        .map(decode)
        .transpose()?;
    let password = url
        .password()
        .filter(|p| !p.is_empty())
        .map(decode)
        .transpose()?;
    let unexpected = || NodeUrlErrorKind::UnexpectedPath(url.path().to_owned());
    let segments: Vec<String> = url
        .path_segments()
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(|s| decode(s).map_err(|_| unexpected()))
        .collect::<Result<_, _>>()?;
    let parse_db = |db: &str| {
        db.parse::<u8>()
            .map_err(|_| NodeUrlErrorKind::InvalidDatabase(db.to_owned()))
    };
    let (topology, db) = match kind {
        TopologyKind::Standalone => {
            if hosts.len() != 1 {
                return Err(NodeUrlErrorKind::SeveralHosts);
            }
            match segments.as_slice() {
                [] => (Topology::Standalone, None),
                [db] => (Topology::Standalone, Some(parse_db(db)?)),
                _ => return Err(unexpected()),
            }
        }
        TopologyKind::Cluster => match segments.as_slice() {
            [] => (Topology::Cluster, None),
            [db] if db == "0" => (Topology::Cluster, None),
            [db] => return Err(NodeUrlErrorKind::InvalidDatabase(db.clone())),
            _ => return Err(unexpected()),
        },
        TopologyKind::Sentinel => {
            let (service, db) = match (service_param, segments.as_slice()) {
                (Some(service), []) => (service, None),
                (Some(service), [db]) => (service, Some(parse_db(db)?)),
                (None, [service]) => (service.clone(), None),
                (None, [service, db]) => (service.clone(), Some(parse_db(db)?)),
                (None, []) => return Err(NodeUrlErrorKind::MissingServiceName),
                _ => return Err(unexpected()),
            };
            (Topology::Sentinel { service }, db)
        }
    };
    Ok(NodeAddr {
        url: text.to_owned(),
        topology,
        hosts,
        username,
        password,
        db,
        tls,
    })
}

/// Takes the hosts after the first out of a `scheme://[userinfo@]h1,h2,…`
/// authority: the URL with only `h1`, and the others.
fn split_host_list(text: &str) -> (String, Vec<String>) {
    let Some((scheme, rest)) = text.split_once("://") else {
        return (text.to_owned(), Vec::new());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let hosts_at = authority.rfind('@').map_or(0, |at| at + 1);
    let (userinfo, hostlist) = authority.split_at(hosts_at);
    match hostlist.split_once(',') {
        None => (text.to_owned(), Vec::new()),
        Some((first, others)) => (
            format!("{scheme}://{userinfo}{first}{tail}"),
            others.split(',').map(str::to_owned).collect(),
        ),
    }
}

/// The host and port of a parsed URL. IPv6 addresses lose their brackets.
fn host_port(url: &Url, default_port: u16) -> Result<(String, u16), NodeUrlErrorKind> {
    let host = match url.host() {
        Some(Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(Host::Ipv4(a)) => a.to_string(),
        Some(Host::Ipv6(a)) => a.to_string(),
        _ => return Err(NodeUrlErrorKind::MissingHost),
    };
    let port = match url.port() {
        None => default_port,
        Some(0) => return Err(NodeUrlErrorKind::InvalidPort("0".into())),
        Some(p) => p,
    };
    Ok((host, port))
}

/// One more host (`host[:port]`, from the comma list or a `node=` value),
/// read by the same URL parser.
fn extra_host(text: &str, default_port: u16) -> Result<(String, u16), NodeUrlErrorKind> {
    if text.is_empty() {
        return Err(NodeUrlErrorKind::MissingHost);
    }
    if text.contains(['@', '/', '?', '#']) {
        return Err(NodeUrlErrorKind::Syntax(format!(
            "{text:?}: expected host[:port]"
        )));
    }
    let probe = format!("redis://{text}");
    let url = Url::parse(&probe).map_err(|e| match e {
        url::ParseError::EmptyHost => NodeUrlErrorKind::MissingHost,
        url::ParseError::InvalidPort => NodeUrlErrorKind::InvalidPort(port_text(&probe)),
        other => NodeUrlErrorKind::Syntax(format!("{text:?}: {other}")),
    })?;
    host_port(&url, default_port)
}

/// The port as written, for an error message: what follows the last `:` of
/// the authority (after an IPv6 literal's `]`).
fn port_text(text: &str) -> String {
    let rest = text.split_once("://").map_or(text, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_v6 = hostport.rsplit_once(']').map_or(hostport, |(_, p)| p);
    after_v6
        .rsplit_once(':')
        .map_or(String::new(), |(_, p)| p.to_owned())
}

fn decode(text: &str) -> Result<String, NodeUrlErrorKind> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| NodeUrlErrorKind::InvalidCredentials)
}

/// `url` with the password of its `user:password@` part, and the value of
/// a `sentinelPassword` query parameter, replaced by `***` (the rest as
/// given), for logs, `Debug` and errors.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => {
            let (userinfo, hosts) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***{hosts}"),
                None => authority.to_owned(),
            }
        }
        None => authority.to_owned(),
    };
    format!("{scheme}://{authority}{}", redact_query(tail))
}

/// `sentinelPassword=…` (fred's separate Sentinel password) as `***`.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("sentinelPassword") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    format!("{path}?{}{fragment}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(host: &str, port: u16) -> (String, u16) {
        (host.to_owned(), port)
    }

    fn sentinel(service: &str) -> Topology {
        Topology::Sentinel {
            service: service.to_owned(),
        }
    }

    /// URL → topology, hosts, user, password, database.
    #[test]
    fn grammar() {
        type Want = (
            Topology,
            Vec<(String, u16)>,
            Option<&'static str>,
            Option<&'static str>,
            Option<u8>,
        );
        let cases: Vec<(&str, Want)> = vec![
            (
                "redis://127.0.0.1:7000",
                (
                    Topology::Standalone,
                    vec![h("127.0.0.1", 7000)],
                    None,
                    None,
                    None,
                ),
            ),
            (
                "redis://localhost",
                (
                    Topology::Standalone,
                    vec![h("localhost", 6379)],
                    None,
                    None,
                    None,
                ),
            ),
            (
                "REDIS://Cache.Example:6380/",
                (
                    Topology::Standalone,
                    vec![h("Cache.Example", 6380)],
                    None,
                    None,
                    None,
                ),
            ),
            (
                "valkey://user:p%40ss@localhost/3",
                (
                    Topology::Standalone,
                    vec![h("localhost", 6379)],
                    Some("user"),
                    Some("p@ss"),
                    Some(3),
                ),
            ),
            (
                "redis://:secret@[::1]:6380",
                (
                    Topology::Standalone,
                    vec![h("::1", 6380)],
                    None,
                    Some("secret"),
                    None,
                ),
            ),
            (
                "redis://user@h",
                (
                    Topology::Standalone,
                    vec![h("h", 6379)],
                    Some("user"),
                    None,
                    None,
                ),
            ),
            // An unescaped `@` in the password: the last one ends the credentials.
            (
                "redis://:p@ss@h:1",
                (
                    Topology::Standalone,
                    vec![h("h", 1)],
                    None,
                    Some("p@ss"),
                    None,
                ),
            ),
            // A malformed escape is kept as written (as fred reads it).
            (
                "redis://u:%zz@h",
                (
                    Topology::Standalone,
                    vec![h("h", 6379)],
                    Some("u"),
                    Some("%zz"),
                    None,
                ),
            ),
            (
                "valkey-cluster://127.0.0.1:7000,127.0.0.1:7001",
                (
                    Topology::Cluster,
                    vec![h("127.0.0.1", 7000), h("127.0.0.1", 7001)],
                    None,
                    None,
                    None,
                ),
            ),
            // fred's form, and the database 0 a cluster has.
            (
                "redis-cluster://u:p@a:30001/0?node=b:30002&node=c:30003",
                (
                    Topology::Cluster,
                    vec![h("a", 30001), h("b", 30002), h("c", 30003)],
                    Some("u"),
                    Some("p"),
                    None,
                ),
            ),
            (
                "redis-cluster://a,[::1]:7001?node=c",
                (
                    Topology::Cluster,
                    vec![h("a", 6379), h("::1", 7001), h("c", 6379)],
                    None,
                    None,
                    None,
                ),
            ),
            (
                "valkey-sentinel://:pw@127.0.0.1,127.0.0.1:26380/mymaster/2",
                (
                    sentinel("mymaster"),
                    vec![h("127.0.0.1", 26379), h("127.0.0.1", 26380)],
                    None,
                    Some("pw"),
                    Some(2),
                ),
            ),
            // fred's form: the service as a parameter, the path is the database.
            (
                "redis-sentinel://u:p@s1:26379/1?sentinelServiceName=fakename&node=s2:26380",
                (
                    sentinel("fakename"),
                    vec![h("s1", 26379), h("s2", 26380)],
                    Some("u"),
                    Some("p"),
                    Some(1),
                ),
            ),
            (
                "redis-sentinel://s1?sentinelServiceName=m",
                (sentinel("m"), vec![h("s1", 26379)], None, None, None),
            ),
        ];
        for (url, want) in cases {
            let a = NodeAddr::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let got = (
                a.topology.clone(),
                a.hosts.clone(),
                a.username.as_deref(),
                a.password.as_deref(),
                a.db,
            );
            assert_eq!(got, want, "{url}");
            assert_eq!(a.url, url);
            assert!(!a.tls);
        }
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        use NodeUrlErrorKind::*;
        let cases: Vec<(&str, NodeUrlErrorKind)> = vec![
            ("127.0.0.1:6379", MissingScheme),
            ("", MissingScheme),
            ("localhost:6379", UnsupportedScheme("localhost".into())),
            ("http://x", UnsupportedScheme("http".into())),
            (
                "redis+unix:///run/valkey/valkey.sock",
                UnsupportedScheme("redis+unix".into()),
            ),
            ("redis://", MissingHost),
            ("redis://u:p@", MissingHost),
            ("redis://h:0", InvalidPort("0".into())),
            ("redis://h:99999", InvalidPort("99999".into())),
            ("redis://h:x", InvalidPort("x".into())),
            ("redis://h/300", InvalidDatabase("300".into())),
            ("redis://h/x", InvalidDatabase("x".into())),
            ("redis://h/1/2", UnexpectedPath("/1/2".into())),
            ("redis://h?x=1", UnsupportedParameter("x".into())),
            ("redis://h?node=g:1", SeveralHosts),
            (
                "redis://h?sentinelServiceName=m",
                UnsupportedParameter("sentinelServiceName".into()),
            ),
            ("redis://h#frag", UnexpectedFragment),
            ("redis://a:1,b:2", SeveralHosts),
            ("redis-cluster://h:7000/1", InvalidDatabase("1".into())),
            ("redis-cluster://h:7000/0/x", UnexpectedPath("/0/x".into())),
            ("redis-cluster://h:7000,", MissingHost),
            ("redis-cluster://h:7000,g:0", InvalidPort("0".into())),
            (
                "redis-cluster://h:7000?node=g:70000",
                InvalidPort("70000".into()),
            ),
            ("redis-cluster://h?node=", MissingHost),
            (
                "redis-cluster://h?node=u@g:1",
                Syntax("\"u@g:1\": expected host[:port]".into()),
            ),
            ("redis-sentinel://h:26379", MissingServiceName),
            (
                "redis-sentinel://h?sentinelServiceName=",
                MissingServiceName,
            ),
            ("redis-sentinel://h:26379/m/x", InvalidDatabase("x".into())),
            ("redis-sentinel://h/m/1/2", UnexpectedPath("/m/1/2".into())),
            (
                "redis-sentinel://h/m/1?sentinelServiceName=m",
                UnexpectedPath("/m/1".into()),
            ),
            (
                "redis-sentinel://h/m?sentinelPassword=hunter2",
                UnsupportedParameter("sentinelPassword".into()),
            ),
            ("redis://u:%FF@h", InvalidCredentials),
            #[cfg(not(feature = "tls"))]
            ("rediss://h", TlsNotEnabled),
            #[cfg(not(feature = "tls"))]
            ("valkeys-cluster://h", TlsNotEnabled),
        ];
        for (url, want) in cases {
            match NodeAddr::parse(url) {
                Err(e) => assert_eq!(e.kind(), &want, "{url}: {e}"),
                Ok(a) => panic!("{url}: accepted as {a:?}"),
            }
        }
        // The error names the URL, without its passwords.
        let e =
            NodeAddr::parse("redis-sentinel://u:s3cret@h/m?sentinelPassword=hunter2").unwrap_err();
        assert_eq!(e.url(), "redis-sentinel://u:***@h/m?sentinelPassword=***");
        assert!(!e.to_string().contains("s3cret") && !e.to_string().contains("hunter2"));
        assert_eq!(
            NodeAddr::parse("redis://h:0").unwrap_err().to_string(),
            "invalid node URL \"redis://h:0\": bad port \"0\" (a number from 1 to 65535)"
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_schemes() {
        for url in [
            "rediss://h",
            "valkeys://h",
            "rediss-cluster://h:7000",
            "valkeys-sentinel://h/m",
        ] {
            assert!(NodeAddr::parse(url).unwrap().tls, "{url}");
        }
    }

    /// Every URL fred's own `Config::from_url` reads the same way, read the
    /// same way here: what a fred user writes works.
    #[test]
    fn reads_what_fred_reads() {
        use fred::types::config::{Config, ServerConfig};
        let urls = [
            "redis://127.0.0.1:7000",
            "redis://foo.com",
            "valkey://foo.com:6380/",
            "redis://username:password@foo.com:6379/1",
            "valkey://user:p%40ss%3Aw@localhost/3",
            "redis://:secret@h:6380",
            "redis://user@h",
            "redis://u:%zz@h",
            "redis-cluster://username:password@foo.com:30001?node=bar.com:30002&node=baz.com:30003",
            "valkey-cluster://foo.com:30001",
            "redis-sentinel://username:password@foo.com:6379/1?sentinelServiceName=fakename&node=foo.com:30001&node=bar.com:30002",
            "valkey-sentinel://foo.com?sentinelServiceName=fakename",
        ];
        for url in urls {
            let ours = NodeAddr::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let theirs = Config::from_url(url).unwrap_or_else(|e| panic!("fred, {url}: {e}"));
            let servers = |hosts: &[fred::types::config::Server]| {
                let mut v: Vec<(String, u16)> =
                    hosts.iter().map(|s| (s.host.to_string(), s.port)).collect();
                v.sort();
                v
            };
            let (topology, mut hosts) = match &theirs.server {
                ServerConfig::Centralized { server } => {
                    (Topology::Standalone, servers(std::slice::from_ref(server)))
                }
                ServerConfig::Clustered { hosts, .. } => (Topology::Cluster, servers(hosts)),
                ServerConfig::Sentinel {
                    hosts,
                    service_name,
                    ..
                } => (
                    Topology::Sentinel {
                        service: service_name.clone(),
                    },
                    servers(hosts),
                ),
            };
            hosts.sort();
            let mut our_hosts = ours.hosts.clone();
            our_hosts.sort();
            assert_eq!(ours.topology, topology, "{url}");
            assert_eq!(our_hosts, hosts, "{url}");
            assert_eq!(ours.username, theirs.username, "{url}");
            assert_eq!(ours.password, theirs.password, "{url}");
            let their_db = match ours.topology {
                // fred ignores a cluster URL's path.
                Topology::Cluster => None,
                _ => theirs.database,
            };
            assert_eq!(ours.db, their_db, "{url}");
        }
    }

    #[test]
    fn placement_and_display() {
        let key = |u: &str| NodeAddr::parse(u).unwrap().placement_key();
        assert_eq!(
            key("valkey-cluster://B:7001,a:7000"),
            key("redis-cluster://A:7000?node=b:7001")
        );
        assert_eq!(key("redis://h/0"), key("valkey://u:p@H"));
        assert_ne!(key("redis://h/1"), key("redis://h"));
        assert_ne!(key("redis-sentinel://h/m1"), key("redis-sentinel://h/m2"));
        assert_eq!(
            key("redis-sentinel://h/m2"),
            key("redis-sentinel://h?sentinelServiceName=m2")
        );
        assert_eq!(key("redis://[::1]:6380"), "standalone [::1]:06380 db0");
        assert_eq!(key("redis://[0:0::1]:6380"), "standalone [::1]:06380 db0");
        let shown = |u: &str| NodeAddr::parse(u).unwrap().display();
        assert_eq!(shown("valkey-cluster://a:7000,b:7001"), "cluster a:7000");
        assert_eq!(shown("redis://u:pw@[::1]:6380/2"), "[::1]:6380");
        assert_eq!(shown("redis-sentinel://s/m"), "sentinel m@s:26379");
    }

    #[test]
    fn redaction() {
        let cases = [
            ("no scheme", "no scheme"),
            ("redis://user@h", "redis://user@h"),
            ("redis://h:1/2", "redis://h:1/2"),
            ("redis://user:s3cret@h:1/2", "redis://user:***@h:1/2"),
            ("redis://:p@ss@h", "redis://:***@h"),
            (
                "valkey-sentinel://:p%40ss@10.0.0.1:26379,10.0.0.2/mymaster",
                "valkey-sentinel://:***@10.0.0.1:26379,10.0.0.2/mymaster",
            ),
            (
                "redis-sentinel://h/m?node=x:1&sentinelPassword=pw#f",
                "redis-sentinel://h/m?node=x:1&sentinelPassword=***#f",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want);
        }
        let a = NodeAddr::parse("redis://u:hunter2@h:1").unwrap();
        let shown = format!("{a:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(a.redacted_url(), "redis://u:***@h:1");
        assert_eq!(a.password.as_deref(), Some("hunter2"));
    }
}
