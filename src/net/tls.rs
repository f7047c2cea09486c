//! TLS on either side of the proxy: certificate material loaded from PEM files, handshakes
//! with causes named in words, and the bridge that hands the session a plain stream.
//!
//! The session and the shared-connection task drive their sockets by readiness
//! (`readable()`, then a read that never waits). rustls keeps decrypted bytes and unsent
//! records in its own buffers, which a readiness flag on the socket cannot see. So a TLS
//! stream is never given to them: once the handshake is done, a task per connection copies
//! between the TLS stream and one end of a Unix socket pair, and the session gets the other
//! end. Plain connections keep their direct path and pay nothing for TLS existing.
//!
//! Key material is read here and only handed to rustls; nothing in this module prints it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

/// Bytes copied per read in each direction of a bridge: a TLS record holds at most 16 kB of
/// plaintext, so this takes several records per system call on the Unix side.
const BRIDGE_BUF: usize = 64 * 1024;

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

    /// Runs the handshake over `tcp` and returns the bridged plain end.
    pub async fn connect(&self, tcp: TcpStream, timeout: Duration) -> Result<UnixStream, String> {
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
        bridge(tls).map_err(|e| format!("cannot set up the connection: {e}"))
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

    /// Runs a client's handshake and returns the bridged plain end, with the names of the
    /// client's certificate (subject CN and SANs) when it sent one.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(UnixStream, Vec<String>), HandshakeFailure> {
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        let tls = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await {
            Err(_) => {
                return Err(HandshakeFailure {
                    reason: "timeout",
                    detail: format!(
                        "no complete handshake within {} ms",
                        self.handshake_timeout.as_millis()
                    ),
                })
            }
            Ok(Err(e)) => {
                return Err(HandshakeFailure {
                    reason: client_failure_reason(&e),
                    detail: e.to_string(),
                })
            }
            Ok(Ok(tls)) => tls,
        };
        let names = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| certificate_names(c))
            .unwrap_or_default();
        let plain = bridge(tls).map_err(|e| HandshakeFailure {
            reason: "io",
            detail: e.to_string(),
        })?;
        Ok((plain, names))
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

/// Starts the copy task for an established TLS stream; returns the session's end.
pub fn bridge<S>(tls: S) -> std::io::Result<UnixStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = UnixStream::pair()?;
    tokio::spawn(async move {
        let mut tls = tls;
        let mut theirs = theirs;
        if let Err(e) =
            tokio::io::copy_bidirectional_with_sizes(&mut tls, &mut theirs, BRIDGE_BUF, BRIDGE_BUF)
                .await
        {
            tracing::debug!(error = %e, "TLS connection ended");
        }
    });
    Ok(ours)
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
