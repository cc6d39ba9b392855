//! `valkeylock`: distributed locks over Valkey from the shell.
//!
//! - `valkeylock run NAME -- PROGRAM ARGS...` waits for the lock, runs the
//!   program while holding it and stops it (SIGTERM, then SIGKILL) if the
//!   lock is lost;
//! - `valkeylock status NAME` shows each key and the fencing counter;
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

fn main() {
    let cli = Cli::parse();
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
                            grace,
                            program,
                        } => {
                            run::run(
                                options,
                                run::RunArgs {
                                    name,
                                    wait_timeout,
                                    grace,
                                    program,
                                },
                            )
                            .await
                        }
                        Command::Status { name } => inspect::status(options, &name).await,
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
