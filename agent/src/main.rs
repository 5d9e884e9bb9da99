use clap::Parser;
use flowtap::cli::{Cli, execute};

fn main() {
    // reqwest (OTLP/HTTP, the Kubernetes API) is built with rustls but no default crypto
    // provider: without one, building any of its clients panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The config file becomes arguments before the user's own (issue 5).
    let argv = flowtap::config::apply(std::env::args_os().collect()).unwrap_or_else(|error| {
        eprintln!("flowtap: error: {error}");
        std::process::exit(2);
    });
    let cli = Cli::parse_from(argv);
    match execute(cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            // One line: what went wrong and, from the error itself, what to do.
            eprintln!("flowtap: error: {error:#}");
            std::process::exit(2);
        }
    }
}
