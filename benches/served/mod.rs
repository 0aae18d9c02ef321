//! The real binary serving on loopback, for the benchmarks that measure it from outside its
//! process, and the request bodies h2load sends it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;

/// `allot serve` on a free loopback port, killed when dropped.
pub struct Binary(Child, pub SocketAddr);

impl Binary {
    /// Starts `program serve` with `args`, logging at `rust_log` to `dir/log` (the audit trail
    /// included), as a deployment would, rather than to a pipe this process would have to
    /// drain.
    pub fn start(program: &Path, dir: &Path, log: &str, rust_log: &str, args: &[&str]) -> Self {
        let log = dir.join(log);
        let child = Command::new(program)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", rust_log)
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("\"addr\":\"").nth(1) {
                break rest.split('"').next().unwrap().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "allot did not start: {text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self(child, addr)
    }

    /// The server's process id.
    #[allow(dead_code)] // Not every benchmark reads it.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Runs the CLI against it; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_allot"))
            .args(["--server", &format!("http://{}", self.1)])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A gRPC request body in `dir/name`: the 5-byte frame header and the message.
pub fn grpc_body(dir: &Path, name: &str, msg: &impl Message) -> PathBuf {
    let bytes = msg.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&bytes);
    let path = dir.join(name);
    std::fs::write(&path, framed).unwrap();
    path
}
