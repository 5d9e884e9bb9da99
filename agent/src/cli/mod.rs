//! The command line: everything clap touches. It parses what the user asked, merges the
//! config file, and hands plain configurations to the commands.

mod args;
mod commands;
mod config;

use clap::{CommandFactory, FromArgMatches};

use args::{Cli, Command};

use crate::console::{PrintError, one_line};

/// The `run` arguments a `flowtap.toml` text stands for, or the message refusing it (what the
/// config fuzz target drives).
pub fn config_file_args(text: &str) -> Result<Vec<std::ffi::OsString>, String> {
    config::text_to_args(text, &Cli::command())
}

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
    let cli = match command
        .try_get_matches_from(argv)
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(cli) => cli,
        // --help and --version print as clap prints them.
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            eprintln!("flowtap: error: {}", clap_one_line(&error.to_string()));
            return 2;
        }
    };
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

/// clap's message (error line, tip, usage) as the one line the README promises: the error,
/// its tip in parentheses, and where to look.
fn clap_one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next().unwrap_or_default();
    let mut line = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let notes =
        lines.take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more"));
    for note in notes {
        let note = note.strip_prefix("tip: ").unwrap_or(note);
        line.push_str(&format!(" ({})", note.trim_matches(['[', ']'])));
    }
    line.push_str("; see --help");
    line
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
    use clap::Parser;

    use super::*;

    #[test]
    fn argument_errors_are_one_line() {
        let error = Cli::try_parse_from(["flowtap", "run", "--bogus"]).unwrap_err();
        assert_eq!(
            clap_one_line(&error.to_string()),
            "unexpected argument '--bogus' found (to pass '--bogus' as a value, use '-- --bogus'); see --help"
        );
        let error = Cli::try_parse_from(["flowtap", "run", "--report", "xml"]).unwrap_err();
        assert_eq!(
            clap_one_line(&error.to_string()),
            "invalid value 'xml' for '--report <REPORT>' (possible values: table, json); see --help"
        );
    }

    #[test]
    fn the_config_reader_the_fuzzer_drives_answers_in_one_line() {
        let args = config_file_args("report = \"json\"\ncommand = [\"./app\", 4]\n").unwrap();
        assert_eq!(args, ["--report", "json", "--", "./app", "4"]);
        let huge = format!("report = \"{}\n\"", "x\\n".repeat(10_000));
        let error = config_file_args(&huge).unwrap_err();
        assert!(!error.contains('\n'), "{error}");
    }

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
