//! The JSON stripper (sensitive-field removal) on arbitrary values: it never panics, and a
//! value that is JSON stays JSON after stripping, with no member named like a configured
//! field left at any depth.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::policy::sensitive::{Detector, SensitiveAction, SensitiveRules};
use serde_json::Value;

const FIELDS: &[&str] = &["password", "ssn", "creditCard", "token"];

/// Field names compare ignoring ASCII case, '_' and '-'.
fn normalized(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn sensitive_member(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            let n = normalized(k);
            if FIELDS.iter().any(|f| normalized(f) == n) {
                Some(k.clone())
            } else {
                sensitive_member(v)
            }
        }),
        Value::Array(a) => a.iter().find_map(sensitive_member),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, value)) = data.split_first() else {
        return;
    };
    let detect: &[Detector] = if knob & 1 == 0 {
        &[]
    } else {
        &[Detector::CardNumber, Detector::UsSsn]
    };
    let Ok(rules) = SensitiveRules::new(FIELDS, SensitiveAction::Strip, detect, true) else {
        return;
    };
    let mut findings = Vec::new();
    let out = if knob & 2 == 0 {
        rules.scan_value(value, &mut findings)
    } else {
        rules.scan_json(value, &mut findings)
    };
    // Only documents serde_json also reads (it nests up to 128 levels) are checked.
    let Ok(before) = serde_json::from_slice::<Value>(value) else {
        return;
    };
    if !matches!(before, Value::Object(_) | Value::Array(_)) {
        return;
    }
    let after: Value = match &out {
        None => before,
        Some(stripped) => serde_json::from_slice(stripped).unwrap_or_else(|e| {
            panic!(
                "stripping made JSON invalid ({e}): {:?}",
                String::from_utf8_lossy(stripped)
            )
        }),
    };
    if let Some(name) = sensitive_member(&after) {
        panic!("member {name:?} survived stripping");
    }
});
