//! The policy's fast matchers agree with slow references: the JSON string scan with
//! serde_json, the sensitive-name lookup (behind its shape filter) with a normalization written
//! here, and the naming matcher's literal search with brute force over equal-length literals.
//! Library-level differential checks first, then the same behaviour end to end through the
//! proxy against real Redis, and the per-field sensitive counters.

#[macro_use]
mod common;

use common::{bulk, bulk_array, encode_many};
use respguard::policy::json::{self, Leaf, Visitor};
use respguard::policy::pattern::{self, KeyMatch, Segment};
use respguard::policy::sensitive::{SensitiveAction, SensitiveRules};

/// Small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------------
// JSON string scan (src/policy/json.rs string_stop / string_end)

/// Records member names and string leaves as the scanner reports them.
#[derive(Default)]
struct Record {
    members: Vec<(Vec<u8>, bool)>,
    strings: Vec<(Vec<u8>, bool)>,
}
impl Visitor for Record {
    fn member(&mut self, raw: &[u8], escaped: bool) -> bool {
        self.members.push((raw.to_vec(), escaped));
        false
    }
    fn leaf(&mut self, leaf: Leaf<'_>) -> bool {
        if let Leaf::Str { raw, escaped } = leaf {
            self.strings.push((raw.to_vec(), escaped));
        }
        false
    }
}

/// Pieces of string content; some are invalid inside a JSON string (raw controls, a bare
/// quote that ends the string early, an unknown escape).
const PIECES: &[&[u8]] = &[
    b"a",
    b" ",
    b"!",
    b"#",
    b"]",
    b"\x7f",
    "\u{e9}".as_bytes(),
    "\u{20ac}".as_bytes(),
    "\u{1d11e}".as_bytes(),
    b"\\\"",
    b"\\\\",
    b"\\n",
    b"\\/",
    b"\\u0041",
    b"\\u00e9",
    b"\x00",
    b"\x01",
    b"\x1f",
    b"\n",
    b"\t",
    b"\"",
    b"\\x",
];

/// Every generated document is accepted by the scanner exactly when serde_json accepts it,
/// and for accepted ones the member name and the string leaf are reported byte for byte, with
/// the right `escaped` flag. The pieces land at every offset around the 8-byte chunks.
#[test]
fn json_scan_agrees_with_serde_json_on_string_content() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut docs = 0;
    for round in 0..40_000 {
        // A run of plain padding puts the interesting piece at a chosen chunk offset.
        let pad = round % 19;
        let mut s: Vec<u8> = vec![b'p'; pad];
        for _ in 0..rng.below(5) {
            // Mostly valid pieces, so that most documents parse.
            let i = if rng.below(4) == 0 {
                rng.below(PIECES.len())
            } else {
                rng.below(15)
            };
            s.extend_from_slice(PIECES[i]);
            let pad = rng.below(10);
            s.resize(s.len() + pad, b'q');
        }
        for (doc, name_is_s) in [
            ([b"{\"".as_slice(), &s, b"\":\"v\"}"].concat(), true),
            ([b"{\"k\":\"".as_slice(), &s, b"\"}"].concat(), false),
            ([b"[\"".as_slice(), &s, b"\"]"].concat(), false),
        ] {
            docs += 1;
            let want = serde_json::from_slice::<serde_json::Value>(&doc).is_ok();
            let mut rec = Record::default();
            let mut edits = Vec::new();
            let got = json::scan(&doc, true, &mut rec, &mut edits);
            assert_eq!(
                got.is_ok(),
                want,
                "doc {:?}: scan {got:?}, serde_json ok = {want}",
                String::from_utf8_lossy(&doc)
            );
            if want {
                let escaped = s.contains(&b'\\');
                let list = if name_is_s {
                    &rec.members
                } else {
                    &rec.strings
                };
                assert!(
                    list.contains(&(s.clone(), escaped)),
                    "doc {:?}: reported {list:?}",
                    String::from_utf8_lossy(&doc)
                );
            }
        }
    }
    assert!(docs > 100_000);
}

// ---------------------------------------------------------------------------------------------
// Sensitive-name lookup (src/policy/sensitive.rs ShapeFilter in SensitiveRules::lookup)

fn reference_norm(name: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for &b in name {
        if !b.is_ascii() {
            return None;
        }
        if b == b'_' || b == b'-' {
            continue;
        }
        out.push(b.to_ascii_lowercase());
    }
    Some(out)
}

/// `is_sensitive_field` (the unescaped path, the one behind the shape filter) finds exactly
/// the names whose normalized form equals a configured one: separators anywhere, any case,
/// single-character names, the longest configured name, and names one longer.
#[test]
fn sensitive_lookup_agrees_with_reference_normalization() {
    let long: String = "Ab_".repeat(21) + "z"; // 43 normalized bytes, the longest.
    let fields: Vec<&str> = vec![
        "a",
        "Z",
        "x_y",
        "Credit-Card",
        "cvv",
        "ssn",
        "password",
        "pass_word_2",
        "ab",
        "ba",
        "aab",
        "-q-",
        &long,
        "dateOfBirth",
        "e mail",
    ];
    let rules =
        SensitiveRules::new(&fields, SensitiveAction::Strip, &[], false).expect("fields are valid");
    let norms: Vec<Vec<u8>> = fields
        .iter()
        .map(|f| reference_norm(f.as_bytes()).unwrap())
        .collect();
    let check = |name: &[u8]| {
        let want = reference_norm(name).and_then(|n| norms.iter().position(|x| *x == n));
        let got = rules.is_sensitive_field(name).map(usize::from);
        assert_eq!(got, want, "name {:?}", String::from_utf8_lossy(name));
    };
    // Every configured name in many spellings.
    for f in &fields {
        let b = f.as_bytes();
        check(b);
        check(&b.to_ascii_uppercase());
        check(&b.to_ascii_lowercase());
        check(&[b"_", b, b"-"].concat());
        check(&[b"--", b, b"__"].concat());
        let sep: Vec<u8> = b.iter().flat_map(|&c| [c, b'_']).collect();
        check(&sep);
        let sep: Vec<u8> = b
            .iter()
            .flat_map(|&c| [b'-', c.to_ascii_uppercase()])
            .collect();
        check(&sep);
        check(&[b, b"x".as_slice()].concat());
        check(&[b"x".as_slice(), b].concat());
        check(&b[..b.len() - 1]);
    }
    // Random names over the configured names' alphabet.
    let alphabet = b"aAbBzZxXyYqQsSvV_- e2";
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..300_000 {
        let len = rng.below(8);
        let name: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        check(&name);
    }
}

// ---------------------------------------------------------------------------------------------
// Naming DFA (src/policy/pattern.rs, literals searched by (length, bytes))

/// Patterns of literal and placeholder segments, many literals of equal length: the matcher
/// picks the most specific matching pattern (literal before placeholder, position by
/// position), exactly as a brute-force reference does.
#[test]
fn naming_matcher_agrees_with_brute_force_on_equal_length_literals() {
    const LITS: &[&str] = &[
        "a", "b", "c", "z", "ab", "ba", "aa", "zz", "bc", "abc", "cab", "bca", "aaa", "abcd",
        "dcba",
    ];
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for _case in 0..300 {
        let mut pats: Vec<(Vec<Option<&str>>, u16)> = Vec::new();
        let mut b = pattern::Builder::new();
        for ns in 0..rng.below(30) as u16 + 1 {
            let n = rng.below(3) + 1;
            let segs: Vec<Option<&str>> = (0..n)
                .map(|_| {
                    if rng.below(4) == 0 {
                        None
                    } else {
                        Some(LITS[rng.below(LITS.len())])
                    }
                })
                .collect();
            let text: Vec<String> = segs
                .iter()
                .enumerate()
                .map(|(i, s)| s.map_or(format!("{{p{i}}}"), str::to_string))
                .collect();
            let parsed = pattern::parse(&text.join(":")).unwrap();
            assert!(parsed.iter().all(|s| !matches!(s, Segment::Rest)));
            if b.add(&parsed, ns).is_ok() {
                pats.push((segs, ns));
            }
        }
        let m = b.compile().unwrap();
        for _ in 0..200 {
            let n = rng.below(4) + 1;
            let key: Vec<&str> = (0..n)
                .map(|_| {
                    if rng.below(6) == 0 {
                        "other"
                    } else {
                        LITS[rng.below(LITS.len())]
                    }
                })
                .collect();
            let want = pats
                .iter()
                .filter(|(segs, _)| {
                    segs.len() == key.len()
                        && segs
                            .iter()
                            .zip(&key)
                            .all(|(s, k)| s.is_none_or(|l| l == *k))
                })
                .min_by_key(|(segs, _)| segs.iter().map(Option::is_none).collect::<Vec<_>>())
                .map_or(KeyMatch::NoMatch, |(_, ns)| KeyMatch::Namespace(*ns));
            let joined = key.join(":");
            assert_eq!(
                m.find(joined.as_bytes()),
                want,
                "key {joined} patterns {pats:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// End to end through the proxy

const POLICY: &str = r#"
policy:
  unknown_keys: allow
  sensitive:
    fields: [a, x_y, Credit-Card, password, cvv, abcdefghijklmnopqrst]
    action: strip
  namespaces:
    aa:
      keys: ["ns:aa:{id}"]
      ttl: { default: 1h, min: 1h, max: 1h }
    bb:
      keys: ["ns:bb:{id}"]
      ttl: { default: 2h, min: 2h, max: 2h }
    ab:
      keys: ["ns:ab:{id}"]
      ttl: { default: 3h, min: 3h, max: 3h }
    any:
      keys: ["ns:{x}:{id}"]
      ttl: { default: 4h, min: 4h, max: 4h }
    c:
      keys: ["ns:c:{id}"]
      ttl: { default: 5h, min: 5h, max: 5h }
    ccc:
      keys: ["ns:ccc:{id}"]
      ttl: { default: 6h, min: 6h, max: 6h }
"#;

type Env = common::PolicyEnv;

async fn env_with(yaml: &str) -> Env {
    common::policy_env(yaml).await
}

/// Sensitive members whose spelling differs from the configured one only in case and
/// separators are removed; near misses (one character more or less, a prefix such as
/// "-C-r-e-d-i-t-", longer than the longest
/// configured name) stay. Read back directly from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_member_spellings_are_stripped_end_to_end() {
    let mut e = env_with(POLICY).await;
    let doc = concat!(
        r#"{"A":1,"_a_":2,"X-Y":3,"xY":4,"x__y":5,"CREDITcard":6,"credit_card":7,"-C-r-e-d-i-t-":8,"#,
        r#""PassWord":9,"P_A_S_S_W_O_R_D":10,"CVV":11,"ABCDEFGHIJ-klmnopqrst":12,"#,
        r#""ab":13,"xyz":14,"creditcards":15,"abcdefghijklmnopqrstu":16,"passwor":17,"b":18,"#,
        r#""é":19,"x_y_":20}"#
    );
    let want = r#"{"-C-r-e-d-i-t-":8,"ab":13,"xyz":14,"creditcards":15,"abcdefghijklmnopqrstu":16,"passwor":17,"b":18,"é":19}"#;
    assert_resp!(
        e.c.call(&[b"SET", b"plain:1", doc.as_bytes()]).await,
        b"+OK\r\n"
    );
    assert_resp!(e.d.call(&[b"GET", b"plain:1"]).await, bulk(want.as_bytes()));

    // Hash fields take the same unescaped path.
    assert_resp!(
        e.c.call(&[
            b"HSET",
            b"h:1",
            b"A",
            b"1",
            b"keep",
            b"2",
            b"X-y",
            b"3",
            b"CVV",
            b"4",
            b"cv",
            b"5",
            b"credit__CARD",
            b"6",
            b"abcdefghijklmnopqrstu",
            b"7"
        ])
        .await,
        b":3\r\n"
    );
    assert_resp!(
        e.d.call(&[b"HKEYS", b"h:1"]).await,
        bulk_array(&[b"keep", b"cv", b"abcdefghijklmnopqrstu"])
    );
}

/// Escapes and control characters at every offset around the 8-byte scan chunks: a valid
/// document is stripped and everything else is kept byte for byte; a raw control character
/// makes it not JSON, and then it is stored unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_strings_with_escapes_at_chunk_boundaries_end_to_end() {
    let mut e = env_with(POLICY).await;
    let mut cmds: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = Vec::new();
    for pad in 0..18 {
        let p = "p".repeat(pad);
        for piece in [
            "\\\"", "\\\\", "\\n", "\u{e9}", "\u{20ac}", "\\u0041", "\\\\\\\"",
        ] {
            let keep = format!(r#""s":"{p}{piece}{p}","#);
            let doc = format!(r#"{{{keep}"password":"{p}{piece}","{p}":"{piece}","a{piece}":1}}"#);
            let name_kept = format!(r#""a{piece}":1"#);
            // "a\u0041" -> "aa": not a configured name; every other "a<piece>" is neither.
            let want = format!(r#"{{{keep}"{p}":"{piece}",{name_kept}}}"#);
            cmds.push((
                format!("j:{pad}:{}", cmds.len()).into_bytes(),
                doc.into_bytes(),
                want.into_bytes(),
            ));
        }
        // A raw control character: not JSON, forwarded untouched.
        for ctl in ["\n", "\u{1}", "\u{1f}"] {
            let doc = format!(r#"{{"s":"{p}{ctl}","password":"x"}}"#);
            cmds.push((
                format!("j:{pad}:{}", cmds.len()).into_bytes(),
                doc.clone().into_bytes(),
                doc.into_bytes(),
            ));
        }
    }
    let sets: Vec<Vec<&[u8]>> = cmds
        .iter()
        .map(|(k, v, _)| vec![b"SET".as_slice(), k.as_slice(), v.as_slice()])
        .collect();
    let refs: Vec<&[&[u8]]> = sets.iter().map(Vec::as_slice).collect();
    e.c.send(&encode_many(&refs)).await;
    for _ in &cmds {
        assert_resp!(e.c.reply().await, b"+OK\r\n");
    }
    for (k, v, want) in &cmds {
        let got = e.d.call(&[b"GET", k]).await;
        assert!(
            got == bulk(want),
            "{}: sent {}\n stored {}\n wanted {}",
            common::show(k),
            common::show(v),
            common::show(&got),
            common::show(want)
        );
    }
}

/// Namespaces whose distinguishing literals have equal length (aa, bb, ab) or differ only in
/// length (c, ccc) each get their own TTL; other literals fall to the placeholder pattern.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equal_length_namespace_literals_end_to_end() {
    let mut e = env_with(POLICY).await;
    for (key, hours) in [
        (&b"ns:aa:1"[..], 1),
        (b"ns:bb:1", 2),
        (b"ns:ab:1", 3),
        (b"ns:ba:1", 4),
        (b"ns:cc:1", 4),
        (b"ns:c:1", 5),
        (b"ns:ccc:1", 6),
        (b"ns:cccc:1", 4),
        (b"ns:a:1", 4),
    ] {
        assert_resp!(e.c.call(&[b"SET", key, b"v"]).await, b"+OK\r\n");
        let ttl = e.d.call(&[b"TTL", key]).await;
        let want = format!(":{}\r\n", hours * 3600);
        assert_eq!(String::from_utf8_lossy(&ttl), want, "{}", common::show(key));
    }
}

/// Sensitive-field counters after the (namespace, action) -> field reshaping: each finding
/// counts once in its own series, repeated findings accumulate, and two fields of one
/// namespace/action do not share a series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_counters_count_each_field_separately() {
    let mut e = env_with(POLICY).await;
    for _ in 0..3 {
        e.c.call(&[b"SET", b"ns:aa:1", br#"{"password":1,"cvv":2}"#])
            .await;
    }
    e.c.call(&[b"SET", b"ns:bb:1", br#"{"password":1}"#]).await;
    e.c.call(&[b"HSET", b"ns:aa:2", b"x-y", b"1"]).await;
    assert_resp!(e.c.call(&[b"PING"]).await, b"+PONG\r\n");
    let m = common::metrics_text(&e.proxy).await;
    let name = "respguard_sensitive_fields_total";
    for (ns, field, n) in [
        ("aa", "password", 3.0),
        ("aa", "cvv", 3.0),
        ("aa", "x_y", 1.0),
        ("bb", "password", 1.0),
    ] {
        assert_eq!(
            common::metric_sum(
                &m,
                name,
                &[("namespace", ns), ("field", field), ("action", "strip")]
            ),
            Some(n),
            "{ns}/{field}:\n{}",
            common::metric_lines(&m, name)
        );
    }
    assert_eq!(
        common::metric_sum(&m, name, &[("namespace", "bb"), ("field", "cvv")]),
        None,
        "{}",
        common::metric_lines(&m, name)
    );
}
