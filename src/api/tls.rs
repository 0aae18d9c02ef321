//! TLS on the gRPC listener (rustls, ring): the server's certificate, and optionally client
//! certificates signed by `--tls-client-ca`, each naming its tenant in its subject's common name
//! (CN). Certificates are re-read on SIGHUP and when their files change (checked every 2 s):
//! connections open keep the session they have, new ones get the new certificates; a reload
//! that fails keeps the old ones and says why.
//!
//! A client certificate is judged after the handshake, not during it: the handshake accepts any
//! certificate whose key the client proves it holds, and the connection carries the verdict —
//! a tenant, or why the certificate is refused (expired, not signed by the CA, no tenant in its
//! subject) — so that a call with a bad certificate gets UNAUTHENTICATED saying why, instead of
//! a handshake failure that tells the client nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio_rustls::rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::conn::{Guarded, Incoming};
use crate::auth::PeerCert;

/// How often the certificate files are checked for changes.
const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// Handshakes finished but not yet taken by the server.
const BACKLOG: usize = 64;

/// Where the certificates are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA that signs client certificates (PEM), if they are accepted.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    /// When each file was last changed.
    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.paths()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The server's TLS settings, re-read as the files change.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

struct Loaded {
    config: Arc<ServerConfig>,
    // The strict verifier of client certificates, which judges them after the handshake.
    clients: Option<Arc<dyn ClientCertVerifier>>,
    stamps: Vec<Option<SystemTime>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate (PEM)", path.display());
    }
    Ok(certs)
}

fn load(files: &TlsFiles) -> anyhow::Result<Loaded> {
    let stamps = files.stamps();
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading a private key from {}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let (builder, clients) = match &files.client_ca {
        None => (builder.with_no_client_auth(), None),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .with_context(|| format!("a CA certificate of {}", ca.display()))?;
            }
            let strict = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .with_context(|| format!("client CA {}", ca.display()))?;
            let lenient: Arc<dyn ClientCertVerifier> = Arc::new(Lenient(Arc::clone(&strict)));
            (builder.with_client_cert_verifier(lenient), Some(strict))
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("the server certificate and its key")?;
    // gRPC is HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        clients,
        stamps,
    })
}

impl Tls {
    /// Reads the certificates.
    ///
    /// # Errors
    /// A file cannot be read or holds no usable certificate or key.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let loaded = load(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(loaded),
        }))
    }

    /// Whether client certificates are accepted.
    #[must_use]
    pub fn takes_client_certs(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn acceptor(&self) -> TlsAcceptor {
        let loaded = self.current.read().unwrap_or_else(PoisonError::into_inner);
        TlsAcceptor::from(Arc::clone(&loaded.config))
    }

    /// Re-reads the certificates; on failure keeps the ones in use and says why.
    pub fn reload(&self, why: &str) {
        match load(&self.files) {
            Ok(loaded) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
                tracing::info!(why, "TLS certificates reloaded");
            }
            Err(e) => {
                // Not tried again until the files change again.
                self.current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .stamps = self.files.stamps();
                tracing::error!(why, error = %format!("{e:#}"), "TLS certificates not reloaded: keeping the ones in use");
            }
        }
    }

    fn changed(&self) -> bool {
        let now = self.files.stamps();
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .stamps
            != now
    }

    /// Re-reads the certificates on SIGHUP and when their files change, until dropped.
    ///
    /// # Errors
    /// The SIGHUP handler cannot be installed.
    pub fn watch(self: &Arc<Self>) -> anyhow::Result<JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
        let tls = Arc::clone(self);
        Ok(tokio::spawn(async move {
            let mut every = tokio::time::interval(WATCH_PERIOD);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = hangup.recv() => tls.reload("SIGHUP"),
                    _ = every.tick() => if tls.changed() {
                        tls.reload("a certificate file changed");
                    },
                }
            }
        }))
    }

    /// The verdict on the certificate a client presented, if any.
    fn judge(&self, stream: &TlsStream<Guarded<TcpStream>>) -> Option<PeerCert> {
        let clients = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clients
            .clone()?;
        let chain = stream.get_ref().1.peer_certificates()?;
        let (end, intermediates) = chain.split_first()?;
        Some(
            match clients.verify_client_cert(end, intermediates, UnixTime::now()) {
                Err(e) => PeerCert::Refused {
                    reason: format!("client certificate refused: {e}"),
                },
                Ok(_) => match tenant_of(end) {
                    Ok((tenant, subject)) => PeerCert::Verified { tenant, subject },
                    Err(reason) => PeerCert::Refused { reason },
                },
            },
        )
    }
}

/// The tenant a certificate's subject names (its common name), and the subject as shown.
fn tenant_of(cert: &CertificateDer<'_>) -> Result<(String, String), String> {
    use x509_cert::der::Decode;
    use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
    const COMMON_NAME: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("client certificate unreadable: {e}"))?;
    let subject = &parsed.tbs_certificate.subject;
    let shown = subject.to_string();
    let cn = subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)
        .and_then(|atv| {
            atv.value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    atv.value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .ok()
        })
        .ok_or_else(|| {
            format!("client certificate {shown:?} has no common name (CN) naming its tenant")
        })?;
    crate::auth::check_tenant_name(&cn).map_err(|reason| {
        format!("client certificate {shown:?}: its common name is not a tenant name: {reason}")
    })?;
    Ok((cn, shown))
}

/// Accepts any client certificate whose key the client holds (the signatures are checked by the
/// strict verifier); whether it is trusted is judged after the handshake.
#[derive(Debug)]
struct Lenient(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Lenient {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // Tokens work over TLS without a client certificate.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, tokio_rustls::rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A gRPC connection: plain, or TLS with the verdict on the client's certificate.
pub enum Conn {
    Plain(Guarded<TcpStream>),
    Tls(Box<TlsStream<Guarded<TcpStream>>>, Option<PeerCert>),
}

/// What a connection tells the services about itself (in each request's extensions).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client certificate's verdict, on a TLS connection that presented one.
    pub peer_cert: Option<PeerCert>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            peer_cert: match self {
                Self::Plain(_) => None,
                Self::Tls(_, cert) => cert.clone(),
            },
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The gRPC listener's connections, as tonic serves them: plain, or after their TLS handshake
/// (done in tasks of their own, so a slow client never holds up the others).
pub struct Accepted {
    inner: Inner,
}

enum Inner {
    Plain(Incoming<TcpListener>),
    Tls(mpsc::Receiver<Conn>, JoinHandle<()>),
}

impl Drop for Accepted {
    fn drop(&mut self) {
        if let Inner::Tls(_, task) = &self.inner {
            task.abort();
        }
    }
}

/// Serves `incoming` plainly, or with `tls`, giving each handshake `timeout`.
#[must_use]
pub fn accept(
    incoming: Incoming<TcpListener>,
    tls: Option<Arc<Tls>>,
    timeout: Duration,
) -> Accepted {
    let Some(tls) = tls else {
        return Accepted {
            inner: Inner::Plain(incoming),
        };
    };
    let (tx, rx) = mpsc::channel(BACKLOG);
    let task = tokio::spawn(async move {
        let mut incoming = incoming;
        loop {
            let conn = incoming.next().await;
            let (tls, tx) = (Arc::clone(&tls), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, tls.acceptor().accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let peer = tls.judge(&stream);
                        let _ = tx.send(Conn::Tls(Box::new(stream), peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?timeout, "TLS handshake timed out"),
                }
            });
        }
    });
    Accepted {
        inner: Inner::Tls(rx, task),
    }
}

impl tokio_stream::Stream for Accepted {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().inner {
            Inner::Plain(incoming) => Pin::new(incoming)
                .poll_next(cx)
                .map(|conn| conn.map(|c| c.map(Conn::Plain))),
            Inner::Tls(rx, _) => rx.poll_recv(cx).map(|conn| conn.map(Ok)),
        }
    }
}
