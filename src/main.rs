//! `roo-proxy`: parse the command line, build the settings, load the keys, serve.
//! Errors are printed once, here, and pick the exit code.

#![forbid(unsafe_code)]

mod classify;
mod cli;
mod config;
mod error;
mod key;
mod policy;
mod route;
mod server;
mod store;
mod stream;
mod upstream;

use std::process::ExitCode;

use crate::config::Config;
use crate::error::Error;

fn main() -> ExitCode {
    let args: cli::Args = argh::from_env();
    if args.version {
        println!("roo-proxy {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roo-proxy: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: cli::Args) -> Result<(), Error> {
    let config = Config::build(args, |name| std::env::var(name).ok())?;
    let keys = store::load(&config.keys_file)?;
    server::serve(config, keys)
}
