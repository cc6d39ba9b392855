//! `valkeylock`: distributed locks over Valkey from the shell.
//!
//! - `valkeylock run NAME -- PROGRAM ARGS...` waits for the lock, runs the
//!   program while holding it and stops it (SIGTERM, then SIGKILL) if the
//!   lock is lost;
//! - `valkeylock status [--json] NAME` shows whether the lock is held, each
//!   key and the fencing counter;
//! - `valkeylock elect NAME VALUE -- PROGRAM ARGS...` runs the program while
//!   this candidate leads election NAME, and stops it if deposed;
//! - `valkeylock leader [--watch] [--json] NAME` prints who leads (and, with
//!   `--watch`, every new term);
//! - `valkeylock release --force NAME` deletes the keys.
//!
//! Exit codes are listed in `valkeylock --help` and the README.

#[path = "valkeylock/args.rs"]
mod args;
#[path = "valkeylock/inspect.rs"]
mod inspect;
#[path = "valkeylock/run.rs"]
mod run;

use std::io::Write;

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

use args::{Cli, Command, EXIT_SOFTWARE, EXIT_USAGE};

/// Logs to stderr through tracing: the filter is `RUST_LOG` when set, else
/// one level per `-v` for this tool and its engine; nothing without either.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => {
            let level = match verbose {
                0 => return,
                1 => "info",
                2 => "debug",
                _ => "trace",
            };
            EnvFilter::new(format!("valkeylock={level},valkeylock_actors={level}"))
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.common.verbose);
    // `run` hands the terminal to the program and takes it back from the
    // background, which needs SIGTTOU blocked; every thread inherits this
    // mask, and the program gets an empty one (std resets it on spawn).
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let _ = ttou.thread_block();

    let code = match cli.common.options() {
        Err(e) => {
            eprintln!("valkeylock: {}", e.0);
            EXIT_USAGE
        }
        Ok(options) => match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Err(e) => {
                eprintln!("valkeylock: cannot start the runtime: {e}");
                EXIT_SOFTWARE
            }
            Ok(runtime) => {
                let code = runtime.block_on(async move {
                    match cli.command {
                        Command::Run {
                            name,
                            wait_timeout,
                            permits,
                            grace,
                            program,
                        } => {
                            run::run(
                                options,
                                run::RunArgs {
                                    name,
                                    wait_timeout,
                                    what: permits.map_or(run::Hold::Lock, run::Hold::Permit),
                                    grace,
                                    program,
                                },
                            )
                            .await
                        }
                        Command::Elect {
                            name,
                            value,
                            wait_timeout,
                            grace,
                            program,
                        } => {
                            run::run(
                                options,
                                run::RunArgs {
                                    name,
                                    wait_timeout,
                                    what: run::Hold::Leadership(value),
                                    grace,
                                    program,
                                },
                            )
                            .await
                        }
                        Command::Leader { name, watch, json } => {
                            inspect::leader(options, &name, watch, json).await
                        }
                        Command::Status {
                            name,
                            json,
                            permits: None,
                        } => inspect::status(options, &name, json).await,
                        Command::Status {
                            name,
                            json,
                            permits: Some(permits),
                        } => inspect::semaphore_status(options, &name, permits, json).await,
                        Command::Release { name, yes, .. } => {
                            inspect::release(options, &name, yes).await
                        }
                    }
                });
                runtime.shutdown_timeout(std::time::Duration::from_millis(200));
                code
            }
        },
    };
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(code));
}
