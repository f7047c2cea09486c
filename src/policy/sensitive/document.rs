//! What one value scan finds in a parsed JSON document: configured member names and
//! detectable leaves, reported through the [`json::Visitor`] the parser calls.

use super::json::{self, Leaf, Visitor};
use super::{Detector, Finding, SensitiveRules};

/// Appends `f` unless this value already reported it.
pub(super) fn push_finding(findings: &mut Vec<Finding>, start: usize, f: Finding) {
    if !findings.get(start..).is_some_and(|s| s.contains(&f)) {
        findings.push(f);
    }
}

/// The [`Visitor`] of one value scan.
pub(super) struct Finder<'a> {
    pub(super) rules: &'a SensitiveRules,
    pub(super) names: bool,
    pub(super) leaves: bool,
    pub(super) strip: bool,
    pub(super) findings: &'a mut Vec<Finding>,
    pub(super) start: usize,
    /// Unescaped leaf text; allocated only for leaves with escapes.
    pub(super) scratch: Vec<u8>,
}

impl Visitor for Finder<'_> {
    fn member(&mut self, raw: &[u8], escaped: bool) -> bool {
        if !self.names {
            return false;
        }
        match self.rules.lookup(raw, escaped) {
            Some(field) => {
                push_finding(
                    self.findings,
                    self.start,
                    Finding {
                        field,
                        detector: None,
                    },
                );
                self.strip
            }
            None => false,
        }
    }

    fn leaf(&mut self, leaf: Leaf<'_>) -> bool {
        if !self.leaves {
            return false;
        }
        let found = match leaf {
            Leaf::Str { raw, escaped: true } => {
                self.scratch.clear();
                if json::unescape(raw, &mut self.scratch) {
                    self.rules.detect(&self.scratch)
                } else {
                    None
                }
            }
            Leaf::Str { raw, .. } | Leaf::Int(raw) => self.rules.detect(raw),
        };
        self.found(found)
    }
}

impl Finder<'_> {
    pub(super) fn found(&mut self, d: Option<Detector>) -> bool {
        match d {
            Some(d) => {
                push_finding(self.findings, self.start, self.rules.detector_finding(d));
                self.strip
            }
            None => false,
        }
    }
}
