//! TTL enforcement, the fourth and last policy stage: every key a command writes ends up with
//! an expiry inside its namespace's bounds.
//!
//! - `SET` without `EX/PX/EXAT/PXAT/KEEPTTL` gains the namespace default (`EX n`, or `PX n` when
//!   the default is not whole seconds): a plain `SET` removes any expiry, so it always needs one.
//! - An expiry argument (`SET`/`GETEX` options, `SETEX`, `PSETEX`, `EXPIRE`, `PEXPIRE`,
//!   `EXPIREAT`, `PEXPIREAT`, `RESTORE`) above the maximum is lowered to it and one below the
//!   minimum raised to it, rewriting just that argument; with `on_violation: reject` the command
//!   is refused instead. Absolute times are compared with the proxy's clock; a clamped absolute
//!   time, or a bound that is not whole seconds, is written in milliseconds (`EXAT` becomes
//!   `PXAT`, `EXPIRE` becomes `PEXPIRE`), so the bound is exact.
//! - A non-positive expiry (or an absolute time in the past) deletes the key or is refused by
//!   Redis; neither leaves a key without expiry, so it passes unchanged.
//! - `RESTORE` with TTL 0 (no expiry) gets the default.
//! - `PERSIST` and `GETEX ... PERSIST` are refused: they would leave the key without expiry.
//! - Every other command that can create a key (the command table's `creates_key`: `HSET`,
//!   `LPUSH`, `INCR`, `MSET`, `*STORE` destinations, declared `EVAL` keys, ...) and
//!   `SET ... KEEPTTL` get `EXPIRE key ttl NX` appended: `NX` sets the default only where there
//!   is no expiry yet, so an existing one (a rate-limit window) is kept.
//!
//! Namespaces without a `ttl:` section and keys matching no namespace are left alone.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::codec::{self, Argv};
use crate::command::{parse_i64, CommandSpec, TtlArgs};

use super::naming::show;
use super::stage::{refused, Flow, Stage, StageCx};
use super::{NsId, Plan, Policy, PolicyAction, Refusal, Rule, Scratch};

/// Longest TTL a namespace may configure; keeps every computation far from overflow.
pub const MAX_TTL_MS: u64 = 3650 * 86_400_000;

/// `on_violation`: what to do with an expiry outside the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnViolation {
    /// Lower it to the maximum, or raise it to the minimum.
    Clamp,
    /// Refuse the command.
    Reject,
}

/// A namespace's TTL bounds.
#[derive(Clone, Debug)]
pub struct TtlRule {
    pub default_ms: u64,
    /// 0 when there is no minimum.
    pub min_ms: u64,
    /// `u64::MAX` when there is no maximum.
    pub max_ms: u64,
    pub on_violation: OnViolation,
    /// `EXPIRE` or `PEXPIRE`, whichever states the default exactly.
    expire_cmd: &'static [u8],
    /// `EX` or `PX`, likewise.
    set_option: &'static [u8],
    /// The default in that unit.
    default_arg: Bytes,
}

impl TtlRule {
    pub fn new(
        default_ms: u64,
        min_ms: Option<u64>,
        max_ms: Option<u64>,
        on_violation: OnViolation,
    ) -> Self {
        let whole_seconds = default_ms % 1000 == 0;
        let (expire_cmd, set_option, amount): (&'static [u8], &'static [u8], u64) = if whole_seconds
        {
            (b"EXPIRE", b"EX", default_ms / 1000)
        } else {
            (b"PEXPIRE", b"PX", default_ms)
        };
        TtlRule {
            default_ms,
            min_ms: min_ms.unwrap_or(0),
            max_ms: max_ms.unwrap_or(u64::MAX),
            on_violation,
            expire_cmd,
            set_option,
            default_arg: int_bytes(i64::try_from(amount).unwrap_or(i64::MAX)),
        }
    }

    /// The bounds for messages: `15m to 30m`, `at most 2h`, `at least 5m`.
    pub fn range(&self) -> String {
        match (self.min_ms, self.max_ms) {
            (0, u64::MAX) => "any positive expiry".into(),
            (0, max) => format!("at most {}", fmt_ms(max)),
            (min, u64::MAX) => format!("at least {}", fmt_ms(min)),
            (min, max) => format!("{} to {}", fmt_ms(min), fmt_ms(max)),
        }
    }

    /// `EXPIRE key <default> NX` (or `PEXPIRE`).
    fn expire_nx(&self, key: &[u8]) -> Vec<Bytes> {
        vec![
            Bytes::from_static(self.expire_cmd),
            Bytes::copy_from_slice(key),
            self.default_arg.clone(),
            Bytes::from_static(b"NX"),
        ]
    }
}

/// `PEXPIRE key ms LT|GT`: moves an existing expiry into bounds without touching one inside.
fn pexpire(key: &[u8], ms: u64, option: &'static [u8]) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"PEXPIRE"),
        Bytes::copy_from_slice(key),
        int_bytes(i64::try_from(ms).unwrap_or(i64::MAX)),
        Bytes::from_static(option),
    ]
}

/// Formats milliseconds in the largest unit that states them exactly: `2h`, `90m`, `1500ms`.
pub fn fmt_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    for (size, name) in UNITS {
        if ms >= size && ms % size == 0 {
            return format!("{}{name}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// The current unix time in milliseconds, read once per command and only when needed.
#[derive(Debug, Default)]
pub struct Clock {
    now: Option<i64>,
}

impl Clock {
    /// A clock stopped at `ms`, for tests.
    pub fn fixed(ms: i64) -> Self {
        Clock { now: Some(ms) }
    }

    fn now(&mut self) -> i64 {
        *self.now.get_or_insert_with(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0)
        })
    }
}

/// How an expiry argument is expressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Secs,
    Millis,
    UnixSecs,
    UnixMillis,
}

impl Unit {
    fn absolute(self) -> bool {
        matches!(self, Unit::UnixSecs | Unit::UnixMillis)
    }

    /// The remaining time to live in milliseconds.
    fn ttl_ms(self, v: i64, now: i64) -> i64 {
        match self {
            Unit::Secs => v.saturating_mul(1000),
            Unit::Millis => v,
            Unit::UnixSecs => v.saturating_mul(1000).saturating_sub(now),
            Unit::UnixMillis => v.saturating_sub(now),
        }
    }

    /// `target_ms` from now, expressed exactly: in this unit if it can be, else in ms.
    fn encode(self, target_ms: i64, now: i64) -> (i64, Unit) {
        match self {
            Unit::Secs if target_ms % 1000 == 0 => (target_ms / 1000, Unit::Secs),
            Unit::Secs | Unit::Millis => (target_ms, Unit::Millis),
            Unit::UnixSecs | Unit::UnixMillis => (now.saturating_add(target_ms), Unit::UnixMillis),
        }
    }
}

/// The millisecond form of a seconds option or command name.
fn millis_form(token: &[u8]) -> Option<&'static [u8]> {
    const FORMS: [(&[u8], &[u8]); 5] = [
        (b"EX", b"PX"),
        (b"EXAT", b"PXAT"),
        (b"EXPIRE", b"PEXPIRE"),
        (b"EXPIREAT", b"PEXPIREAT"),
        (b"SETEX", b"PSETEX"),
    ];
    FORMS
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(token))
        .map(|(_, m)| *m)
}

/// The unit an expiry option (`EX`, `PX`, `EXAT`, `PXAT`) names.
fn expiry_option(token: &[u8]) -> Option<Unit> {
    if token.eq_ignore_ascii_case(b"EX") {
        Some(Unit::Secs)
    } else if token.eq_ignore_ascii_case(b"PX") {
        Some(Unit::Millis)
    } else if token.eq_ignore_ascii_case(b"EXAT") {
        Some(Unit::UnixSecs)
    } else if token.eq_ignore_ascii_case(b"PXAT") {
        Some(Unit::UnixMillis)
    } else {
        None
    }
}

fn int_bytes(v: i64) -> Bytes {
    let mut b = [0u8; 20];
    Bytes::copy_from_slice(codec::fmt_int(&mut b, v))
}

/// The single key of a TTL-bearing command and its namespace's rule, if it has one.
struct Target<'a> {
    ns: NsId,
    rule: &'a TtlRule,
    key: &'a [u8],
}

fn target<'a>(policy: &'a Policy, argv: &Argv<'a>, scratch: &Scratch) -> Option<Target<'a>> {
    let k = scratch.keys.first()?;
    let ns = *scratch.key_ns.first()?;
    let rule = policy.namespace(ns)?.ttl.as_ref()?;
    Some(Target {
        ns,
        rule,
        key: argv.get(k.index)?,
    })
}

fn malformed(ns: NsId, message: String) -> Flow {
    refused(Refusal {
        rule: Rule::Malformed,
        namespace: ns,
        message,
    })
}

/// Stage 4: defaults, bounds and appended expiries, per the command's TTL arguments.
pub struct Ttl;

impl Stage for Ttl {
    fn check(&self, cx: &mut StageCx<'_, '_>) -> Flow {
        check(cx.policy, cx.spec, cx.argv, cx.scratch, cx.plan, cx.clock)
    }
}

fn check(
    policy: &Policy,
    spec: &'static CommandSpec,
    argv: &Argv<'_>,
    scratch: &mut Scratch,
    plan: &mut Plan,
    clock: &mut Clock,
) -> Flow {
    let mut cx = Cx {
        policy,
        argv,
        scratch,
        plan,
        clock,
    };
    match spec.ttl {
        TtlArgs::None => {
            if spec.traits().other_db_option {
                if let Some(stop) = cx.copy_to_other_db() {
                    return stop;
                }
            }
            cx.append_expiries(spec);
            Flow::Continue(())
        }
        TtlArgs::SetOptions => cx.set(),
        TtlArgs::GetExOptions => cx.getex(),
        TtlArgs::Seconds(i) => cx.argument(0, usize::from(i), Unit::Secs),
        TtlArgs::Millis(i) => cx.argument(0, usize::from(i), Unit::Millis),
        TtlArgs::UnixSeconds(i) => cx.argument(0, usize::from(i), Unit::UnixSecs),
        TtlArgs::UnixMillis(i) => cx.argument(0, usize::from(i), Unit::UnixMillis),
        TtlArgs::Restore => cx.restore(),
        TtlArgs::Persist => cx.persist("PERSIST"),
    }
}

struct Cx<'c, 'a> {
    policy: &'a Policy,
    argv: &'c Argv<'a>,
    scratch: &'c mut Scratch,
    plan: &'c mut Plan,
    clock: &'c mut Clock,
}

impl<'a> Cx<'_, 'a> {
    fn ns_name(&self, ns: NsId) -> &'a str {
        self.policy.namespace_label(ns)
    }

    /// `COPY ... DB n` writes a key in another database, where an appended EXPIRE (which runs
    /// in the client's database) cannot reach it: refused when the destination has a TTL rule.
    fn copy_to_other_db(&mut self) -> Option<Flow> {
        let other_db = (3..self.argv.len())
            .filter_map(|i| self.argv.get(i))
            .any(|a| a.eq_ignore_ascii_case(b"DB"));
        if !other_db {
            return None;
        }
        let dst_ns = self.scratch.key_ns.get(1).copied()?;
        self.policy.namespace(dst_ns).and_then(|n| n.ttl.as_ref())?;
        Some(refused(Refusal {
            rule: Rule::Ttl,
            namespace: dst_ns,
            message: format!(
                "COPY ... DB is not allowed for {} keys: their TTL cannot be enforced in another database (COPY within this database, or SELECT it first)",
                self.ns_name(dst_ns)
            ),
        }))
    }

    /// `EXPIRE key ttl NX` after every key the command may create, once per key. Keys that
    /// inherit an expiry from their source (`RENAME`, `RENAMENX`, `COPY`) are also brought
    /// into their namespace's bounds: `PEXPIRE key max LT` and `PEXPIRE key min GT`.
    fn append_expiries(&mut self, spec: &CommandSpec) {
        let inherits = spec.traits().inherits_expiry;
        let Scratch {
            keys,
            key_ns,
            actions,
            ..
        } = &mut *self.scratch;
        for (k, ns) in keys.iter().zip(key_ns.iter()) {
            if !spec.creates_key(*k) {
                continue;
            }
            let Some(rule) = self.policy.namespace(*ns).and_then(|n| n.ttl.as_ref()) else {
                continue;
            };
            let key = self.argv.get(k.index).unwrap_or_default();
            // MSET k 1 k 2 needs one EXPIRE; past a few dozen keys the check costs more than
            // the duplicate command would.
            let appended = self.plan.appended();
            if appended.len() <= 64
                && appended
                    .iter()
                    .any(|c| c.get(1).is_some_and(|b| b.as_ref() == key))
            {
                continue;
            }
            self.plan.append(rule.expire_nx(key));
            actions.push((*ns, PolicyAction::TtlAppended));
            if inherits {
                if rule.max_ms != u64::MAX {
                    self.plan.append(pexpire(key, rule.max_ms, b"LT"));
                }
                if rule.min_ms > 0 {
                    self.plan.append(pexpire(key, rule.min_ms, b"GT"));
                }
            }
        }
    }

    /// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL].
    fn set(&mut self) -> Flow {
        let Some(t) = target(self.policy, self.argv, self.scratch) else {
            return Flow::Continue(());
        };
        let mut expiry = None;
        let mut keepttl = false;
        let mut i = 3;
        while let Some(a) = self.argv.get(i) {
            if a.eq_ignore_ascii_case(b"NX")
                || a.eq_ignore_ascii_case(b"XX")
                || a.eq_ignore_ascii_case(b"GET")
            {
                i += 1;
            } else if a.eq_ignore_ascii_case(b"KEEPTTL") && expiry.is_none() {
                keepttl = true;
                i += 1;
            } else if let Some(unit) = expiry_option(a).filter(|_| expiry.is_none() && !keepttl) {
                if i + 1 >= self.argv.len() {
                    return malformed(t.ns, format!("SET option {} needs a value", show(a)));
                }
                expiry = Some((i, unit));
                i += 2;
            } else {
                return malformed(
                    t.ns,
                    format!(
                        "SET option {} is not valid here: give at most one of EX, PX, EXAT, PXAT or KEEPTTL, plus NX, XX or GET",
                        show(a)
                    ),
                );
            }
        }
        match expiry {
            Some((at, unit)) => self.expiry(&t, at, at + 1, unit),
            None if keepttl => {
                // KEEPTTL keeps an existing expiry; a new key (or one without) gets the default.
                self.plan.append(t.rule.expire_nx(t.key));
                self.scratch.actions.push((t.ns, PolicyAction::TtlAppended));
                Flow::Continue(())
            }
            None => {
                // The most common rewrite: appended, so the client's bytes are kept as they are.
                self.plan.push_tail(Bytes::from_static(t.rule.set_option));
                self.plan.push_tail(t.rule.default_arg.clone());
                self.scratch.actions.push((t.ns, PolicyAction::TtlDefault));
                Flow::Continue(())
            }
        }
    }

    /// GETEX key [EX s|PX ms|EXAT t|PXAT t|PERSIST].
    fn getex(&mut self) -> Flow {
        let Some(t) = target(self.policy, self.argv, self.scratch) else {
            return Flow::Continue(());
        };
        match (self.argv.get(2), self.argv.len()) {
            (None, _) => Flow::Continue(()),
            (Some(a), 3) if a.eq_ignore_ascii_case(b"PERSIST") => self.persist("GETEX ... PERSIST"),
            (Some(a), 4) if expiry_option(a).is_some() => {
                let unit = expiry_option(a).unwrap_or(Unit::Secs);
                self.expiry(&t, 2, 3, unit)
            }
            (Some(a), _) => malformed(
                t.ns,
                format!(
                    "GETEX option {} is not valid here: give one of EX, PX, EXAT or PXAT with a value",
                    show(a)
                ),
            ),
        }
    }

    /// SETEX, PSETEX, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: the expiry at `value_at`.
    fn argument(&mut self, name_at: usize, value_at: usize, unit: Unit) -> Flow {
        match target(self.policy, self.argv, self.scratch) {
            Some(t) => self.expiry(&t, name_at, value_at, unit),
            None => Flow::Continue(()),
        }
    }

    /// RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f].
    fn restore(&mut self) -> Flow {
        let Some(t) = target(self.policy, self.argv, self.scratch) else {
            return Flow::Continue(());
        };
        let mut absolute = false;
        let mut i = 4;
        while let Some(a) = self.argv.get(i) {
            if a.eq_ignore_ascii_case(b"REPLACE") {
                i += 1;
            } else if a.eq_ignore_ascii_case(b"ABSTTL") {
                absolute = true;
                i += 1;
            } else if (a.eq_ignore_ascii_case(b"IDLETIME") || a.eq_ignore_ascii_case(b"FREQ"))
                && i + 1 < self.argv.len()
            {
                i += 2;
            } else {
                return malformed(
                    t.ns,
                    format!("RESTORE option {} is not valid here", show(a)),
                );
            }
        }
        let unit = if absolute {
            Unit::UnixMillis
        } else {
            Unit::Millis
        };
        let raw = self.argv.get(2).unwrap_or_default();
        if parse_i64(raw) == Some(0) {
            // 0 means "no expiry": give the default.
            let default = i64::try_from(t.rule.default_ms).unwrap_or(i64::MAX);
            let value = if absolute {
                self.clock.now().saturating_add(default)
            } else {
                default
            };
            self.plan.args(self.argv)[2] = int_bytes(value);
            self.scratch.actions.push((t.ns, PolicyAction::TtlDefault));
            return Flow::Continue(());
        }
        self.expiry(&t, 2, 2, unit)
    }

    fn persist(&mut self, what: &str) -> Flow {
        let Some(t) = target(self.policy, self.argv, self.scratch) else {
            return Flow::Continue(());
        };
        refused(Refusal {
            rule: Rule::Persist,
            namespace: t.ns,
            message: format!(
                "{what} would remove the expiry of key {}, but keys of namespace {} must expire ({}): set a new expiry with EXPIRE instead",
                show(t.key),
                self.ns_name(t.ns),
                t.rule.range()
            ),
        })
    }

    /// Checks the expiry at `value_at` (written in `unit`, named by the token at `name_at`)
    /// against the bounds; clamps it in place or refuses the command.
    fn expiry(&mut self, t: &Target<'_>, name_at: usize, value_at: usize, unit: Unit) -> Flow {
        let raw = self.argv.get(value_at).unwrap_or_default();
        let Some(v) = parse_i64(raw) else {
            return malformed(t.ns, format!("expiry {} is not an integer", show(raw)));
        };
        let now = if unit.absolute() { self.clock.now() } else { 0 };
        let ttl = unit.ttl_ms(v, now);
        if ttl <= 0 {
            return Flow::Continue(());
        }
        let ttl_u = ttl.unsigned_abs();
        let (bound, action, word) = if ttl_u > t.rule.max_ms {
            (t.rule.max_ms, PolicyAction::TtlLowered, "above the maximum")
        } else if ttl_u < t.rule.min_ms {
            (t.rule.min_ms, PolicyAction::TtlRaised, "below the minimum")
        } else {
            return Flow::Continue(());
        };
        if t.rule.on_violation == OnViolation::Reject {
            let advice = match action {
                PolicyAction::TtlLowered => format!("use at most {}", fmt_ms(t.rule.max_ms)),
                _ => format!("use at least {}", fmt_ms(t.rule.min_ms)),
            };
            return refused(Refusal {
                rule: Rule::Ttl,
                namespace: t.ns,
                message: format!(
                    "expiry of {} for key {} is {word} of namespace {} ({}): {advice}",
                    fmt_ms(ttl_u),
                    show(t.key),
                    self.ns_name(t.ns),
                    t.rule.range()
                ),
            });
        }
        let (value, new_unit) = unit.encode(i64::try_from(bound).unwrap_or(i64::MAX), now);
        let rename = (new_unit != unit)
            .then(|| self.argv.get(name_at).and_then(millis_form))
            .flatten();
        let args = self.plan.args(self.argv);
        args[value_at] = int_bytes(value);
        if let Some(name) = rename {
            args[name_at] = Bytes::from_static(name);
        }
        self.scratch.actions.push((t.ns, action));
        Flow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_in_their_largest_exact_unit() {
        assert_eq!(fmt_ms(3_600_000), "1h");
        assert_eq!(fmt_ms(5_400_000), "90m");
        assert_eq!(fmt_ms(1500), "1500ms");
        assert_eq!(fmt_ms(7 * 86_400_000), "7d");
        assert_eq!(fmt_ms(45_000), "45s");
        assert_eq!(fmt_ms(0), "0ms");
    }

    #[test]
    fn parses_integers_like_redis() {
        assert_eq!(parse_i64(b"10"), Some(10));
        assert_eq!(parse_i64(b"-5"), Some(-5));
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b"01"), None);
        assert_eq!(parse_i64(b"-0"), None);
        assert_eq!(parse_i64(b" 1"), None);
        assert_eq!(parse_i64(b""), None);
    }

    #[test]
    fn units_convert_and_stay_exact() {
        let now = 1_700_000_000_000;
        assert_eq!(Unit::Secs.ttl_ms(10, now), 10_000);
        assert_eq!(Unit::UnixSecs.ttl_ms(1_700_000_010, now), 10_000);
        assert_eq!(Unit::UnixMillis.ttl_ms(now - 1, now), -1);
        assert_eq!(Unit::Secs.ttl_ms(i64::MAX, now), i64::MAX);
        assert_eq!(Unit::Secs.encode(60_000, now), (60, Unit::Secs));
        assert_eq!(Unit::Secs.encode(1500, now), (1500, Unit::Millis));
        assert_eq!(
            Unit::UnixSecs.encode(60_000, now),
            (now + 60_000, Unit::UnixMillis)
        );
        assert_eq!(millis_form(b"ex"), Some(b"PX".as_slice()));
        assert_eq!(millis_form(b"SetEx"), Some(b"PSETEX".as_slice()));
        assert_eq!(millis_form(b"GET"), None);
    }

    #[test]
    fn rule_defaults_use_the_exact_unit() {
        let r = TtlRule::new(
            1_800_000,
            Some(900_000),
            Some(1_800_000),
            OnViolation::Clamp,
        );
        assert_eq!(r.expire_nx(b"k")[0].as_ref(), b"EXPIRE");
        assert_eq!(r.expire_nx(b"k")[2].as_ref(), b"1800");
        assert_eq!(r.range(), "15m to 30m");
        let r = TtlRule::new(1500, None, None, OnViolation::Clamp);
        assert_eq!(r.expire_nx(b"k")[0].as_ref(), b"PEXPIRE");
        assert_eq!(r.set_option, b"PX");
        assert_eq!(r.range(), "any positive expiry");
    }
}
