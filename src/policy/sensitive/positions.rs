//! Where each command carries its values ([`crate::command::traits::Values`]), and what the
//! stage does to them: a rewritten command, a local answer, or a refusal.

use bytes::Bytes;

use super::{is_separator, json, FieldId, Finding, SensitiveAction, SensitiveRules};
use crate::codec::Argv;
use crate::command::traits::{HashEmpty, Values};
use crate::command::CommandSpec;

// ---------------------------------------------------------------------------------------------
// The stage

/// What the stage decided for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutcome {
    /// Forward the command as sent (nothing found, or only `audit` findings).
    Unchanged,
    /// Forward this argv instead (command name included).
    Rewrite(Vec<Bytes>),
    /// Answer the client with this complete RESP reply; nothing reaches Redis.
    Respond(Bytes),
    /// Refuse the command with this error text (starting with `POLICY `); nothing reaches
    /// Redis.
    Reject(String),
}

/// A finding of [`apply`], with what the metric labels need.
#[derive(Debug, Clone, Copy)]
pub struct StageFinding<'r> {
    /// Argv index of the key (or PUBLISH channel) whose rules applied.
    pub arg: usize,
    /// Those rules: they give the action and, with `finding.field`, the label.
    pub rules: &'r SensitiveRules,
    pub finding: Finding,
}

impl<'r> StageFinding<'r> {
    /// The configured field name or detector name: the metric `field` label.
    pub fn label(&self) -> &'r str {
        self.rules
            .field_names()
            .get(usize::from(self.finding.field))
            .map_or("", String::as_str)
    }

    pub fn action(&self) -> SensitiveAction {
        self.rules.action()
    }
}

pub(super) const REPLY_ZERO: &[u8] = b":0\r\n";
pub(super) const REPLY_OK: &[u8] = b"+OK\r\n";

/// A key or channel for an error message: printable ASCII as is, other bytes as `\xHH`, at
/// most 200 bytes, so a binary key cannot break the one-line RESP error.
pub(super) fn shown(key: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for &b in key.iter().take(200) {
        if (b' '..=b'~').contains(&b) && b != b'\\' {
            s.push(char::from(b));
        } else {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    if key.len() > 200 {
        s.push_str("...");
    }
    s
}

/// Where a value goes, for messages.
#[derive(Clone, Copy)]
pub(super) enum Target {
    Key,
    Channel,
}

/// One command's scan state.
pub(super) struct Stage<'a, 'v, 'r> {
    pub(super) argv: &'a Argv<'v>,
    pub(super) rules_for_key: &'a dyn Fn(&[u8]) -> &'r SensitiveRules,
    pub(super) findings: &'a mut Vec<StageFinding<'r>>,
    /// Index of this command's first entry in `findings`.
    pub(super) first: usize,
    /// Changed arguments in increasing index order: a replacement, or `None` to drop it.
    pub(super) changes: Vec<(usize, Option<Bytes>)>,
    /// Per-value findings, reused.
    pub(super) tmp: Vec<Finding>,
}

impl<'r> Stage<'_, '_, 'r> {
    pub(super) fn rules(&self, key: usize) -> Option<&'r SensitiveRules> {
        let rules = (self.rules_for_key)(self.argv.get(key)?);
        rules.is_active().then_some(rules)
    }

    /// Records a finding for the key at `arg`, once per command and key.
    pub(super) fn record(&mut self, arg: usize, rules: &'r SensitiveRules, finding: Finding) {
        let seen = self.findings[self.first..]
            .iter()
            .rev()
            .take_while(|f| f.arg == arg)
            .any(|f| f.finding == finding);
        if !seen {
            self.findings.push(StageFinding {
                arg,
                rules,
                finding,
            });
        }
    }

    pub(super) fn reject(
        &self,
        arg: usize,
        rules: &SensitiveRules,
        f: Finding,
        target: Target,
    ) -> String {
        let what = match f.detector {
            Some(d) => d.describe().to_string(),
            None => format!(
                "sensitive field {:?}",
                rules
                    .field_names()
                    .get(usize::from(f.field))
                    .map_or("", String::as_str)
            ),
        };
        let name = shown(self.argv.get(arg).unwrap_or_default());
        match target {
            Target::Key => format!("POLICY value for {name} contains {what}"),
            Target::Channel => format!("POLICY message for channel {name} contains {what}"),
        }
    }

    /// Scans the value at `at`, stored under the key (or channel) at `key`.
    pub(super) fn value(
        &mut self,
        key: usize,
        at: usize,
        rules: &'r SensitiveRules,
        json: bool,
        target: Target,
    ) -> Result<(), String> {
        let Some(value) = self.argv.get(at) else {
            return Ok(());
        };
        self.tmp.clear();
        let mut tmp = std::mem::take(&mut self.tmp);
        let mut too_deep = false;
        let out = rules.scan(value, json, &mut tmp, &mut too_deep);
        if too_deep && rules.refuses_uninspectable() {
            self.tmp = tmp;
            let name = shown(self.argv.get(key).unwrap_or_default());
            return Err(match target {
                Target::Key => format!(
                    "POLICY value for {name} is JSON nested deeper than {} levels, which respguard cannot inspect for sensitive data; refused because the key's namespace has sensitive rules",
                    json::MAX_DEPTH
                ),
                Target::Channel => format!(
                    "POLICY message for channel {name} is JSON nested deeper than {} levels, which respguard cannot inspect for sensitive data",
                    json::MAX_DEPTH
                ),
            });
        }
        for &f in &tmp {
            self.record(key, rules, f);
        }
        let first = tmp.first().copied();
        self.tmp = tmp;
        match (rules.action(), first) {
            (SensitiveAction::Reject, Some(f)) => Err(self.reject(key, rules, f, target)),
            _ => {
                if let Some(new) = out {
                    self.changes.push((at, Some(new)));
                }
                Ok(())
            }
        }
    }

    /// Field/value pairs from `from` to the end (HSET, HMSET, HSETNX, XADD); returns how many
    /// pairs remain after stripping sensitive field names.
    pub(super) fn pairs(
        &mut self,
        key: usize,
        from: usize,
        rules: &'r SensitiveRules,
    ) -> Result<usize, String> {
        let mut kept = 0;
        for f in (from..self.argv.len()).step_by(2) {
            let name = self.argv.get(f).unwrap_or_default();
            if let Some(field) = rules.is_sensitive_field(name) {
                let finding = Finding {
                    field,
                    detector: None,
                };
                self.record(key, rules, finding);
                match rules.action() {
                    SensitiveAction::Reject => {
                        return Err(self.reject(key, rules, finding, Target::Key))
                    }
                    SensitiveAction::Strip => {
                        self.changes.push((f, None));
                        self.changes.push((f + 1, None));
                        continue;
                    }
                    SensitiveAction::Audit => {}
                }
            }
            self.value(key, f + 1, rules, false, Target::Key)?;
            kept += 1;
        }
        Ok(kept)
    }

    /// `RESTORE key ttl payload ...`: the string a DUMP payload holds is scanned like a
    /// written value. A finding refuses the command, whatever the action but audit: a value
    /// inside a payload cannot be stripped without re-encoding it. A payload that cannot be
    /// decoded is refused, since it cannot be inspected.
    pub(super) fn restore(&mut self, rules: &'r SensitiveRules) -> Result<(), String> {
        let audit = !rules.refuses_uninspectable();
        let name = shown(self.argv.get(1).unwrap_or_default());
        let value = match super::super::dump::string_value(self.argv.get(3).unwrap_or_default()) {
            Ok(v) => v,
            Err(_) if audit => return Ok(()),
            Err(why) => {
                return Err(format!(
                    "POLICY the RESTORE payload for {name} cannot be inspected: {why}; refused because the key's namespace has sensitive rules"
                ))
            }
        };
        self.tmp.clear();
        let mut tmp = std::mem::take(&mut self.tmp);
        let mut too_deep = false;
        rules.scan(&value, false, &mut tmp, &mut too_deep);
        for &f in &tmp {
            self.record(1, rules, f);
        }
        let first = tmp.first().copied();
        self.tmp = tmp;
        if audit {
            return Ok(());
        }
        if too_deep {
            return Err(format!(
                "POLICY the RESTORE payload for {name} holds JSON nested deeper than {} levels, which respguard cannot inspect; refused because the key's namespace has sensitive rules",
                json::MAX_DEPTH
            ));
        }
        match first {
            Some(f) => Err(format!(
                "{} (in a RESTORE payload, which respguard cannot rewrite)",
                self.reject(1, rules, f, Target::Key)
            )),
            None => Ok(()),
        }
    }

    pub(super) fn finish(self) -> StageOutcome {
        if self.changes.is_empty() {
            return StageOutcome::Unchanged;
        }
        let mut out = Vec::with_capacity(self.argv.len());
        let mut changes = self.changes.into_iter().peekable();
        for (i, arg) in self.argv.iter().enumerate() {
            match changes.next_if(|(at, _)| *at == i) {
                Some((_, Some(new))) => out.push(new),
                Some((_, None)) => {}
                None => out.push(Bytes::copy_from_slice(arg)),
            }
        }
        StageOutcome::Rewrite(out)
    }
}

pub(super) fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Argv index of the first field of `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] thr
/// [LIMIT n]] id|* field value ...`, parsed like Redis's `streamParseAddOrTrimArgsOrReply`
/// (options in any order, the first other argument is the ID).
pub(super) fn xadd_fields(argv: &Argv<'_>) -> Option<usize> {
    let argc = argv.len();
    let mut i = 2;
    loop {
        let opt = argv.get(i)?;
        let more = argc - 1 - i;
        if opt == b"*" {
            return Some(i + 1);
        } else if (eq(opt, "MAXLEN") || eq(opt, "MINID")) && more > 0 {
            if more >= 2 && matches!(argv.get(i + 1), Some(b"~" | b"=")) {
                i += 1;
            }
            i += 2;
        } else if eq(opt, "LIMIT") && more > 0 {
            i += 2;
        } else if eq(opt, "NOMKSTREAM") {
            i += 1;
        } else {
            return Some(i + 1);
        }
    }
}

/// The configured field a RedisJSON path writes under (`$.password`, `$['credit-card']`,
/// `.user.ssn`, `$..token`), if any. Names inside filter expressions `?(...)` are conditions,
/// not destinations, and are skipped.
pub(super) fn json_path_field(rules: &SensitiveRules, path: &[u8]) -> Option<FieldId> {
    let mut i = 0;
    let mut parens = 0usize;
    while i < path.len() {
        let c = path[i];
        match c {
            b'(' => parens += 1,
            b')' => parens = parens.saturating_sub(1),
            b'\'' | b'"' => {
                // A quoted name: up to the next unescaped matching quote.
                let mut j = i + 1;
                while j < path.len() && path[j] != c {
                    j += if path[j] == b'\\' { 2 } else { 1 };
                }
                let name = path.get(i + 1..j.min(path.len())).unwrap_or_default();
                if parens == 0 {
                    let escaped = memchr::memchr(b'\\', name).is_some();
                    if let Some(f) = rules.lookup(name, escaped) {
                        return Some(f);
                    }
                }
                i = j + 1;
                continue;
            }
            _ => {}
        }
        if c.is_ascii_alphanumeric() || is_separator(c) || !c.is_ascii() {
            let start = i;
            while i < path.len()
                && (path[i].is_ascii_alphanumeric() || is_separator(path[i]) || !path[i].is_ascii())
            {
                i += 1;
            }
            if parens == 0 {
                if let Some(f) = rules.is_sensitive_field(&path[start..i]) {
                    return Some(f);
                }
            }
            continue;
        }
        i += 1;
    }
    None
}

/// Applies the stage to one command named by its table name (`"HSET"`, `"JSON.SET"`): see
/// [`apply_row`]. A name the table does not know carries no value the stage can locate.
pub fn apply<'r>(
    argv: &Argv<'_>,
    command: &str,
    rules_for_key: &dyn Fn(&[u8]) -> &'r SensitiveRules,
    findings: &mut Vec<StageFinding<'r>>,
) -> StageOutcome {
    match crate::command::lookup_name(command.as_bytes()) {
        Some(spec) => apply_row(argv, spec, rules_for_key, findings),
        None => StageOutcome::Unchanged,
    }
}

/// Applies the stage to one command of row `spec`, at the value positions its
/// [`Traits::values`](crate::command::Traits::values) names; `rules_for_key` returns the rules of a key's namespace (or the
/// default; inactive rules skip the key). Findings are appended to `findings`, at most once
/// per key, field and detector; on `Reject` they stop at the refusing value.
///
/// Commands whose shape Redis would refuse (wrong arity, unbalanced pairs) are left
/// `Unchanged`: Redis rejects them without storing anything, with its own error.
pub fn apply_row<'r>(
    argv: &Argv<'_>,
    spec: &CommandSpec,
    rules_for_key: &dyn Fn(&[u8]) -> &'r SensitiveRules,
    findings: &mut Vec<StageFinding<'r>>,
) -> StageOutcome {
    let first = findings.len();
    let mut st = Stage {
        argv,
        rules_for_key,
        findings,
        first,
        changes: Vec::new(),
        tmp: Vec::new(),
    };
    match dispatch(&mut st, spec.name, spec.traits().values) {
        Err(message) => StageOutcome::Reject(message),
        Ok(Some(outcome)) => outcome,
        Ok(None) => st.finish(),
    }
}

/// Runs the command's value positions through `st`. `Ok(Some)` is a final answer, `Ok(None)`
/// means "whatever `st` collected", `Err` a rejection message.
pub(super) fn dispatch<'r>(
    st: &mut Stage<'_, '_, 'r>,
    command: &str,
    values: Values,
) -> Result<Option<StageOutcome>, String> {
    let argc = st.argv.len();
    match values {
        Values::None => {}
        Values::Single { value, argc: want } if want.admits(argc) => {
            if let Some(rules) = st.rules(1) {
                st.value(1, usize::from(value), rules, false, Target::Key)?;
            }
        }
        Values::KeyValuePairs if argc >= 3 && argc % 2 == 1 => {
            for k in (1..argc).step_by(2) {
                if let Some(rules) = st.rules(k) {
                    st.value(k, k + 1, rules, false, Target::Key)?;
                }
            }
        }
        Values::Elements if argc >= 3 => {
            if let Some(rules) = st.rules(1) {
                for v in 2..argc {
                    st.value(1, v, rules, false, Target::Key)?;
                }
            }
        }
        Values::HashFields { empty, single_pair }
            if argc >= 4 && argc % 2 == 0 && (!single_pair || argc == 4) =>
        {
            if let Some(rules) = st.rules(1) {
                if st.pairs(1, 2, rules)? == 0 {
                    // What Redis replies for writing zero fields; the key is not created.
                    let reply = match empty {
                        HashEmpty::Ok => REPLY_OK,
                        HashEmpty::Zero => REPLY_ZERO,
                    };
                    return Ok(Some(StageOutcome::Respond(Bytes::from_static(reply))));
                }
            }
        }
        Values::SortedSetMembers if argc >= 4 => {
            let mut i = 2;
            while st.argv.get(i).is_some_and(|a| {
                ["NX", "XX", "GT", "LT", "CH", "INCR"]
                    .iter()
                    .any(|o| eq(a, o))
            }) {
                i += 1;
            }
            let elements = argc - i;
            if elements > 0 && elements % 2 == 0 {
                if let Some(rules) = st.rules(1) {
                    for m in (i + 1..argc).step_by(2) {
                        st.value(1, m, rules, false, Target::Key)?;
                    }
                }
            }
        }
        Values::StreamFields => {
            let Some(from) = xadd_fields(st.argv) else {
                return Ok(None);
            };
            let n = argc.saturating_sub(from);
            if n >= 2 && n % 2 == 0 {
                if let Some(rules) = st.rules(1) {
                    if st.pairs(1, from, rules)? == 0 {
                        return Err(format!(
                            "POLICY every field of the entry for {} is sensitive, and Redis \
                             cannot store an empty stream entry",
                            shown(st.argv.get(1).unwrap_or_default())
                        ));
                    }
                }
            }
        }
        Values::Message if argc == 3 => {
            if let Some(rules) = st.rules(1) {
                if rules.publish() {
                    st.value(1, 2, rules, false, Target::Channel)?;
                }
            }
        }
        Values::GeoMembers if argc >= 5 => {
            let mut i = 2;
            while st
                .argv
                .get(i)
                .is_some_and(|a| ["NX", "XX", "CH"].iter().any(|o| eq(a, o)))
            {
                i += 1;
            }
            let elements = argc - i;
            if elements > 0 && elements % 3 == 0 {
                if let Some(rules) = st.rules(1) {
                    for m in (i + 2..argc).step_by(3) {
                        st.value(1, m, rules, false, Target::Key)?;
                    }
                }
            }
        }
        Values::PartialString { bitfield } => {
            let writes = !bitfield
                || (2..argc).any(|i| {
                    st.argv
                        .get(i)
                        .is_some_and(|a| eq(a, "SET") || eq(a, "INCRBY"))
                });
            if let Some(rules) = st.rules(1).filter(|_| writes) {
                if rules.refuses_uninspectable() {
                    return Err(format!(
                        "POLICY {command} changes part of the value of {}, and respguard cannot see the value that would result; refused because the key's namespace has sensitive rules: write whole values (SET) there",
                        shown(st.argv.get(1).unwrap_or_default())
                    ));
                }
            }
        }
        Values::UninspectedJson { per_triple } => {
            // Values written under paths respguard does not resolve (or, for MSET, under
            // several keys): only JSON.SET is inspected.
            for k in (1..argc).step_by(if per_triple { 3 } else { argc }) {
                if st.rules(k).is_some_and(|r| r.refuses_uninspectable()) {
                    return Err(format!(
                        "POLICY {command} writes into the document at {} in a way respguard does not inspect; refused because the key's namespace has sensitive rules: write the document with JSON.SET there",
                        shown(st.argv.get(k).unwrap_or_default())
                    ));
                }
            }
        }
        Values::Restore if argc >= 4 => {
            if let Some(rules) = st.rules(1) {
                st.restore(rules)?;
            }
        }
        Values::JsonDocument if argc >= 4 => {
            if let Some(rules) = st.rules(1) {
                let path = st.argv.get(2).unwrap_or_default();
                if let Some(field) = json_path_field(rules, path) {
                    let finding = Finding {
                        field,
                        detector: None,
                    };
                    st.record(1, rules, finding);
                    match rules.action() {
                        SensitiveAction::Reject => {
                            return Err(st.reject(1, rules, finding, Target::Key))
                        }
                        // Stripping the field strips the whole write: it becomes a
                        // no-op, which JSON.SET acknowledges with OK.
                        SensitiveAction::Strip => {
                            return Ok(Some(StageOutcome::Respond(Bytes::from_static(REPLY_OK))))
                        }
                        SensitiveAction::Audit => {}
                    }
                }
                st.value(1, 3, rules, true, Target::Key)?;
            }
        }
        _ => {}
    }
    Ok(None)
}
