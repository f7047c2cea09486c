//! Tests of the sensitive-data stage: rules, prefilters, detectors and value positions.

use super::detect::*;
use super::document::*;
use super::positions::*;
use super::prefilter::*;
use super::*;
use crate::diag::Problems;

#[test]
fn positions_finds_every_needle_and_nothing_else() {
    // Lengths around the 8-byte words; bytes next to the needle's value and with the high
    // bit set, where a carrying zero-byte test would report false hits.
    let fill = [b':' ^ 0x80, b':' + 1, b':' - 1, 0x00, 0xff, b'a'];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..40 {
        for round in 0..200 {
            let hay: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if (state >> 3) % 4 == 0 {
                        b':'
                    } else {
                        fill[(state >> 8) as usize % fill.len()]
                    }
                })
                .collect();
            let want: Vec<usize> = (0..len).filter(|&i| hay[i] == b':').collect();
            let got: Vec<usize> = Positions::new(&hay, b':').collect();
            assert_eq!(got, want, "len {len} round {round} {hay:?}");
        }
    }
}

const FIELDS: &[&str] = &[
    "password",
    "ssn",
    "creditCard",
    "cardNumber",
    "cvv",
    "token",
];

fn rules(action: SensitiveAction, detect: &[Detector]) -> SensitiveRules {
    SensitiveRules::new(FIELDS, action, detect, true).unwrap()
}

fn strip_rules() -> SensitiveRules {
    rules(SensitiveAction::Strip, &[])
}

/// Scans `v` and returns (rewritten value as text, finding labels).
fn scan(r: &SensitiveRules, v: &str) -> (Option<String>, Vec<String>) {
    let mut f = Vec::new();
    let out = r.scan_value(v.as_bytes(), &mut f);
    let labels = f
        .iter()
        .map(|f| r.field_names()[usize::from(f.field)].clone())
        .collect();
    (out.map(|b| String::from_utf8(b.to_vec()).unwrap()), labels)
}

fn stripped(v: &str) -> Option<String> {
    scan(&strip_rules(), v).0
}

/// Builds an `Argv` over `args` and runs `apply`.
fn run<'r>(
    args: &[&[u8]],
    rules_for: &dyn Fn(&[u8]) -> &'r SensitiveRules,
) -> (StageOutcome, Vec<String>) {
    let owned = crate::codec::OwnedArgv::new(args);
    let argv = owned.argv();
    let cmd = String::from_utf8(args[0].to_ascii_uppercase()).unwrap();
    let mut findings = Vec::new();
    let out = apply(&argv, &cmd, rules_for, &mut findings);
    let labels = findings
        .iter()
        .map(|f| format!("{}:{}", f.arg, f.label()))
        .collect();
    (out, labels)
}

fn rewrite(out: &StageOutcome) -> Vec<String> {
    match out {
        StageOutcome::Rewrite(v) => v
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect(),
        other => panic!("expected a rewrite, got {other:?}"),
    }
}

#[test]
fn strips_nested_objects_and_arrays_of_objects() {
    assert_eq!(
        stripped(r#"{"name":"Ann","password":"hunter2","profile":{"ssn":"x","age":3}}"#).unwrap(),
        r#"{"name":"Ann","profile":{"age":3}}"#
    );
    assert_eq!(
        stripped(r#"[{"cvv":"1","id":1},{"id":2,"cvv":"2"},{"cvv":"3"}]"#).unwrap(),
        r#"[{"id":1},{"id":2},{}]"#
    );
    assert_eq!(
        stripped(r#"{"a":{"b":{"c":[{"d":{"token":"t","e":1}}]}}}"#).unwrap(),
        r#"{"a":{"b":{"c":[{"d":{"e":1}}]}}}"#
    );
    // Pretty-printed: formatting of everything else is untouched.
    let pretty = "{\n  \"user\": \"ann\",\n  \"password\": \"x\",\n  \"n\": 1.50e3\n}";
    assert_eq!(
        stripped(pretty).unwrap(),
        "{\n  \"user\": \"ann\",\n  \"n\": 1.50e3\n}"
    );
    let (_, labels) = scan(
        &strip_rules(),
        r#"{"password":1,"x":{"password":2,"cvv":3}}"#,
    );
    assert_eq!(labels, ["password", "cvv"], "once per value and field");
    let (_, labels) = scan(&strip_rules(), r#"{"password":{"cvv":3}}"#);
    assert_eq!(
        labels,
        ["password"],
        "a removed member's subtree is not inspected"
    );
}

#[test]
fn escaped_names_and_separator_case_variants_match() {
    for name in [
        r"pass\u0077ord",
        r"\u0070\u0061\u0073\u0073\u0077\u006f\u0072\u0064",
        "PASSWORD",
        "Pass_Word",
        "credit_card",
        "CREDIT-CARD",
        "c_r-e__d-i_t_c_a_r_d",
        "creditCard",
        "_cvv_",
        r"credit\u005fcard",
        r"cre\u0064it\/card",
    ] {
        let doc = format!(r#"{{"keep":1,"{name}":"secret"}}"#);
        let want = if name.contains(r"\/") {
            None
        } else {
            Some(r#"{"keep":1}"#.to_string())
        };
        assert_eq!(stripped(&doc), want, "{name}");
    }
    // Not the same field: other separators, extra letters, escapes decoding elsewhere.
    for name in [
        "pass word",
        "passwords",
        "pass.word",
        r"pass\u00f7ord",
        "xssn",
        r"ss\n",
    ] {
        let doc = format!(r#"{{"{name}":1}}"#);
        assert_eq!(stripped(&doc), None, "{name}");
    }
    let r = strip_rules();
    assert_eq!(r.is_sensitive_field(b"Credit-Card"), Some(2));
    assert_eq!(r.is_sensitive_field(b"card_number"), Some(3));
    assert_eq!(r.is_sensitive_field(b"cardnumbers"), None);
    assert_eq!(r.is_sensitive_field(b"__"), None);
}

#[test]
fn only_member_names_match_never_string_values() {
    for doc in [
        r#"{"note":"my password is in the token","hint":"password"}"#,
        r#"{"note":"\"password\": \"x\""}"#,
        r#"["password","ssn",{"k":"cvv"}]"#,
        r#"{"payload":"{\"password\":\"x\"}"}"#,
    ] {
        assert_eq!(stripped(doc), None, "{doc}");
    }
}

#[test]
fn invalid_json_and_non_json_pass_untouched() {
    for v in [
        r#"{"password":"x""#,
        r#"{"password":"x",}"#,
        r#"{password:"x"}"#,
        r#"{"password":"x"} trailing"#,
        "[\"password\":1]",
        "password: hunter2",
        r#""password""#,
    ] {
        assert_eq!(stripped(v), None, "{v}");
    }
    let mut f = Vec::new();
    assert!(strip_rules()
        .scan_value(b"{\"password\":\"\xff\"}", &mut f)
        .is_none());
    assert!(f.is_empty());
}

#[test]
fn deep_nesting_is_forwarded_untouched_without_overflow() {
    let mut doc = "[".repeat(100_000);
    doc.push_str(r#"{"password":"x"}"#);
    doc.push_str(&"]".repeat(100_000));
    assert_eq!(stripped(&doc), None);
    assert_eq!(stripped(&"[".repeat(100_000)), None);
    // Within the limit it is stripped.
    let ok = "[".repeat(127) + r#"{"password":"x"}"# + &"]".repeat(127);
    assert_eq!(
        stripped(&ok).unwrap(),
        "[".repeat(127) + "{}" + &"]".repeat(127)
    );
}

#[test]
fn luhn_card_detector() {
    let r = rules(SensitiveAction::Strip, &[Detector::CardNumber]);
    for card in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555 5555 5555 4444",
        "378282246310005",
        "3782 822463 10005",
        "6011111111111117",
        "4222222222222",
        "card: 4111 1111 1111 1111, exp 12/25",
        "4111 1111 1111 1111 12/25",
        "order 12345 4111 1111 1111 1111",
    ] {
        assert_eq!(
            scan(&r, card),
            (Some("[REDACTED]".into()), vec!["card_number".into()]),
            "{card}"
        );
    }
    for not_card in [
        "4111111111111112",
        "4111 1111 1111 1112",
        "1700000000004", // a millisecond timestamp: 13 digits, Luhn-valid, not a card
        "1234567890123456789012",
        "4111  1111 1111 1111",
        "41 11 11 11 11 11 11 11",
        "411111111111",
        "hello world",
        "",
    ] {
        assert_eq!(scan(&r, not_card).1, Vec::<String>::new(), "{not_card}");
    }
    assert!(
        luhn(b"1700000000004"),
        "the timestamp case above really is Luhn-valid"
    );
    // Inside JSON only the leaf is replaced, integers included; names are not leaves.
    assert_eq!(
        scan(
            &r,
            r#"{"n":"4111 1111 1111 1111","m":4111111111111111,"4111111111111111":1}"#
        )
        .0
        .unwrap(),
        r#"{"n":"[REDACTED]","m":"[REDACTED]","4111111111111111":1}"#
    );
    // Escaped digits are decoded.
    assert_eq!(
        scan(&r, r#"["\u0034111 1111 1111 1111"]"#).0.unwrap(),
        r#"["[REDACTED]"]"#
    );
    assert_eq!(
        scan(&r, r#"["\u00e94111 1111 1111 1111"]"#).0.unwrap(),
        r#"["[REDACTED]"]"#
    );
}

#[test]
fn ssn_detector() {
    let r = rules(SensitiveAction::Strip, &[Detector::UsSsn]);
    for v in ["123-45-6789", "ssn 123-45-6789.", "x:078-05-1120"] {
        assert_eq!(scan(&r, v).0.as_deref(), Some("[REDACTED]"), "{v}");
    }
    for v in [
        "123-45-67890",
        "1123-45-6789",
        "000-12-3456",
        "666-12-3456",
        "912-34-5678",
        "123-00-4567",
        "123-45-0000",
        "123 45 6789",
        "2024-01-15",
        "555-123-4567",
    ] {
        assert_eq!(scan(&r, v).0, None, "{v}");
    }
    assert_eq!(
        scan(&r, r#"{"id":"123-45-6789","d":"2024-01-15"}"#)
            .0
            .unwrap(),
        r#"{"id":"[REDACTED]","d":"2024-01-15"}"#
    );
    // Detectors off: untouched.
    assert_eq!(scan(&strip_rules(), "123-45-6789").0, None);
}

#[test]
fn reject_and_audit_report_without_rewriting() {
    let r = rules(SensitiveAction::Reject, &[Detector::CardNumber]);
    let (out, labels) = scan(&r, r#"{"password":"x","c":"4111111111111111"}"#);
    assert_eq!(out, None);
    assert_eq!(labels, ["password", "card_number"]);
    let r = rules(SensitiveAction::Audit, &[]);
    assert_eq!(
        scan(&r, r#"{"password":"x"}"#),
        (None, vec!["password".to_string()])
    );
}

/// Hand-written valid documents: stripping must keep them valid JSON and remove exactly
/// the sensitive members.
#[test]
fn stripping_valid_json_yields_valid_json() {
    let r = rules(
        SensitiveAction::Strip,
        &[Detector::CardNumber, Detector::UsSsn],
    );
    let docs = [
        r#"{"password":1}"#,
        r#"{"password":1,"ssn":2}"#,
        r#"{"a":1,"password":1,"ssn":2}"#,
        r#"{"password":1,"a":1,"ssn":2}"#,
        r#"{"password":1,"ssn":2,"a":1}"#,
        r#"{ "password" : { "x" : [ 1 , { "cvv" : 2 } ] } , "a" : [ ] , "token" : null }"#,
        "[\n {\"token\": \"t\"},\n {\"a\": {\"CVV\": 1, \"b\": \"123-45-6789\"}}\n]",
        r#"[[[{"a":[{"password":{}}],"b":{"credit_card":[]}}]],{},[]]"#,
        r#"{"":0,"password":"","\"":1,"\\":2,"é":"4111 1111 1111 1111"}"#,
        r#"{"x":{"y":{"z":{"ssn":1}},"ssn":2},"ssn":3,"w":[{"ssn":4},{"ssn":5,"q":6}]}"#,
        "{\t\"a\"\t:\t1\t,\t\"cvv\"\t:\t2\t}",
        r#"{"a":true,"cardNumber":false,"b":-0.5e-3,"pass\u0077ord":"\u00e9"}"#,
    ];
    for doc in docs {
        let mut f = Vec::new();
        let out = r.scan_value(doc.as_bytes(), &mut f).expect(doc);
        let v: serde_json::Value = serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{doc} -> {} : {e}", String::from_utf8_lossy(&out)));
        let text = v.to_string();
        for name in [
            "password",
            "ssn",
            "cvv",
            "CVV",
            "token",
            "credit_card",
            "cardNumber",
        ] {
            assert!(!text.contains(&format!("\"{name}\":")), "{doc} -> {text}");
        }
        assert!(!text.contains("4111") && !text.contains("123-45"), "{text}");
        assert!(
            serde_json::from_str::<serde_json::Value>(doc).is_ok(),
            "{doc} is valid"
        );
    }
}

/// A small deterministic generator, so the property tests need no extra dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Spells `name` the way a client might: random case, separators, `\u` escapes.
fn spelling(rng: &mut Rng, name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        while rng.below(4) == 0 {
            s.push(if rng.below(2) == 0 { '_' } else { '-' });
        }
        let c = if rng.below(2) == 0 {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        };
        if rng.below(6) == 0 {
            s.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            s.push(c);
        }
    }
    if rng.below(4) == 0 {
        s.push('_');
    }
    s
}

/// Random documents mixing sensitive and ordinary names: the prefilter must flag every
/// document the full parse finds something in, and stripping must keep them valid JSON.
#[test]
fn prefilter_never_misses_and_output_stays_valid() {
    let r = strip_rules();
    let plain = [
        "id",
        "name",
        "user_id",
        "created-at",
        "passwd",
        "tokens",
        "ss",
        "card",
        "\\\"q\\\"",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut found = 0;
    for _ in 0..3000 {
        let mut doc = String::new();
        let mut stack: Vec<bool> = Vec::new();
        let mut need_value = true;
        let mut first = true;
        // Builds a random document of at most ~30 tokens.
        for step in 0..30 {
            if need_value {
                match rng.below(5) {
                    0 if stack.len() < 6 => {
                        doc.push('{');
                        stack.push(true);
                        first = true;
                        need_value = false;
                        continue;
                    }
                    1 if stack.len() < 6 => {
                        doc.push('[');
                        stack.push(false);
                        first = true;
                        continue;
                    }
                    2 => doc.push_str("\"password: \\\"x\\\"\""),
                    3 => doc.push_str("12"),
                    _ => doc.push_str("\"v\""),
                }
                need_value = false;
                first = false;
                continue;
            }
            let Some(&obj) = stack.last() else { break };
            if step > 20 || rng.below(4) == 0 {
                doc.push(if obj { '}' } else { ']' });
                stack.pop();
                first = false;
                continue;
            }
            if !first {
                doc.push_str(if rng.below(3) == 0 { " ,\n " } else { "," });
            }
            first = false;
            if obj {
                let name = if rng.below(3) == 0 {
                    {
                        let i = rng.below(FIELDS.len());
                        spelling(&mut rng, FIELDS[i])
                    }
                } else {
                    plain[rng.below(plain.len())].to_string()
                };
                doc.push_str(&format!("\"{name}\"{}:", [" ", "", "\t"][rng.below(3)]));
            }
            need_value = true;
        }
        if need_value {
            doc.push('0');
        }
        while let Some(obj) = stack.pop() {
            doc.push(if obj { '}' } else { ']' });
        }
        if doc.is_empty() || !starts_container(doc.as_bytes()) {
            continue;
        }
        let valid = serde_json::from_str::<serde_json::Value>(&doc).is_ok();
        // The full parse, bypassing the prefilter.
        let mut findings = Vec::new();
        let mut v = Finder {
            rules: &r,
            names: true,
            leaves: false,
            strip: true,
            findings: &mut findings,
            start: 0,
            scratch: Vec::new(),
        };
        let mut edits = Vec::new();
        let parsed = json::scan(doc.as_bytes(), true, &mut v, &mut edits).is_ok();
        assert_eq!(parsed, valid, "{doc}");
        if !findings.is_empty() && parsed {
            found += 1;
            assert!(
                r.may_contain_field(doc.as_bytes()),
                "prefilter missed: {doc}"
            );
            let out = r.scan_value(doc.as_bytes(), &mut Vec::new()).expect(&doc);
            let v: serde_json::Value = serde_json::from_slice(&out)
                .unwrap_or_else(|e| panic!("{doc} -> {}: {e}", String::from_utf8_lossy(&out)));
            let mut again = Vec::new();
            let out2 = r.scan_value(v.to_string().as_bytes(), &mut again);
            assert!(
                out2.is_none() && again.is_empty(),
                "{doc} left a field: {v}"
            );
        }
    }
    assert!(
        found > 300,
        "the generator produced only {found} sensitive documents"
    );
}

fn rules_fn<'r>(r: &'r SensitiveRules) -> impl Fn(&[u8]) -> &'r SensitiveRules + 'r {
    move |_| r
}

#[test]
fn hset_family_drops_fields_and_answers_like_redis() {
    let r = strip_rules();
    let f = rules_fn(&r);
    let (out, labels) = run(&[b"HSET", b"user:1", b"Password", b"x", b"cvv", b"1"], &f);
    assert_eq!(out, StageOutcome::Respond(Bytes::from_static(b":0\r\n")));
    assert_eq!(labels, ["1:password", "1:cvv"]);
    let (out, _) = run(&[b"HSETNX", b"user:1", b"ssn", b"x"], &f);
    assert_eq!(out, StageOutcome::Respond(Bytes::from_static(b":0\r\n")));
    let (out, _) = run(&[b"hmset", b"user:1", b"token", b"x"], &f);
    assert_eq!(out, StageOutcome::Respond(Bytes::from_static(b"+OK\r\n")));
    let (out, _) = run(
        &[
            b"HSET",
            b"user:1",
            b"name",
            b"ann",
            b"password",
            b"x",
            b"prefs",
            br#"{"token":1,"a":2}"#,
        ],
        &f,
    );
    assert_eq!(
        rewrite(&out),
        ["HSET", "user:1", "name", "ann", "prefs", r#"{"a":2}"#]
    );
    let (out, _) = run(&[b"HSET", b"user:1", b"name", b"ann"], &f);
    assert_eq!(out, StageOutcome::Unchanged);
    // Unbalanced: Redis refuses it; we leave it alone.
    let (out, _) = run(&[b"HSET", b"user:1", b"password"], &f);
    assert_eq!(out, StageOutcome::Unchanged);
}

#[test]
fn reject_names_the_key_and_field_and_audit_forwards() {
    let r = rules(SensitiveAction::Reject, &[Detector::UsSsn]);
    let f = rules_fn(&r);
    let (out, _) = run(&[b"SET", b"user_profile:42", br#"{"password":"x"}"#], &f);
    assert_eq!(
        out,
        StageOutcome::Reject(
            r#"POLICY value for user_profile:42 contains sensitive field "password""#.into()
        )
    );
    let (out, _) = run(&[b"HSET", b"user_profile:\r\n", b"CREDIT_CARD", b"x"], &f);
    assert_eq!(
        out,
        StageOutcome::Reject(
            r#"POLICY value for user_profile:\x0d\x0a contains sensitive field "creditCard""#
                .into()
        )
    );
    let (out, _) = run(&[b"PUBLISH", b"news", b"ssn 123-45-6789"], &f);
    assert_eq!(
        out,
        StageOutcome::Reject(
            "POLICY message for channel news contains a US social security number".into()
        )
    );
    let r = rules(SensitiveAction::Audit, &[]);
    let f = rules_fn(&r);
    let (out, labels) = run(
        &[
            b"HSET",
            b"k",
            b"password",
            b"x",
            b"password",
            br#"{"password":1}"#,
        ],
        &f,
    );
    assert_eq!(out, StageOutcome::Unchanged);
    assert_eq!(labels, ["1:password"], "once per key and field");
}

#[test]
fn value_positions_of_every_command() {
    let r = rules(SensitiveAction::Strip, &[Detector::CardNumber]);
    let f = rules_fn(&r);
    let doc: &[u8] = br#"{"a":1,"password":"x"}"#;
    let clean = r#"{"a":1}"#;
    let cases: &[(&[&[u8]], &[&str])] = &[
        (
            &[b"SET", b"k", doc, b"EX", b"10", b"NX"],
            &["SET", "k", clean, "EX", "10", "NX"],
        ),
        (&[b"SETEX", b"k", b"10", doc], &["SETEX", "k", "10", clean]),
        (
            &[b"PSETEX", b"k", b"10", doc],
            &["PSETEX", "k", "10", clean],
        ),
        (&[b"SETNX", b"k", doc], &["SETNX", "k", clean]),
        (&[b"GETSET", b"k", doc], &["GETSET", "k", clean]),
        (&[b"LPUSH", b"k", b"a", doc], &["LPUSH", "k", "a", clean]),
        (&[b"RPUSHX", b"k", doc, doc], &["RPUSHX", "k", clean, clean]),
        (&[b"LSET", b"k", b"0", doc], &["LSET", "k", "0", clean]),
        (
            &[b"LINSERT", b"k", b"BEFORE", doc, doc],
            &[
                "LINSERT",
                "k",
                "BEFORE",
                std::str::from_utf8(doc).unwrap(),
                clean,
            ],
        ),
        (
            &[b"SADD", b"k", doc, b"4111 1111 1111 1111"],
            &["SADD", "k", clean, "[REDACTED]"],
        ),
        (&[b"PUBLISH", b"ch", doc], &["PUBLISH", "ch", clean]),
        (&[b"SPUBLISH", b"ch", doc], &["SPUBLISH", "ch", clean]),
        (
            &[b"JSON.SET", b"k", b"$", doc, b"NX"],
            &["JSON.SET", "k", "$", clean, "NX"],
        ),
        (
            &[b"JSON.SET", b"k", b"$.card", b"\"4111111111111111\""],
            &["JSON.SET", "k", "$.card", "\"[REDACTED]\""],
        ),
    ];
    for (args, want) in cases {
        let (out, _) = run(args, &f);
        assert_eq!(rewrite(&out), *want, "{:?}", want[0]);
    }
    // Wrong arity: Redis refuses; unchanged.
    let bad: [&[&[u8]]; 3] = [
        &[b"SETEX", b"k", doc],
        &[b"LSET", b"k", doc],
        &[b"GET", b"k"],
    ];
    for args in bad {
        assert_eq!(run(args, &f).0, StageOutcome::Unchanged);
    }
}

#[test]
fn zadd_members_after_options() {
    let r = strip_rules();
    let f = rules_fn(&r);
    let doc: &[u8] = br#"{"token":"t","u":1}"#;
    let (out, _) = run(
        &[b"ZADD", b"z", b"NX", b"gt", b"CH", b"INCR", b"1.5", doc],
        &f,
    );
    assert_eq!(
        rewrite(&out),
        ["ZADD", "z", "NX", "gt", "CH", "INCR", "1.5", r#"{"u":1}"#]
    );
    let (out, _) = run(&[b"ZADD", b"z", b"XX", b"1", b"a", b"2", doc], &f);
    assert_eq!(
        rewrite(&out),
        ["ZADD", "z", "XX", "1", "a", "2", r#"{"u":1}"#]
    );
    // A score is never a member, even when it looks like JSON.
    let (out, _) = run(&[b"ZADD", b"z", doc, b"m"], &f);
    assert_eq!(out, StageOutcome::Unchanged);
}

#[test]
fn xadd_fields_after_trim_options() {
    let r = strip_rules();
    let f = rules_fn(&r);
    let (out, labels) = run(
        &[
            b"XADD",
            b"s",
            b"NOMKSTREAM",
            b"MAXLEN",
            b"~",
            b"1000",
            b"LIMIT",
            b"10",
            b"*",
            b"password",
            b"x",
            b"msg",
            br#"{"cvv":1,"b":2}"#,
        ],
        &f,
    );
    assert_eq!(
        rewrite(&out),
        [
            "XADD",
            "s",
            "NOMKSTREAM",
            "MAXLEN",
            "~",
            "1000",
            "LIMIT",
            "10",
            "*",
            "msg",
            r#"{"b":2}"#
        ]
    );
    assert_eq!(labels, ["1:password", "1:cvv"]);
    let (out, _) = run(
        &[b"XADD", b"s", b"minid", b"=", b"0-1", b"1-1", b"ssn", b"x"],
        &f,
    );
    assert!(
        matches!(out, StageOutcome::Reject(ref m) if m.starts_with("POLICY every field")),
        "{out:?}"
    );
    // `MAXLEN 5` without `~`: 5 is the threshold and `*` the ID.
    let (out, _) = run(
        &[
            b"XADD", b"s", b"MAXLEN", b"5", b"*", b"a", b"1", b"token", b"t",
        ],
        &f,
    );
    assert_eq!(rewrite(&out), ["XADD", "s", "MAXLEN", "5", "*", "a", "1"]);
    // A field named like an option is still a field after the ID.
    let (out, _) = run(&[b"XADD", b"s", b"1-1", b"MAXLEN", b"x", b"cvv", b"1"], &f);
    assert_eq!(rewrite(&out), ["XADD", "s", "1-1", "MAXLEN", "x"]);
}

#[test]
fn mset_uses_each_keys_rules() {
    let strip = strip_rules();
    let reject = rules(SensitiveAction::Reject, &[]);
    let audit = rules(SensitiveAction::Audit, &[]);
    let off = SensitiveRules::default();
    let by_key = |k: &[u8]| match k.split(|&b| b == b':').next() {
        Some(b"s") => &strip,
        Some(b"r") => &reject,
        Some(b"a") => &audit,
        _ => &off,
    };
    let doc: &[u8] = br#"{"password":"x","k":1}"#;
    let (out, labels) = run(
        &[
            b"MSET", b"s:1", doc, b"a:1", doc, b"o:1", doc, b"s:2", b"plain",
        ],
        &by_key,
    );
    assert_eq!(
        rewrite(&out),
        [
            "MSET",
            "s:1",
            r#"{"k":1}"#,
            "a:1",
            std::str::from_utf8(doc).unwrap(),
            "o:1",
            std::str::from_utf8(doc).unwrap(),
            "s:2",
            "plain"
        ]
    );
    assert_eq!(labels, ["1:password", "3:password"]);
    let (out, _) = run(&[b"MSETNX", b"s:1", doc, b"r:1", doc], &by_key);
    assert_eq!(
        out,
        StageOutcome::Reject(r#"POLICY value for r:1 contains sensitive field "password""#.into())
    );
    assert_eq!(
        run(&[b"MSET", b"s:1", doc, b"s:2"], &by_key).0,
        StageOutcome::Unchanged
    );
}

#[test]
fn json_set_paths_and_publish_switch() {
    let r = strip_rules();
    let f = rules_fn(&r);
    for path in [
        "$.password",
        "$['credit-card']",
        ".user.SSN",
        "$..token",
        "$[\"pass\\u0077ord\"]",
        "password",
    ] {
        let (out, labels) = run(&[b"JSON.SET", b"k", path.as_bytes(), b"\"x\""], &f);
        assert_eq!(
            out,
            StageOutcome::Respond(Bytes::from_static(b"+OK\r\n")),
            "{path}"
        );
        assert_eq!(labels.len(), 1, "{path}");
    }
    for path in ["$", "$.user.name", "$[?(@.password)].name", "$.passwords"] {
        assert_eq!(
            run(&[b"JSON.SET", b"k", path.as_bytes(), b"\"x\""], &f).0,
            StageOutcome::Unchanged,
            "{path}"
        );
    }
    let quiet = SensitiveRules::new(FIELDS, SensitiveAction::Strip, &[], false).unwrap();
    let f = rules_fn(&quiet);
    assert_eq!(
        run(&[b"PUBLISH", b"c", br#"{"password":1}"#], &f).0,
        StageOutcome::Unchanged
    );
}

#[test]
fn config_validation_and_inheritance() {
    let yaml = "fields: [password, ssn, creditCard]\naction: reject\ndetect: [card_number]\n";
    let raw: RawSensitive = serde_saphyr::from_str(yaml).unwrap();
    let mut p = Problems::new("t.yaml");
    let base = validate(&raw, None, "policy.sensitive", &mut p).unwrap();
    assert!(p.is_empty());
    assert_eq!(
        base.field_names(),
        ["password", "ssn", "creditCard", "card_number"]
    );
    assert_eq!(base.action(), SensitiveAction::Reject);
    assert!(base.publish());

    let raw: RawSensitive =
        serde_saphyr::from_str("fields: [password, dateOfBirth]\npublish: false\n").unwrap();
    let ns = validate(
        &raw,
        Some(&base),
        "policy.namespaces.user_profile.sensitive",
        &mut p,
    )
    .unwrap();
    assert_eq!(ns.field_names(), ["password", "dateOfBirth", "card_number"]);
    assert_eq!(ns.action(), SensitiveAction::Reject, "inherited");
    assert!(!ns.publish());
    assert_eq!(ns.is_sensitive_field(b"date_of_birth"), Some(1));
    assert_eq!(
        ns.is_sensitive_field(b"ssn"),
        None,
        "fields replace the default list"
    );

    let raw: RawSensitive = serde_saphyr::from_str("action: audit\n").unwrap();
    let ns = validate(&raw, Some(&base), "x", &mut p).unwrap();
    assert_eq!(ns.field_names(), base.field_names());
    assert_eq!(ns.action(), SensitiveAction::Audit);

    let bad = "fields:\n  - password\n  - \"\"\n  - credit_card\n  - CREDIT-CARD\n  - 'a\"b'\n  - _-\naction: drop\ndetect: [iban]\n";
    let raw: RawSensitive = serde_saphyr::from_str(bad).unwrap();
    let mut p = Problems::new("t.yaml");
    assert!(validate(&raw, None, "policy.sensitive", &mut p).is_none());
    let err = p.into_result(()).unwrap_err();
    let got: Vec<_> = err.0.iter().map(|p| (p.line, p.field.as_str())).collect();
    assert_eq!(
        got,
        [
            (Some(3), "policy.sensitive.fields[1]"),
            (Some(5), "policy.sensitive.fields[3]"),
            (Some(6), "policy.sensitive.fields[4]"),
            (Some(7), "policy.sensitive.fields[5]"),
            (Some(8), "policy.sensitive.action"),
            (Some(9), "policy.sensitive.detect[0]"),
        ],
        "{err}"
    );
    assert!(serde_saphyr::from_str::<RawSensitive>("feilds: [x]\n").is_err());
}

#[test]
fn clean_values_do_not_allocate_findings_or_parse() {
    let r = rules(
        SensitiveAction::Strip,
        &[Detector::CardNumber, Detector::UsSsn],
    );
    let doc = r#"{"id":"u-1","user_id":7,"created_at":"2024-01-15T10:00:00Z","tags":["a"]}"#;
    let mut f = Vec::new();
    assert!(r.scan_value(doc.as_bytes(), &mut f).is_none());
    assert!(!r.may_contain_field(doc.as_bytes()));
    assert!(!r.may_detect(doc.as_bytes(), false));
    assert_eq!(f.capacity(), 0);
    assert!(!SensitiveRules::default().is_active());
}
