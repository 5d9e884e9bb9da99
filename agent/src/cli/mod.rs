//! The command line: everything clap touches. It parses what the user asked, merges the
//! config file, and hands plain configurations to the commands.

mod args;
mod commands;
mod config;

use clap::{CommandFactory, Parser};

use args::{Cli, Command};

/// Runs flowtap with the process's arguments; returns the process exit code.
pub fn main() -> i32 {
    // The config file becomes arguments before the user's own (issue 5).
    let argv = match config::apply(std::env::args_os().collect(), &Cli::command()) {
        Ok(argv) => argv,
        Err(error) => {
            eprintln!("flowtap: error: {error}");
            return 2;
        }
    };
    match execute(Cli::parse_from(argv)) {
        Ok(code) => code,
        Err(error) => {
            // One line: what went wrong and, from the error itself, what to do.
            eprintln!("flowtap: error: {error:#}");
            2
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => crate::run::run(args.into_config()?),
        Command::Symbols(args) => commands::symbols(args),
        Command::Profile(command) => commands::profile(command),
        Command::Check => Ok(commands::check()),
    }
}
