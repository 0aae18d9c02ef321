//! The `allot` binary: parse the command line, run it, report failure as one line.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = allot::cli::Cli::parse_args();
    match allot::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("allot: {}", allot::cli::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
