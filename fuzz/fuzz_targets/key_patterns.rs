//! The key-pattern compiler: arbitrary patterns (one per line, up to a blank line) are parsed
//! and compiled without panicking, and the compiled matcher agrees with a direct check of
//! each pattern on the keys that follow the blank line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::policy::pattern::{parse, Builder, KeyMatch, Segment};

/// Whether `key` matches one pattern, segment by segment (the definition the matcher
/// compiles; which namespace wins among several is the matcher's business).
fn matches(segments: &[Segment], key: &[u8]) -> bool {
    let parts: Vec<&[u8]> = key.split(|&b| b == b':').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return false;
    }
    let mut i = 0;
    for (n, seg) in segments.iter().enumerate() {
        match seg {
            Segment::Literal(l) => {
                if parts.get(i).copied() != Some(&l[..]) {
                    return false;
                }
                i += 1;
            }
            Segment::Placeholder => {
                if i >= parts.len() {
                    return false;
                }
                i += 1;
            }
            Segment::Rest => return n + 1 == segments.len() && i < parts.len(),
        }
    }
    i == parts.len()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (patterns, keys) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut builder = Builder::new();
    let mut parsed = Vec::new();
    for line in patterns.lines().take(32) {
        if let Ok(segments) = parse(line) {
            if builder.add(&segments, parsed.len() as u16).is_ok() {
                parsed.push(segments);
            }
        }
    }
    let Ok(matcher) = builder.compile() else {
        return;
    };
    for key in keys.lines() {
        let found = matcher.find(key.as_bytes());
        let any = parsed.iter().any(|p| matches(p, key.as_bytes()));
        match found {
            KeyMatch::Namespace(ns) => {
                let pattern = parsed
                    .get(usize::from(ns))
                    .expect("a namespace that was added");
                assert!(
                    any && matches(pattern, key.as_bytes()),
                    "{key:?} matched namespace {ns}, whose pattern does not match it"
                );
            }
            KeyMatch::NoMatch | KeyMatch::EmptySegment => {
                assert!(!any, "{key:?} matches a pattern but the matcher found none");
            }
        }
    }
});
