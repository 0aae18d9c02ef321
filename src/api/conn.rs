//! Connections of both listeners (gRPC over TCP, the Docker plugin over a unix socket), held
//! to account: a cap on the connections open at once, a deadline for a new connection's first
//! bytes, an idle timeout, and accept errors backed off and logged at a bounded rate. A flood
//! of connections that send nothing therefore holds a bounded number of file descriptors for
//! a bounded time, and never spins the accept loop.
//!
//! It must never buffer or parse what passes: it only watches that bytes move.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

/// How long accepting waits after an error (out of file descriptors, say), doubling from the
/// first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// Connections held back from the open-file limit: the database, the log, the listeners.
pub const RESERVED_FDS: u64 = 128;

/// The limits every connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once, both listeners together; more are closed on arrival.
    pub max_connections: usize,
    /// Longest a new connection may take to send its first bytes.
    pub handshake_timeout: Duration,
    /// Longest a connection may stay without a byte read or written.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    /// The defaults of `allot serve`'s flags.
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Counts the connections open, shared by the listeners, and knows which have not sent a
/// byte yet: when the cap is reached, the oldest of those makes room for a newcomer, so a
/// flood of silent connections cannot lock well-behaved clients out.
#[derive(Debug, Clone)]
pub struct Gate {
    limits: Limits,
    // Invariant: the number of `Guarded` connections alive.
    open: Arc<AtomicUsize>,
    // Connections admitted silent, oldest first (some have spoken or closed since).
    silent: Arc<Mutex<VecDeque<Weak<Silence>>>>,
}

/// What a gate shares with a connection that has not spoken yet.
#[derive(Debug, Default)]
struct Silence {
    evict: Arc<Notify>,
    spoke: AtomicBool,
}

impl Gate {
    /// Returns a gate holding connections to `limits`.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            silent: Arc::default(),
        }
    }

    /// Admits `stream`: under the cap, or over it in place of the oldest connection still
    /// silent (which is closed). Returns it when every connection open has spoken (the caller
    /// drops it, which closes it).
    fn admit<S>(&self, stream: S) -> Result<Guarded<S>, S> {
        let under_cap = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.max_connections).then_some(n + 1)
            })
            .is_ok();
        if !under_cap {
            if !self.evict_oldest_silent() {
                return Err(stream);
            }
            // Over the cap until the evicted connection is dropped, a moment from now.
            self.open.fetch_add(1, Ordering::AcqRel);
        }
        let silence = Arc::new(Silence::default());
        let mut silent = self.silent.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget connections that spoke or closed, so the queue stays as long as the cap.
        silent.retain(|s| {
            s.upgrade()
                .is_some_and(|s| !s.spoke.load(Ordering::Acquire))
        });
        silent.push_back(Arc::downgrade(&silence));
        drop(silent);
        Ok(Guarded {
            inner: stream,
            open: Arc::clone(&self.open),
            deadline: Box::pin(tokio::time::sleep(self.limits.handshake_timeout)),
            evicted: Some(Box::pin(Arc::clone(&silence.evict).notified_owned())),
            silence,
            idle: self.limits.idle_timeout,
        })
    }

    /// Tells the oldest connection still silent to close; returns whether there was one.
    fn evict_oldest_silent(&self) -> bool {
        let mut silent = self.silent.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(oldest) = silent.pop_front() {
            if let Some(s) = oldest.upgrade()
                && !s.spoke.load(Ordering::Acquire)
            {
                s.evict.notify_one();
                return true;
            }
        }
        false
    }
}

/// A listener whose connections a [`Gate`] admits.
pub trait Listener {
    type Io;
    /// Accepts the next connection.
    fn poll_next_conn(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
}

impl Listener for TcpListener {
    type Io = TcpStream;

    fn poll_next_conn(&self, cx: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
        let (stream, _) = ready!(self.poll_accept(cx))?;
        // Replies are small: send them at once.
        stream.set_nodelay(true)?;
        Poll::Ready(Ok(stream))
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;

    fn poll_next_conn(&self, cx: &mut Context<'_>) -> Poll<io::Result<UnixStream>> {
        let (stream, _) = ready!(self.poll_accept(cx))?;
        Poll::Ready(Ok(stream))
    }
}

/// The connections a listener accepts and a gate admits, as a stream (what tonic serves).
pub struct Incoming<L> {
    listener: L,
    gate: Gate,
    what: &'static str,
    // Set after an accept error: no accepting until it fires.
    backoff: Option<Pin<Box<Sleep>>>,
    failures: u32,
    errors: RateLog,
    refused: RateLog,
}

impl<L: Listener> Incoming<L> {
    /// Accepts on `listener` (named `what` in the log) for connections `gate` admits.
    pub fn new(listener: L, gate: Gate, what: &'static str) -> Self {
        Self {
            listener,
            gate,
            what,
            backoff: None,
            failures: 0,
            errors: RateLog::default(),
            refused: RateLog::default(),
        }
    }

    /// Returns the limits its connections are held to.
    pub fn limits(&self) -> Limits {
        self.gate.limits
    }

    /// Returns the next admitted connection.
    pub async fn next(&mut self) -> Guarded<L::Io>
    where
        L: Unpin,
    {
        std::future::poll_fn(|cx| self.poll_admitted(cx)).await
    }

    fn poll_admitted(&mut self, cx: &mut Context<'_>) -> Poll<Guarded<L::Io>> {
        loop {
            if let Some(backoff) = &mut self.backoff {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_next_conn(cx)) {
                Ok(stream) => {
                    self.failures = 0;
                    match self.gate.admit(stream) {
                        Ok(conn) => return Poll::Ready(conn),
                        Err(refused) => {
                            drop(refused);
                            if let Some(more) = self.refused.due() {
                                tracing::warn!(
                                    listener = self.what,
                                    max_connections = self.gate.limits.max_connections,
                                    more_since_last_report = more,
                                    "connection closed on arrival: too many connections open"
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors, say: retrying at once would spin.
                    let delay = BACKOFF
                        .0
                        .saturating_mul(1 << self.failures.min(10))
                        .min(BACKOFF.1);
                    self.failures += 1;
                    if let Some(more) = self.errors.due() {
                        tracing::warn!(
                            listener = self.what,
                            error = %e,
                            retry_in = ?delay,
                            more_since_last_report = more,
                            "accepting a connection failed"
                        );
                    }
                    self.backoff = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
    }
}

impl<L: Listener + Unpin> tokio_stream::Stream for Incoming<L> {
    type Item = io::Result<Guarded<L::Io>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_admitted(cx).map(|conn| Some(Ok(conn)))
    }
}

/// Reports at most once a second, counting what it held back.
#[derive(Debug, Default)]
struct RateLog {
    last: Option<Instant>,
    held_back: u64,
}

impl RateLog {
    /// Returns how many reports were held back since the last one, when one is due.
    fn due(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// A connection admitted by a [`Gate`]: it fails (and is closed) when its first bytes do not
/// come within the handshake timeout, or when nothing moves for the idle timeout.
pub struct Guarded<S> {
    inner: S,
    open: Arc<AtomicUsize>,
    silence: Arc<Silence>,
    // Invariant: `Some` until the first bytes are read (the connection is "greeted" once it
    // is `None`); resolves when the gate evicts this connection to make room.
    evicted: Option<Pin<Box<OwnedNotified>>>,
    // Invariant: the handshake deadline until the first bytes are read, then the idle one,
    // pushed back by every read or write that moved bytes.
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
}

impl<S> Guarded<S> {
    fn greeted(&self) -> bool {
        self.evicted.is_none()
    }

    fn moved(&mut self) {
        if !self.greeted() {
            self.silence.spoke.store(true, Ordering::Release);
            self.evicted = None;
        }
        let at = Instant::now() + self.idle;
        self.deadline.as_mut().reset(at);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if let Some(evicted) = &mut self.evicted
            && evicted.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection silent while the connection cap was reached: closed for a newcomer",
            ));
        }
        ready!(self.deadline.as_mut().poll(cx));
        let why = if self.greeted() {
            "connection idle for too long"
        } else {
            "connection sent nothing within the handshake timeout"
        };
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why))
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.expired(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if written > 0 && this.greeted() {
            this.moved();
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Raises the soft open-file limit to the hard one, and returns the connection cap it leaves
/// room for: `wanted`, or less when the limit is lower.
#[must_use]
pub fn raise_fd_limit(wanted: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
    if room < wanted {
        tracing::warn!(
            open_file_limit = soft,
            max_connections = room,
            "the open-file limit caps the connections below --max-connections"
        );
    }
    wanted.min(room)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            handshake_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(400),
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_its_slot_freed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::new(limits(4));
        let mut incoming = Incoming::new(listener, gate.clone(), "test");
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await;
        let err = conn.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("handshake"), "{err}");
        drop(conn);
        assert_eq!(gate.open.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_oldest_silent_connection_makes_room() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Incoming::new(listener, Gate::new(limits(1)), "test");
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut first = incoming.next().await;
        // A newcomer at the cap: admitted, and the silent one is closed at once.
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let mut second = incoming.next().await;
        let err = first.read(&mut [0; 8]).await.unwrap_err();
        assert!(err.to_string().contains("newcomer"), "{err}");
        drop(first);
        talker.write_all(b"x").await.unwrap();
        second.read_exact(&mut [0; 1]).await.unwrap();
        // Every connection open has spoken: a further one is closed on arrival.
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let accept_more = tokio::time::timeout(Duration::from_millis(100), incoming.next()).await;
        assert!(accept_more.is_err(), "nothing admitted over the cap");
        assert_eq!(refused.read(&mut [0; 8]).await.unwrap(), 0);
    }

    /// A listener that fails every accept (out of file descriptors), counting the tries.
    struct Failing(std::sync::atomic::AtomicU32);

    impl Listener for Failing {
        type Io = TcpStream;

        fn poll_next_conn(&self, _: &mut Context<'_>) -> Poll<io::Result<TcpStream>> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Err(io::Error::from_raw_os_error(24))) // EMFILE
        }
    }

    #[tokio::test]
    async fn accept_errors_back_off_instead_of_spinning() {
        let mut incoming = Incoming::new(Failing(0.into()), Gate::new(limits(4)), "test");
        let waited = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(waited.is_err(), "nothing to accept");
        // 5, 10, 20, 40, 80, 160 ms: at most 7 tries in 300 ms, where a spinning loop makes
        // millions.
        let tries = incoming.listener.0.load(Ordering::Relaxed);
        assert!((2..=8).contains(&tries), "{tries} tries");
        // And the log held back all but the first report.
        assert!(incoming.errors.held_back + 1 >= u64::from(tries) - 1);
    }

    #[tokio::test]
    async fn a_talking_connection_lives_until_it_goes_idle() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Incoming::new(listener, Gate::new(limits(4)), "test");
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut conn = incoming.next().await;
        let started = Instant::now();
        // Bytes every 100 ms for longer than both timeouts: never cut.
        for _ in 0..8 {
            client.write_all(b"x").await.unwrap();
            let mut buf = [0; 1];
            conn.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() > Duration::from_millis(600));
        let err = conn.read(&mut [0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
