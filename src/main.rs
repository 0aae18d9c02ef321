//! The `allot` binary: parse the command line, run it, report failure as one line.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = allot::cli::Cli::parse();
    match allot::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allot: {}", allot::cli::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
