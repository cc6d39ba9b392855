//! Command line, environment and config file: what the user asked for, and
//! the `LockerOptions` it resolves to (flags > environment > file > defaults).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use valkeylock::{parse_duration, DurationErrorKind, LockerOptions, ParseDurationError};

/// The program ran and exited 0; `status`: the lock is held; `release`: done.
pub(crate) const EXIT_OK: u8 = 0;
/// `status`: the lock is not held.
pub(crate) const EXIT_NOT_HELD: u8 = 1;
/// Bad arguments, environment variables, config file or option values.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Valkey could not be reached (or refused us).
pub(crate) const EXIT_UNAVAILABLE: u8 = 69;
/// Unexpected internal failure (the locker closed under us).
pub(crate) const EXIT_SOFTWARE: u8 = 70;
/// `run --wait-timeout` passed before the lock was acquired; the program did not run.
pub(crate) const EXIT_WAIT_TIMEOUT: u8 = 73;
/// The lock was lost while the program ran; the program was stopped.
pub(crate) const EXIT_LOST: u8 = 75;
/// The program exists but could not be started.
pub(crate) const EXIT_CANNOT_EXEC: u8 = 126;
/// The program was not found.
pub(crate) const EXIT_NOT_FOUND: u8 = 127;

const EXIT_CODES: &str = "\
Exit codes:
  0    run, elect: the program exited 0; status: the lock is held; leader: a
       leader was printed; release: done
  N    run, elect: the program's exit code (128+S when it died of signal S)
  1    status: the lock is not held; leader: nobody leads
  2    bad arguments, environment variables, config file or option values;
       release on a terminal without --yes
  69   Valkey unreachable (connection refused, timeout, wrong password...);
       status, leader: unknown (keys on unreachable nodes could make a majority)
  73   run, elect: --wait-timeout passed before the lock (leadership) was
       acquired (the program did not run)
  75   run, elect: the lock (leadership) was lost while the program ran (it got
       SIGTERM, then SIGKILL after --grace)
  126  run, elect: the program could not be executed; 127: it was not found
  130, 143...  run, elect: the tool got SIGINT, SIGTERM... while waiting

Environment: VALKEYLOCK_NODES (comma-separated), VALKEYLOCK_MAJORITY,
VALKEYLOCK_VALIDITY, VALKEYLOCK_PREFIX, VALKEYLOCK_CONFIG, VALKEYLOCK_WAIT_TIMEOUT,
VALKEYLOCK_GRACE. Precedence: flags > environment > config file > defaults.
Defaults: --nodes redis://127.0.0.1:6379; --majority 2, the library's default (so a run
and a program using the library with defaults exclude each other; 5 nodes need --majority 3).";

/// Distributed locks over Valkey from the shell: run a program while holding
/// a lock, and stop it if the lock is lost.
#[derive(Debug, Parser)]
#[command(name = "valkeylock", version, after_long_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) common: Common,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// Log what the engine does to stderr: -v connections and losses, -vv
    /// commands and retries, -vvv everything. RUST_LOG, when set, decides
    /// instead (e.g. RUST_LOG=valkeylock_actors=debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    /// Valkey URL (redis:// or valkey://, optional user:password@ and /db).
    /// Repeat or separate with commas (a comma followed by a host without a
    /// scheme continues a cluster or Sentinel URL's host list); their order does not matter (keys are
    /// placed by address). [default: redis://127.0.0.1:6379]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "VALKEYLOCK_NODES",
        action = clap::ArgAction::Append
    )]
    pub(crate) nodes: Vec<String>,

    /// Keys needed, M; a lock uses 2M-1 keys. Every locker of a name must use
    /// the same value. [default: 2, as in the library]
    #[arg(long, global = true, value_name = "M", env = "VALKEYLOCK_MAJORITY")]
    pub(crate) majority: Option<usize>,

    /// TTL of each key, renewed while held. [default: 5s]
    #[arg(long, global = true, value_name = "DURATION", env = "VALKEYLOCK_VALIDITY", value_parser = duration)]
    pub(crate) validity: Option<Duration>,

    /// Key prefix: keys are PREFIX:i:NAME. [default: valkeylock]
    #[arg(long, global = true, env = "VALKEYLOCK_PREFIX")]
    pub(crate) prefix: Option<String>,

    /// Fair queueing: waiters of every process are served in the order they
    /// started waiting (every locker of the name should use it).
    #[arg(long, global = true, env = "VALKEYLOCK_FAIR")]
    pub(crate) fair: bool,

    /// Hand-over: a released lock goes straight to the waiter of another
    /// process that has waited longest, told on its channel, instead of
    /// being deleted for the waiters to race for.
    #[arg(long, global = true, env = "VALKEYLOCK_HANDOVER")]
    pub(crate) handover: bool,

    /// TOML file with LockerOptions fields (nodes, key_prefix, key_majority,
    /// key_validity = "5s", try_next_after, connect_timeout, ...).
    #[arg(long, global = true, value_name = "PATH", env = "VALKEYLOCK_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

/// The tool's `event_buffer` unless its config file sets one. It holds one
/// lock (`2·key_majority − 1` keys, 3 by default) or reads a few keys, so
/// a burst of more changed keys than this needs an unusual `key_majority`,
/// and would cost a re-check of that one lock; the library's default costs
/// 2.8 MB and about 1.6 ms of start-up per node
/// (`LockerOptions::event_buffer`).
const TOOL_EVENT_BUFFER: usize = 64;

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run PROGRAM while holding the lock; stop it if the lock is lost.
    ///
    /// Waits for the lock, runs PROGRAM while holding it, releases it when the
    /// program exits, and exits with the program's code. The program sees
    /// VALKEYLOCK_NAME and VALKEYLOCK_FENCING_TOKEN (strictly increasing
    /// across runs). If the lock is lost, the program gets SIGTERM, then
    /// SIGKILL after --grace, and the exit code is 75.
    ///
    /// With --permits N, NAME is a semaphore: up to N programs run at once
    /// (like `consul lock -n`). Each holds one permit, sees
    /// VALKEYLOCK_PERMIT_SLOT (0 to N-1) and a fencing token counted per
    /// slot. Every run of one NAME must give the same N.
    #[command(
        after_long_help = EXIT_CODES,
        override_usage = "valkeylock run [OPTIONS] <NAME> -- <PROGRAM> [ARGS]..."
    )]
    Run {
        /// The lock name.
        name: String,
        /// Give up after waiting this long for the lock (exit 73). [default:
        /// wait forever]
        #[arg(long, value_name = "DURATION", env = "VALKEYLOCK_WAIT_TIMEOUT", value_parser = duration)]
        wait_timeout: Option<Duration>,
        /// Treat NAME as a semaphore of N permits: hold one of them, so that
        /// up to N programs run at once. [default: a lock, one at a time]
        #[arg(long, value_name = "N", env = "VALKEYLOCK_PERMITS")]
        permits: Option<u32>,
        /// After a lost lock, how long the program has between SIGTERM and
        /// SIGKILL.
        #[arg(long, value_name = "DURATION", env = "VALKEYLOCK_GRACE", value_parser = duration, default_value = "5s")]
        grace: Duration,
        /// The program and its arguments (put them after `--`).
        #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
        program: Vec<OsString>,
    },
    /// Run PROGRAM while this candidate leads election NAME; stop it if
    /// deposed.
    ///
    /// Campaigns with VALUE (an address, a host name: what `valkeylock
    /// leader` prints), runs PROGRAM once elected, resigns when it exits,
    /// and exits with the program's code. The program sees VALKEYLOCK_NAME,
    /// VALKEYLOCK_TERM (strictly increasing across leaders; also as
    /// VALKEYLOCK_FENCING_TOKEN) and VALKEYLOCK_LEADER_VALUE. If the
    /// leadership is lost, the program gets SIGTERM, then SIGKILL after
    /// --grace, and the exit code is 75.
    #[command(
        after_long_help = EXIT_CODES,
        override_usage = "valkeylock elect [OPTIONS] <NAME> <VALUE> -- <PROGRAM> [ARGS]..."
    )]
    Elect {
        /// The election's name.
        name: String,
        /// What this candidate announces as leader.
        value: String,
        /// Give up after campaigning this long (exit 73). [default: wait
        /// forever]
        #[arg(long, value_name = "DURATION", env = "VALKEYLOCK_WAIT_TIMEOUT", value_parser = duration)]
        wait_timeout: Option<Duration>,
        /// After a lost leadership, how long the program has between SIGTERM
        /// and SIGKILL.
        #[arg(long, value_name = "DURATION", env = "VALKEYLOCK_GRACE", value_parser = duration, default_value = "5s")]
        grace: Duration,
        /// The program and its arguments (put them after `--`).
        #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM")]
        program: Vec<OsString>,
    },
    /// Print who leads election NAME: `TERM VALUE` (exit 0), or `-` when
    /// nobody leads (exit 1); exit 69 when it cannot be told.
    ///
    /// With --watch, print the leader, then every new term as it comes (one
    /// line each, in term order, none skipped), until interrupted.
    #[command(after_long_help = EXIT_CODES)]
    Leader {
        /// Follow the leaders instead of printing the current one.
        #[arg(long)]
        watch: bool,
        /// One JSON document per line: {"name", "leader": {"value",
        /// "term"} or null}.
        #[arg(long)]
        json: bool,
        /// The election's name.
        name: String,
    },
    /// Show whether the lock is held (exit 0), not held (exit 1) or unknown
    /// (exit 69: too many keys unreadable to tell).
    ///
    /// Prints every key (its node, present or not, remaining TTL, the first
    /// 8 characters of its owner's token), whether all present keys belong
    /// to the same token, and the fencing counter; nodes that are down on
    /// stderr. Held means one owner has --majority keys; unreadable keys
    /// are never counted as free.
    #[command(after_long_help = EXIT_CODES)]
    Status {
        /// Print one JSON document instead: the lock's state, its keys, the
        /// fencing counter per node, and each node's connection (`nodes`).
        #[arg(long)]
        json: bool,
        /// NAME is a semaphore of N permits: show each permit slot (held by
        /// which token, free, unknown). Exit 0 when every permit is held, 1
        /// when one is free, 69 when none is free for sure but some slots
        /// could not be read.
        #[arg(long, value_name = "N")]
        permits: Option<u32>,
        /// The lock name.
        name: String,
    },
    /// Delete the keys of a lock, whoever holds it.
    ///
    /// Its holder sees the lock lost (a `valkeylock run` holder stops its
    /// program). The fencing counter is kept, so tokens keep increasing.
    /// --yes is required when standard input is a terminal.
    #[command(after_long_help = EXIT_CODES)]
    Release {
        /// Required: the keys are deleted whoever holds them.
        #[arg(long, required = true)]
        force: bool,
        /// Confirm; required when standard input is a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
        /// The lock name.
        name: String,
    },
}

/// A duration flag: the library's forms (`500ms`, `1m30s`), or a bare number
/// of seconds (`30`, `0.5`), as `timeout(1)` and `sleep(1)` take them.
fn duration(text: &str) -> Result<Duration, ParseDurationError> {
    match parse_duration(text) {
        Err(e) if e.kind() == &DurationErrorKind::MissingUnit => {
            parse_duration(&format!("{}s", text.trim())).map_err(|_| e)
        }
        other => other,
    }
}

/// Why the options could not be built (exit 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl Common {
    /// Resolves the options: flags and environment (clap merged those) over
    /// the config file over the library's defaults. Not validated yet.
    pub(crate) fn options(&self) -> Result<LockerOptions, UsageError> {
        let mut options = LockerOptions::default().with_event_buffer(TOOL_EVENT_BUFFER);
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| UsageError(format!("config file {}: {e}", path.display())))?;
            let bad =
                |e: toml::de::Error| UsageError(format!("config file {}: {e}", path.display()));
            let fields: toml::Table = toml::from_str(&text).map_err(bad)?;
            options = toml::from_str(&text).map_err(bad)?;
            if !fields.contains_key("event_buffer") {
                options.event_buffer = TOOL_EVENT_BUFFER;
            }
        }
        if !self.nodes.is_empty() {
            options.nodes = split_nodes(&self.nodes);
        }
        if options.nodes.is_empty() {
            options.nodes = vec!["redis://127.0.0.1:6379".to_owned()];
        }
        if let Some(m) = self.majority {
            options.key_majority = m;
        }
        if let Some(v) = self.validity {
            options.key_validity = v;
        }
        if let Some(p) = &self.prefix {
            options.key_prefix = p.clone();
        }
        if self.fair {
            options.fair_queueing = true;
        }
        if self.handover {
            options.handover = true;
        }
        Ok(options)
    }
}

/// The node URLs in `--nodes` values and `VALKEYLOCK_NODES`: separated by
/// commas, where a comma starts a new node only if what follows it has a
/// scheme (`…://`). Otherwise it continues the host list of a cluster or
/// Sentinel URL (`valkey-cluster://a:7000,b:7000`), which is one node.
pub(crate) fn split_nodes(values: &[String]) -> Vec<String> {
    let mut nodes: Vec<String> = Vec::new();
    for value in values {
        let mut fresh = true;
        for piece in value.split(',') {
            let piece = piece.trim();
            match nodes.last_mut() {
                _ if piece.is_empty() => {}
                Some(last) if !fresh && !piece.contains("://") => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => {
                    nodes.push(piece.to_owned());
                    fresh = false;
                }
            }
        }
    }
    nodes.retain(|n| !n.is_empty());
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(duration(" 0 "), Ok(Duration::ZERO));
        assert_eq!(duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(duration("1.2.3").is_err());
        assert!(duration("9999999999999").is_err());
        assert!(duration("").is_err());
        // Refused with the library's typed error, naming the input.
        let e = duration("5 parsecs").unwrap_err();
        assert_eq!(e.input(), "5 parsecs");
        assert_eq!(e.kind(), &DurationErrorKind::UnknownUnit("parsecs".into()));
        let cli = parse(&[
            "valkeylock",
            "run",
            "x",
            "--wait-timeout",
            "30",
            "--",
            "true",
        ]);
        let Command::Run { wait_timeout, .. } = cli.command else {
            panic!("not run")
        };
        assert_eq!(wait_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn cluster_and_sentinel_urls_keep_their_host_lists() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            split_nodes(&v(&["valkey-cluster://a:7000,b:7000,c:7000"])),
            ["valkey-cluster://a:7000,b:7000,c:7000"]
        );
        assert_eq!(
            split_nodes(&v(&["redis://a, redis://b ,redis://c"])),
            ["redis://a", "redis://b", "redis://c"]
        );
        assert_eq!(
            split_nodes(&v(&[
                "valkey-sentinel://s1:26379,s2:26379/mymaster,redis://x:6379",
                "valkey-cluster://c1:7000,c2:7000",
            ])),
            [
                "valkey-sentinel://s1:26379,s2:26379/mymaster",
                "redis://x:6379",
                "valkey-cluster://c1:7000,c2:7000"
            ]
        );
        // Each `--nodes` value starts a node of its own, and empty pieces go.
        assert_eq!(
            split_nodes(&v(&["redis://a,", ",redis://b"])),
            ["redis://a", "redis://b"]
        );
        // A bare host after a standalone URL stays attached, so the URL's
        // parser rejects it with a message rather than it becoming a node.
        let o = parse(&["valkeylock", "--nodes", "redis://a:1,b:2", "status", "x"])
            .common
            .options()
            .unwrap();
        assert!(o.validate().is_err());
        let o = parse(&[
            "valkeylock",
            "--nodes",
            "valkey-cluster://127.0.0.1:7000,127.0.0.1:7001",
            "status",
            "x",
        ])
        .common
        .options()
        .unwrap();
        assert_eq!(o.nodes.len(), 1);
        o.validate().unwrap();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    /// The tool keeps few events, unless its config file says otherwise.
    #[test]
    fn event_buffer_is_small_unless_configured() {
        let o = parse(&["valkeylock", "status", "x"])
            .common
            .options()
            .unwrap();
        assert_eq!(o.event_buffer, TOOL_EVENT_BUFFER);
        assert!(o.event_buffer < LockerOptions::default().event_buffer);
        let dir =
            std::env::temp_dir().join(format!("valkeylock-args-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (set, unset) = (dir.join("set.toml"), dir.join("unset.toml"));
        std::fs::write(&set, "event_buffer = 1024\n").unwrap();
        std::fs::write(&unset, "key_prefix = \"app\"\n").unwrap();
        let with = |path: &std::path::Path| {
            let p = path.to_str().unwrap();
            parse(&["valkeylock", "--config", p, "status", "x"])
                .common
                .options()
                .unwrap()
        };
        assert_eq!(with(&set).event_buffer, 1024);
        let o = with(&unset);
        assert_eq!(
            (o.event_buffer, o.key_prefix.as_str()),
            (TOOL_EVENT_BUFFER, "app")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_and_majority() {
        let o = parse(&["valkeylock", "status", "x"])
            .common
            .options()
            .unwrap();
        assert_eq!(o.nodes, ["redis://127.0.0.1:6379"]);
        // The library's default, whatever the node count: a `run` and a
        // program using the library with defaults must exclude each other.
        assert_eq!(o.key_majority, LockerOptions::default().key_majority);
        assert_eq!(o.key_majority, 2);
        let o = parse(&[
            "valkeylock",
            "status",
            "x",
            "--nodes",
            "redis://a,redis://b",
        ])
        .common
        .options()
        .unwrap();
        assert_eq!((o.nodes.len(), o.key_majority), (2, 2));
        let o = parse(&[
            "valkeylock",
            "--nodes=redis://a",
            "--nodes=redis://b",
            "--nodes=redis://c",
            "status",
            "x",
        ])
        .common
        .options()
        .unwrap();
        assert_eq!((o.nodes.len(), o.key_majority), (3, 2));
        let o = parse(&["valkeylock", "--majority", "1", "status", "x"])
            .common
            .options()
            .unwrap();
        assert_eq!(o.key_majority, 1);
    }

    #[test]
    fn majority_from_the_config_file() {
        let dir = std::env::temp_dir().join(format!("valkeylock-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(&path, "key_majority = 3\n").unwrap();
        let config = path.to_str().unwrap();
        let o = parse(&["valkeylock", "--config", config, "status", "x"])
            .common
            .options()
            .unwrap();
        assert_eq!(o.key_majority, 3);
        let o = parse(&[
            "valkeylock",
            "--config",
            config,
            "--majority",
            "1",
            "status",
            "x",
        ])
        .common
        .options()
        .unwrap();
        assert_eq!(o.key_majority, 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn run_program_after_dashes() {
        let cli = parse(&[
            "valkeylock",
            "run",
            "n",
            "--grace",
            "1s",
            "--",
            "sh",
            "-c",
            "x",
        ]);
        match cli.command {
            Command::Run { program, grace, .. } => {
                assert_eq!(program, ["sh", "-c", "x"]);
                assert_eq!(grace, Duration::from_secs(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["valkeylock", "run", "n"]).is_err());
        assert!(Cli::try_parse_from(["valkeylock", "release", "n", "--yes"]).is_err());
    }
}
