//! `status` and `release --force`: a locker's `inspect` and `force_release`,
//! so the key layout, the node placement and the connection setup (TLS,
//! credentials, cluster, Sentinel) are the library's own.

use std::io::IsTerminal;

use tokio::signal::unix::{signal, SignalKind};
use valkeylock::{
    Error, Health, KeyValue, Leader, LockInfo, LockState, Locker, LockerOptions, SemaphoreInfo,
    WaitKind,
};

use crate::args::{EXIT_NOT_HELD, EXIT_OK, EXIT_SOFTWARE, EXIT_UNAVAILABLE, EXIT_USAGE};

/// The exit code for a failed call.
pub(crate) fn exit_for(error: &Error) -> u8 {
    match error {
        Error::Connection { .. } | Error::Unavailable { .. } => EXIT_UNAVAILABLE,
        Error::InvalidOptions { .. } | Error::InvalidName { .. } => EXIT_USAGE,
        _ => EXIT_SOFTWARE,
    }
}

/// A locker for one look (no fencing needed: nothing is acquired).
async fn connect(options: LockerOptions) -> Result<Locker, u8> {
    Locker::connect(options).await.map_err(|e| {
        eprintln!("valkeylock: {e}");
        exit_for(&e)
    })
}

/// `valkeylock status [--json] NAME`.
pub(crate) async fn status(options: LockerOptions, name: &str, json: bool) -> u8 {
    let ours = format!("m{}n{}", options.key_majority, options.nodes.len());
    let prefix = options.key_prefix.clone();
    let locker = match connect(options).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let info = locker.inspect(name).await;
    let health = locker.health();
    locker.close().await;
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            eprintln!("valkeylock: {e}");
            return exit_for(&e);
        }
    };
    if let Err(code) = print_look(
        json,
        || serde_json::to_value(&info),
        || status_text(&info, &ours, &prefix),
        &health,
    ) {
        return code;
    }
    match info.state {
        LockState::Held { .. } => EXIT_OK,
        LockState::Unknown { .. } => EXIT_UNAVAILABLE,
        _ => EXIT_NOT_HELD,
    }
}

/// `valkeylock status --permits N [--json] NAME`: the semaphore's slots.
pub(crate) async fn semaphore_status(
    options: LockerOptions,
    name: &str,
    permits: u32,
    json: bool,
) -> u8 {
    let locker = match connect(options).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let info = match locker.semaphore(name, permits) {
        Ok(pool) => pool.inspect().await,
        Err(e) => Err(e),
    };
    let health = locker.health();
    locker.close().await;
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            eprintln!("valkeylock: {e}");
            return exit_for(&e);
        }
    };
    if let Err(code) = print_look(
        json,
        || serde_json::to_value(&info),
        || semaphore_text(&info),
        &health,
    ) {
        return code;
    }
    semaphore_exit(&info)
}

/// `valkeylock leader [--watch] [--json] NAME`: who leads, then (with
/// `--watch`) every new term, until SIGINT or SIGTERM (exit 0).
pub(crate) async fn leader(options: LockerOptions, name: &str, watch: bool, json: bool) -> u8 {
    let locker = match connect(options).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let code = follow_leader(&locker, name, watch, json).await;
    locker.close().await;
    code
}

async fn follow_leader(locker: &Locker, name: &str, watch: bool, json: bool) -> u8 {
    let failed = |e: Error| {
        eprintln!("valkeylock: {e}");
        exit_for(&e)
    };
    let election = match locker.election(name) {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    // Started before the first look, so no term after it is missed.
    let observer = if watch {
        match election.observe() {
            Ok(o) => Some(o),
            Err(e) => return failed(e),
        }
    } else {
        None
    };
    let current = match election.leader().await {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    println!("{}", leader_line(name, current.as_ref(), json));
    let Some(mut observer) = observer else {
        return if current.is_some() {
            EXIT_OK
        } else {
            EXIT_NOT_HELD
        };
    };
    let mut last = current.map_or(0, |l| l.term);
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("valkeylock: cannot catch signals: {e}");
            return EXIT_SOFTWARE;
        }
    };
    loop {
        tokio::select! {
            next = observer.next() => match next {
                Ok(leader) if leader.term > last => {
                    last = leader.term;
                    println!("{}", leader_line(name, Some(&leader), json));
                }
                Ok(_) => {}
                Err(e) => return failed(e),
            },
            _ = int.recv() => return EXIT_OK,
            _ = term.recv() => return EXIT_OK,
        }
    }
}

/// One line of `leader`: `TERM VALUE` (control characters escaped, so a
/// value is always one line), `-` when nobody leads; or a JSON document.
fn leader_line(name: &str, leader: Option<&Leader>, json: bool) -> String {
    if json {
        return serde_json::json!({ "name": name, "leader": leader }).to_string();
    }
    match leader {
        Some(l) => {
            let value: String = l
                .value
                .chars()
                .flat_map(|c| {
                    let escaped: Vec<char> = if c.is_control() {
                        c.escape_default().collect()
                    } else {
                        vec![c]
                    };
                    escaped
                })
                .collect();
            format!("{} {value}", l.term)
        }
        None => "-".to_owned(),
    }
}

/// Prints what a look saw: `doc` as one JSON document (with the nodes'
/// health), or `text`; then, on stderr, the nodes that are down. `Err` with
/// the exit code when the JSON cannot be written.
fn print_look(
    json: bool,
    doc: impl FnOnce() -> Result<serde_json::Value, serde_json::Error>,
    text: impl FnOnce() -> String,
    health: &Health,
) -> Result<(), u8> {
    if json {
        match status_json(doc(), health) {
            Ok(doc) => println!("{doc}"),
            Err(e) => {
                eprintln!("valkeylock: cannot write JSON: {e}");
                return Err(EXIT_SOFTWARE);
            }
        }
    } else {
        print!("{}", text());
    }
    for n in health.nodes.iter().filter(|n| !n.connected) {
        eprintln!(
            "valkeylock: cannot connect to Valkey at {}: {}",
            n.address,
            n.last_error.as_deref().unwrap_or("not connected")
        );
    }
    Ok(())
}

/// A semaphore's exit code: 0 when every permit is held (an acquisition
/// would wait), 1 when a permit is free, 69 when none is free for sure but
/// some slots could not be read.
fn semaphore_exit(info: &SemaphoreInfo) -> u8 {
    if info.free > 0 {
        EXIT_NOT_HELD
    } else if info.unknown > 0 {
        EXIT_UNAVAILABLE
    } else {
        EXIT_OK
    }
}

/// The human-readable report of a semaphore: a summary, then a line per
/// slot.
fn semaphore_text(info: &SemaphoreInfo) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "semaphore {:?}: {} of {} permits held, {} free, {} unknown",
        info.name, info.held, info.permits, info.free, info.unknown
    );
    for (slot, lock) in info.slots.iter().enumerate() {
        let _ = match &lock.state {
            LockState::Held {
                owner, expires_in, ..
            } => writeln!(
                out,
                "  slot {slot} ({}): held by token {owner}, {}",
                lock.name,
                match expires_in {
                    Some(d) => format!("expires in {} unless extended", seconds(*d)),
                    None => "no expiry".to_owned(),
                }
            ),
            LockState::Unknown { unreadable } => writeln!(
                out,
                "  slot {slot} ({}): unknown ({unreadable} keys unreadable)",
                lock.name
            ),
            _ => writeln!(out, "  slot {slot} ({}): free", lock.name),
        };
    }
    out
}

/// The `--json` document: the lock (or semaphore) as `inspect` reports it,
/// and the nodes' health under `nodes`.
fn status_json(
    info: Result<serde_json::Value, serde_json::Error>,
    health: &Health,
) -> Result<String, serde_json::Error> {
    let mut doc = info?;
    if let Some(map) = doc.as_object_mut() {
        map.insert("nodes".to_owned(), serde_json::to_value(&health.nodes)?);
    }
    serde_json::to_string_pretty(&doc)
}

fn seconds(d: std::time::Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// The human-readable report. `ours` is this invocation's
/// `m{key_majority}n{nodes}`, to point out keys written with another.
fn status_text(info: &LockInfo, ours: &str, prefix: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (name, total, needed) = (&info.name, info.total, info.needed);
    let _ = match &info.state {
        LockState::Held {
            owner,
            keys,
            forced,
            expires_in,
            ..
        } => writeln!(
            out,
            "lock {name:?}: held by token {owner}{} ({keys} of {total} keys, {needed} needed), {}",
            if *forced { " (forced)" } else { "" },
            match expires_in {
                Some(d) => format!("expires in {} unless extended", seconds(*d)),
                None => "no expiry".to_owned(),
            }
        ),
        LockState::Unknown { unreadable } => writeln!(
            out,
            "lock {name:?}: unknown ({unreadable} of {total} keys unreadable, {needed} needed)"
        ),
        _ => writeln!(
            out,
            "lock {name:?}: not held ({needed} of {total} keys needed)"
        ),
    };
    let mut owners: Vec<&str> = Vec::new();
    for k in &info.keys {
        let _ = write!(out, "  {} on node {} ({}): ", k.key, k.node, k.address);
        let _ = match &k.value {
            KeyValue::Present {
                owner,
                ttl,
                written_with,
                forced,
                ..
            } => {
                if !owners.contains(&owner.as_str()) {
                    owners.push(owner);
                }
                let ttl = match ttl {
                    Some(d) => format!("ttl {}", seconds(*d)),
                    None => "no expiry".to_owned(),
                };
                let config = match written_with {
                    Some(fp) if fp != ours => format!(
                        " (written with {fp}: key_majority and node count differ from {ours})"
                    ),
                    _ => String::new(),
                };
                let forced = if *forced { " (forced)" } else { "" };
                writeln!(out, "present, {ttl}, token {owner}{forced}{config}")
            }
            KeyValue::Unknown { error } => writeln!(out, "unreadable: {error}"),
            _ => writeln!(out, "absent"),
        };
    }
    let _ = match owners.len() {
        0 => writeln!(out, "no key present"),
        1 => writeln!(out, "all present keys belong to token {}", owners[0]),
        n => writeln!(
            out,
            "present keys belong to {n} different tokens: {}",
            owners.join(", ")
        ),
    };
    if !info.waiting.is_empty() {
        let _ = writeln!(out, "waiting, longest first:");
    }
    for w in &info.waiting {
        let how = match w.how {
            WaitKind::HandoverClaim => "hand-over claim",
            WaitKind::QueuePlace => "fair queue place",
            _ => "waiting",
        };
        let _ = writeln!(
            out,
            "  {} ({how} beside {} of {total} keys): waited {}, lapses in {} unless refreshed",
            w.who,
            w.keys,
            seconds(w.waited),
            seconds(w.lapses_in)
        );
    }
    if let Some(why) = &info.waiting_unreadable {
        let _ = writeln!(out, "waiters beside some keys unreadable: {why}");
    }
    let mut counters: Vec<String> = Vec::new();
    for f in &info.fencing {
        match f.value {
            Some(0) => {}
            Some(v) => counters.push(format!("{v} (node {})", f.node)),
            None => counters.push(format!("unreadable (node {})", f.node)),
        }
    }
    let _ = if counters.is_empty() {
        writeln!(out, "fencing counter {prefix}:fence:{name}: absent")
    } else {
        writeln!(
            out,
            "fencing counter {prefix}:fence:{name}: {}",
            counters.join(", ")
        )
    };
    out
}

/// `valkeylock release --force [--yes] NAME`.
pub(crate) async fn release(options: LockerOptions, name: &str, yes: bool) -> u8 {
    if !yes && std::io::stdin().is_terminal() {
        eprintln!(
            "valkeylock: this deletes the keys of lock {name:?} whoever holds it (its holder loses it); add --yes to confirm"
        );
        return EXIT_USAGE;
    }
    let locker = match connect(options).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let result = locker.force_release(name).await;
    locker.close().await;
    let done = match result {
        Ok(d) => d,
        Err(e) => {
            eprintln!("valkeylock: {e}");
            return exit_for(&e);
        }
    };
    for e in &done.errors {
        eprintln!("valkeylock: cannot delete keys at {e}");
    }
    println!(
        "lock {name:?}: deleted {} of {} keys{} (the fencing counter is kept)",
        done.deleted,
        done.total,
        if done.failed > 0 {
            format!(", {} unreachable", done.failed)
        } else {
            String::new()
        }
    );
    if done.failed > 0 {
        EXIT_UNAVAILABLE
    } else {
        EXIT_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_lines() {
        let l = Leader::new("host-a:80", 7);
        assert_eq!(leader_line("db", Some(&l), false), "7 host-a:80");
        assert_eq!(leader_line("db", None, false), "-");
        let odd = Leader::new("two\nlines\tand é", 9);
        assert_eq!(
            leader_line("db", Some(&odd), false),
            "9 two\\nlines\\tand é"
        );
        assert_eq!(
            leader_line("db", Some(&odd), true),
            r#"{"leader":{"term":9,"value":"two\nlines\tand é"},"name":"db"}"#
        );
        assert_eq!(
            leader_line("db", None, true),
            r#"{"leader":null,"name":"db"}"#
        );
    }
}
