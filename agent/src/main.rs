use clap::Parser;
use flowtap::cli::{Cli, execute};

fn main() {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            // One line: what went wrong and, from the error itself, what to do.
            eprintln!("flowtap: error: {error:#}");
            std::process::exit(2);
        }
    }
}
