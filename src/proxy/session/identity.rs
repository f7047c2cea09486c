//! The session's side of client identities (`policy.clients`): logins answered by the proxy,
//! permission refusals, the delayed answer to a failed login, and `SCAN`/`KEYS` replies
//! filtered to the keys the identity may read. The decisions themselves are
//! [`crate::policy::auth`] and [`crate::policy::identity`].

use bytes::{Bytes, BytesMut};

use crate::codec::{self, Argv, Request};
use crate::command::CommandSpec;
use crate::metrics::Outcome;
use crate::policy::auth::{self, Gate};
use crate::policy::{PolicyAction, Rule, NS_NONE};

use super::{Session, Slot};

impl Session {
    /// Runs the identity checks for one command. `Some(done)` when the command was dealt
    /// with here (`handle`'s return value); `None` to go on as usual.
    pub(super) fn identity_gate(
        &mut self,
        spec: Option<&'static CommandSpec>,
        argv: &Argv<'_>,
    ) -> Option<bool> {
        let cmd = spec.map(|s| s.index());
        let is_login = matches!(spec.map(|s| s.name), Some("AUTH" | "HELLO"));
        if is_login && self.multi.is_some() {
            // A login's answer may be delayed, which a queued command's cannot be.
            self.scratch.clear();
            self.quiet = self.take_quiet();
            self.refuse(
                "ERR AUTH and HELLO inside MULTI are not supported through respguard",
                cmd,
            );
            return Some(true);
        }
        // Taken out for the call rather than cloned: no reference count traffic per command.
        let policy = self.policy.take()?;
        let metrics = &self.shared.metrics;
        let gate = self
            .auth
            .gate(&policy, spec, argv, &self.shared.auth_failures, &|label| {
                metrics.auth_failure(label)
            });
        self.policy = Some(policy);
        match gate {
            Gate::Pass if self.multi.is_some() && self.filter_keys(spec).is_some() => {
                // The EXEC reply is not filtered: listing keys there would show them all.
                self.scratch.clear();
                self.scratch
                    .actions
                    .push((NS_NONE, PolicyAction::Rejected(Rule::Permission)));
                self.quiet = self.take_quiet();
                self.refuse(
                    "NOPERM SCAN and KEYS inside MULTI are refused for an identity that may not read every key",
                    cmd,
                );
                Some(true)
            }
            Gate::Pass => None,
            Gate::Answer(reply) => {
                self.scratch.clear();
                self.quiet = self.take_quiet();
                if reply.first() == Some(&b'-') {
                    let text = String::from_utf8_lossy(&reply[1..reply.len().saturating_sub(2)])
                        .into_owned();
                    self.refuse(&text, cmd);
                } else if let Some(layout) = self.multi.as_mut() {
                    layout.push(Slot::Local(reply));
                    self.push_local(Bytes::from_static(b"+QUEUED\r\n"), Outcome::Ok, cmd);
                } else {
                    self.push_local(reply, Outcome::Ok, cmd);
                }
                Some(true)
            }
            Gate::Failed { delay, reply } => {
                let at = tokio::time::Instant::now() + delay;
                self.auth_hold = Some((at, reply, cmd));
                Some(true)
            }
            Gate::Refuse(denied) => {
                self.scratch.clear();
                self.scratch.namespace = denied.namespace;
                self.scratch
                    .actions
                    .push((denied.namespace, PolicyAction::Rejected(Rule::Permission)));
                self.quiet = self.take_quiet();
                self.refuse(&denied.message, cmd);
                Some(true)
            }
            Gate::Forward(hello) => {
                let mut spans = Vec::new();
                let mut none = Vec::new();
                match codec::scan_request(&hello, &self.limits, &mut spans, &mut none) {
                    Ok(Some(Request::Multibulk { .. })) => {
                        Some(self.handle(Argv::new(&hello, &spans), &hello))
                    }
                    _ => {
                        self.scratch.clear();
                        self.quiet = self.take_quiet();
                        self.refuse("ERR HELLO could not be forwarded", cmd);
                        Some(true)
                    }
                }
            }
        }
    }

    /// Answers the failed login held back by [`Session::identity_gate`], then reads on.
    pub(super) fn release_auth_hold(&mut self) {
        if let Some((_, reply, cmd)) = self.auth_hold.take() {
            self.scratch.clear();
            self.quiet = self.take_quiet();
            self.push_local(reply, Outcome::Error, cmd);
            self.process_client();
        }
    }

    /// `Some(scan)` when the reply to `spec` lists keys that must be filtered for this
    /// client's identity.
    pub(super) fn filter_keys(&self, spec: Option<&'static CommandSpec>) -> Option<bool> {
        // Asked for every command: the cheap tests first.
        let clients = self.policy.as_deref()?.clients()?;
        if !self.auth.restricted(clients) {
            return None;
        }
        auth::lists_keys(spec)
    }

    /// The `SCAN`/`KEYS` reply with only the keys the identity may read, under the rules in
    /// force when the reply arrives.
    pub(super) fn filter_key_reply(&self, reply: &[u8], scan: bool) -> Option<BytesMut> {
        let policy = self.policy.as_deref()?;
        let clients = policy.clients()?;
        let ident = self.auth.identity(clients)?;
        auth::filter_keys(reply, scan, &|k| ident.may_read(policy, k))
    }
}
