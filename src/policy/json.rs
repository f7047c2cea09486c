//! Bounded, non-recursive JSON scanning for policy stages that edit values in place.
//!
//! [`scan`] validates a document against RFC 8259 and, through a [`Visitor`], lets a stage
//! decide per object member whether to remove it and per leaf whether to redact it. The result
//! is a list of byte-range [`Edit`]s applied by [`apply_edits`]: everything not edited is copied
//! byte for byte, so key order, whitespace, number spellings and escapes stay exactly as the
//! client wrote them. Nothing is re-serialized.
//!
//! Bounds: nesting is limited to [`MAX_DEPTH`] containers, tracked on a fixed-size array rather
//! than the call stack, so a value of 100 000 `[` costs one failed scan, never a stack
//! overflow; everything else is linear in the value's length.

/// Deepest container nesting accepted; deeper documents are treated as not-JSON.
pub const MAX_DEPTH: usize = 128;

/// What a redacted leaf becomes inside a document.
pub const REDACTED_JSON: &[u8] = b"\"[REDACTED]\"";

/// Why a value is not a JSON document we edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// A grammar error at this byte offset.
    Syntax(usize),
    /// More than [`MAX_DEPTH`] nested containers.
    TooDeep,
    /// Not UTF-8 (RFC 8259 §8.1).
    Utf8,
}

/// A scalar the visitor may redact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf<'a> {
    /// A string; `raw` is the bytes between the quotes, still escaped when `escaped`.
    Str { raw: &'a [u8], escaped: bool },
    /// A number written as plain digits (no sign, fraction or exponent).
    Int(&'a [u8]),
}

/// The stage's decisions during a [`scan`]. Neither method is called inside a member that an
/// earlier `member` call chose to remove: its content goes away as a whole.
pub trait Visitor {
    /// Called for each member name (`raw` is the bytes between the quotes, still escaped when
    /// `escaped`). Return true to remove the member.
    fn member(&mut self, raw: &[u8], escaped: bool) -> bool;
    /// Called for each string leaf (including a top-level scalar) and each plain integer.
    /// Return true to replace it with [`REDACTED_JSON`].
    fn leaf(&mut self, leaf: Leaf<'_>) -> bool;
}

/// What an [`Edit`] does to its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    /// Delete the bytes (a member together with one separating comma).
    Remove,
    /// Replace the bytes (a leaf) with [`REDACTED_JSON`].
    Redact,
}

/// A byte range of the document and what happens to it. Edits from one scan never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub kind: EditKind,
}

/// Per-container bookkeeping. Objects remember enough about their members to remove one
/// together with exactly one adjacent comma, so the result stays valid JSON.
#[derive(Clone, Copy, Default)]
struct Frame {
    object: bool,
    /// Offset of the current member's opening name quote.
    member_start: usize,
    /// End (exclusive) of the previous member's value.
    prev_end: usize,
    /// A member before the current one is kept.
    kept_seen: bool,
    /// Start of a run of removed members that precede every kept member. Such a run is
    /// removed up to the next kept member's name (taking the comma after it) or, if none
    /// follows, up to the end of the last member.
    pending: Option<usize>,
    /// The current member is being removed.
    removing: bool,
}

#[inline]
fn skip_ws(doc: &[u8], mut pos: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = doc.get(pos) {
        pos += 1;
    }
    pos
}

/// Word-at-a-time (SWAR) byte tests, shared by the string scan here and the sensitive-name
/// prefilter: JSON strings and colons come every few bytes, where a call into `memchr` costs
/// more in setup than the scan itself. Every mask below is exact per byte (no carry crosses
/// bytes), so each set high bit is a hit.
pub(super) mod swar {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

    /// Eight bytes as a little-endian word.
    #[inline(always)]
    pub fn word(c: &[u8; 8]) -> u64 {
        u64::from_le_bytes(*c)
    }

    /// The eight bytes of `s` from `at` as a word, zero-padded past the end, and the mask of
    /// the high bits of the bytes that are really there.
    #[inline(always)]
    pub fn load(s: &[u8], at: usize) -> (u64, u64) {
        if let Some(c) = s.get(at..at + 8).and_then(|c| <&[u8; 8]>::try_from(c).ok()) {
            return (word(c), ONES << 7);
        }
        let tail = s.get(at..).unwrap_or_default();
        let mut w = [0u8; 8];
        w[..tail.len()].copy_from_slice(tail);
        (word(&w), (ONES << 7) & ((1u64 << (8 * tail.len())) - 1))
    }

    /// High bit set in each byte of `v` equal to `b`.
    #[inline(always)]
    pub fn eq(v: u64, b: u8) -> u64 {
        let x = v ^ (ONES * u64::from(b));
        !(((x & LOW7) + LOW7) | x | LOW7)
    }

    /// High bit set in each byte of `v` below `n` (`n` at most 0x80).
    #[inline(always)]
    pub fn lt(v: u64, n: u8) -> u64 {
        !(((v & LOW7) + ONES * u64::from(0x80 - n)) | v | LOW7)
    }
}

/// Offset of the first byte in `s` that ends a run of plain string content: a quote, a
/// backslash or a control character (bytes from 0x80 up are UTF-8 and never stop it).
#[inline(always)]
fn string_stop(s: &[u8]) -> Option<usize> {
    #[inline(always)]
    fn stops(v: u64) -> u64 {
        swar::eq(v, b'"') | swar::eq(v, b'\\') | swar::lt(v, 0x20)
    }
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for c in chunks.by_ref() {
        let hits = <&[u8; 8]>::try_from(c).map_or(0, |c| stops(swar::word(c)));
        if hits != 0 {
            return Some(base + (hits.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    let (v, real) = swar::load(s, base);
    let hits = stops(v) & real;
    (hits != 0).then(|| base + (hits.trailing_zeros() / 8) as usize)
}

/// Scans the string starting with the quote at `pos`; returns the offset after the closing
/// quote and whether the string contains escapes.
#[inline(always)]
fn string_end(doc: &[u8], pos: usize) -> Result<(usize, bool), Invalid> {
    let mut i = pos + 1;
    let mut escaped = false;
    loop {
        let rest = doc.get(i..).ok_or(Invalid::Syntax(i))?;
        let Some(off) = string_stop(rest) else {
            return Err(Invalid::Syntax(doc.len()));
        };
        i += off;
        match doc[i] {
            b'"' => return Ok((i + 1, escaped)),
            b'\\' => {}
            // A raw control character (RFC 8259 §7).
            _ => return Err(Invalid::Syntax(i)),
        }
        escaped = true;
        match doc.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
            Some(b'u') => {
                let hex = doc.get(i + 2..i + 6).ok_or(Invalid::Syntax(i))?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Invalid::Syntax(i));
                }
                i += 6;
            }
            _ => return Err(Invalid::Syntax(i)),
        }
    }
}

/// Scans a number at `pos`; returns its end and whether it is a plain unsigned integer.
#[inline]
fn number_end(doc: &[u8], pos: usize) -> Result<(usize, bool), Invalid> {
    let mut i = pos;
    let mut plain = true;
    if doc.get(i) == Some(&b'-') {
        i += 1;
        plain = false;
    }
    match doc.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while doc.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return Err(Invalid::Syntax(i)),
    }
    if doc.get(i) == Some(&b'.') {
        plain = false;
        i += 1;
        if !doc.get(i).is_some_and(u8::is_ascii_digit) {
            return Err(Invalid::Syntax(i));
        }
        while doc.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    if let Some(b'e' | b'E') = doc.get(i) {
        plain = false;
        i += 1;
        if let Some(b'+' | b'-') = doc.get(i) {
            i += 1;
        }
        if !doc.get(i).is_some_and(u8::is_ascii_digit) {
            return Err(Invalid::Syntax(i));
        }
        while doc.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
    }
    Ok((i, plain))
}

/// Parses the member name at `pos` (which must be a quote) and the colon after it; returns
/// the offset of the member's value.
#[inline]
fn member_head(
    doc: &[u8],
    pos: usize,
    frame: &mut Frame,
    visitor: &mut impl Visitor,
    callbacks: bool,
) -> Result<usize, Invalid> {
    if doc.get(pos) != Some(&b'"') {
        return Err(Invalid::Syntax(pos));
    }
    let (end, escaped) = string_end(doc, pos)?;
    frame.member_start = pos;
    frame.removing = callbacks && visitor.member(&doc[pos + 1..end - 1], escaped);
    let colon = skip_ws(doc, end);
    if doc.get(colon) != Some(&b':') {
        return Err(Invalid::Syntax(colon));
    }
    Ok(skip_ws(doc, colon + 1))
}

/// Records the end of the current member's value at `end`.
#[inline]
fn finish_member(frame: &mut Frame, end: usize, edits: &mut Vec<Edit>) {
    if frame.removing {
        if frame.kept_seen {
            // Take the comma before it: `, "password": "x"`.
            edits.push(Edit {
                start: frame.prev_end,
                end,
                kind: EditKind::Remove,
            });
        } else if frame.pending.is_none() {
            frame.pending = Some(frame.member_start);
        }
    } else {
        if let Some(start) = frame.pending.take() {
            // Removed members before the first kept one go with the comma after them.
            edits.push(Edit {
                start,
                end: frame.member_start,
                kind: EditKind::Remove,
            });
        }
        frame.kept_seen = true;
    }
    frame.prev_end = end;
    frame.removing = false;
}

/// Validates `doc` and collects the visitor's edits into `edits` (appended, in document
/// order). On `Err` the document is not JSON (or too deep) and `edits` must be ignored.
///
/// `containers_only` refuses a scalar top-level value, for callers that treat only objects
/// and arrays as documents.
pub fn scan(
    doc: &[u8],
    containers_only: bool,
    visitor: &mut impl Visitor,
    edits: &mut Vec<Edit>,
) -> Result<(), Invalid> {
    // RFC 8259 requires UTF-8; checking once up front keeps the string loop simple.
    if std::str::from_utf8(doc).is_err() {
        return Err(Invalid::Utf8);
    }
    let first_edit = edits.len();
    // Grown as containers open: zeroing all MAX_DEPTH frames up front cost more than
    // scanning a small document.
    let mut stack: Vec<Frame> = Vec::with_capacity(8);
    let mut depth = 0usize;
    // Depth (1-based) of the object whose current member is being removed; 0 when none.
    // Inside that member no callbacks run: the whole subtree is going away.
    let mut suppress = 0usize;
    let mut pos = skip_ws(doc, 0);
    if containers_only && !matches!(doc.get(pos), Some(b'{' | b'[')) {
        return Err(Invalid::Syntax(pos));
    }
    'value: loop {
        // One value starts at `pos`.
        match doc.get(pos) {
            Some(&open @ (b'{' | b'[')) => {
                if depth == MAX_DEPTH {
                    return Err(Invalid::TooDeep);
                }
                let object = open == b'{';
                stack.truncate(depth);
                stack.push(Frame {
                    object,
                    ..Frame::default()
                });
                depth += 1;
                pos = skip_ws(doc, pos + 1);
                let close = if object { b'}' } else { b']' };
                if doc.get(pos) == Some(&close) {
                    depth -= 1;
                    pos += 1;
                } else {
                    if object {
                        pos = member_head(doc, pos, &mut stack[depth - 1], visitor, suppress == 0)?;
                        if suppress == 0 && stack[depth - 1].removing {
                            suppress = depth;
                        }
                    }
                    continue 'value;
                }
            }
            Some(b'"') => {
                let (end, escaped) = string_end(doc, pos)?;
                if suppress == 0
                    && visitor.leaf(Leaf::Str {
                        raw: &doc[pos + 1..end - 1],
                        escaped,
                    })
                {
                    edits.push(Edit {
                        start: pos,
                        end,
                        kind: EditKind::Redact,
                    });
                }
                pos = end;
            }
            Some(b'-' | b'0'..=b'9') => {
                let (end, plain) = number_end(doc, pos)?;
                if plain && suppress == 0 && visitor.leaf(Leaf::Int(&doc[pos..end])) {
                    edits.push(Edit {
                        start: pos,
                        end,
                        kind: EditKind::Redact,
                    });
                }
                pos = end;
            }
            Some(b't') if doc[pos..].starts_with(b"true") => pos += 4,
            Some(b'f') if doc[pos..].starts_with(b"false") => pos += 5,
            Some(b'n') if doc[pos..].starts_with(b"null") => pos += 4,
            _ => return Err(Invalid::Syntax(pos)),
        }
        // A value ended at `pos`: close containers until one expects another element.
        loop {
            if depth == 0 {
                pos = skip_ws(doc, pos);
                if pos != doc.len() {
                    return Err(Invalid::Syntax(pos));
                }
                // `pending` ranges are pushed after edits inside later members.
                edits[first_edit..].sort_unstable_by_key(|e| e.start);
                return Ok(());
            }
            let frame = &mut stack[depth - 1];
            if frame.object {
                finish_member(frame, pos, edits);
                if suppress == depth {
                    suppress = 0;
                }
                pos = skip_ws(doc, pos);
                match doc.get(pos) {
                    Some(b',') => {
                        pos =
                            member_head(doc, skip_ws(doc, pos + 1), frame, visitor, suppress == 0)?;
                        if suppress == 0 && frame.removing {
                            suppress = depth;
                        }
                        continue 'value;
                    }
                    Some(b'}') => {
                        if let Some(start) = frame.pending.take() {
                            // Every member was removed: `{ }` remains.
                            edits.push(Edit {
                                start,
                                end: frame.prev_end,
                                kind: EditKind::Remove,
                            });
                        }
                        depth -= 1;
                        pos += 1;
                    }
                    _ => return Err(Invalid::Syntax(pos)),
                }
            } else {
                pos = skip_ws(doc, pos);
                match doc.get(pos) {
                    Some(b',') => {
                        pos = skip_ws(doc, pos + 1);
                        continue 'value;
                    }
                    Some(b']') => {
                        depth -= 1;
                        pos += 1;
                    }
                    _ => return Err(Invalid::Syntax(pos)),
                }
            }
        }
    }
}

/// Applies non-overlapping edits in document order (as [`scan`] produces them).
pub fn apply_edits(doc: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = Vec::with_capacity(doc.len());
    let mut at = 0;
    for e in edits {
        out.extend_from_slice(doc.get(at..e.start).unwrap_or_default());
        if e.kind == EditKind::Redact {
            out.extend_from_slice(REDACTED_JSON);
        }
        at = at.max(e.end);
    }
    out.extend_from_slice(doc.get(at..).unwrap_or_default());
    out
}

fn hex4(h: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(h.get(..4)?).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Decodes the content of a JSON string (the bytes between the quotes) into `out`, appending.
/// Returns false on a malformed escape. Lone surrogates become U+FFFD, as they cannot be
/// represented in UTF-8 and can never spell a configured (ASCII) name anyway.
pub fn unescape(raw: &[u8], out: &mut Vec<u8>) -> bool {
    let mut i = 0;
    while i < raw.len() {
        let Some(off) = memchr::memchr(b'\\', &raw[i..]) else {
            out.extend_from_slice(&raw[i..]);
            return true;
        };
        out.extend_from_slice(&raw[i..i + off]);
        i += off;
        let simple = match raw.get(i + 1) {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 8,
            Some(b'f') => 12,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                let Some(hi) = raw.get(i + 2..).and_then(hex4) else {
                    return false;
                };
                i += 6;
                let mut code = hi;
                if (0xD800..0xDC00).contains(&hi)
                    && raw.get(i) == Some(&b'\\')
                    && raw.get(i + 1) == Some(&b'u')
                {
                    if let Some(lo) = raw.get(i + 2..).and_then(hex4) {
                        if (0xDC00..0xE000).contains(&lo) {
                            code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            i += 6;
                        }
                    }
                }
                let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            _ => return false,
        };
        out.push(simple);
        i += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_stop_finds_the_first_quote_backslash_or_control_byte() {
        // Every length around the 8-byte chunking, every position of the stop byte, and
        // bytes that sit next to the stop values (0x1f/0x20, 0x21/0x23, 0x5b/0x5d, 0x80+).
        let fillers = [b'a', b' ', b'!', b'#', b'[', b']', 0x7f, 0x80, 0xc3, 0xff];
        let stops = [b'"', b'\\', 0x00, 0x1f, b'\n'];
        for len in 0..40 {
            for &fill in &fillers {
                let plain = vec![fill; len];
                assert_eq!(string_stop(&plain), None, "len {len} fill {fill:#x}");
                for at in 0..len {
                    for &stop in &stops {
                        let mut s = plain.clone();
                        s[at] = stop;
                        // A second stop later must not hide the first.
                        if at + 3 < len {
                            s[at + 3] = b'"';
                        }
                        assert_eq!(
                            string_stop(&s),
                            Some(at),
                            "len {len} at {at} stop {stop:#x}"
                        );
                    }
                }
            }
        }
    }

    /// Removes members named in `names` (exact, unescaped) and redacts string leaves equal
    /// to "secret".
    struct Names<'a>(&'a [&'a str]);

    impl Visitor for Names<'_> {
        fn member(&mut self, raw: &[u8], escaped: bool) -> bool {
            let mut name = Vec::new();
            if escaped {
                assert!(unescape(raw, &mut name));
            } else {
                name.extend_from_slice(raw);
            }
            self.0.iter().any(|n| n.as_bytes() == name.as_slice())
        }
        fn leaf(&mut self, leaf: Leaf<'_>) -> bool {
            matches!(leaf, Leaf::Str { raw: b"secret", .. })
        }
    }

    fn strip(doc: &str, names: &[&str]) -> Result<String, Invalid> {
        let mut edits = Vec::new();
        scan(doc.as_bytes(), false, &mut Names(names), &mut edits)?;
        Ok(String::from_utf8(apply_edits(doc.as_bytes(), &edits)).unwrap())
    }

    #[test]
    fn removes_members_with_one_comma() {
        let n = &["x"];
        assert_eq!(strip(r#"{"x":1}"#, n).unwrap(), "{}");
        assert_eq!(strip(r#"{"x":1,"a":2}"#, n).unwrap(), r#"{"a":2}"#);
        assert_eq!(strip(r#"{"a":2,"x":1}"#, n).unwrap(), r#"{"a":2}"#);
        assert_eq!(
            strip(r#"{"a":2,"x":1,"b":3}"#, n).unwrap(),
            r#"{"a":2,"b":3}"#
        );
        assert_eq!(
            strip(r#"{"x":1,"x":2,"a":3,"x":4,"x":5}"#, n).unwrap(),
            r#"{"a":3}"#
        );
        assert_eq!(
            strip(r#"{ "x" : 1 , "a" : 2 }"#, n).unwrap(),
            r#"{ "a" : 2 }"#
        );
        assert_eq!(
            strip("{\n  \"a\": 1,\n  \"x\": 2\n}", n).unwrap(),
            "{\n  \"a\": 1\n}"
        );
        assert_eq!(strip(r#"{"x":{"x":1,"a":[{"x":2}]}}"#, n).unwrap(), "{}");
        assert_eq!(
            strip(r#"[{"x":1},{"a":{"x":[1,2],"b":"secret"}},"secret"]"#, n).unwrap(),
            r#"[{},{"a":{"b":"[REDACTED]"}},"[REDACTED]"]"#
        );
    }

    #[test]
    fn rejects_what_rfc_8259_rejects() {
        for bad in [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\"}",
            "{a:1}",
            "[01]",
            "[1.]",
            "[.5]",
            "[1e]",
            "[-]",
            "[tru]",
            "\"\\x\"",
            "\"\\u12G4\"",
            "[\"a\tb\"]",
            "[1] x",
            "{\"a\":1}}",
            "[\"\u{7f}\"",
            "'a'",
        ] {
            assert!(strip(bad, &[]).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            scan(b"[\"\xff\"]", false, &mut Names(&[]), &mut Vec::new()),
            Err(Invalid::Utf8)
        );
        for good in [
            "0",
            "-0.5e+3",
            "\"\\u00e9\\n\"",
            " [ ] ",
            "{}",
            "[true,false,null]",
        ] {
            assert_eq!(strip(good, &[]).unwrap(), good);
        }
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(strip(&ok, &[]).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(strip(&deep, &[]), Err(Invalid::TooDeep));
        let huge = "[".repeat(100_000);
        assert_eq!(strip(&huge, &[]), Err(Invalid::TooDeep));
    }

    #[test]
    fn unescapes_names() {
        let mut out = Vec::new();
        assert!(unescape(br"pass\u0077ord\/\ud83d\ude00\ud800x", &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "password/\u{1F600}\u{FFFD}x"
        );
        assert!(!unescape(br"a\q", &mut Vec::new()));
        assert!(!unescape(br"a\u12", &mut Vec::new()));
        assert_eq!(
            strip(r#"{"pass\u0077ord":1,"a":2}"#, &["password"]).unwrap(),
            r#"{"a":2}"#
        );
    }
}
