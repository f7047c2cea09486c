//! Client identities (`policy.clients`): who a client is, and which namespaces, commands and
//! channels it may touch.
//!
//! ```yaml
//! policy:
//!   clients:
//!     web:
//!       password_file: /run/secrets/respguard-web   # or password_env: WEB_CACHE_PASSWORD
//!       certificate: [web.internal]                 # client certificate CN or SAN (TLS listener)
//!       namespaces: { user_profile: readwrite, session: readwrite, "*": none }
//!       commands: "+@all -@dangerous"
//!       channels: ["notify:*"]
//!     default:                                      # clients that do not authenticate
//!       namespaces: { "*": none }
//!       commands: "+@connection"
//! ```
//!
//! Clients authenticate with the proxy (`AUTH user pass`, `HELLO 3 AUTH user pass`) or by their
//! client certificate; the upstream credential stays the proxy's own. Passwords are read from a
//! file or the environment when the policy is loaded and only their SHA-256 is kept, compared
//! in constant time, so no secret sits in the compiled policy or its `Debug` output.
//!
//! Read and write are decided per key from the command table's key-spec flags, the same way
//! Redis's ACLs do: a key whose value is returned or read needs `read`, a key that is created,
//! changed or deleted needs `write` (`COPY src dst`: read `src`, write `dst`).

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::codec::Argv;
use crate::command::traits::{ChannelKind, Channels};
use crate::command::{
    CommandSpec, KeyRef, ACL_CATEGORY_NAMES, KS_ACCESS, KS_DELETE, KS_INSERT, KS_OW, KS_RM, KS_RO,
    KS_RW, KS_UPDATE,
};
use crate::diag::Problems;

use super::{NsId, Policy, NS_NONE, NS_UNMATCHED};

/// Longest identity name (it appears in errors and logs).
const MAX_NAME_LEN: usize = 64;
/// Most identities in one policy.
pub const MAX_IDENTITIES: usize = 1000;
/// The identity of clients that do not authenticate.
pub const DEFAULT: &str = "default";

/// Index of an identity in [`Clients`].
pub type IdentityId = u16;

/// What an identity may do with the keys of one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    pub const NONE: Access = Access(0);
    pub const READ: Access = Access(1);
    pub const WRITE: Access = Access(2);
    pub const READWRITE: Access = Access(3);

    fn parse(s: &str) -> Option<Access> {
        match s {
            "none" => Some(Access::NONE),
            "read" => Some(Access::READ),
            "write" => Some(Access::WRITE),
            "readwrite" => Some(Access::READWRITE),
            _ => None,
        }
    }

    /// True when every right of `need` is granted.
    pub fn allows(self, need: Access) -> bool {
        self.0 & need.0 == need.0
    }

    /// The rights a command needs on a key, from its key-spec flags. A key whose flags say
    /// neither (none in the Redis 7 table today) needs both, so nothing slips through.
    pub fn needed(flags: u32) -> Access {
        let mut a = 0;
        if flags & (KS_ACCESS | KS_RO | KS_RW) != 0 {
            a |= Access::READ.0;
        }
        if flags & (KS_RW | KS_OW | KS_RM | KS_INSERT | KS_DELETE | KS_UPDATE) != 0 {
            a |= Access::WRITE.0;
        }
        if a == 0 {
            Access::READWRITE
        } else {
            Access(a)
        }
    }

    fn verb(self) -> &'static str {
        match self.0 {
            1 => "read",
            2 => "write",
            _ => "read and write",
        }
    }
}

/// `policy.clients` as written: identity names in file order, each with its line.
#[derive(Debug, Default)]
pub struct RawClients(Vec<(Spanned<String>, RawIdentity)>);

/// A map in file order, each key with its line.
struct Ordered<T>(Vec<(Spanned<String>, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for RawClients {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ordered::deserialize(d).map(|o| RawClients(o.0))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    certificate: Option<Vec<Spanned<String>>>,
    namespaces: Option<Ordered<Spanned<String>>>,
    commands: Option<Spanned<String>>,
    channels: Option<Vec<Spanned<String>>>,
}

impl fmt::Debug for RawIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawIdentity").finish_non_exhaustive()
    }
}

/// The commands an identity may run: one bit per command-table row.
#[derive(Clone)]
pub struct CommandSet {
    rows: Box<[u64]>,
    /// Commands outside the table (`+@all` grants them, as in Redis).
    unknown: bool,
}

impl fmt::Debug for CommandSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n: u32 = self.rows.iter().map(|w| w.count_ones()).sum();
        write!(f, "CommandSet({n} rows, unknown: {})", self.unknown)
    }
}

impl CommandSet {
    fn all() -> CommandSet {
        CommandSet {
            rows: vec![u64::MAX; CommandSpec::count().div_ceil(64)].into_boxed_slice(),
            unknown: true,
        }
    }

    fn set(&mut self, row: usize, on: bool) {
        if let Some(w) = self.rows.get_mut(row / 64) {
            if on {
                *w |= 1 << (row % 64);
            } else {
                *w &= !(1 << (row % 64));
            }
        }
    }

    /// Whether the row may run; `None` is a command outside the table.
    pub fn allows(&self, spec: Option<&CommandSpec>) -> bool {
        match spec {
            None => self.unknown,
            Some(s) => {
                let i = s.index();
                self.rows
                    .get(i / 64)
                    .is_some_and(|w| w & (1 << (i % 64)) != 0)
            }
        }
    }

    /// Applies Redis ACL rules in order: `+@all`, `-@dangerous`, `+get`, `-config|set`,
    /// `allcommands`, `nocommands`.
    pub fn parse(rules: &str) -> Result<CommandSet, String> {
        let mut set = CommandSet::all();
        set.rows.iter_mut().for_each(|w| *w = 0);
        set.unknown = false;
        for token in rules.split_whitespace() {
            let lower = token.to_ascii_lowercase();
            match lower.as_str() {
                "allcommands" => {
                    set = CommandSet::all();
                    continue;
                }
                "nocommands" => {
                    set.rows.iter_mut().for_each(|w| *w = 0);
                    set.unknown = false;
                    continue;
                }
                _ => {}
            }
            let (on, rest) = match lower.split_at_checked(1) {
                Some(("+", r)) => (true, r),
                Some(("-", r)) => (false, r),
                _ => {
                    return Err(format!(
                        "{token:?}: each rule starts with + or - (\"+@read -@dangerous +get\")"
                    ))
                }
            };
            if let Some(cat) = rest.strip_prefix('@') {
                if cat == "all" {
                    set.rows
                        .iter_mut()
                        .for_each(|w| *w = if on { u64::MAX } else { 0 });
                    set.unknown = on;
                    continue;
                }
                let Some(&(_, bit)) = ACL_CATEGORY_NAMES.iter().find(|(n, _)| *n == cat) else {
                    let all: Vec<String> = ACL_CATEGORY_NAMES
                        .iter()
                        .map(|(n, _)| format!("@{n}"))
                        .collect();
                    return Err(format!(
                        "{token:?}: not a Redis ACL category; use @all or one of {}",
                        all.join(", ")
                    ));
                };
                for row in CommandSpec::all().filter(|r| r.in_category(bit)) {
                    set.set(row.index(), on);
                }
            } else {
                let Some(row) = crate::command::lookup_name(rest.as_bytes()) else {
                    return Err(format!(
                        "{token:?}: not a command respguard knows (Redis 7 table)"
                    ));
                };
                set.set(row.index(), on);
                // A container names all of its subcommands, as in Redis.
                for sub in row.subcommands {
                    set.set(sub.index(), on);
                }
            }
        }
        Ok(set)
    }
}

/// One identity, compiled.
pub struct Identity {
    pub name: String,
    /// SHA-256 of the password; `None`: no password login.
    password: Option<[u8; 32]>,
    /// Names matched against the client certificate's subject CN and SANs.
    certificate: Vec<String>,
    /// Access per namespace, indexed by [`NsId`].
    namespaces: Box<[Access]>,
    unmatched: Access,
    commands: CommandSet,
    /// Channel globs; `None`: every channel.
    channels: Option<Vec<Box<[u8]>>>,
    /// Some key is not readable: commands that reveal other keys are refused or filtered.
    restricted: bool,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("certificate", &self.certificate)
            .field("namespaces", &self.namespaces)
            .field("unmatched", &self.unmatched)
            .field("commands", &self.commands)
            .field("restricted", &self.restricted)
            .finish_non_exhaustive()
    }
}

/// Why a command is refused for an identity: the text after `-`.
#[derive(Debug)]
pub struct Denied {
    pub message: String,
    pub namespace: NsId,
}

/// Commands that reveal key names or values of other namespaces without naming them, refused
/// for an identity that cannot read every key (`SCAN` and `KEYS` are filtered instead).
fn reveals_keyspace(spec: &CommandSpec, argv: &Argv<'_>) -> bool {
    match spec.name {
        // SLOWLOG GET shows other clients' arguments, keys included.
        "DBSIZE" | "RANDOMKEY" | "MONITOR" | "CLIENT|LIST" | "SLOWLOG|GET" => true,
        "INFO" => {
            // INFO without sections, or with default/all/everything/keyspace, has the
            // keyspace section (key counts per database).
            argv.len() == 1
                || argv.iter().skip(1).any(|s| {
                    ["keyspace", "default", "all", "everything"]
                        .iter()
                        .any(|n| s.eq_ignore_ascii_case(n.as_bytes()))
                })
        }
        _ => false,
    }
}

impl Identity {
    /// The access granted on keys of `ns`.
    pub fn access(&self, ns: NsId) -> Access {
        match ns {
            NS_UNMATCHED | NS_NONE => self.unmatched,
            n => self
                .namespaces
                .get(usize::from(n))
                .copied()
                .unwrap_or(self.unmatched),
        }
    }

    /// Whether the identity cannot read every key.
    pub fn restricted(&self) -> bool {
        self.restricted
    }

    /// Whether `password` is this identity's, in constant time over the digests.
    pub fn password_matches(&self, password: &[u8]) -> bool {
        let Some(want) = &self.password else {
            return false;
        };
        let got: [u8; 32] = Sha256::digest(password).into();
        bool::from(got.ct_eq(want))
    }

    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Whether a client certificate naming `names` (subject CN and SANs) is this identity.
    pub fn certificate_matches(&self, names: &[String]) -> bool {
        self.certificate
            .iter()
            .any(|c| names.iter().any(|n| n.eq_ignore_ascii_case(c)))
    }

    /// Whether the key `key` may be read (for filtering `SCAN` and `KEYS` replies).
    pub fn may_read(&self, policy: &Policy, key: &[u8]) -> bool {
        if !self.restricted {
            return true;
        }
        self.access(policy.namespace_of(key)).allows(Access::READ)
    }

    /// Whether the identity may listen to `ch` (a pattern when `pattern`).
    pub fn may_use_channel(&self, pattern: bool, ch: &[u8]) -> bool {
        self.channels
            .as_deref()
            .is_none_or(|globs| channel_allowed(globs, pattern, ch))
    }

    /// Decides one command: its row, then every key, then every channel. `keys` is a
    /// reused buffer. Allocation-free unless the command is refused.
    pub fn check(
        &self,
        policy: &Policy,
        spec: Option<&'static CommandSpec>,
        argv: &Argv<'_>,
        keys: &mut Vec<KeyRef>,
    ) -> Result<(), Denied> {
        if !self.commands.allows(spec) {
            let name = match spec {
                Some(s) => s.name.to_ascii_lowercase(),
                None => String::from_utf8_lossy(argv.get(0).unwrap_or_default())
                    .chars()
                    .take(64)
                    .collect(),
            };
            return Err(Denied {
                message: format!(
                    "NOPERM this user has no permissions to run the '{name}' command (identity '{}')",
                    self.name
                ),
                namespace: NS_NONE,
            });
        }
        let Some(spec) = spec else {
            return Ok(());
        };
        if self.restricted && reveals_keyspace(spec, argv) {
            return Err(Denied {
                message: format!(
                    "NOPERM this user has no permissions to run the '{}' command: it reveals keys of namespaces identity '{}' may not read",
                    spec.name.to_ascii_lowercase(),
                    self.name
                ),
                namespace: NS_NONE,
            });
        }
        if self.restricted && spec.reads_pattern_keys(argv) {
            return Err(Denied {
                message: format!(
                    "NOPERM this user has no permissions to access one of the keys used as arguments: {} with a BY or GET pattern reads keys of any namespace, which identity '{}' may not",
                    spec.name, self.name
                ),
                namespace: NS_NONE,
            });
        }
        if spec.has_keys() && spec.keys(argv, keys).is_ok() {
            for k in keys.iter() {
                let key = argv.get(k.index).unwrap_or_default();
                let ns = policy.namespace_of(key);
                let need = Access::needed(k.flags);
                if !self.access(ns).allows(need) {
                    return Err(Denied {
                        message: format!(
                            "NOPERM this user has no permissions to access one of the keys used as arguments: identity '{}' may not {} namespace '{}'",
                            self.name,
                            need.verb(),
                            policy.namespace_label(ns)
                        ),
                        namespace: ns,
                    });
                }
            }
        }
        if let Some(globs) = &self.channels {
            let (step, pattern) = match spec.traits().channels {
                Channels::Publish => (usize::MAX, false),
                Channels::Subscribe(kind) => (1, kind == ChannelKind::Pattern),
                Channels::Unsubscribe(_) | Channels::None => (0, false),
            };
            if step > 0 {
                for ch in argv.iter().skip(1).step_by(step) {
                    if !channel_allowed(globs, pattern, ch) {
                        return Err(Denied {
                            message: format!(
                                "NOPERM this user has no permissions to access one of the channels used as arguments (identity '{}')",
                                self.name
                            ),
                            namespace: NS_NONE,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether the channel globs allow a channel, or a subscriber's pattern: a pattern may match
/// channels beyond the allowed ones unless it is one of them literally, as Redis decides it.
fn channel_allowed(globs: &[Box<[u8]>], pattern: bool, ch: &[u8]) -> bool {
    if pattern {
        globs.iter().any(|g| g.as_ref() == ch || g.as_ref() == b"*")
    } else {
        globs.iter().any(|g| glob_match(g, ch))
    }
}

/// Redis's glob (`*`, `?`, `[a-z]`, `[^x]`, `\` escapes) over bytes, without recursion.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    // Where the last `*` was, and the input position it is retried from.
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, i));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, s[i]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == s[i]).then_some(p + 2),
            Some(&c) => (c == s[i]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                i += 1;
            }
            (None, Some((sp, si))) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[p] == b'['`; the position after it.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<usize> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut hit = false;
    while let Some(&b) = pattern.get(j) {
        if b == b']' {
            return (hit != negate).then_some(j + 1);
        }
        if b == b'\\' && j + 1 < pattern.len() {
            hit |= pattern[j + 1] == c;
            j += 2;
        } else if pattern.get(j + 1) == Some(&b'-')
            && j + 2 < pattern.len()
            && pattern[j + 2] != b']'
        {
            let (lo, hi) = (b.min(pattern[j + 2]), b.max(pattern[j + 2]));
            hit |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            hit |= b == c;
            j += 1;
        }
    }
    // An unclosed class ends the pattern, as in Redis.
    (hit != negate).then_some(j)
}

/// The identities of a policy.
#[derive(Debug)]
pub struct Clients {
    list: Vec<Identity>,
    default: Option<IdentityId>,
}

impl Clients {
    pub fn get(&self, id: IdentityId) -> Option<&Identity> {
        self.list.get(usize::from(id))
    }

    pub fn find(&self, name: &[u8]) -> Option<IdentityId> {
        self.list
            .iter()
            .position(|i| i.name.as_bytes() == name)
            .and_then(|i| IdentityId::try_from(i).ok())
    }

    /// The identity of a client that has not authenticated: `default`, or none (every
    /// command then needs authentication first).
    pub fn default_id(&self) -> Option<IdentityId> {
        self.default
    }

    /// The identity a client certificate names, if any: the first identity listing one of
    /// the certificate's names.
    pub fn by_certificate(&self, names: &[String]) -> Option<IdentityId> {
        self.list
            .iter()
            .position(|i| i.certificate_matches(names))
            .and_then(|i| IdentityId::try_from(i).ok())
    }

    /// Checks `user`/`password`; the identity on success. Every identity's digest is not
    /// compared, but the digest of the given password is always computed, so a wrong user
    /// name and a wrong password take the same time.
    pub fn authenticate(&self, user: &[u8], password: &[u8]) -> Option<IdentityId> {
        let id = self.find(user);
        let ok = match id.and_then(|i| self.get(i)) {
            Some(ident) => ident.password_matches(password),
            None => {
                let _ = Sha256::digest(password);
                false
            }
        };
        if ok {
            id
        } else {
            None
        }
    }
}

/// Validates `policy.clients` against the namespace names.
pub fn validate(raw: &RawClients, names: &[String], p: &mut Problems<'_>) -> Option<Clients> {
    let mut failed = false;
    let mut list = Vec::with_capacity(raw.0.len());
    let mut default = None;
    if raw.0.len() > MAX_IDENTITIES {
        p.add(
            raw.0.get(MAX_IDENTITIES).map(|(n, _)| n.referenced.line()),
            "policy.clients",
            format!("at most {MAX_IDENTITIES} identities are supported"),
        );
        return None;
    }
    for (idx, (name, id)) in raw.0.iter().enumerate() {
        let base = format!("policy.clients.{}", name.value);
        let mut bad = |p: &mut Problems<'_>, line: u64, field: String, msg: String| {
            failed = true;
            p.add(Some(line), field, msg);
        };
        let line = name.referenced.line();
        let valid = !name.value.is_empty()
            && name.value.len() <= MAX_NAME_LEN
            && name
                .value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
        if !valid {
            bad(
                p,
                line,
                base.clone(),
                format!(
                    "an identity name is 1 to {MAX_NAME_LEN} letters, digits, '_', '-', '.' or '@'"
                ),
            );
        }
        if list.iter().any(|i: &Identity| i.name == name.value) {
            bad(
                p,
                line,
                base.clone(),
                "this identity is already defined".into(),
            );
        }
        let password = match (&id.password_file, &id.password_env) {
            (Some(f), Some(e)) => {
                bad(
                    p,
                    e.referenced.line(),
                    format!("{base}.password_env"),
                    "give password_file or password_env, not both".into(),
                );
                let _ = f;
                None
            }
            (Some(f), None) => match std::fs::read(&f.value) {
                Ok(mut bytes) => {
                    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
                        bytes.pop();
                    }
                    if bytes.is_empty() {
                        bad(
                            p,
                            f.referenced.line(),
                            format!("{base}.password_file"),
                            format!("{} is empty", f.value),
                        );
                    }
                    Some(Sha256::digest(&bytes).into())
                }
                Err(e) => {
                    bad(
                        p,
                        f.referenced.line(),
                        format!("{base}.password_file"),
                        format!("cannot read {}: {e}", f.value),
                    );
                    None
                }
            },
            (None, Some(e)) => match std::env::var_os(&e.value) {
                Some(v) if !v.is_empty() => Some(Sha256::digest(v.as_encoded_bytes()).into()),
                _ => {
                    bad(
                        p,
                        e.referenced.line(),
                        format!("{base}.password_env"),
                        format!("the environment variable {} is not set or empty", e.value),
                    );
                    None
                }
            },
            (None, None) => None,
        };
        let certificate: Vec<String> = id
            .certificate
            .iter()
            .flatten()
            .map(|c| c.value.trim().to_string())
            .collect();
        if password.is_none()
            && certificate.is_empty()
            && name.value != DEFAULT
            && id.password_file.is_none()
            && id.password_env.is_none()
        {
            bad(p, line, base.clone(), "give password_file, password_env or certificate: only the default identity needs no credential".into());
        }

        let mut star = None;
        let mut unmatched = None;
        let mut namespaces: Vec<Option<Access>> = vec![None; names.len()];
        for (ns, access) in id.namespaces.iter().flat_map(|o| o.0.iter()) {
            let field = format!("{base}.namespaces.{}", ns.value);
            let Some(a) = Access::parse(access.value.trim()) else {
                bad(
                    p,
                    access.referenced.line(),
                    field,
                    format!(
                        "{:?} is not valid: use read, write, readwrite or none",
                        access.value
                    ),
                );
                continue;
            };
            match ns.value.as_str() {
                "*" => star = Some(a),
                "_unmatched" => unmatched = Some(a),
                n => match names.iter().position(|x| x == n) {
                    Some(i) => namespaces[i] = Some(a),
                    None => bad(p, ns.referenced.line(), field, format!("{n:?} is not a namespace of policy.namespaces (use \"*\" for the rest, \"_unmatched\" for keys of no namespace)")),
                },
            }
        }
        // Without a namespaces list an identity may touch every key, as without clients.
        let star = star.unwrap_or(if id.namespaces.is_some() {
            Access::NONE
        } else {
            Access::READWRITE
        });
        let unmatched = unmatched.unwrap_or(star);
        let namespaces: Box<[Access]> = namespaces.into_iter().map(|a| a.unwrap_or(star)).collect();
        let restricted =
            !unmatched.allows(Access::READ) || namespaces.iter().any(|a| !a.allows(Access::READ));

        let commands = match &id.commands {
            None => CommandSet::all(),
            Some(c) => match CommandSet::parse(&c.value) {
                Ok(set) => set,
                Err(e) => {
                    bad(p, c.referenced.line(), format!("{base}.commands"), e);
                    CommandSet::all()
                }
            },
        };
        let channels = id
            .channels
            .as_ref()
            .map(|cs| cs.iter().map(|c| c.value.as_bytes().into()).collect());
        if name.value == DEFAULT {
            default = IdentityId::try_from(idx).ok();
        }
        list.push(Identity {
            name: name.value.clone(),
            password,
            certificate,
            namespaces,
            unmatched,
            commands,
            channels,
            restricted,
        });
    }
    if failed {
        None
    } else {
        Some(Clients { list, default })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::lookup;

    #[test]
    fn globs_match_like_redis() {
        assert!(glob_match(b"notify:*", b"notify:user:1"));
        assert!(!glob_match(b"notify:*", b"other:1"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-c]llo", b"hbllo"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a\\*", b"a*"));
        assert!(!glob_match(b"a\\*", b"ab"));
        assert!(glob_match(b"*a*b", b"xxaxxb"));
        assert!(!glob_match(b"*a*b", b"xxaxxc"));
    }

    #[test]
    fn key_flags_give_read_and_write() {
        let argv = crate::codec::OwnedArgv::new(&[b"COPY", b"a", b"b"]);
        let argv = argv.argv();
        let spec = lookup(&argv).unwrap();
        let mut keys = Vec::new();
        spec.keys(&argv, &mut keys).unwrap();
        assert_eq!(Access::needed(keys[0].flags), Access::READ);
        assert_eq!(Access::needed(keys[1].flags), Access::WRITE);
        let get = crate::codec::OwnedArgv::new(&[b"EXISTS", b"a"]);
        let get = get.argv();
        lookup(&get).unwrap().keys(&get, &mut keys).unwrap();
        assert_eq!(Access::needed(keys[0].flags), Access::READ);
        let del = crate::codec::OwnedArgv::new(&[b"DEL", b"a"]);
        let del = del.argv();
        lookup(&del).unwrap().keys(&del, &mut keys).unwrap();
        assert_eq!(Access::needed(keys[0].flags), Access::WRITE);
        // MIGRATE reads its keys and deletes them here.
        let mig = crate::codec::OwnedArgv::new(&[
            b"MIGRATE", b"h", b"1", b"", b"0", b"5000", b"KEYS", b"a", b"b",
        ]);
        let mig = mig.argv();
        lookup(&mig).unwrap().keys(&mig, &mut keys).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys
            .iter()
            .all(|k| Access::needed(k.flags) == Access::READWRITE));
    }

    #[test]
    fn command_rules_apply_in_order() {
        let set = CommandSet::parse("+@read -@dangerous +set").unwrap();
        let row = |n: &str| crate::command::lookup_name(n.as_bytes());
        assert!(set.allows(row("get")));
        assert!(set.allows(row("set")));
        assert!(!set.allows(row("del")));
        assert!(!set.allows(row("keys")));
        assert!(!set.allows(None));
        assert!(CommandSet::parse("+@all").unwrap().allows(None));
        assert!(CommandSet::parse("+@nosuch").is_err());
        assert!(CommandSet::parse("get").is_err());
        let cfg = CommandSet::parse("+@all -config").unwrap();
        assert!(!cfg.allows(row("config|get")));
    }

    #[test]
    fn configuration_problems_name_the_field() {
        use crate::config::{Config, Overrides};
        let yaml = "policy:\n  namespaces:\n    s:\n      keys: [\"s:{id}\"]\n  clients:\n    web:\n      password_env: RESPGUARD_TEST_UNSET_VARIABLE\n      namespaces: { s: rw, nosuch: read }\n      commands: \"+@nosuch\"\n    worker:\n      namespaces: { s: read }\n";
        let err = Config::parse(yaml, "t.yaml", &Overrides::default())
            .unwrap_err()
            .to_string();
        for want in [
            "t.yaml:7: policy.clients.web.password_env",
            "t.yaml:8: policy.clients.web.namespaces.s",
            "policy.clients.web.namespaces.nosuch",
            "t.yaml:9: policy.clients.web.commands",
            "t.yaml:10: policy.clients.worker",
        ] {
            assert!(err.contains(want), "{want} missing from:\n{err}");
        }
    }

    #[test]
    fn debug_output_hides_the_password_digest() {
        let ident = Identity {
            name: "web".into(),
            password: Some(Sha256::digest(b"hunter2").into()),
            certificate: Vec::new(),
            namespaces: Box::new([]),
            unmatched: Access::NONE,
            commands: CommandSet::all(),
            channels: None,
            restricted: true,
        };
        let shown = format!("{ident:?}");
        assert!(shown.contains("<redacted>"));
        assert!(ident.password_matches(b"hunter2"));
        assert!(!ident.password_matches(b"hunter3"));
        assert!(!shown.contains("hunter2"));
    }
}
