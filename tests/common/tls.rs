//! Certificates made for the test (a CA, servers, clients, expired and wrong-name ones) and a
//! real `redis-server` that also listens with TLS.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::ports::{free_port, listens};
use super::servers::RedisServer;

/// A certificate authority and the directory its files are written to.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key on disk.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA named `name`, its certificate written as `<name>-ca.pem`.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "respguard-pki-{}-{}-{}",
            std::process::id(),
            name,
            super::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("ca certificate");
        let pki = Pki { dir, ca };
        std::fs::write(pki.ca_file(), pki.ca.pem()).expect("write ca");
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `names` (DNS names or IP addresses), written as `<file>.pem` and
    /// `<file>-key.pem`.
    pub fn issue(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_with(file, names, |_| {})
    }

    /// A certificate whose validity ended in 2020.
    pub fn issue_expired(&self, file: &str, names: &[&str]) -> Issued {
        self.issue_with(file, names, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, file);
        adjust(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        write(&issued.cert, &cert.pem());
        write(&issued.key, &key.serialize_pem());
        issued
    }
}

impl Pki {
    /// A new certificate named `cn` for `issued`'s key, replacing `issued.cert` in one
    /// rename (as a secret update swaps its files); returns the new certificate's DER.
    pub fn reissue(&self, issued: &Issued, cn: &str, names: &[&str]) -> Vec<u8> {
        let key_pem = std::fs::read_to_string(&issued.key).expect("key");
        let key = KeyPair::from_pem(&key_pem).expect("key pem");
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let tmp = issued.cert.with_extension("new");
        write(&tmp, &cert.pem());
        std::fs::rename(&tmp, &issued.cert).expect("rename");
        cert.der().to_vec()
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` with its plain port (for direct comparisons) and a TLS port.
pub struct TlsRedis {
    pub redis: RedisServer,
    pub tls_port: u16,
}

impl TlsRedis {
    /// Starts Redis serving `server`'s certificate on a TLS port, trusting `pki`'s CA for
    /// client certificates; `auth_clients` is Redis's `tls-auth-clients` (`yes`, `no`,
    /// `optional`).
    pub fn start(pki: &Pki, server: &Issued, auth_clients: &str) -> TlsRedis {
        for _ in 0..5 {
            let tls_port = free_port();
            let port = tls_port.to_string();
            let ca = pki.ca_file();
            let redis = RedisServer::start_with(&[
                "--tls-port",
                &port,
                "--tls-cert-file",
                server.cert.to_str().expect("utf-8 path"),
                "--tls-key-file",
                server.key.to_str().expect("utf-8 path"),
                "--tls-ca-cert-file",
                ca.to_str().expect("utf-8 path"),
                "--tls-auth-clients",
                auth_clients,
            ]);
            if listens(redis.pid(), tls_port) {
                return TlsRedis { redis, tls_port };
            }
        }
        panic!("redis-server did not listen on any of 5 free TLS ports");
    }

    /// `rediss://` to the TLS port.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }
}

/// A TLS client connection to a proxy's TLS listener, trusting `pki`'s CA and presenting
/// `cert` when given.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    pki: &Pki,
    cert: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.ca_file()).expect("ca") {
        roots.add(c.expect("ca pem")).expect("ca cert");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = match cert {
        Some(c) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&c.cert)
                    .expect("cert")
                    .map(|c| c.expect("cert pem"))
                    .collect(),
                PrivateKeyDer::from_pem_file(&c.key).expect("key"),
            )
            .expect("client cert"),
        None => b.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// Sends one command over any stream and reads one reply frame (10 s at most); `Err` when
/// the connection fails or closes first.
pub async fn call_on<S>(s: &mut S, args: &[&[u8]]) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = bytes::BytesMut::new();
    respguard::codec::encode_command(&mut out, args.iter().copied());
    s.write_all(&out).await?;
    s.flush().await?;
    let mut buf = bytes::BytesMut::new();
    let mut scanner = respguard::codec::ReplyScanner::new();
    let limits = respguard::codec::Limits::default();
    let read = async {
        loop {
            if let Ok(Some(f)) = scanner.scan(&buf, &limits) {
                return Ok(buf.split_to(f.len).to_vec());
            }
            buf.reserve(64 * 1024);
            if s.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The `tls:` section of a proxy config: a TLS listener on a free port presenting `server`,
/// with further settings of that section as `key: value` pairs (e.g. `client_auth`).
pub fn tls_listener_yaml(server: &Issued, settings: &[(&str, &str)]) -> String {
    let mut y = format!(
        "tls:\n  listen: 127.0.0.1:0\n  cert_file: {}\n  key_file: {}\n",
        server.cert.display(),
        server.key.display()
    );
    for (k, v) in settings {
        y.push_str(&format!("  {k}: {v}\n"));
    }
    y
}
