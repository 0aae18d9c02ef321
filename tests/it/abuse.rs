//! The real binary under abuse: floods of connections that send nothing, on gRPC and on the
//! Docker plugin socket, with a low open-file limit; a second instance on a live plugin
//! socket.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::helpers::*;

/// Open files allowed to the server (soft and hard): fewer than the flood's connections.
const NOFILE: u32 = 256;
const FLOOD: usize = 400;

/// `allot serve` under `ulimit -n NOFILE`, with a 3 s handshake timeout.
fn limited_server(dir: &TempDir, socket: &Path) -> Server {
    let mut sh = Command::new("sh");
    sh.args(["-c", &format!("ulimit -n {NOFILE} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_allot"));
    let socket = socket.to_str().unwrap();
    let flags = [
        "--handshake-timeout",
        "3s",
        "--docker-plugin-socket",
        socket,
    ];
    Server::start_in(sh, &dir.db_url(), &dir.0, &flags)
}

/// One plugin call with a fresh connection (`Connection: close`): the status line.
async fn plugin_call(socket: &Path) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(
        b"POST /IpamDriver.GetDefaultAddressSpaces HTTP/1.1\r\nHost: plugin\r\n\
          Content-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// Tells whether the server closed `conn` within `within`: reads (an HTTP/2 server sends
/// its settings first) until EOF or an error.
async fn closed_within<S: AsyncReadExt + Unpin>(conn: &mut S, within: Duration) -> bool {
    let drained = async {
        let mut buf = [0; 256];
        while let Ok(n) = conn.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(within, drained).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_floods_are_shed_and_clients_still_answered() {
    let dir = TempDir::new("flood");
    let socket = dir.0.join("plugin.sock");
    let server = limited_server(&dir, &socket);
    let mut c = server.client().await;
    let id = request_pool(&mut c, "10.90.0.0/24", "").await.unwrap();
    let logged_before = server.log_lines.load(Ordering::Relaxed);

    // More silent connections than the process has file descriptors, on both listeners.
    let mut grpc_flood = Vec::new();
    let mut plugin_flood = Vec::new();
    for _ in 0..FLOOD {
        grpc_flood.push(TcpStream::connect(server.addr).await.unwrap());
        plugin_flood.push(UnixStream::connect(&socket).await.unwrap());
    }

    // A well-behaved client is answered before any silent connection could have timed out:
    // at the cap, its connection takes the place of the oldest silent one. (A connection
    // closed on arrival would be retried, as gRPC clients do.)
    let deadline = Instant::now() + Duration::from_millis(2500);
    let answered = loop {
        let attempt = async {
            let mut fresh = allot::proto::pb::ipam_service_client::IpamServiceClient::connect(
                format!("http://{}", server.addr),
            )
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            request_address(&mut fresh, &id, "", &[]).await
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(address)) => break address,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("no answer during the flood: {other:?}"),
        }
    };
    assert_eq!(answered, "10.90.0.1/24");
    let plugin = loop {
        match tokio::time::timeout(Duration::from_secs(3), plugin_call(&socket)).await {
            Ok(Ok(status)) if !status.is_empty() => break status,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            other => panic!("no plugin answer during the flood: {other:?}"),
        }
    };
    assert_eq!(plugin, "HTTP/1.1 200 OK");

    // Every silent connection is closed by the server: evicted for a newcomer, or at the
    // handshake timeout.
    for conn in &mut grpc_flood {
        assert!(
            closed_within(conn, Duration::from_secs(8)).await,
            "gRPC connection left open"
        );
    }
    for conn in &mut plugin_flood {
        assert!(
            closed_within(conn, Duration::from_secs(8)).await,
            "plugin connection left open"
        );
    }
    // The log says so at a bounded rate: not a line per connection.
    let logged = server.log_lines.load(Ordering::Relaxed) - logged_before;
    assert!(
        logged < 60,
        "{logged} log lines for {} connections",
        2 * FLOOD
    );
    // And the server is still itself.
    assert_eq!(
        request_address(&mut c, &id, "", &[]).await.unwrap(),
        "10.90.0.2/24"
    );
}

/// A second instance refuses a plugin socket another one serves, and leaves it in place.
#[tokio::test]
async fn a_live_plugin_socket_is_not_taken_over() {
    let dir = TempDir::new("socket-owner");
    let socket = dir.0.join("plugin.sock");
    let first = Server::start_with(
        "memory:",
        &dir.0,
        &["--docker-plugin-socket", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket).await;
    let err = serve_refused(
        "memory:",
        &["--docker-plugin-socket", socket.to_str().unwrap()],
    )
    .await;
    assert!(err.contains("served by another process"), "{err}");
    assert_eq!(plugin_call(&socket).await.unwrap(), "HTTP/1.1 200 OK");
    // A socket left by a process that is gone is taken over.
    first.kill9();
    assert!(socket.exists(), "kill -9 leaves the socket file behind");
    let second = Server::start_with(
        "memory:",
        &dir.0,
        &["--docker-plugin-socket", socket.to_str().unwrap()],
    );
    wait_for_socket(&socket).await;
    assert_eq!(plugin_call(&socket).await.unwrap(), "HTTP/1.1 200 OK");
    // Its own socket it removes on a clean exit.
    assert!(second.terminate().success());
    assert!(!socket.exists());
}
