//! `allot-cni`: the CNI IPAM plugin (see `allot::cni`). A runtime runs it with `CNI_COMMAND`
//! and the other `CNI_*` variables set and the network configuration on stdin; it prints the
//! result, or the spec's error object, on stdout, and exits 0 or 1.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let outcome = match (read, runtime) {
        (Ok(_), Ok(runtime)) => {
            runtime.block_on(allot::cni::run(&|name| std::env::var(name).ok(), &stdin))
        }
        (Err(e), _) | (_, Err(e)) => allot::cni::Outcome {
            stdout: Some(
                allot::cni::CniError::new(allot::cni::Code::Io, format!("allot-cni: {e}"))
                    .to_json(allot::cni::config::SUPPORTED[3]),
            ),
            ok: false,
        },
    };
    if let Some(json) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        // Nothing else can be told if stdout is gone.
        let _ = writeln!(out, "{json}").and_then(|()| out.flush());
    }
    if outcome.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
