//! Why connecting failed: fred's errors sorted into the public
//! [`ConnectionErrorKind`] (and whether a retry could help), and the verdict
//! `Engine::start` gives on the first connection attempt to every node.
//! Pure: no actors, no I/O; table-tested.

use std::sync::Arc;

use fred::error::ErrorKind;

use crate::error::{ConnectionErrorKind, Error};
use crate::options::Settings;

/// The cause of a connection error, as `std::error::Error::source` gives it.
pub(crate) type Source = Arc<dyn std::error::Error + Send + Sync>;

/// One node's failed connection attempt.
#[derive(Debug, Clone)]
pub(crate) struct NodeFailure {
    pub(crate) kind: ConnectionErrorKind,
    /// No retry will fix it: `Locker::connect` fails at once.
    pub(crate) permanent: bool,
    /// The error as fred (or the actor system) reported it.
    pub(crate) source: Source,
}

impl NodeFailure {
    /// A failure fred reported.
    pub(crate) fn from_fred(e: fred::error::Error) -> NodeFailure {
        let (kind, permanent) = classify(e.kind(), e.details());
        NodeFailure {
            kind,
            permanent,
            source: Arc::new(e),
        }
    }

    /// A node actor that could not be started (not the server's doing).
    pub(crate) fn not_started(detail: String) -> NodeFailure {
        NodeFailure {
            kind: ConnectionErrorKind::Other,
            permanent: true,
            source: Arc::new(Message(detail)),
        }
    }
}

/// A bare message as an error source.
#[derive(Debug)]
pub(crate) struct Message(pub(crate) String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// Server replies (upper-cased, anywhere in fred's details) that decide the
/// kind whatever fred's own kind says: fred marks `NOAUTH` and `WRONGPASS`
/// as `Auth`, but `NOPERM` and unknown commands as `Unknown`, and an error
/// can come back re-wrapped (the Sentinel watcher keeps the last kind).
const REPLIES: &[(&str, ConnectionErrorKind)] = &[
    ("WRONGPASS", ConnectionErrorKind::Authentication),
    ("NOAUTH", ConnectionErrorKind::Authentication),
    (
        "INVALIDUSERNAMEPASSWORD",
        ConnectionErrorKind::Authentication,
    ),
    ("NOPERM", ConnectionErrorKind::Permission),
    ("NOPROTO", ConnectionErrorKind::Protocol),
    ("UNKNOWN COMMAND", ConnectionErrorKind::Protocol),
    ("UNKNOWN SUBCOMMAND", ConnectionErrorKind::Protocol),
];

/// The kind of a failed connection attempt, and whether it is permanent (no
/// retry will fix it, so `Locker::connect` fails at once instead of waiting
/// for the node): wrong credentials, missing permissions, a server without
/// RESP3 or tracking, a client that cannot be configured. The rest (refused,
/// reset, timed out, a TLS handshake that failed) may pass: the node is
/// retried in the background.
pub(crate) fn classify(kind: &ErrorKind, details: &str) -> (ConnectionErrorKind, bool) {
    let upper = details.to_ascii_uppercase();
    if let Some((_, k)) = REPLIES.iter().find(|(reply, _)| upper.contains(reply)) {
        return (*k, true);
    }
    match kind {
        ErrorKind::Auth => (ConnectionErrorKind::Authentication, true),
        // Our TLS settings (`tls_ca_file`), a cluster URL at a server
        // without cluster support, a feature fred lacks.
        ErrorKind::Config | ErrorKind::Url => (ConnectionErrorKind::Configuration, true),
        ErrorKind::Timeout => (ConnectionErrorKind::Timeout, false),
        ErrorKind::Protocol | ErrorKind::Parse => (ConnectionErrorKind::Protocol, false),
        #[cfg(feature = "tls")]
        ErrorKind::Tls => (ConnectionErrorKind::Tls, false),
        // rustls reports a refused certificate through the socket, as an
        // I/O error: only its text tells.
        ErrorKind::IO
            if ["CERTIFICATE", "TLS", "HANDSHAKE"]
                .iter()
                .any(|w| upper.contains(w)) =>
        {
            (ConnectionErrorKind::Tls, false)
        }
        ErrorKind::IO
        | ErrorKind::Canceled
        | ErrorKind::Sentinel
        | ErrorKind::Cluster
        | ErrorKind::Routing => (ConnectionErrorKind::Unreachable, false),
        _ => (ConnectionErrorKind::Other, false),
    }
}

/// The first connection attempt of one node, for `Engine::start`.
#[derive(Debug, Clone)]
pub(crate) enum NodeReport {
    Up,
    Down(NodeFailure),
}

/// What `Locker::connect` answers once every node reported its first
/// attempt (`None`: no report within `connect_timeout`): the first permanent
/// failure; else, when the nodes that are up hold fewer than a majority of
/// each lock's keys, why the others are not up.
pub(crate) fn startup_verdict(
    settings: &Settings,
    reports: &[Option<NodeReport>],
) -> Result<(), Error> {
    let node = |i: usize| settings.nodes[i].redacted_url();
    let mut up = Vec::with_capacity(reports.len());
    let mut down: Vec<(usize, ConnectionErrorKind, Option<Source>, String)> = Vec::new();
    for (i, report) in reports.iter().enumerate() {
        match report {
            Some(NodeReport::Up) => up.push(true),
            Some(NodeReport::Down(failure)) => {
                if failure.permanent {
                    return Err(Error::Connection {
                        kind: failure.kind,
                        node: Some(node(i)),
                        message: refusal(failure.kind).to_owned(),
                        source: Some(failure.source.clone()),
                    });
                }
                down.push((
                    i,
                    failure.kind,
                    Some(failure.source.clone()),
                    failure.source.to_string(),
                ));
                up.push(false);
            }
            None => {
                let waited = crate::duration::format_duration(settings.connect_timeout);
                down.push((
                    i,
                    ConnectionErrorKind::Timeout,
                    None,
                    format!("no answer within {waited}"),
                ));
                up.push(false);
            }
        }
    }
    let reachable = settings.keys_on_live_nodes(&up);
    if reachable >= settings.majority {
        return Ok(());
    }
    let short = format!(
        "only {reachable} of {} keys live on reachable nodes, {} needed",
        settings.total, settings.majority
    );
    // One node down: its error is the cause. Several: each one's, listed;
    // their kind if they agree.
    Err(match down.as_slice() {
        [(i, kind, source, detail)] => Error::Connection {
            kind: *kind,
            node: Some(node(*i)),
            message: if source.is_some() {
                short
            } else {
                format!("{short}: {detail}")
            },
            source: source.clone(),
        },
        _ => {
            let kind = match down.first() {
                Some((_, first, ..)) if down.iter().all(|(_, k, ..)| k == first) => *first,
                _ => ConnectionErrorKind::Unreachable,
            };
            let each: Vec<String> = down
                .iter()
                .map(|(i, _, _, detail)| format!("{}: {detail}", node(*i)))
                .collect();
            Error::Connection {
                kind,
                node: None,
                message: format!("{short} ({})", each.join("; ")),
                source: None,
            }
        }
    })
}

/// What a permanent failure means, in words; the server's own reply is the
/// error's source.
fn refusal(kind: ConnectionErrorKind) -> &'static str {
    match kind {
        ConnectionErrorKind::Authentication => "the server refused the credentials",
        ConnectionErrorKind::Permission => {
            "the user may not run a command the locker needs (see the ACL notes in the README)"
        }
        ConnectionErrorKind::Protocol => {
            "the server lacks what the locker needs (RESP3, CLIENT TRACKING)"
        }
        ConnectionErrorKind::Configuration => "the client cannot be set up with these options",
        _ => "the node cannot be used",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::LockerOptions;
    use ConnectionErrorKind::*;

    #[test]
    fn classification() {
        let cases: Vec<(ErrorKind, &str, ConnectionErrorKind, bool)> = vec![
            (
                ErrorKind::Auth,
                "WRONGPASS invalid username-password pair or user is disabled.",
                Authentication,
                true,
            ),
            (
                ErrorKind::Auth,
                "NOAUTH Authentication required.",
                Authentication,
                true,
            ),
            (ErrorKind::Auth, "anything", Authentication, true),
            (
                ErrorKind::Unknown,
                "ERR INVALIDUSERNAMEPASSWORD",
                Authentication,
                true,
            ),
            // The Sentinel watcher keeps the last error's kind, but its text leads.
            (
                ErrorKind::Sentinel,
                "no Sentinel accepted the +switch-master subscription (127.0.0.1:1: WRONGPASS …)",
                Authentication,
                true,
            ),
            (
                ErrorKind::Unknown,
                "NOPERM User locker has no permissions to run the 'client|tracking' command",
                Permission,
                true,
            ),
            (
                ErrorKind::Unknown,
                "NOPROTO sorry, this protocol version is not supported.",
                Protocol,
                true,
            ),
            (
                ErrorKind::Unknown,
                "ERR unknown command 'CLIENT', with args beginning with: 'TRACKING'",
                Protocol,
                true,
            ),
            (
                ErrorKind::Unknown,
                "ERR unknown subcommand 'TRACKING'.",
                Protocol,
                true,
            ),
            (ErrorKind::Protocol, "Invalid frame kind", Protocol, false),
            (ErrorKind::Parse, "Could not parse frame", Protocol, false),
            (
                ErrorKind::IO,
                "Connection refused (os error 111)",
                Unreachable,
                false,
            ),
            (
                ErrorKind::IO,
                "failed to lookup address information: Name or service not known",
                Unreachable,
                false,
            ),
            (
                ErrorKind::IO,
                "Connection reset by peer (os error 104)",
                Unreachable,
                false,
            ),
            (
                ErrorKind::IO,
                "invalid peer certificate: UnknownIssuer",
                Tls,
                false,
            ),
            (ErrorKind::Canceled, "Canceled.", Unreachable, false),
            (
                ErrorKind::Sentinel,
                "Failed to connect to all sentinel nodes.",
                Unreachable,
                false,
            ),
            (ErrorKind::Cluster, "CLUSTERDOWN", Unreachable, false),
            (
                ErrorKind::Timeout,
                "timed out setting up the connection",
                Timeout,
                false,
            ),
            (
                ErrorKind::Config,
                "tls_ca_file \"/nope\": No such file",
                Configuration,
                true,
            ),
            (
                ErrorKind::Config,
                "ERR This instance has cluster support disabled",
                Configuration,
                true,
            ),
            (ErrorKind::Unknown, "ERR something new", Other, false),
            (ErrorKind::InvalidArgument, "WRONGTYPE", Other, false),
        ];
        for (fred_kind, details, kind, permanent) in cases {
            assert_eq!(
                classify(&fred_kind, details),
                (kind, permanent),
                "{fred_kind:?} {details:?}"
            );
        }
    }

    fn settings(nodes: &[&str], majority: usize) -> Settings {
        LockerOptions::new(nodes.iter().copied())
            .with_key_majority(majority)
            .settings()
            .unwrap()
    }

    fn down(kind: &ErrorKind, details: &str) -> Option<NodeReport> {
        Some(NodeReport::Down(NodeFailure::from_fred(
            fred::error::Error::new(kind.clone(), details.to_owned()),
        )))
    }

    fn connection(
        r: Result<(), Error>,
    ) -> (ConnectionErrorKind, Option<String>, String, Option<String>) {
        match r {
            Err(Error::Connection {
                kind,
                node,
                message,
                source,
            }) => (kind, node, message, source.map(|s| s.to_string())),
            other => panic!("expected a connection error, got {other:?}"),
        }
    }

    #[test]
    fn verdicts() {
        let one = settings(&["redis://:s3cret@127.0.0.1:6379"], 1);
        assert!(startup_verdict(&one, &[Some(NodeReport::Up)]).is_ok());
        // A permanent failure: that node, its kind, fred's error as source.
        let (kind, node, message, source) = connection(startup_verdict(
            &one,
            &[down(&ErrorKind::Auth, "WRONGPASS invalid")],
        ));
        assert_eq!(kind, Authentication);
        assert_eq!(node.as_deref(), Some("redis://:***@127.0.0.1:6379"));
        assert_eq!(message, "the server refused the credentials");
        assert!(source.unwrap().contains("WRONGPASS invalid"));
        // One node down for now: not enough keys; that node's error.
        let (kind, node, message, source) = connection(startup_verdict(
            &one,
            &[down(&ErrorKind::IO, "Connection refused")],
        ));
        assert_eq!(
            (kind, node.as_deref()),
            (Unreachable, Some("redis://:***@127.0.0.1:6379"))
        );
        assert_eq!(
            message,
            "only 0 of 1 keys live on reachable nodes, 1 needed"
        );
        assert!(source.unwrap().contains("Connection refused"));
        // No report at all: a timeout, said in the message.
        let (kind, _, message, source) = connection(startup_verdict(&one, &[None]));
        assert_eq!(kind, Timeout);
        assert!(message.ends_with("no answer within 2s"), "{message}");
        assert!(source.is_none());

        let three = settings(&["redis://a", "redis://b", "redis://c"], 2);
        // Two of three up: enough.
        assert!(
            startup_verdict(&three, &[Some(NodeReport::Up), None, Some(NodeReport::Up)]).is_ok()
        );
        // Two down, both unreachable: no single node, each one listed.
        let (kind, node, message, source) = connection(startup_verdict(
            &three,
            &[
                Some(NodeReport::Up),
                down(&ErrorKind::IO, "refused b"),
                down(&ErrorKind::IO, "refused c"),
            ],
        ));
        assert_eq!((kind, node, source), (Unreachable, None, None));
        assert!(
            message.starts_with("only 1 of 3 keys live on reachable nodes, 2 needed ("),
            "{message}"
        );
        assert!(
            message.contains("redis://b: IO Error: refused b")
                && message.contains("redis://c: IO Error: refused c"),
            "{message}"
        );
        // Two down for different reasons: unreachable, as a whole.
        let (kind, ..) = connection(startup_verdict(
            &three,
            &[
                down(&ErrorKind::Timeout, "slow"),
                down(&ErrorKind::IO, "refused"),
                Some(NodeReport::Up),
            ],
        ));
        assert_eq!(kind, Unreachable);
        // Both timed out: a timeout.
        let (kind, ..) = connection(startup_verdict(&three, &[None, Some(NodeReport::Up), None]));
        assert_eq!(kind, Timeout);
        // A permanent failure wins even when the others would be enough.
        let (kind, node, ..) = connection(startup_verdict(
            &three,
            &[
                Some(NodeReport::Up),
                Some(NodeReport::Up),
                down(&ErrorKind::Unknown, "NOPERM no"),
            ],
        ));
        assert_eq!((kind, node.as_deref()), (Permission, Some("redis://c")));
    }
}
