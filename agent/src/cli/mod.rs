//! The command line: everything clap touches. It parses what the user asked, merges the
//! config file, and hands plain configurations to the commands.

mod args;
mod commands;
mod config;

use clap::{CommandFactory, FromArgMatches};

use args::{Cli, Command};

use crate::console::{PrintError, one_line};

/// Runs flowtap with the process's arguments; returns the process exit code.
pub fn main() -> i32 {
    // The config file becomes arguments before the user's own (issue 5).
    let argv = match config::apply(std::env::args_os().collect(), &Cli::command()) {
        Ok(argv) => argv,
        Err(error) => {
            eprintln!("flowtap: error: {}", one_line(&error));
            return 2;
        }
    };
    let mut command = Cli::command();
    // The kernel's features are probed only when asked for.
    if argv
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--version")
    {
        let version = format!("{}\n{}", args::VERSION, crate::host::features_line());
        // clap keeps &'static strings; this one lives until the process prints it and exits.
        command = command.long_version(version.leak() as &str);
    }
    let cli =
        Cli::from_arg_matches(&command.get_matches_from(argv)).unwrap_or_else(|error| error.exit());
    match execute(cli) {
        Ok(code) => code,
        // `flowtap symbols | head`: the reader has what it wanted.
        Err(error) if matches!(error.downcast_ref(), Some(PrintError::Closed)) => 0,
        Err(error) => {
            // One line: what went wrong and, from the error itself, what to do.
            eprintln!("flowtap: error: {}", one_line(error.as_ref()));
            2
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<i32> {
    crate::console::set_quiet(cli.quiet);
    match cli.command {
        Command::Run(args) => crate::run::run(args.into_config()?),
        Command::Symbols(args) => commands::symbols(args),
        Command::Profile(command) => commands::profile(command),
        Command::Check => commands::check(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_shows_is_not_repeated() {
        let cause = std::io::Error::other("address in use");
        let error = anyhow::Error::new(crate::export::prometheus::BindError::new(
            "127.0.0.1:1".parse().unwrap(),
            cause,
        ))
        .context("starting");
        assert_eq!(
            one_line(error.as_ref()),
            "starting: cannot serve metrics on 127.0.0.1:1: address in use; choose another address with --metrics-addr"
        );
    }
}
