//! Authentication at the proxy, for a policy with `clients`: what a session knows about its
//! client's identity, the `AUTH` and `HELLO ... AUTH` exchanges, and the failed-attempt
//! limiter shared by all sessions.
//!
//! A failed attempt is answered after a delay that doubles with each failure from the same
//! address (reset by a success), so guessing passwords is slow while other clients are not
//! held up: the delay holds only the failing session's replies. Failures are counted per
//! client address in `respguard_auth_failures_total{client}`; the label set is bounded, later
//! addresses count as `_other`. The password itself is never logged, counted or echoed.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;

use crate::codec::Argv;
use crate::command::traits::{ChannelKind, Channels};
use crate::command::{CommandSpec, KeyRef, CMD_NO_AUTH};

use super::identity::{Clients, Denied, IdentityId, DEFAULT};
use super::Policy;

/// The delay after a first failure; each further failure from the address doubles it.
pub const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_millis(3200);
/// Failures are forgotten this long after an address's last one.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most addresses tracked at once; past it, stale entries are dropped first.
const MAX_TRACKED: usize = 10_000;
/// Most addresses with a metric label of their own.
pub const MAX_LABELLED: usize = 64;

/// `WRONGPASS` as Redis words it.
const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const NOAUTH_HELLO: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";

/// Failed attempts per client address, shared by every session of a proxy.
#[derive(Debug, Default)]
pub struct Failures {
    by_addr: DashMap<IpAddr, (u32, Instant)>,
    labelled: Mutex<Vec<IpAddr>>,
}

impl Failures {
    /// Records a failure from `addr`; the delay before answering it, and the metric label.
    pub fn failed(&self, addr: Option<IpAddr>, now: Instant) -> (Duration, String) {
        let Some(addr) = addr else {
            return (FIRST_DELAY, "local".to_string());
        };
        if self.by_addr.len() >= MAX_TRACKED && !self.by_addr.contains_key(&addr) {
            self.by_addr
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < FORGET_AFTER);
        }
        let n = if self.by_addr.len() < MAX_TRACKED || self.by_addr.contains_key(&addr) {
            let mut e = self.by_addr.entry(addr).or_insert((0, now));
            if now.saturating_duration_since(e.1) >= FORGET_AFTER {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = now;
            e.0
        } else {
            // Too many addresses at once: the longest delay for the ones not tracked.
            u32::MAX
        };
        let shift = n.saturating_sub(1).min(16);
        let delay = FIRST_DELAY.saturating_mul(1 << shift).min(MAX_DELAY);
        (delay, self.label(addr))
    }

    /// A successful login from `addr` forgets its failures.
    pub fn succeeded(&self, addr: Option<IpAddr>) {
        if let Some(a) = addr {
            self.by_addr.remove(&a);
        }
    }

    fn label(&self, addr: IpAddr) -> String {
        let mut l = match self.labelled.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if l.contains(&addr) {
            return addr.to_string();
        }
        if l.len() < MAX_LABELLED {
            l.push(addr);
            return addr.to_string();
        }
        "_other".to_string()
    }
}

/// What the listener knows about a client when it hands it to a session.
#[derive(Debug, Default, Clone)]
pub struct PeerInfo {
    pub addr: Option<IpAddr>,
    /// Subject CN and SANs of the client certificate (TLS listener with client_auth).
    pub cert_names: Vec<String>,
}

/// Who the client is, as far as the session knows.
#[derive(Debug, Default)]
pub struct ClientAuth {
    /// The identity in the policy in force; `None`: not authenticated and no `default`.
    id: Option<IdentityId>,
    /// How the identity was established, to find it again after a reload.
    how: How,
    /// The client certificate's subject CN and SANs (TLS listener), if it sent one.
    cert_names: Vec<String>,
    pub addr: Option<IpAddr>,
    /// Reused key buffer for the permission check.
    keys: Vec<KeyRef>,
    /// Channels and patterns the client subscribed to: a reload that no longer allows one
    /// of them closes the connection, as Redis disconnects such a subscriber when its ACL
    /// user changes.
    subscriptions: Vec<(ChannelKind, Box<[u8]>)>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum How {
    /// Not authenticated: the `default` identity, if any.
    #[default]
    Default,
    Certificate,
    Password(String),
}

/// What the session does with a command, as far as identities go.
#[derive(Debug)]
pub enum Gate {
    /// Go on with the policy and forwarding.
    Pass,
    /// Answer this; nothing goes to Redis.
    Answer(Bytes),
    /// Answer this after `delay` (a failed login); nothing goes to Redis.
    Failed { delay: Duration, reply: Bytes },
    /// Refuse with this error (counted as a permission rejection).
    Refuse(Denied),
    /// Forward this command instead (`HELLO` without its `AUTH` part).
    Forward(BytesMut),
}

impl ClientAuth {
    /// A new session from `addr`, with its certificate names; resolved against `policy`.
    pub fn new(addr: Option<IpAddr>, cert_names: Vec<String>, policy: Option<&Policy>) -> Self {
        let mut a = ClientAuth {
            addr,
            how: if cert_names.is_empty() {
                How::Default
            } else {
                How::Certificate
            },
            cert_names,
            ..ClientAuth::default()
        };
        a.id = policy.and_then(|p| p.clients()).and_then(|c| a.resolve(c));
        a
    }

    fn resolve(&self, clients: &Clients) -> Option<IdentityId> {
        match &self.how {
            How::Default => clients.default_id(),
            How::Certificate => clients
                .by_certificate(&self.cert_names)
                .or(clients.default_id()),
            How::Password(name) => clients.find(name.as_bytes()),
        }
    }

    /// Finds the identity again in a reloaded policy. False when the client's identity is
    /// gone (or identities were switched off after it logged in): the session must close.
    pub fn rebind(&mut self, policy: Option<&Policy>) -> bool {
        match policy.and_then(|p| p.clients()) {
            Some(c) => {
                self.id = self.resolve(c);
                if let Some(ident) = self.id.and_then(|i| c.get(i)) {
                    let allowed = self.subscriptions.iter().all(|(kind, name)| {
                        ident.may_use_channel(*kind == ChannelKind::Pattern, name)
                    });
                    if !allowed {
                        return false;
                    }
                }
                self.id.is_some() || !matches!(self.how, How::Password(_))
            }
            None => {
                self.id = None;
                !matches!(self.how, How::Password(_))
            }
        }
    }

    /// Whether the client logged in (password or certificate) rather than being `default`.
    pub fn logged_in(&self) -> bool {
        self.how != How::Default
    }

    /// Whether a reload may end this connection: its identity may be removed, or may no
    /// longer allow a channel it listens to. Other clients pick up a new policy at their
    /// next command.
    pub fn bound_by_reloads(&self) -> bool {
        self.logged_in() || !self.subscriptions.is_empty()
    }

    /// Follows the client's subscriptions through a command the identity allowed.
    fn note_subscriptions(&mut self, spec: &CommandSpec, argv: &Argv<'_>) {
        if spec.name == "RESET" {
            self.subscriptions.clear();
            return;
        }
        let (kind, subscribe) = match spec.traits().channels {
            Channels::Subscribe(kind) => (kind, true),
            Channels::Unsubscribe(kind) => (kind, false),
            Channels::Publish | Channels::None => return,
        };
        if subscribe {
            for ch in argv.iter().skip(1) {
                if !self
                    .subscriptions
                    .iter()
                    .any(|(k, n)| *k == kind && n.as_ref() == ch)
                {
                    self.subscriptions.push((kind, ch.into()));
                }
            }
        } else if argv.len() == 1 {
            self.subscriptions.retain(|(k, _)| *k != kind);
        } else {
            let gone = |n: &[u8]| argv.iter().skip(1).any(|ch| ch == n);
            self.subscriptions
                .retain(|(k, n)| *k != kind || !gone(n.as_ref()));
        }
    }

    /// The identity's name, for logs.
    pub fn name<'p>(&self, clients: &'p Clients) -> Option<&'p str> {
        self.id
            .and_then(|i| clients.get(i))
            .map(|i| i.name.as_str())
    }

    /// The client's identity in `clients`, if it has one.
    pub fn identity<'p>(&self, clients: &'p Clients) -> Option<&'p super::identity::Identity> {
        self.id.and_then(|i| clients.get(i))
    }

    /// Whether replies to `SCAN` and `KEYS` need filtering for this client.
    pub fn restricted(&self, clients: &Clients) -> bool {
        self.id
            .and_then(|i| clients.get(i))
            .is_some_and(|i| i.restricted())
    }

    /// Decides one command against the identities of `policy` (which has `clients`).
    pub fn gate(
        &mut self,
        policy: &Policy,
        spec: Option<&'static CommandSpec>,
        argv: &Argv<'_>,
        failures: &Failures,
        metric: &dyn Fn(&str),
    ) -> Gate {
        let Some(clients) = policy.clients() else {
            return Gate::Pass;
        };
        match spec.map(|s| s.name) {
            Some("AUTH") => return self.auth(clients, argv, failures, metric),
            Some("HELLO") => {
                if let Some(at) = (2..argv.len())
                    .find(|&i| argv.get(i).is_some_and(|a| a.eq_ignore_ascii_case(b"AUTH")))
                {
                    return self.hello(clients, argv, at, failures, metric);
                }
                if self.id.is_none() {
                    return Gate::Answer(Bytes::from_static(NOAUTH_HELLO));
                }
                return Gate::Pass;
            }
            _ => {}
        }
        if spec.is_some_and(|s| s.name == "RESET") {
            // RESET logs the connection out, as in Redis; a certificate still names it.
            if matches!(self.how, How::Password(_)) {
                self.how = if self.cert_names.is_empty() {
                    How::Default
                } else {
                    How::Certificate
                };
                self.id = self.resolve(clients);
            }
        }
        let Some(ident) = self.id.and_then(|i| clients.get(i)) else {
            if spec.is_some_and(|s| s.is(CMD_NO_AUTH)) {
                return Gate::Pass;
            }
            return Gate::Answer(Bytes::from_static(NOAUTH));
        };
        match ident.check(policy, spec, argv, &mut self.keys) {
            Ok(()) => {
                if let Some(s) = spec {
                    self.note_subscriptions(s, argv);
                }
                Gate::Pass
            }
            Err(d) => Gate::Refuse(d),
        }
    }

    fn login(
        &mut self,
        clients: &Clients,
        user: &[u8],
        password: &[u8],
        failures: &Failures,
        metric: &dyn Fn(&str),
    ) -> Result<(), Gate> {
        match clients.authenticate(user, password) {
            Some(id) => {
                failures.succeeded(self.addr);
                self.id = Some(id);
                self.how = How::Password(String::from_utf8_lossy(user).into_owned());
                Ok(())
            }
            None => {
                let (delay, label) = failures.failed(self.addr, Instant::now());
                metric(&label);
                // The user name may be a mistyped password: it is not logged either.
                tracing::info!(client = %label, "client authentication failed");
                Err(Gate::Failed {
                    delay,
                    reply: Bytes::from_static(WRONGPASS),
                })
            }
        }
    }

    fn auth(
        &mut self,
        clients: &Clients,
        argv: &Argv<'_>,
        failures: &Failures,
        metric: &dyn Fn(&str),
    ) -> Gate {
        let (user, password) = match argv.len() {
            2 => (DEFAULT.as_bytes(), argv.get(1).unwrap_or_default()),
            3 => (
                argv.get(1).unwrap_or_default(),
                argv.get(2).unwrap_or_default(),
            ),
            1 => {
                return Gate::Answer(Bytes::from_static(
                    b"-ERR wrong number of arguments for 'auth' command\r\n",
                ))
            }
            _ => return Gate::Answer(Bytes::from_static(b"-ERR syntax error\r\n")),
        };
        if argv.len() == 2
            && !clients
                .default_id()
                .and_then(|i| clients.get(i))
                .is_some_and(|i| i.has_password())
        {
            return Gate::Answer(Bytes::from_static(b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n"));
        }
        match self.login(clients, user, password, failures, metric) {
            Ok(()) => Gate::Answer(Bytes::from_static(b"+OK\r\n")),
            Err(g) => g,
        }
    }

    fn hello(
        &mut self,
        clients: &Clients,
        argv: &Argv<'_>,
        at: usize,
        failures: &Failures,
        metric: &dyn Fn(&str),
    ) -> Gate {
        // Redis checks the protocol version before it looks at the options: a HELLO it
        // refuses logs nobody in.
        match argv.get(1).and_then(crate::codec::string2ll) {
            None => {
                return Gate::Answer(Bytes::from_static(
                    b"-ERR Protocol version is not an integer or out of range\r\n",
                ))
            }
            Some(2 | 3) => {}
            Some(_) => {
                return Gate::Answer(Bytes::from_static(
                    b"-NOPROTO unsupported protocol version\r\n",
                ))
            }
        }
        let (Some(user), Some(password)) = (argv.get(at + 1), argv.get(at + 2)) else {
            // Redis's own error for a short AUTH option.
            return Gate::Answer(Bytes::from_static(
                b"-ERR Syntax error in HELLO option 'AUTH'\r\n",
            ));
        };
        if let Err(g) = self.login(clients, user, password, failures, metric) {
            return g;
        }
        let mut out = BytesMut::new();
        let kept: Vec<&[u8]> = argv
            .iter()
            .enumerate()
            .filter(|(i, _)| !(at..at + 3).contains(i))
            .map(|(_, a)| a)
            .collect();
        crate::codec::encode_command(&mut out, kept.into_iter());
        Gate::Forward(out)
    }
}

/// Keeps only the keys `keep` accepts in a `KEYS` reply (`scan: false`) or in the key list of
/// a `SCAN` reply, cursor untouched. `None` when the reply is not of that shape (an error):
/// it is then forwarded as it is.
pub fn filter_keys(reply: &[u8], scan: bool, keep: &dyn Fn(&[u8]) -> bool) -> Option<BytesMut> {
    let mut r = Reader { b: reply, at: 0 };
    let mut out = BytesMut::with_capacity(reply.len());
    if scan {
        if r.header(b'*')? != 2 {
            return None;
        }
        out.put_slice(b"*2\r\n");
        let start = r.at;
        r.bulk()?;
        out.put_slice(&reply[start..r.at]);
    }
    let n = r.header(b'*')?;
    let mut kept = Vec::new();
    for _ in 0..n {
        let start = r.at;
        let key = r.bulk()?;
        if keep(key) {
            kept.push(start..r.at);
        }
    }
    if r.at != reply.len() {
        return None;
    }
    out.put_slice(format!("*{}\r\n", kept.len()).as_bytes());
    for k in kept {
        out.put_slice(&reply[k]);
    }
    Some(out)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn line(&mut self) -> Option<&'a [u8]> {
        let rest = self.b.get(self.at..)?;
        let end = memchr::memchr(b'\n', rest)?;
        let line = rest.get(..end.checked_sub(1)?)?;
        self.at += end + 1;
        Some(line)
    }

    fn header(&mut self, kind: u8) -> Option<usize> {
        let line = self.line()?;
        if line.first() != Some(&kind) {
            return None;
        }
        usize::try_from(crate::codec::string2ll(&line[1..])?).ok()
    }

    fn bulk(&mut self) -> Option<&'a [u8]> {
        let len = self.header(b'$')?;
        let data = self.b.get(self.at..self.at.checked_add(len)?)?;
        if self.b.get(self.at + len..self.at + len + 2) != Some(b"\r\n") {
            return None;
        }
        self.at += len + 2;
        Some(data)
    }
}

/// Whether `spec` is a command whose reply lists key names (filtered for restricted
/// identities).
pub fn lists_keys(spec: Option<&CommandSpec>) -> Option<bool> {
    match spec.map(|s| s.name) {
        Some("SCAN") => Some(true),
        Some("KEYS") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_replies_keep_the_cursor_and_the_allowed_keys() {
        let reply = b"*2\r\n$2\r\n17\r\n*3\r\n$5\r\nweb:1\r\n$5\r\nana:1\r\n$5\r\nweb:2\r\n";
        let out = filter_keys(reply, true, &|k| k.starts_with(b"web:")).unwrap();
        assert_eq!(
            &out[..],
            b"*2\r\n$2\r\n17\r\n*2\r\n$5\r\nweb:1\r\n$5\r\nweb:2\r\n"
        );
        let keys = b"*2\r\n$5\r\nweb:1\r\n$5\r\nana:1\r\n";
        let out = filter_keys(keys, false, &|k| k.starts_with(b"ana:")).unwrap();
        assert_eq!(&out[..], b"*1\r\n$5\r\nana:1\r\n");
        assert!(filter_keys(b"-ERR nope\r\n", true, &|_| true).is_none());
        assert!(filter_keys(b"*2\r\n$2\r\n17\r\n*1\r\n$9\r\nweb:1\r\n", true, &|_| true).is_none());
    }

    #[test]
    fn delays_double_per_address_and_reset_on_success() {
        let f = Failures::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        assert_eq!(f.failed(Some(a), now).0, FIRST_DELAY);
        assert_eq!(f.failed(Some(a), now).0, FIRST_DELAY * 2);
        for _ in 0..10 {
            f.failed(Some(a), now);
        }
        assert_eq!(f.failed(Some(a), now).0, MAX_DELAY);
        f.succeeded(Some(a));
        assert_eq!(f.failed(Some(a), now).0, FIRST_DELAY);
        assert_eq!(f.failed(Some(a), now).1, "10.0.0.1");
    }

    #[test]
    fn metric_labels_are_bounded() {
        let f = Failures::default();
        let now = Instant::now();
        let mut other = 0;
        for i in 0..(MAX_LABELLED as u32 + 10) {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if f.failed(Some(a), now).1 == "_other" {
                other += 1;
            }
        }
        assert_eq!(other, 10);
    }
}
