//! `valkeylock run`: wait for the lock, run the program in its own process
//! group while holding it, stop that group if the lock is lost.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgrp, tcgetpgrp, tcsetpgrp, Pid};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep_until, Instant};
use valkeylock::{
    format_duration, Error, LockGuard, LockRequest, LockState, Locker, LockerOptions, LostReason,
};

use crate::args::{EXIT_CANNOT_EXEC, EXIT_LOST, EXIT_NOT_FOUND, EXIT_SOFTWARE, EXIT_WAIT_TIMEOUT};
use crate::inspect::exit_for;

/// What `run` was asked to do.
#[derive(Debug)]
pub(crate) struct RunArgs {
    pub(crate) name: String,
    pub(crate) wait_timeout: Option<Duration>,
    pub(crate) what: Hold,
    pub(crate) grace: Duration,
    pub(crate) program: Vec<OsString>,
}

/// What the program runs under.
#[derive(Debug)]
pub(crate) enum Hold {
    /// The lock `name`.
    Lock,
    /// One of this many permits of semaphore `name`.
    Permit(u32),
    /// Leadership of election `name`, announcing this value.
    Leadership(String),
}

/// What `hold` tells the program about its grant, beyond the name.
#[derive(Debug, Default)]
struct Granted {
    slot: Option<u32>,
    /// The leader's value, for a leadership.
    leading: Option<String>,
}

/// The signals the tool catches: forwarded to the program while it runs,
/// a reason to give up while waiting.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
        }
    }
}

/// The error and its causes, `: `-separated: a connection error's cause is
/// the server's reply or the socket's error.
fn with_causes(error: &Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `valkeylock run NAME -- PROGRAM ARGS...`.
pub(crate) async fn run(options: LockerOptions, args: RunArgs) -> u8 {
    let RunArgs {
        name,
        wait_timeout,
        what,
        grace,
        program,
    } = args;
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("valkeylock: cannot catch signals: {e}");
            return EXIT_SOFTWARE;
        }
    };
    let locker = tokio::select! {
        r = Locker::connect(options.with_fencing(true)) => match r {
            Ok(l) => l,
            Err(e) => {
                eprintln!("valkeylock: {}", with_causes(&e));
                return exit_for(&e);
            }
        },
        sig = signals.recv() => return 128 + sig as u8,
    };
    let waited = match what {
        Hold::Lock => wait(&locker, &name, wait_timeout, &mut signals)
            .await
            .map(|guard| (guard, Granted::default())),
        Hold::Permit(permits) => {
            wait_permit(&locker, &name, permits, wait_timeout, &mut signals).await
        }
        Hold::Leadership(value) => {
            wait_leadership(&locker, &name, value, wait_timeout, &mut signals).await
        }
    };
    let code = match waited {
        Ok((guard, granted)) => hold(guard, &name, granted, grace, &program, &mut signals).await,
        Err(code) => code,
    };
    locker.close().await;
    code
}

/// Waits for the lock, with an indicator on stderr when it is a terminal.
async fn wait(
    locker: &Locker,
    name: &str,
    timeout: Option<Duration>,
    signals: &mut Signals,
) -> Result<LockGuard, u8> {
    let started = Instant::now();
    let result = if timeout.is_some_and(|t| t.is_zero()) {
        // --wait-timeout 0: one attempt.
        match locker.try_lock(name).await {
            Err(Error::NotLocked { .. }) => Err(None),
            other => other.map_err(Some),
        }
    } else {
        // The wait limit is the library's: the wait is withdrawn when it
        // runs out, and a grant that crossed it is released.
        let request = timeout.map_or_else(LockRequest::new, |t| LockRequest::new().wait(t));
        let show = std::io::stderr().is_terminal();
        let mut drawn = false;
        let mut tick = tokio::time::interval_at(
            started + Duration::from_millis(300),
            Duration::from_millis(100),
        );
        let lock = locker.lock_with(name, &request);
        tokio::pin!(lock);
        // What the indicator says it waits for: the lock's state, followed
        // (only on a terminal) with a watch, and the nodes that are down.
        let mut watch = if show { locker.watch(name).ok() } else { None };
        let mut state: Option<LockState> = None;
        let result = loop {
            tokio::select! {
                r = &mut lock => break match r {
                    Err(Error::Timeout { .. }) => Err(None),
                    r => r.map_err(Some),
                },
                seen = async {
                    match watch.as_mut() {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                }, if watch.is_some() => {
                    match seen {
                        Ok(info) => state = Some(info.state),
                        Err(_) => watch = None,
                    }
                }
                sig = signals.recv() => {
                    if drawn {
                        eprint!("\r\x1b[K");
                    }
                    eprintln!("valkeylock: got {sig} while waiting for lock {name:?}");
                    return Err(128 + sig as u8);
                }
                _ = tick.tick(), if show => {
                    const SPIN: [char; 4] = ['|', '/', '-', '\\'];
                    let n = started.elapsed().as_millis() / 100;
                    let down: Vec<String> = locker
                        .health()
                        .nodes
                        .into_iter()
                        .filter(|n| !n.connected)
                        .map(|n| n.address)
                        .collect();
                    eprint!(
                        "\r\x1b[K{} {}",
                        SPIN[n as usize % 4],
                        waiting_line(name, started.elapsed(), state.as_ref(), &down)
                    );
                    let _ = std::io::stderr().flush();
                    drawn = true;
                }
            }
        };
        if drawn {
            eprint!("\r\x1b[K");
        }
        result
    };
    result.map_err(|e| wait_failed(&format!("lock {name:?}"), timeout, e))
}

/// The exit code of a wait that failed (`None`: it timed out), said on stderr.
fn wait_failed(what: &str, timeout: Option<Duration>, error: Option<Error>) -> u8 {
    match error {
        None => {
            eprintln!(
                "valkeylock: {what} not acquired within {} (--wait-timeout)",
                format_duration(timeout.unwrap_or_default())
            );
            EXIT_WAIT_TIMEOUT
        }
        Some(e) => {
            eprintln!("valkeylock: {}", with_causes(&e));
            exit_for(&e)
        }
    }
}

/// Waits for one of `permits` permits of semaphore `name` (`--permits`);
/// returns the permit's slot guard and its slot.
async fn wait_permit(
    locker: &Locker,
    name: &str,
    permits: u32,
    timeout: Option<Duration>,
    signals: &mut Signals,
) -> Result<(LockGuard, Granted), u8> {
    let what = format!("a permit of {name:?}");
    let pool = locker
        .semaphore(name, permits)
        .map_err(|e| wait_failed(&what, timeout, Some(e)))?;
    let taken = async {
        if timeout.is_some_and(|t| t.is_zero()) {
            match pool.try_acquire().await {
                Err(Error::NotLocked { .. }) => Err(None),
                other => other.map_err(Some),
            }
        } else {
            let request = timeout.map_or_else(LockRequest::new, |t| LockRequest::new().wait(t));
            match pool.acquire_with(&request).await {
                Err(Error::Timeout { .. }) => Err(None),
                other => other.map_err(Some),
            }
        }
    };
    let permit = tokio::select! {
        r = taken => r.map_err(|e| wait_failed(&what, timeout, e))?,
        sig = signals.recv() => {
            eprintln!("valkeylock: got {sig} while waiting for {what}");
            return Err(128 + sig as u8);
        }
    };
    let slot = Some(permit.slot());
    Ok((
        permit.into_guard(),
        Granted {
            slot,
            leading: None,
        },
    ))
}

/// Campaigns in election `name` with `value` (`elect`) until elected;
/// returns the leadership's guard.
async fn wait_leadership(
    locker: &Locker,
    name: &str,
    value: String,
    timeout: Option<Duration>,
    signals: &mut Signals,
) -> Result<(LockGuard, Granted), u8> {
    let what = format!("leadership of {name:?}");
    let election = locker
        .election(name)
        .map_err(|e| wait_failed(&what, timeout, Some(e)))?;
    let elected = async {
        if timeout.is_some_and(|t| t.is_zero()) {
            match election.try_campaign(&value).await {
                Err(Error::NotLocked { .. }) => Err(None),
                other => other.map_err(Some),
            }
        } else {
            let request = timeout.map_or_else(LockRequest::new, |t| LockRequest::new().wait(t));
            match election.campaign_with(&value, &request).await {
                Err(Error::Timeout { .. }) => Err(None),
                other => other.map_err(Some),
            }
        }
    };
    let leadership = tokio::select! {
        r = elected => r.map_err(|e| wait_failed(&what, timeout, e))?,
        sig = signals.recv() => {
            eprintln!("valkeylock: got {sig} while campaigning for {what}");
            return Err(128 + sig as u8);
        }
    };
    eprintln!(
        "valkeylock: leading {name:?} in term {} as {value:?}",
        leadership.term()
    );
    Ok((
        leadership.into_guard(),
        Granted {
            slot: None,
            leading: Some(value),
        },
    ))
}

/// The waiting indicator's text: the lock, how long we have waited, what we
/// wait for (who holds it, as far as the last look saw), and the nodes
/// that are down.
fn waiting_line(
    name: &str,
    waited: Duration,
    state: Option<&LockState>,
    down: &[String],
) -> String {
    let mut line = format!(
        "valkeylock: waiting for lock {name:?} ({:.1}s)",
        waited.as_secs_f64()
    );
    match state {
        Some(LockState::Held {
            ours: false, owner, ..
        }) => {
            line.push_str(&format!(": held by token {owner}"));
        }
        Some(LockState::Held { ours: true, .. }) => line.push_str(": acquiring"),
        Some(LockState::Unknown { unreadable }) => {
            line.push_str(&format!(": {unreadable} keys unreadable"));
        }
        Some(LockState::Free) => line.push_str(": no holder, retrying"),
        _ => {}
    }
    if !down.is_empty() {
        line.push_str(&format!("; nodes down: {}", down.join(", ")));
    }
    line
}

/// Ties the program's life to the tool's. If the tool dies without stopping
/// the program (`kill -9`, the OOM killer), nobody extends the lock any more
/// and another `run` can take it within one validity: the program must not
/// be left running beside the next holder. On Linux the kernel sends it
/// SIGKILL when the tool's thread that started it exits
/// (`PR_SET_PDEATHSIG`; that thread is the main thread, which lives as long
/// as the tool). Processes the program started in turn are not covered by
/// the kernel: they are stopped with the program's process group only when
/// the tool is alive to do it. Other platforms have no such call: there a
/// killed tool leaves the program running.
#[allow(unsafe_code)]
fn die_with_the_tool(command: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        let tool = nix::unistd::getpid();
        // SAFETY: the closure runs in the child between fork and exec, and
        // makes only async-signal-safe system calls (prctl, getppid); it
        // allocates nothing.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)?;
                // The tool may have died between fork and prctl: then no
                // signal will come, so do not start at all.
                if nix::unistd::getppid() != tool {
                    return Err(std::io::Error::from(nix::errno::Errno::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Runs the program while `guard` is held; releases it afterwards.
async fn hold(
    guard: LockGuard,
    name: &str,
    granted: Granted,
    grace: Duration,
    program: &[OsString],
    signals: &mut Signals,
) -> u8 {
    let mut command = tokio::process::Command::new(&program[0]);
    command
        .args(&program[1..])
        .env("VALKEYLOCK_NAME", name)
        .env(
            "VALKEYLOCK_FENCING_TOKEN",
            guard.fencing_token().to_string(),
        )
        // Its own process group, so a lost lock stops everything it started.
        .process_group(0);
    if let Some(slot) = granted.slot {
        command.env("VALKEYLOCK_PERMIT_SLOT", slot.to_string());
    }
    if let Some(value) = &granted.leading {
        command
            .env("VALKEYLOCK_TERM", guard.fencing_token().to_string())
            .env("VALKEYLOCK_LEADER_VALUE", value);
    }
    die_with_the_tool(&mut command);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "valkeylock: cannot run {}: {e}",
                program[0].to_string_lossy()
            );
            let _ = guard.release().await;
            return if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXEC
            };
        }
    };
    // The program's pid, which is its process group's id. Never 0: killpg(0)
    // would signal our own group.
    let group = match child.id().and_then(|id| i32::try_from(id).ok()) {
        Some(id) if id > 0 => Pid::from_raw(id),
        _ => {
            eprintln!("valkeylock: the program has no process id");
            let _ = guard.release().await;
            return EXIT_SOFTWARE;
        }
    };
    let terminal = Terminal::hand_over(group);

    let mut lost: Option<LostReason> = None;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s,
            reason = guard.lost(), if lost.is_none() => {
                lost = Some(reason);
                eprintln!(
                    "valkeylock: lost lock {name:?} ({reason}): sending SIGTERM to the program, SIGKILL in {}",
                    format_duration(grace)
                );
                let _ = killpg(group, Signal::SIGTERM);
                kill_at = Some(Instant::now() + grace);
            }
            _ = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                eprintln!("valkeylock: the program is still running: sending SIGKILL");
                let _ = killpg(group, Signal::SIGKILL);
                kill_at = None;
            }
            sig = signals.recv() => {
                let _ = killpg(group, sig);
            }
        }
    };
    drop(terminal);
    if lost.is_none() && !guard.is_held() {
        let reason = guard.lost_reason().unwrap_or(LostReason::Expired);
        eprintln!("valkeylock: lost lock {name:?} ({reason}) before the program exited");
        lost = Some(reason);
    }
    if lost.is_some() {
        // Whatever the program left running in its group goes too.
        let _ = killpg(group, Signal::SIGKILL);
    }
    if let Err(e) = guard.release().await {
        // The program's outcome decides the exit code; the operator hears
        // that some keys stay until they expire.
        eprintln!("valkeylock: {e}");
    }
    match (lost, status) {
        (Some(_), _) => EXIT_LOST,
        (None, Ok(status)) => exit_code(status),
        (None, Err(e)) => {
            eprintln!("valkeylock: waiting for the program failed: {e}");
            EXIT_SOFTWARE
        }
    }
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => EXIT_SOFTWARE,
    }
}

/// The terminal handed to the program's process group while it runs (so it
/// can read it and gets Ctrl-C directly), taken back when dropped. Only when
/// standard input is our terminal and we are in its foreground. `main`
/// blocks SIGTTOU, so taking it back from the background is allowed.
struct Terminal {
    ours: Pid,
}

impl Terminal {
    fn hand_over(group: Pid) -> Option<Terminal> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let ours = getpgrp();
        if tcgetpgrp(stdin.as_fd()).ok()? != ours {
            return None;
        }
        tcsetpgrp(stdin.as_fd(), group).ok()?;
        // It may have tried to read the terminal before it was its own.
        let _ = killpg(group, Signal::SIGCONT);
        Some(Terminal { ours })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = tcsetpgrp(std::io::stdin().as_fd(), self.ours);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_lines() {
        let w = Duration::from_millis(1500);
        let held = |ours| LockState::Held {
            owner: "ab12cd34".into(),
            ours,
            forced: false,
            keys: 2,
            expires_in: None,
        };
        let cases: [(Option<LockState>, &[&str], &str); 6] = [
            (None, &[], r#"valkeylock: waiting for lock "n" (1.5s)"#),
            (
                Some(held(false)),
                &[],
                r#"valkeylock: waiting for lock "n" (1.5s): held by token ab12cd34"#,
            ),
            (
                Some(held(true)),
                &[],
                r#"valkeylock: waiting for lock "n" (1.5s): acquiring"#,
            ),
            (
                Some(LockState::Unknown { unreadable: 2 }),
                &["a:1", "b:2"],
                r#"valkeylock: waiting for lock "n" (1.5s): 2 keys unreadable; nodes down: a:1, b:2"#,
            ),
            (
                Some(LockState::Free),
                &[],
                r#"valkeylock: waiting for lock "n" (1.5s): no holder, retrying"#,
            ),
            (
                None,
                &["a:1"],
                r#"valkeylock: waiting for lock "n" (1.5s); nodes down: a:1"#,
            ),
        ];
        for (state, down, want) in cases {
            let down: Vec<String> = down.iter().map(|s| s.to_string()).collect();
            assert_eq!(waiting_line("n", w, state.as_ref(), &down), want);
        }
    }
}
