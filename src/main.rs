//! The `allot` binary: parse the command line, run it, report failure as one line.

/// mimalloc rather than glibc's malloc: a request's many small, short-lived allocations
/// (HTTP/2 frames, protobuf messages, futures) cost the server less CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
