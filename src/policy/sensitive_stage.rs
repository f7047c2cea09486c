//! The sensitive-data stage (the third) wired into the policy: which [`SensitiveRules`] apply
//! to which key, and what the stage's findings become (a rewritten command, a local answer,
//! a refusal, and metric entries).
//!
//! The compiled policy holds one [`SensitiveStage`] only when some rule set can find
//! something; without a `sensitive` section the stage does not exist and costs nothing.
//!
//! - A key's rules are its namespace's (`policy.namespaces.<ns>.sensitive`, which inherits
//!   what it leaves out from `policy.sensitive`), else the default rules (`policy.sensitive`):
//!   keys in no namespace, and namespaces without an override.
//! - PUBLISH/SPUBLISH messages use the default rules (channels are not keys), and only with
//!   its `publish: true`; their findings are attributed to [`NS_NONE`].
//! - Policy `mode: audit` compiles every rule set with `action: audit`: the stage then never
//!   changes or refuses a command, and only records findings.
//!
//! Findings go to [`Scratch::sensitive`] as `(namespace, action label, field label id)`; the
//! id indexes a per-policy table of distinct field and detector names
//! ([`Policy::sensitive_field_label`]), so recording allocates nothing beyond the reused
//! vector, and a clean command records nothing at all.

use std::collections::HashMap;

use bytes::Bytes;

use crate::codec::Argv;
use crate::command::traits::Values;
use crate::command::{CommandSpec, CMD_PUBSUB, CMD_WRITE, KS_ACCESS};

use super::naming::show;
use super::sensitive::{self, SensitiveAction, SensitiveRules, StageOutcome};
use super::stage::{refused, Flow, Stage, StageCx, Stop};
use super::{FieldLabelId, NsId, Policy, Refusal, Rule, Scratch, Verdict, NS_NONE};

/// One compiled rule set and the metric label of each of its fields.
#[derive(Debug)]
struct RuleSet {
    /// The rules as applied (audit-only in policy audit mode).
    rules: SensitiveRules,
    /// The action as configured, for audit-mode logs ("enforce mode would strip").
    configured: SensitiveAction,
    /// Per [`sensitive::FieldId`]: its entry in [`SensitiveStage::labels`].
    label_ids: Box<[FieldLabelId]>,
}

/// The sensitive-data stage of one compiled policy.
#[derive(Debug)]
pub(super) struct SensitiveStage {
    /// `policy.sensitive`, or inactive rules when only namespaces configure the stage.
    default: RuleSet,
    /// Namespace overrides, indexed by `ns_set`.
    overrides: Vec<RuleSet>,
    /// Per [`NsId`]: the namespace's override, `None` for the default rules.
    ns_set: Vec<Option<u16>>,
    /// Distinct field and detector names of all rule sets: the metric `field` label values.
    labels: Vec<String>,
}

impl SensitiveStage {
    /// Compiles the stage from validated rules: `default` from `policy.sensitive`, and per
    /// namespace (in [`NsId`] order) its override. `None` when no rule set is active, so the
    /// policy skips the stage entirely.
    pub(super) fn build(
        default: Option<SensitiveRules>,
        per_ns: Vec<Option<SensitiveRules>>,
        audit: bool,
    ) -> Option<SensitiveStage> {
        let default = default.unwrap_or_default();
        if !default.is_active() && per_ns.iter().flatten().all(|r| !r.is_active()) {
            return None;
        }
        let mut labels = Vec::new();
        let mut index: HashMap<String, FieldLabelId> = HashMap::new();
        let mut set = |rules: SensitiveRules| {
            let label_ids = rules
                .field_names()
                .iter()
                .map(|name| {
                    *index.entry(name.clone()).or_insert_with(|| {
                        labels.push(name.clone());
                        FieldLabelId::try_from(labels.len() - 1).unwrap_or(FieldLabelId::MAX)
                    })
                })
                .collect();
            let configured = rules.action();
            // Audit mode forwards everything: the stage must not rewrite or refuse either.
            let rules = if audit && configured != SensitiveAction::Audit {
                rules.with_action(SensitiveAction::Audit)
            } else {
                rules
            };
            RuleSet {
                rules,
                configured,
                label_ids,
            }
        };
        let default = set(default);
        let mut overrides = Vec::new();
        let mut ns_set = Vec::with_capacity(per_ns.len());
        for rules in per_ns {
            ns_set.push(rules.map(|r| {
                overrides.push(set(r));
                // At most MAX_NAMESPACES overrides, far below u16::MAX.
                u16::try_from(overrides.len() - 1).unwrap_or(u16::MAX)
            }));
        }
        Some(SensitiveStage {
            default,
            overrides,
            ns_set,
            labels,
        })
    }

    fn set(&self, ns: NsId) -> &RuleSet {
        self.ns_set
            .get(usize::from(ns))
            .copied()
            .flatten()
            .and_then(|i| self.overrides.get(usize::from(i)))
            .unwrap_or(&self.default)
    }

    /// The rules of namespace `ns` (the default rules for [`NS_NONE`] and unmatched keys).
    pub(super) fn rules(&self, ns: NsId) -> &SensitiveRules {
        &self.set(ns).rules
    }

    /// A field label by id; `_unknown` for an id this policy did not issue.
    pub(super) fn label(&self, id: FieldLabelId) -> &str {
        self.labels
            .get(usize::try_from(id).unwrap_or(usize::MAX))
            .map_or("_unknown", String::as_str)
    }

    /// Runs the stage on a command that passed stages 1 and 2. A rewritten command goes into
    /// `plan` (TTL edits it afterwards: stripping never moves an expiry argument); findings
    /// go into `scratch.sensitive`.
    fn run(
        &self,
        policy: &Policy,
        spec: &'static CommandSpec,
        argv: &Argv<'_>,
        scratch: &mut Scratch,
        plan: &mut super::Plan,
    ) -> Flow {
        // Only writes and PUBLISH carry values to Redis; reads skip the value positions.
        if !spec.is(CMD_WRITE) && !spec.is(CMD_PUBSUB) {
            return Flow::Continue(());
        }
        scratch.sensitive_checked = true;
        let channel = spec.traits().values == Values::Message;
        // Findings are attributed with the same lookup the rules came from.
        let ns_of = |arg: usize| -> NsId {
            if channel {
                NS_NONE
            } else {
                policy.namespace_of(argv.get(arg).unwrap_or_default())
            }
        };
        let rules_for = |key: &[u8]| -> &SensitiveRules {
            if channel {
                &self.default.rules
            } else {
                self.rules(policy.namespace_of(key))
            }
        };
        // Empty until something is found: the clean path does not allocate.
        let mut findings = Vec::new();
        let outcome = sensitive::apply_row(argv, spec, &rules_for, &mut findings);
        let mut last_ns = scratch.namespace;
        for f in &findings {
            let ns = ns_of(f.arg);
            let set = self.set(ns);
            let label = set
                .label_ids
                .get(usize::from(f.finding.field))
                .copied()
                .unwrap_or(FieldLabelId::MAX);
            let action = f.action();
            scratch.sensitive.push((ns, action.as_str(), label));
            last_ns = ns;
            log_finding(policy, spec, ns, f.label(), action, set.configured);
        }
        match outcome {
            StageOutcome::Unchanged => Flow::Continue(()),
            StageOutcome::Rewrite(args) => {
                plan.replace(args);
                Flow::Continue(())
            }
            StageOutcome::Respond(reply) => Flow::Break(Stop::Answer(answer(spec, argv, reply))),
            StageOutcome::Reject(message) => refused(Refusal {
                rule: Rule::Sensitive,
                namespace: last_ns,
                // `Policy::refuse` adds the `POLICY` code again.
                message: message
                    .strip_prefix("POLICY ")
                    .map(str::to_string)
                    .unwrap_or(message),
            }),
        }
    }
}

/// Stage 3 on a command that passed stages 1 and 2.
impl Stage for SensitiveStage {
    fn check(&self, cx: &mut StageCx<'_, '_>) -> Flow {
        self.run(cx.policy, cx.spec, cx.argv, cx.scratch, cx.plan)
    }
}

/// The verdict for a write the stage turned into a no-op, answered with `reply`. A hash write
/// becomes a probe, so that a key of another type still gets Redis's own error.
fn answer(spec: &CommandSpec, argv: &Argv<'_>, reply: Bytes) -> Verdict {
    match (spec.traits().values, argv.get(1)) {
        (Values::HashFields { .. }, Some(key)) => Verdict::Probe {
            command: vec![Bytes::from_static(b"HLEN"), Bytes::copy_from_slice(key)],
            reply,
        },
        _ => Verdict::Respond(reply),
    }
}

impl SensitiveStage {
    /// True when data that satisfies the rules of namespace `src` also satisfies those of
    /// `dst`: `dst` enforces nothing, or `src` enforces every field and detector of `dst`.
    /// Compares configured actions, so policy audit mode reports what enforce would refuse.
    fn implies(&self, src: NsId, dst: NsId) -> bool {
        let (s, d) = (self.set(src), self.set(dst));
        if std::ptr::eq(s, d) || !d.rules.is_active() || d.configured == SensitiveAction::Audit {
            return true;
        }
        s.configured != SensitiveAction::Audit && d.rules.covered_by(&s.rules)
    }

    /// Stage 2b: a refusal when the command copies or moves data from a key into a key of
    /// another namespace whose rules the source's do not imply. Sources are the keys whose
    /// data the command reads (`ACCESS`), destinations those it may create or overwrite.
    pub(super) fn check_flows(&self, cx: &mut StageCx<'_, '_>) -> Flow {
        let (policy, spec, argv, scratch) = (cx.policy, cx.spec, cx.argv, &*cx.scratch);
        let keys = scratch.keys.iter().zip(scratch.key_ns.iter().copied());
        for (dst, dst_ns) in keys.clone().filter(|(k, _)| spec.creates_key(**k)) {
            for (src, src_ns) in keys.clone() {
                if src.index == dst.index
                    || src.flags & KS_ACCESS == 0
                    || src_ns == dst_ns
                    || self.implies(src_ns, dst_ns)
                {
                    continue;
                }
                let key = |k: &crate::command::KeyRef| show(argv.get(k.index).unwrap_or_default());
                return refused(Refusal {
                    rule: Rule::CrossNamespace,
                    namespace: dst_ns,
                    message: format!(
                        "{} would carry data from {} (namespace {}) into {} (namespace {}), whose sensitive rules are stricter, and respguard cannot inspect data Redis moves itself: read the value and write it with its own command instead",
                        spec.name,
                        key(src),
                        policy.namespace_label(src_ns),
                        key(dst),
                        policy.namespace_label(dst_ns)
                    ),
                });
            }
        }
        Flow::Continue(())
    }
}

impl Policy {
    /// The metric `field` label of a [`Scratch::sensitive`] entry: a configured field name
    /// (as written in the configuration) or a detector name (`card_number`, `us_ssn`).
    /// Ids are only meaningful for the policy whose check issued them; an id it did not issue
    /// gives `_unknown`.
    pub fn sensitive_field_label(&self, id: FieldLabelId) -> &str {
        self.sensitive.as_ref().map_or("_unknown", |s| s.label(id))
    }

    /// The sensitive-data rules that apply to keys of namespace `ns` ([`NS_NONE`] or
    /// [`super::NS_UNMATCHED`]: the default rules, which also cover PUBLISH). `None` when the
    /// policy has no sensitive stage.
    pub fn sensitive_rules(&self, ns: NsId) -> Option<&SensitiveRules> {
        self.sensitive.as_ref().map(|s| s.rules(ns))
    }
}

/// Logs one finding: never the key or the value, only where and what kind.
fn log_finding(
    policy: &Policy,
    spec: &CommandSpec,
    ns: NsId,
    field: &str,
    action: SensitiveAction,
    configured: SensitiveAction,
) {
    let namespace = policy.namespace_label(ns);
    match action {
        // Audit findings reached Redis: an operator needs to see them without debug logs.
        SensitiveAction::Audit => tracing::info!(
            action = "audit",
            command = spec.name,
            namespace,
            field,
            enforce = configured.as_str(),
            "sensitive data forwarded unchanged"
        ),
        SensitiveAction::Strip | SensitiveAction::Reject => tracing::debug!(
            command = spec.name,
            namespace,
            field,
            action = action.as_str(),
            "sensitive data found"
        ),
    }
}
