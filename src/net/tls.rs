//! TLS on either side of the proxy: certificate material loaded from PEM files, handshakes
//! with causes named in words, and the TLS stream the session reads and writes once the
//! handshake is done.
//!
//! The session and the shared-connection task drive their sockets by readiness
//! (`readable()`, then a read that never waits; `writable()`, then `try_write`). A
//! [`TlsStream`] offers the same calls: rustls is driven sans-IO over the socket's own
//! non-blocking reads and writes, so TLS costs the crypto and nothing else (no extra task,
//! no extra socket). Two things a socket's readiness cannot show are answered by the stream
//! itself: decrypted bytes already inside rustls make `readable()` return at once, and records
//! sealed but not yet sent show in [`TlsWrite::has_pending_output`], which the session waits
//! to flush by `writable()`.
//!
//! Key material is read here and only handed to rustls; nothing in this module prints it.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate files of one side, as configured. Compared by path; contents are read
/// when the material is built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Which of the configured files a problem is about, so configuration errors can name the
/// field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsField {
    Ca,
    Cert,
    Key,
}

/// A certificate file that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MaterialError {
    pub field: TlsField,
    pub message: String,
}

fn problem(field: TlsField, message: String) -> MaterialError {
    MaterialError { field, message }
}

fn read_certs(path: &Path, field: TlsField) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| problem(field, format!("cannot read {}: {e}", path.display())))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(field, format!("{}: not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(problem(
            field,
            format!("{} holds no CERTIFICATE block", path.display()),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, MaterialError> {
    // The parser's own message never includes key bytes; only the path is added here.
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        problem(
            TlsField::Key,
            format!("{}: no usable private key: {e}", path.display()),
        )
    })
}

fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, MaterialError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(p) => {
            for c in read_certs(p, TlsField::Ca)? {
                roots.add(c).map_err(|e| {
                    problem(
                        TlsField::Ca,
                        format!("{}: not a usable CA certificate: {e}", p.display()),
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(problem(
                    TlsField::Ca,
                    "no system CA certificates found: set ca_file".into(),
                ));
            }
        }
    }
    Ok(roots)
}

/// A certificate chain and its key, checked to belong together.
fn identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), MaterialError> {
    let certs = read_certs(cert, TlsField::Cert)?;
    let key_der = read_key(key)?;
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| {
            problem(
                TlsField::Key,
                format!("{}: unsupported private key: {e}", key.display()),
            )
        })?;
    let ck = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    ck.keys_match().map_err(|_| {
        problem(
            TlsField::Key,
            format!(
                "{} does not belong to the certificate in {}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok((certs, key_der))
}

/// Builds the client side's rustls configuration from the files.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, MaterialError> {
    let roots = roots(files.ca_file.as_deref())?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| problem(TlsField::Ca, e.to_string()))?
        .with_root_certificates(roots);
    match (&files.cert_file, &files.key_file) {
        (Some(c), Some(k)) => {
            let (certs, key) = identity(c, k)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| problem(TlsField::Key, e.to_string()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => Err(problem(
            TlsField::Key,
            "cert_file needs key_file as well".into(),
        )),
        (None, Some(_)) => Err(problem(
            TlsField::Cert,
            "key_file needs cert_file as well".into(),
        )),
    }
}

/// Whether clients of a TLS listener must, may or need not present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
    None,
}

/// Builds the listener side's rustls configuration from the files.
pub fn server_config(files: &TlsFiles, auth: ClientAuth) -> Result<ServerConfig, MaterialError> {
    let (Some(cert), Some(key)) = (&files.cert_file, &files.key_file) else {
        return Err(problem(
            TlsField::Cert,
            "cert_file and key_file are both required".into(),
        ));
    };
    let (certs, key) = identity(cert, key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| problem(TlsField::Cert, e.to_string()))?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => {
            let Some(ca) = &files.ca_file else {
                return Err(problem(
                    TlsField::Ca,
                    "client_auth needs ca_file: the CA that signs client certificates".into(),
                ));
            };
            let roots = Arc::new(roots(Some(ca))?);
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider());
            let v = if auth == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let v = v
                .build()
                .map_err(|e| problem(TlsField::Ca, format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(v)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| problem(TlsField::Key, e.to_string()))
}

/// The upstream side's TLS settings and the material built from them.
#[derive(Clone)]
pub struct UpstreamTls {
    pub files: TlsFiles,
    /// Verification name and SNI.
    pub server_name: ServerName<'static>,
    /// Replaced as a whole when the files change; connections take a snapshot.
    current: Arc<RwLock<Arc<ClientConfig>>>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && self.server_name == other.server_name
    }
}

impl Eq for UpstreamTls {}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("files", &self.files)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    pub fn new(files: TlsFiles, server_name: ServerName<'static>) -> Result<Self, MaterialError> {
        let cfg = client_config(&files)?;
        Ok(UpstreamTls {
            files,
            server_name,
            current: Arc::new(RwLock::new(Arc::new(cfg))),
        })
    }

    fn config(&self) -> Arc<ClientConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the files; on success new connections use them.
    pub fn reload(&self) -> Result<(), MaterialError> {
        let cfg = Arc::new(client_config(&self.files)?);
        match self.current.write() {
            Ok(mut g) => *g = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
        Ok(())
    }

    /// Runs the handshake over `tcp` and returns the established stream.
    pub async fn connect(&self, tcp: TcpStream, timeout: Duration) -> Result<TlsStream, String> {
        let connector = tokio_rustls::TlsConnector::from(self.config());
        let name = self.server_name.clone();
        let handshake = async {
            let mut tls = connector.connect(name, tcp).await?;
            // With TLS 1.3 the server judges the client's certificate after the client
            // considers the handshake done; its refusal arrives as an alert on the first
            // read. One PING before the connection is handed over turns that into a named
            // error here instead of a closed connection later.
            tls.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
            read_line(&mut tls).await?;
            Ok::<_, std::io::Error>(tls)
        };
        let tls = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => {
                return Err(format!(
                    "handshake timed out after {} ms",
                    timeout.as_millis()
                ))
            }
            Ok(Err(e)) => return Err(describe(&e, &self.server_name)),
            Ok(Ok(tls)) => tls,
        };
        let (tcp, conn) = tls.into_inner();
        Ok(TlsStream::new(tcp, conn.into()))
    }
}

/// A TLS listener's settings and the material built from them.
#[derive(Clone)]
pub struct ListenerTls {
    pub listen: std::net::SocketAddr,
    pub files: TlsFiles,
    pub client_auth: ClientAuth,
    pub handshake_timeout: Duration,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("listen", &self.listen)
            .field("files", &self.files)
            .field("client_auth", &self.client_auth)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a client's TLS handshake failed: a bounded metric label and the detail for the log.
#[derive(Debug)]
pub struct HandshakeFailure {
    pub reason: &'static str,
    pub detail: String,
}

impl ListenerTls {
    pub fn new(
        listen: std::net::SocketAddr,
        files: TlsFiles,
        client_auth: ClientAuth,
        handshake_timeout: Duration,
    ) -> Result<Self, MaterialError> {
        let cfg = server_config(&files, client_auth)?;
        Ok(ListenerTls {
            listen,
            files,
            client_auth,
            handshake_timeout,
            current: Arc::new(RwLock::new(Arc::new(cfg))),
        })
    }

    fn config(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Re-reads the files; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), MaterialError> {
        let cfg = Arc::new(server_config(&self.files, self.client_auth)?);
        match self.current.write() {
            Ok(mut g) => *g = cfg,
            Err(p) => *p.into_inner() = cfg,
        }
        Ok(())
    }

    /// Runs a client's handshake. The stream is still tokio-rustls's, so a refusal can be
    /// written to it; [`TlsStream::from_accepted`] takes it over for the session.
    pub async fn accept(&self, tcp: TcpStream) -> Result<Accepted, HandshakeFailure> {
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await {
            Err(_) => Err(HandshakeFailure {
                reason: "timeout",
                detail: format!(
                    "no complete handshake within {} ms",
                    self.handshake_timeout.as_millis()
                ),
            }),
            Ok(Err(e)) => Err(HandshakeFailure {
                reason: client_failure_reason(&e),
                detail: e.to_string(),
            }),
            Ok(Ok(tls)) => Ok(tls),
        }
    }
}

/// A client's stream after its TLS handshake, as tokio-rustls hands it over.
pub type Accepted = tokio_rustls::server::TlsStream<TcpStream>;

/// A TLS error on an established connection, kept distinct from the socket's own errors so
/// it can be named and counted as TLS.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(rustls::Error);

/// Whether `e` is a TLS failure of an established connection (see [`TlsError`]).
pub fn is_tls_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<TlsError>())
}

/// The rustls state of one connection, shared by its two halves. Both halves are used from
/// one task, so the lock is never contended; it only makes the halves `Send`.
struct Session {
    conn: rustls::Connection,
    /// Decrypted bytes waiting inside `conn`. A read hands them out before it asks the socket.
    plain: usize,
    /// The peer ended the stream (`close_notify` or end of TCP): reads return end of stream
    /// once `plain` is drained.
    closed: bool,
    /// A TLS error found while decrypted bytes before it were still being handed out; the
    /// next read returns it.
    broken: Option<rustls::Error>,
    /// This side sent `close_notify`: the session is over, reads return end of stream (rustls
    /// must not be fed records after it).
    ended: bool,
}

fn lock(s: &Mutex<Session>) -> MutexGuard<'_, Session> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Session {
    fn new(conn: rustls::Connection) -> Session {
        let mut s = Session {
            conn,
            plain: 0,
            closed: false,
            broken: None,
            ended: false,
        };
        // The handshake may have read past its last message (a pipelined first command).
        s.absorb(false);
        s
    }

    /// Decrypts the records read so far and notes what they left to read.
    fn absorb(&mut self, eof: bool) {
        match self.conn.process_new_packets() {
            Ok(st) => {
                self.plain = st.plaintext_bytes_to_read();
                self.closed |= eof || st.peer_has_closed();
            }
            Err(e) => self.broken = Some(e),
        }
    }

    /// Whether a read would return without the socket's help.
    fn read_ready(&self) -> bool {
        self.plain > 0 || self.closed || self.broken.is_some() || self.ended
    }

    /// Fills `dst` with decrypted bytes, reading records from `src` while it has them.
    /// `Ok(true)`: bytes were added, or the stream ended if none were; `Ok(false)`: `src`
    /// has nothing now.
    fn read(&mut self, src: &mut dyn Read, dst: &mut ReadBuf<'_>) -> io::Result<bool> {
        let start = dst.filled().len();
        if dst.remaining() == 0 {
            return Ok(true);
        }
        loop {
            if self.plain > 0 {
                let k = self.plain.min(dst.remaining());
                if k == 0 {
                    return Ok(true);
                }
                let n = self.conn.reader().read(dst.initialize_unfilled_to(k))?;
                dst.advance(n);
                self.plain = if n == 0 { 0 } else { self.plain - n };
                continue;
            }
            let got = dst.filled().len() > start;
            if let Some(e) = self.broken.take() {
                if got {
                    self.broken = Some(e);
                    return Ok(true);
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, TlsError(e)));
            }
            if self.closed || self.ended {
                return Ok(true);
            }
            let eof = match self.conn.read_tls(src) {
                Ok(n) => n == 0,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
                Err(e) => return Err(e),
            };
            self.absorb(eof);
        }
    }

    /// Sends sealed records until none are left or the socket is full.
    fn flush(&mut self, sink: &mut dyn Write) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sink) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Seals what rustls's send buffer takes of `buf` (64 kB at most) and sends it. Refuses
    /// (`WouldBlock`) while records of an earlier write are still unsent, so at most one
    /// write's records wait inside the stream.
    fn write(&mut self, sink: &mut dyn Write, buf: &[u8]) -> io::Result<usize> {
        self.flush(sink)?;
        if self.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.conn.writer().write(buf)?;
        self.flush(sink)?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

/// Reads ciphertext through `poll_read`, which (unlike `try_read`) lets tokio clear the
/// socket's readiness on a short read and so saves the `EAGAIN` read that would follow.
struct PollSource<'a, 'b> {
    io: &'a mut OwnedReadHalf,
    cx: &'a mut Context<'b>,
}

impl Read for PollSource<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Reads ciphertext without a waker, for callers that wait with `readable()`.
struct TrySource<'a>(&'a OwnedReadHalf);

impl Read for TrySource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// Writes ciphertext without waiting; rustls hands several records to one `writev`.
struct Sink<'a>(&'a OwnedWriteHalf);

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An established TLS connection over TCP, read and written by readiness like a socket.
#[derive(Debug)]
pub struct TlsStream {
    rd: TlsRead,
    wr: TlsWrite,
}

/// Reading half of a [`TlsStream`].
pub struct TlsRead {
    io: OwnedReadHalf,
    session: Arc<Mutex<Session>>,
}

/// Writing half of a [`TlsStream`]. Dropping it sends `close_notify` if the socket takes it.
pub struct TlsWrite {
    io: OwnedWriteHalf,
    session: Arc<Mutex<Session>>,
}

impl fmt::Debug for TlsRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsRead").finish_non_exhaustive()
    }
}

impl fmt::Debug for TlsWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsWrite").finish_non_exhaustive()
    }
}

impl TlsStream {
    /// Takes over a connection whose handshake is complete.
    pub fn new(tcp: TcpStream, conn: rustls::Connection) -> TlsStream {
        let session = Arc::new(Mutex::new(Session::new(conn)));
        let (r, w) = tcp.into_split();
        TlsStream {
            rd: TlsRead {
                io: r,
                session: session.clone(),
            },
            wr: TlsWrite { io: w, session },
        }
    }

    /// Takes over a client's stream from tokio-rustls.
    pub fn from_accepted(s: Accepted) -> TlsStream {
        let (tcp, conn) = s.into_inner();
        TlsStream::new(tcp, conn.into())
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.rd.readable().await
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.wr.writable().await
    }

    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        self.rd.try_read_buf(buf)
    }

    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        self.wr.try_write(buf)
    }

    pub fn has_pending_output(&self) -> bool {
        self.wr.has_pending_output()
    }

    pub fn into_split(self) -> (TlsRead, TlsWrite) {
        (self.rd, self.wr)
    }
}

impl TlsRead {
    /// Resolves at once while decrypted bytes (or the end of the stream, or an error) wait
    /// inside rustls: the socket may have nothing more to say about them.
    pub async fn readable(&self) -> io::Result<()> {
        if lock(&self.session).read_ready() {
            return Ok(());
        }
        self.io.readable().await
    }

    /// Reads what is there now into `buf`: `Ok(0)` at the end of the stream, `WouldBlock`
    /// when nothing is. For the proxy's own short exchanges; the session reads through
    /// `AsyncRead`.
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let mut rb = ReadBuf::new(&mut chunk);
        if lock(&self.session).read(&mut TrySource(&self.io), &mut rb)? {
            buf.extend_from_slice(rb.filled());
            Ok(rb.filled().len())
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
}

impl AsyncRead for TlsRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut session = lock(&this.session);
        let mut src = PollSource {
            io: &mut this.io,
            cx,
        };
        match session.read(&mut src, buf) {
            Ok(true) => Poll::Ready(Ok(())),
            Ok(false) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl TlsWrite {
    /// Resolves when the stream takes more bytes: the socket is writable and the records
    /// sealed by earlier writes have gone out (they are sent here).
    pub async fn writable(&self) -> io::Result<()> {
        loop {
            self.io.writable().await?;
            let mut session = lock(&self.session);
            session.flush(&mut Sink(&self.io))?;
            if !session.conn.wants_write() {
                return Ok(());
            }
        }
    }

    /// Seals and sends a part of `buf` without waiting; returns how much was taken.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.session).write(&mut Sink(&self.io), buf)
    }

    /// Records sealed and not yet sent: the owner must wait for [`TlsWrite::writable`] even
    /// with nothing more to write, or they are never sent.
    pub fn has_pending_output(&self) -> bool {
        lock(&self.session).conn.wants_write()
    }
}

impl Drop for TlsWrite {
    fn drop(&mut self) {
        let mut session = lock(&self.session);
        session.conn.send_close_notify();
        session.ended = true;
        let _ = session.flush(&mut Sink(&self.io));
    }
}

/// The names a client certificate (DER) carries: its subject CNs, then its DNS, email, URI
/// and IP address SANs. Empty when it cannot be parsed (the handshake already verified it).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    names.push((*s).to_string())
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    names.extend(ip.map(|i| i.to_string()));
                }
                _ => {}
            }
        }
    }
    names
}

/// Reads one reply line (PING's answer is always a single line), up to a bound.
async fn read_line<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    for _ in 0..4096 {
        if s.read(&mut b).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if b[0] == b'\n' {
            return Ok(());
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "reply to PING too long",
    ))
}

/// Puts a failed handshake's cause in the words an operator searches for.
pub fn describe(e: &std::io::Error, name: &ServerName<'_>) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let Some(te) = e.get_ref().and_then(|i| i.downcast_ref::<E>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "the server closed the connection during the handshake".into()
            }
            _ => e.to_string(),
        };
    };
    match te {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "certificate signed by unknown authority".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                format!("certificate name mismatch: not valid for {}", name.to_str())
            }
            C::Expired | C::ExpiredContext { .. } => "certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate is not valid yet".into(),
            C::BadSignature => "certificate has a bad signature".into(),
            C::Revoked => "certificate was revoked".into(),
            other => format!("invalid certificate: {other:?}"),
        },
        E::AlertReceived(A::CertificateRequired) => {
            "the server requires a client certificate".into()
        }
        E::AlertReceived(
            a @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::UnsupportedCertificate),
        ) => format!("the server refused the client certificate ({a:?})"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            format!("the server does not speak TLS on this port ({te})")
        }
        other => other.to_string(),
    }
}

/// Why a client's handshake failed, as a bounded metric label.
pub fn client_failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "no_certificate",
        Some(E::InvalidCertificate(_)) => "bad_certificate",
        Some(E::InvalidMessage(_) | E::InappropriateMessage { .. }) => "not_tls",
        Some(E::AlertReceived(_)) => "alert",
        Some(_) => "protocol",
        None => "io",
    }
}

/// Turns a host string into the name certificates are checked against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is neither a DNS name nor an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client and a server TLS stream connected over loopback TCP.
    async fn pair() -> (TlsStream, TlsStream) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (c, s) = tokio::join!(
            async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                connector.connect(name, tcp).await.unwrap()
            },
            async {
                let (tcp, _) = l.accept().await.unwrap();
                acceptor.accept(tcp).await.unwrap()
            }
        );
        let (ct, cc) = c.into_inner();
        (TlsStream::new(ct, cc.into()), TlsStream::from_accepted(s))
    }

    async fn write_all(s: &TlsStream, mut buf: &[u8]) {
        while !buf.is_empty() {
            s.writable().await.unwrap();
            match s.try_write(buf) {
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        while s.has_pending_output() {
            s.writable().await.unwrap();
        }
    }

    #[tokio::test]
    async fn decrypted_bytes_inside_rustls_make_the_stream_readable_without_the_socket() {
        let (c, s) = pair().await;
        write_all(&s, b"+first\r\n+second\r\n").await;
        let (mut rd, _wr) = c.into_split();
        rd.readable().await.unwrap();
        let mut b = [0u8; 8];
        assert_eq!(rd.read(&mut b).await.unwrap(), 8);
        assert_eq!(&b, b"+first\r\n");
        // The whole record left the socket with the first read; the rest is inside rustls.
        tokio::time::timeout(Duration::from_millis(200), rd.readable())
            .await
            .expect("readable() waited on the socket for bytes rustls already holds")
            .unwrap();
        let mut rest = [0u8; 9];
        rd.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"+second\r\n");
    }

    #[tokio::test]
    async fn sealed_records_the_socket_did_not_take_go_out_on_writability() {
        let (c, s) = pair().await;
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        // The peer reads nothing yet: write until the socket is full.
        let mut taken = 0usize;
        loop {
            match c.try_write(&chunk) {
                Ok(n) => taken += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            c.has_pending_output(),
            "a refused write leaves sealed records"
        );
        let reader = tokio::spawn(async move {
            let (mut rd, _wr) = s.into_split();
            let mut got = vec![0u8; taken];
            rd.read_exact(&mut got).await.unwrap();
            got
        });
        while c.has_pending_output() {
            tokio::time::timeout(Duration::from_secs(10), c.writable())
                .await
                .expect("pending records flushed")
                .unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("every byte taken by try_write reaches the peer")
            .unwrap();
        assert!(got.chunks(chunk.len()).all(|c| c == &chunk[..c.len()]));
    }

    #[tokio::test]
    async fn closing_sends_close_notify() {
        let (c, s) = pair().await;
        let (_crd, cwr) = c.into_split();
        let (mut srd, _swr) = s.into_split();
        drop(cwr);
        let mut b = [0u8; 1];
        assert_eq!(srd.read(&mut b).await.unwrap(), 0);
        let st = lock(&srd.session).conn.process_new_packets().unwrap();
        assert!(st.peer_has_closed(), "ended without close_notify");
    }

    #[tokio::test]
    async fn a_corrupt_record_is_a_named_tls_error() {
        let (c, s) = pair().await;
        let (mut crd, _cwr) = c.into_split();
        let (_srd, swr) = s.into_split();
        // What the handshake left (session tickets) goes first.
        while swr.has_pending_output() {
            swr.writable().await.unwrap();
        }
        // Bytes that are not a record of this session.
        swr.io.try_write(b"\x17\x03\x03\x00\x05hello").unwrap();
        let mut b = [0u8; 1];
        let e = crd.read(&mut b).await.unwrap_err();
        assert!(is_tls_error(&e), "{e}");
        assert!(e.to_string().starts_with("TLS: "), "{e}");
    }
}
