use clap::{CommandFactory, FromArgMatches};
use flowtap::{
    cli::{Cli, execute},
    console::PrintError,
};

fn main() {
    // reqwest (OTLP/HTTP, the Kubernetes API) is built with rustls but no default crypto
    // provider: without one, building any of its clients panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The config file becomes arguments before the user's own (issue 5).
    let argv = flowtap::config::apply(std::env::args_os().collect()).unwrap_or_else(|error| {
        eprintln!("flowtap: error: {error}");
        std::process::exit(2);
    });
    let mut command = Cli::command();
    // The kernel's features are probed only when asked for.
    if argv
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--version")
    {
        let version = format!(
            "{}\n{}",
            flowtap::cli::VERSION,
            flowtap::host::features_line()
        );
        // clap keeps &'static strings; this one lives until the process prints it and exits.
        command = command.long_version(version.leak() as &str);
    }
    let cli =
        Cli::from_arg_matches(&command.get_matches_from(argv)).unwrap_or_else(|error| error.exit());
    match execute(cli) {
        Ok(code) => std::process::exit(code),
        // `flowtap symbols | head`: the reader has what it wanted.
        Err(error) if matches!(error.downcast_ref(), Some(PrintError::Closed)) => {
            std::process::exit(0)
        }
        Err(error) => {
            // One line: what went wrong and, from the error itself, what to do.
            eprintln!("flowtap: error: {error:#}");
            std::process::exit(2);
        }
    }
}
