//! `roo-proxy`: parse the command line, build the settings, load the keys, serve.
//! Errors are printed once, here, and pick the exit code.

// Unsafe code only in owner_only.rs, for the Windows calls (it allows it there).
#![deny(unsafe_code)]
// Built without the `redis` feature (the default), the pool's sharing side has no caller.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

mod front;
mod keys;
mod outbound;
mod persist;
mod rotation;
mod serve;
#[cfg(test)]
mod testing;

use std::process::ExitCode;

use crate::front::{cli, commands, console, logging};
use crate::keys::store;
use crate::serve::server;

use crate::front::config::Config;
use crate::front::console::errln;
use crate::serve::error::Error;

fn main() -> ExitCode {
    let args = parse_args(std::env::args().collect());
    if args.version {
        println!("roo-proxy {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    console::init(std::env::var("ROO_PROXY_ASCII").ok().as_deref());
    logging::init();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            errln!("roo-proxy: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// argh, except that `keys add -` means `keys add` (read the key from standard input):
/// argh takes a lone `-` for an unknown flag.
fn parse_args(mut argv: Vec<String>) -> cli::Args {
    if let Some(at) = argv
        .windows(2)
        .position(|w| w[0] == "keys" && w[1] == "add")
    {
        let mut i = 0;
        argv.retain(|a| {
            i += 1;
            !(i > at + 2 && a == "-")
        });
    }
    let command = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map_or("roo-proxy".into(), |n| n.to_string_lossy().into_owned());
    let rest: Vec<&str> = argv.iter().skip(1).map(String::as_str).collect();
    match <cli::Args as argh::FromArgs>::from_args(&[&command], &rest) {
        Ok(args) => args,
        Err(early) => {
            let failed = early.status.is_err();
            if failed {
                eprintln!("{}", early.output);
            } else {
                println!("{}", early.output);
            }
            std::process::exit(i32::from(failed));
        }
    }
}

fn run(mut args: cli::Args) -> Result<u8, Error> {
    let env = |name: &str| std::env::var(name).ok();
    match args.command.take() {
        Some(cli::Command::Keys(keys)) => {
            return commands::run(keys.action, args.keys_file, args.provider, env);
        }
        Some(cli::Command::Status(status)) => return commands::status(status, &args, env),
        None => {}
    }
    let config = Config::build(args, env)?;
    let keys = store::load_with_env(&config.keys_file, env)?;
    let env_keys = store::KEY_VARIABLES
        .iter()
        .filter_map(|name| Some((name.to_string(), env(name)?)))
        .collect();
    server::serve(config, keys, env_keys).map(|()| 0)
}
