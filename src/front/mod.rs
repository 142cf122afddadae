//! The command line: flags, the `keys` and `status` commands, the settings built from flags and variables, and what is printed.

pub mod cli;
pub mod commands;
pub mod config;
pub mod console;
pub mod logging;
