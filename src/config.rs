//! Configuration: the YAML file, its command-line and environment overrides, and validation.
//!
//! Loading is two passes. serde (via `serde-saphyr`) turns the text into raw structs whose leaves
//! carry their line numbers; `validate` then checks every field and collects *every* problem
//! with its file, line and field path, so an operator fixes a bad file in one round. Only a
//! fully valid file becomes a [`Config`]; on reload the old one stays in force otherwise.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::codec::Limits;
pub use crate::diag::{parse_duration, parse_size, ConfigErrors, Problem, Problems};
use crate::policy::{PolicyConfig, RawPolicy};

/// Exit status for a configuration the proxy refuses (`EX_CONFIG` from sysexits is 78, but the
/// brief and most sidecars use `EX_USAGE`, 64).
pub const EXIT_BAD_CONFIG: i32 = 64;

// ---------------------------------------------------------------------------------------------
// Raw file shape

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Spanned<String>>,
    admin: Option<Spanned<String>>,
    upstream: Option<RawUpstream>,
    #[serde(default)]
    limits: RawLimits,
    shutdown_grace: Option<Spanned<String>>,
    workers: Option<Spanned<u64>>,
    policy: Option<RawPolicy>,
    unix_socket: Option<RawUnixSocket>,
    tls: Option<RawListenerTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUnixSocket {
    path: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListenerTls {
    listen: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    client_auth: Option<Spanned<String>>,
    handshake_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    read_timeout: Option<Spanned<String>>,
    shared_connections: Option<Spanned<u64>>,
    tls: Option<RawUpstreamTls>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_clients: Option<Spanned<u64>>,
    max_bulk_len: Option<Spanned<String>>,
    max_multibulk_len: Option<Spanned<u64>>,
    max_depth: Option<Spanned<u64>>,
    max_buffered_bytes: Option<Spanned<String>>,
    max_client_output: Option<Spanned<String>>,
    max_total_output: Option<Spanned<String>>,
    tcp_backlog: Option<Spanned<u64>>,
    idle_timeout: Option<Spanned<String>>,
    incomplete_command_timeout: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Validated configuration

/// Where respguard forwards to.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl fmt::Debug for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub addr: UpstreamAddr,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub db: u32,
    pub connect_timeout: Duration,
    /// Zero disables it: blocking commands may legitimately wait forever.
    pub read_timeout: Duration,
    /// Upstream connections shared by clients without connection state; 0 gives every
    /// client its own from the start.
    pub shared_connections: usize,
    /// Set for `rediss://` URLs.
    pub tls: Option<crate::net::tls::UpstreamTls>,
}

/// A Unix socket listener for clients on the same host (a pod's shared volume).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixListen {
    pub path: PathBuf,
    /// File mode of the socket, e.g. 0o660.
    pub mode: u32,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub unix_socket: Option<UnixListen>,
    /// A TLS listener, next to the plain one.
    pub tls: Option<crate::net::tls::ListenerTls>,
    pub admin: Option<SocketAddr>,
    pub upstream: UpstreamConfig,
    pub limits: Limits,
    pub max_clients: usize,
    /// Most bytes buffered for one client in any direction before it is cut off.
    pub max_buffered_bytes: usize,
    /// Most reply bytes a client on a shared connection may leave unread (beyond the reply
    /// being delivered) before it is disconnected, like Redis's `client-output-buffer-limit`.
    pub max_client_output: usize,
    /// Most reply bytes all clients together may leave unread: past it, the client whose
    /// replies keep arriving unread is disconnected.
    pub max_total_output: usize,
    /// Pending-connection queue of the client listener (Redis's `tcp-backlog`).
    pub tcp_backlog: u32,
    /// Close a client idle this long (Redis's `timeout`); zero disables it.
    pub idle_timeout: Duration,
    /// Close a client whose command has not arrived in full this long after its first byte;
    /// zero disables it.
    pub incomplete_command_timeout: Duration,
    pub shutdown_grace: Duration,
    pub workers: usize,
    pub policy: Option<PolicyConfig>,
    /// The file this came from, for reloads.
    pub path: Option<PathBuf>,
    /// Valid settings that weaken the set-up (`--check-config` prints them, the proxy logs
    /// them at start).
    pub warnings: Vec<Problem>,
}

/// Values given on the command line or in the environment; they win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<(String, String)>,
    pub upstream: Option<(String, String)>,
    pub admin: Option<(String, String)>,
    /// `RESPGUARD_UPSTREAM_PASSWORD`.
    pub upstream_password: Option<String>,
}

impl Overrides {
    /// Reads `RESPGUARD_*` variables; flags given later replace them.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().map(|v| (format!("${name}"), v));
        Overrides {
            listen: var("RESPGUARD_LISTEN"),
            upstream: var("RESPGUARD_UPSTREAM"),
            admin: var("RESPGUARD_ADMIN"),
            upstream_password: std::env::var("RESPGUARD_UPSTREAM_PASSWORD").ok(),
        }
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:6380";
const DEFAULT_UPSTREAM: &str = "redis://127.0.0.1:6379";

impl Config {
    /// Reads and validates a file, then applies overrides.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![Problem {
                source: source.clone(),
                line: None,
                field: "(file)".into(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        let mut cfg = Config::parse(&text, &source, overrides)?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses YAML text; `source` names it in problems.
    pub fn parse(text: &str, source: &str, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                let line = e.location().map(|l| l.line());
                ConfigErrors(vec![Problem {
                    source: source.to_string(),
                    line,
                    field: "(yaml)".into(),
                    message: first_line(&e.to_string()),
                }])
            })?
        };
        validate(raw, source, overrides)
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_string()
}

/// Parses an upstream URL: `redis://[user[:password]@]host:port[/db]` or `unix:///path.sock`.
pub fn parse_upstream_url(
    url: &str,
) -> Result<(UpstreamAddr, Option<String>, Option<Secret>, u32), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!(
            "{:?} is not a URL (expected redis://host:port)",
            redact_url(url)
        )
    })?;
    match scheme {
        "redis" | "rediss" => {}
        "unix" | "redis+unix" => {
            let path = rest.split('?').next().unwrap_or(rest);
            if path.is_empty() || !path.starts_with('/') {
                return Err(
                    "unix:// URL needs an absolute socket path (unix:///run/redis.sock)".into(),
                );
            }
            return Ok((UpstreamAddr::Unix(PathBuf::from(path)), None, None, 0));
        }
        other => {
            return Err(format!(
                "unsupported URL scheme {other:?} (use redis://, rediss:// or unix://)"
            ))
        }
    }
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (user, pass) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (
                (!user.is_empty()).then(|| percent_decode(user)),
                Some(Secret(percent_decode(pass))),
            ),
            None => ((!u.is_empty()).then(|| percent_decode(u)), None),
        },
    };
    let (hostport, db) = match hostpart.split_once('/') {
        Some((hp, db)) if !db.is_empty() => {
            let db: u32 = db
                .parse()
                .map_err(|_| format!("database {db:?} in the URL is not a number"))?;
            (hp, db)
        }
        Some((hp, _)) => (hp, 0),
        None => (hostpart, 0),
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        // [::1]:6379
        let (h, p) = h
            .split_once(']')
            .ok_or_else(|| "unterminated IPv6 address in the URL".to_string())?;
        (h.to_string(), p.strip_prefix(':').unwrap_or(""))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (hostport.to_string(), ""),
        }
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    let port: u16 = if port.is_empty() {
        6379
    } else {
        port.parse()
            .map_err(|_| format!("port {port:?} in the URL is not a number from 1 to 65535"))?
    };
    Ok((UpstreamAddr::Tcp { host, port }, user, pass, db))
}

/// Whether the URL asks for TLS (`rediss://`).
pub fn url_is_tls(url: &str) -> bool {
    url.split_once("://").is_some_and(|(s, _)| s == "rediss")
}

/// The URL with any password replaced, for error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((u, _)) => format!("{}{}:***{}", &url[..s + 3], u, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an address (expected host:port, like 0.0.0.0:6380)"))
}

/// The first line any of the section's fields is on, for problems about the section.
fn section_line(fields: &[&Option<Spanned<String>>]) -> Option<u64> {
    fields
        .iter()
        .find_map(|f| f.as_ref().map(|v| v.referenced.line()))
}

/// Builds the upstream's TLS material; problems name the file's field.
fn upstream_tls(
    raw: Option<&RawUpstreamTls>,
    wanted: bool,
    addr: Option<&UpstreamAddr>,
    url_line: Option<u64>,
    p: &mut Problems<'_>,
) -> Option<crate::net::tls::UpstreamTls> {
    use crate::net::tls::{TlsField, TlsFiles, UpstreamTls};
    let empty = RawUpstreamTls::default();
    let t = raw.unwrap_or(&empty);
    let all = [&t.ca_file, &t.cert_file, &t.key_file, &t.server_name];
    if !wanted {
        if raw.is_some() {
            p.add(
                section_line(&all),
                "upstream.tls",
                "set, but upstream.url is not rediss://: use rediss:// to connect with TLS",
            );
        }
        return None;
    }
    let host = match addr? {
        UpstreamAddr::Tcp { host, .. } => host.clone(),
        UpstreamAddr::Unix(_) => return None,
    };
    let name = match &t.server_name {
        Some(v) => match crate::net::tls::server_name(&v.value) {
            Ok(n) => n,
            Err(e) => {
                p.at(v, "upstream.tls.server_name", e);
                return None;
            }
        },
        None => match crate::net::tls::server_name(&host) {
            Ok(n) => n,
            Err(e) => {
                p.add(url_line, "upstream.url", e);
                return None;
            }
        },
    };
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|v| PathBuf::from(&v.value));
    let files = TlsFiles {
        ca_file: path(&t.ca_file),
        cert_file: path(&t.cert_file),
        key_file: path(&t.key_file),
    };
    match UpstreamTls::new(files, name) {
        Ok(tls) => Some(tls),
        Err(e) => {
            let (field, v) = match e.field {
                TlsField::Ca => ("upstream.tls.ca_file", &t.ca_file),
                TlsField::Cert => ("upstream.tls.cert_file", &t.cert_file),
                TlsField::Key => ("upstream.tls.key_file", &t.key_file),
            };
            let line = v
                .as_ref()
                .map(|v| v.referenced.line())
                .or(section_line(&all))
                .or(url_line);
            p.add(line, field, e.message);
            None
        }
    }
}

fn unix_listen(raw: &RawUnixSocket, p: &mut Problems<'_>) -> Option<UnixListen> {
    let Some(path) = &raw.path else {
        p.add(
            section_line(&[&raw.mode]),
            "unix_socket.path",
            "missing: the socket's absolute path, e.g. /run/respguard/redis.sock",
        );
        return None;
    };
    let text = path.value.strip_prefix("unix://").unwrap_or(&path.value);
    if !text.starts_with('/') {
        p.at(path, "unix_socket.path", "must be an absolute path");
        return None;
    }
    let mode = match &raw.mode {
        None => 0o660,
        Some(m) => match u32::from_str_radix(m.value.trim(), 8) {
            Ok(v) if v <= 0o777 => v,
            _ => {
                p.at(
                    m,
                    "unix_socket.mode",
                    format!("{:?} is not a file mode (octal, quoted: \"0660\")", m.value),
                );
                return None;
            }
        },
    };
    Some(UnixListen {
        path: PathBuf::from(text),
        mode,
    })
}

fn listener_tls(
    raw: &RawListenerTls,
    p: &mut Problems<'_>,
) -> Option<crate::net::tls::ListenerTls> {
    use crate::net::tls::{ClientAuth, ListenerTls, TlsField, TlsFiles};
    let all = [
        &raw.listen,
        &raw.cert_file,
        &raw.key_file,
        &raw.ca_file,
        &raw.client_auth,
        &raw.handshake_timeout,
    ];
    let listen = match &raw.listen {
        None => {
            p.add(
                section_line(&all),
                "tls.listen",
                "missing: the address for TLS clients, e.g. 0.0.0.0:6390",
            );
            None
        }
        Some(v) => parse_addr(&v.value)
            .map_err(|e| p.at(v, "tls.listen", e))
            .ok(),
    };
    let auth = match raw.client_auth.as_ref().map(|v| (v, v.value.as_str())) {
        None | Some((_, "none")) => Some(ClientAuth::None),
        Some((_, "optional")) => Some(ClientAuth::Optional),
        Some((_, "required")) => Some(ClientAuth::Required),
        Some((v, other)) => {
            p.at(
                v,
                "tls.client_auth",
                format!("{other:?}: use required, optional or none"),
            );
            None
        }
    };
    let handshake_timeout = match &raw.handshake_timeout {
        None => Duration::from_secs(5),
        Some(v) => match parse_duration(&v.value) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                p.at(v, "tls.handshake_timeout", "must be greater than zero");
                return None;
            }
            Err(e) => {
                p.at(v, "tls.handshake_timeout", e);
                return None;
            }
        },
    };
    let (listen, auth) = (listen?, auth?);
    let path = |v: &Option<Spanned<String>>| v.as_ref().map(|v| PathBuf::from(&v.value));
    let files = TlsFiles {
        ca_file: path(&raw.ca_file),
        cert_file: path(&raw.cert_file),
        key_file: path(&raw.key_file),
    };
    match ListenerTls::new(listen, files, auth, handshake_timeout) {
        Ok(t) => Some(t),
        Err(e) => {
            let (field, v) = match e.field {
                TlsField::Ca => ("tls.ca_file", &raw.ca_file),
                TlsField::Cert => ("tls.cert_file", &raw.cert_file),
                TlsField::Key => ("tls.key_file", &raw.key_file),
            };
            let line = v
                .as_ref()
                .map(|v| v.referenced.line())
                .or(section_line(&all));
            p.add(line, field, e.message);
            None
        }
    }
}

fn validate(raw: RawConfig, source: &str, ov: &Overrides) -> Result<Config, ConfigErrors> {
    let mut p = Problems::new(source);

    // Each value is checked where it came from: a flag or variable names itself as the source.
    let addr_field = |field: &str,
                      file_val: &Option<Spanned<String>>,
                      ov_val: &Option<(String, String)>,
                      default: Option<&str>,
                      p: &mut Problems<'_>|
     -> Option<SocketAddr> {
        if let Some((src, v)) = ov_val {
            return match parse_addr(v) {
                Ok(a) => Some(a),
                Err(e) => {
                    p.push(Problem {
                        source: src.clone(),
                        line: None,
                        field: field.into(),
                        message: e,
                    });
                    None
                }
            };
        }
        match file_val {
            Some(v) => match parse_addr(&v.value) {
                Ok(a) => Some(a),
                Err(e) => {
                    p.at(v, field, e);
                    None
                }
            },
            None => default.and_then(|d| parse_addr(d).ok()),
        }
    };
    let listen = addr_field(
        "listen",
        &raw.listen,
        &ov.listen,
        Some(DEFAULT_LISTEN),
        &mut p,
    );
    let admin = addr_field("admin", &raw.admin, &ov.admin, None, &mut p);

    let up = raw.upstream.unwrap_or_default();
    let (url_src, url_line, url) = match (&ov.upstream, &up.url) {
        (Some((src, v)), _) => (src.clone(), None, v.clone()),
        (None, Some(v)) => (
            source.to_string(),
            Some(v.referenced.line()),
            v.value.clone(),
        ),
        (None, None) => (source.to_string(), None, DEFAULT_UPSTREAM.to_string()),
    };
    let parsed_url = match parse_upstream_url(&url) {
        Ok(v) => {
            if v.2.as_ref().is_some_and(|pw| !pw.0.is_empty()) && ov.upstream.is_some() {
                // Never the password itself: only where it was seen.
                p.push_warning(Problem {
                    source: url_src.clone(),
                    line: None,
                    field: "upstream.url".into(),
                    message: format!(
                        "the upstream URL carries a password, which leaks easily (a command line is world-readable in /proc/PID/cmdline; a URL in the environment gets copied into unit files, pod specs and shell history); put it in upstream.password_file instead ({})",
                        redact_url(&url)
                    ),
                });
            }
            Some(v)
        }
        Err(e) => {
            p.push(Problem {
                source: url_src,
                line: url_line,
                field: "upstream.url".into(),
                message: e,
            });
            None
        }
    };
    let upstream_tls = upstream_tls(
        up.tls.as_ref(),
        url_is_tls(&url),
        parsed_url.as_ref().map(|v| &v.0),
        url_line,
        &mut p,
    );
    let mut file_password = None;
    if let Some(pf) = &up.password_file {
        match std::fs::read_to_string(&pf.value) {
            // Kubernetes secrets often end with a newline the password does not contain.
            Ok(s) => file_password = Some(Secret(s.trim_end_matches(['\r', '\n']).to_string())),
            Err(e) => p.at(
                pf,
                "upstream.password_file",
                format!("cannot read {:?}: {e}", pf.value),
            ),
        }
    }
    let duration =
        |v: &Option<Spanned<String>>, field: &str, default: Duration, p: &mut Problems<'_>| match v
        {
            None => default,
            Some(s) => parse_duration(&s.value).unwrap_or_else(|e| {
                p.at(s, field, e);
                default
            }),
        };
    let connect_timeout = duration(
        &up.connect_timeout,
        "upstream.connect_timeout",
        Duration::from_secs(1),
        &mut p,
    );
    if connect_timeout.is_zero() {
        if let Some(s) = &up.connect_timeout {
            p.at(s, "upstream.connect_timeout", "must be greater than zero");
        }
    }
    let read_timeout = duration(
        &up.read_timeout,
        "upstream.read_timeout",
        Duration::ZERO,
        &mut p,
    );
    let shared_connections = match &up.shared_connections {
        Some(v) if v.value > 64 => {
            p.at(v, "upstream.shared_connections", "must be between 0 and 64");
            None
        }
        Some(v) => Some(v.value as usize),
        None => None,
    };
    let shutdown_grace = duration(
        &raw.shutdown_grace,
        "shutdown_grace",
        Duration::from_secs(10),
        &mut p,
    );

    let mut limits = Limits::default();
    let l = &raw.limits;
    let mut max_clients = 10_000usize;
    if let Some(v) = &l.max_clients {
        if v.value == 0 {
            p.at(v, "limits.max_clients", "must be at least 1");
        }
        max_clients = v.value as usize;
    }
    if let Some(v) = &l.max_bulk_len {
        match parse_size(&v.value) {
            Ok(0) => p.at(v, "limits.max_bulk_len", "must be greater than zero"),
            Ok(n) => limits.max_bulk_len = n,
            Err(e) => p.at(v, "limits.max_bulk_len", e),
        }
    }
    if let Some(v) = &l.max_multibulk_len {
        if v.value == 0 {
            p.at(v, "limits.max_multibulk_len", "must be at least 1");
        }
        limits.max_multibulk_len = v.value as usize;
    }
    if let Some(v) = &l.max_depth {
        if v.value == 0 || v.value > 4096 {
            p.at(v, "limits.max_depth", "must be between 1 and 4096");
        }
        limits.max_depth = v.value as usize;
    }
    let mut max_buffered_bytes = 1024 * 1024 * 1024;
    if let Some(v) = &l.max_buffered_bytes {
        match parse_size(&v.value) {
            Ok(n) if n < 64 * 1024 => p.at(v, "limits.max_buffered_bytes", "must be at least 64kb"),
            Ok(n) => max_buffered_bytes = n,
            Err(e) => p.at(v, "limits.max_buffered_bytes", e),
        }
    }
    let size_at_least_64kb =
        |v: &Option<Spanned<String>>, field: &str, default: usize, p: &mut Problems<'_>| match v {
            None => default,
            Some(s) => match parse_size(&s.value) {
                Ok(n) if n >= 64 * 1024 => n,
                Ok(_) => {
                    p.at(s, field, "must be at least 64kb");
                    default
                }
                Err(e) => {
                    p.at(s, field, e);
                    default
                }
            },
        };
    let max_client_output = size_at_least_64kb(
        &l.max_client_output,
        "limits.max_client_output",
        32 * 1024 * 1024,
        &mut p,
    );
    let max_total_output = size_at_least_64kb(
        &l.max_total_output,
        "limits.max_total_output",
        256 * 1024 * 1024,
        &mut p,
    );
    let tcp_backlog = match &l.tcp_backlog {
        Some(v) if v.value == 0 || v.value > 65535 => {
            p.at(v, "limits.tcp_backlog", "must be between 1 and 65535");
            511
        }
        Some(v) => v.value as u32,
        None => 511,
    };
    let idle_timeout = duration(
        &l.idle_timeout,
        "limits.idle_timeout",
        Duration::ZERO,
        &mut p,
    );
    let incomplete_command_timeout = duration(
        &l.incomplete_command_timeout,
        "limits.incomplete_command_timeout",
        Duration::from_secs(30),
        &mut p,
    );
    let workers = match &raw.workers {
        Some(v) if v.value == 0 || v.value > 256 => {
            p.at(v, "workers", "must be between 1 and 256");
            1
        }
        Some(v) => v.value as usize,
        // One thread measured fastest for a sidecar that shares its cores with the application
        // (scripts/bench, README); more only help a proxy with cores of its own.
        None => 1,
    };
    // One per runtime thread (at most 64, as for an explicit value). More connections per
    // thread only split the batches: Redis then reads and writes more often for the same
    // commands (GET -P 1 through the proxy measured 0.87x direct with 2 connections on one
    // thread, 1.08x with 1; see README, Performance).
    let shared_connections = shared_connections.unwrap_or(workers.min(64));

    let policy = raw.policy.map(|rp| crate::policy::validate(rp, &mut p));
    let unix_socket = raw
        .unix_socket
        .as_ref()
        .and_then(|u| unix_listen(u, &mut p));
    let tls = raw.tls.as_ref().and_then(|t| listener_tls(t, &mut p));

    let password = ov.upstream_password.clone().map(Secret).or(file_password);

    let (problems, warnings) = p.into_parts();
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    let (addr, username, url_password, db) = match parsed_url {
        Some(v) => v,
        None => return Err(ConfigErrors(problems)),
    };
    let (Some(listen), policy) = (listen, policy.flatten()) else {
        return Err(ConfigErrors(problems));
    };
    Ok(Config {
        listen,
        unix_socket,
        tls,
        admin,
        upstream: UpstreamConfig {
            addr,
            username,
            password: password.or(url_password),
            db,
            connect_timeout,
            read_timeout,
            shared_connections,
            tls: upstream_tls,
        },
        limits,
        max_clients,
        max_buffered_bytes,
        max_client_output,
        max_total_output,
        tcp_backlog,
        idle_timeout,
        incomplete_command_timeout,
        shutdown_grace,
        workers,
        policy,
        path: None,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let (a, u, p, db) = parse_upstream_url("redis://app:s3cr%40t@10.0.0.1:6390/2").unwrap();
        assert_eq!(
            a,
            UpstreamAddr::Tcp {
                host: "10.0.0.1".into(),
                port: 6390
            }
        );
        assert_eq!(u.as_deref(), Some("app"));
        assert_eq!(p.unwrap().0, "s3cr@t");
        assert_eq!(db, 2);
        let (a, u, p, db) = parse_upstream_url("redis://:pw@localhost").unwrap();
        assert_eq!(
            a,
            UpstreamAddr::Tcp {
                host: "localhost".into(),
                port: 6379
            }
        );
        assert!(u.is_none());
        assert_eq!(p.unwrap().0, "pw");
        assert_eq!(db, 0);
        let (a, ..) = parse_upstream_url("unix:///run/redis.sock").unwrap();
        assert_eq!(a, UpstreamAddr::Unix("/run/redis.sock".into()));
        let (a, ..) = parse_upstream_url("rediss://h:1").unwrap();
        assert_eq!(
            a,
            UpstreamAddr::Tcp {
                host: "h".into(),
                port: 1
            }
        );
        assert!(url_is_tls("rediss://h:1") && !url_is_tls("redis://h:1"));
        assert!(parse_upstream_url("redis://h:notaport").is_err());
        assert!(parse_upstream_url("http://h:1").is_err());
        assert_eq!(redact_url("redis://u:pw@h:1"), "redis://u:***@h:1");
    }

    #[test]
    fn every_problem_is_listed_with_its_line() {
        let text = "listen: nowhere\nadmin: 127.0.0.1:9090\nupstream:\n  url: redis://x:99999\n  connect_timeout: 5 parsecs\nlimits:\n  max_bulk_len: huge\n";
        let err = Config::parse(text, "bad.yaml", &Overrides::default()).unwrap_err();
        let lines: Vec<_> = err.0.iter().map(|p| (p.line, p.field.as_str())).collect();
        assert!(lines.contains(&(Some(1), "listen")), "{err}");
        assert!(lines.contains(&(Some(4), "upstream.url")), "{err}");
        assert!(
            lines.contains(&(Some(5), "upstream.connect_timeout")),
            "{err}"
        );
        assert!(lines.contains(&(Some(7), "limits.max_bulk_len")), "{err}");
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn client_limits_are_validated_with_their_lines() {
        let cfg = Config::parse("", "t.yaml", &Overrides::default()).unwrap();
        assert_eq!(cfg.max_client_output, 32 * 1024 * 1024);
        assert_eq!(cfg.max_total_output, 256 * 1024 * 1024);
        assert_eq!(cfg.tcp_backlog, 511);
        assert_eq!(cfg.idle_timeout, Duration::ZERO);
        assert_eq!(cfg.incomplete_command_timeout, Duration::from_secs(30));
        let text = "limits:\n  max_client_output: 1kb\n  max_total_output: lots\n  tcp_backlog: 0\n  idle_timeout: soon\n  incomplete_command_timeout: 5 parsecs\n";
        let err = Config::parse(text, "bad.yaml", &Overrides::default()).unwrap_err();
        let lines: Vec<_> = err.0.iter().map(|p| (p.line, p.field.as_str())).collect();
        assert_eq!(
            lines,
            [
                (Some(2), "limits.max_client_output"),
                (Some(3), "limits.max_total_output"),
                (Some(4), "limits.tcp_backlog"),
                (Some(5), "limits.idle_timeout"),
                (Some(6), "limits.incomplete_command_timeout"),
            ],
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_refused_with_line() {
        let err = Config::parse(
            "listen: 127.0.0.1:1\nlisen: x\n",
            "t.yaml",
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, Some(2), "{err}");
    }

    #[test]
    fn overrides_win_and_are_named() {
        let ov = Overrides {
            listen: Some(("--listen".into(), "127.0.0.1:7000".into())),
            upstream: Some(("--upstream".into(), "bogus".into())),
            ..Default::default()
        };
        let err = Config::parse("listen: 127.0.0.1:1\n", "t.yaml", &ov).unwrap_err();
        assert_eq!(err.0[0].source, "--upstream");
        let ov = Overrides {
            listen: Some(("--listen".into(), "127.0.0.1:7000".into())),
            upstream_password: Some("pw".into()),
            ..Default::default()
        };
        let cfg = Config::parse("upstream:\n  url: redis://:other@h:1\n", "t.yaml", &ov).unwrap();
        assert_eq!(cfg.listen.port(), 7000);
        assert_eq!(cfg.upstream.password, Some(Secret("pw".into())));
        assert_eq!(format!("{:?}", cfg.upstream.password), "Some(<redacted>)");
    }
}
