//! Differential: the request scanner (fed in pieces) against a small model of how Redis 7.0
//! reads a query buffer (`processInputBuffer`: `processMultibulkBuffer` with `strchr` and
//! `string2ll`, `processInlineBuffer` with `sdssplitargs`), written here from Redis's rules
//! and kept deliberately C-like. Both must agree on every command's arguments, on where each
//! ends, and on the exact error reply; otherwise respguard and Redis could see different
//! commands in the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::codec::{Limits, Request, RequestScanner};

/// Small limits, so fuzz inputs reach them (the model takes the same values).
const INLINE_MAX: usize = 128;
const BULK_MAX: i64 = 200;

#[derive(Debug, PartialEq)]
enum Event {
    Command(Vec<Vec<u8>>),
    Skip { at: usize },
    Error(Vec<u8>),
    Incomplete { at: usize },
}

/// C's `strchr` over the rest of the buffer (a NUL ends the search).
fn c_strchr(buf: &[u8], from: usize, c: u8) -> Option<usize> {
    for (i, &b) in buf.iter().enumerate().skip(from) {
        if b == c {
            return Some(i);
        }
        if b == 0 {
            return None;
        }
    }
    None
}

/// Redis's `string2ll`, transcribed step by step.
fn c_string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s.len() == 1 && s[0] == b'0' {
        return Some(0);
    }
    let mut p = 0;
    let negative = s[0] == b'-';
    if negative {
        p += 1;
        if p == s.len() {
            return None;
        }
    }
    let mut v: u64;
    if (b'1'..=b'9').contains(&s[p]) {
        v = u64::from(s[p] - b'0');
        p += 1;
    } else {
        return None;
    }
    while p < s.len() && s[p].is_ascii_digit() {
        if v > u64::MAX / 10 {
            return None;
        }
        v *= 10;
        let d = u64::from(s[p] - b'0');
        if v > u64::MAX - d {
            return None;
        }
        v += d;
        p += 1;
    }
    if p < s.len() {
        return None;
    }
    if negative {
        if v > (i64::MAX as u64) + 1 {
            return None;
        }
        Some((v as i128).wrapping_neg() as i64)
    } else if v > i64::MAX as u64 {
        None
    } else {
        Some(v as i64)
    }
}

fn c_isspace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `sdssplitargs` on a NUL-terminated copy of `line`; `None` for unbalanced quotes.
fn c_splitargs(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut s = line.to_vec();
    s.push(0);
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let hex = |c: u8| (c as char).to_digit(16);
    let mut p = 0;
    let mut out = Vec::new();
    loop {
        while at(p) != 0 && c_isspace(at(p)) {
            p += 1;
        }
        if at(p) == 0 {
            return Some(out);
        }
        let (mut inq, mut insq, mut done) = (false, false, false);
        let mut cur = Vec::new();
        while !done {
            let c = at(p);
            if inq {
                if c == b'\\'
                    && at(p + 1) == b'x'
                    && hex(at(p + 2)).is_some()
                    && hex(at(p + 3)).is_some()
                {
                    let byte = hex(at(p + 2)).unwrap_or(0) * 16 + hex(at(p + 3)).unwrap_or(0);
                    cur.push(byte as u8);
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    cur.push(match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if at(p + 1) != 0 && !c_isspace(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else if insq {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !c_isspace(at(p + 1)) {
                        return None;
                    }
                    done = true;
                } else if c == 0 {
                    return None;
                } else {
                    cur.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => done = true,
                    b'"' => inq = true,
                    b'\'' => insq = true,
                    _ => cur.push(c),
                }
            }
            if at(p) != 0 {
                p += 1;
            }
        }
        out.push(cur);
    }
}

fn error(msg: &[u8]) -> Event {
    let mut e = b"-ERR Protocol error: ".to_vec();
    e.extend(
        msg.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    e.extend_from_slice(b"\r\n");
    Event::Error(e)
}

/// Redis reading the whole of `buf` (all bytes at once).
fn model(buf: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut qb = 0usize;
    let len = buf.len();
    // A line end found more than the limit past the line start is refused like a missing
    // one: Redis refuses such a line when a read leaves more than the limit buffered
    // without it, which depends on how reads split the input.
    let too_long = |start: usize, end: Option<usize>| match end {
        Some(e) => e - start > INLINE_MAX,
        None => len - start > INLINE_MAX,
    };
    while qb < len {
        if buf[qb] != b'*' {
            let nl = c_strchr(buf, qb, b'\n');
            if too_long(qb, nl) {
                events.push(error(b"too big inline request"));
                return events;
            }
            let Some(nl) = nl else {
                events.push(Event::Incomplete { at: qb });
                return events;
            };
            let mut end = nl;
            if end != qb && buf[end - 1] == b'\r' {
                end -= 1;
            }
            let Some(args) = c_splitargs(&buf[qb..end]) else {
                events.push(error(b"unbalanced quotes in request"));
                return events;
            };
            qb = nl + 1;
            events.push(if args.is_empty() {
                Event::Skip { at: qb }
            } else {
                Event::Command(args)
            });
            continue;
        }
        let start = qb;
        let nl = c_strchr(buf, qb, b'\r');
        if too_long(qb, nl) {
            events.push(error(b"too big mbulk count string"));
            return events;
        }
        let Some(nl) = nl else {
            events.push(Event::Incomplete { at: start });
            return events;
        };
        if nl as isize - qb as isize > len as isize - qb as isize - 2 {
            events.push(Event::Incomplete { at: start });
            return events;
        }
        let ll = match c_string2ll(&buf[qb + 1..nl]) {
            Some(ll) if ll <= i64::from(i32::MAX) => ll,
            _ => {
                events.push(error(b"invalid multibulk length"));
                return events;
            }
        };
        qb = nl + 2;
        if ll <= 0 {
            events.push(Event::Skip { at: qb });
            continue;
        }
        let mut args = Vec::new();
        let mut left = ll;
        while left > 0 {
            let nl = c_strchr(buf, qb, b'\r');
            if too_long(qb, nl) {
                events.push(error(b"too big bulk count string"));
                return events;
            }
            let Some(nl) = nl else {
                events.push(Event::Incomplete { at: start });
                return events;
            };
            if nl as isize - qb as isize > len as isize - qb as isize - 2 {
                events.push(Event::Incomplete { at: start });
                return events;
            }
            if buf[qb] != b'$' {
                let mut m = b"expected '$', got '".to_vec();
                m.push(buf[qb]);
                m.push(b'\'');
                events.push(error(&m));
                return events;
            }
            let bl = match c_string2ll(&buf[qb + 1..nl]) {
                Some(bl) if (0..=BULK_MAX).contains(&bl) => bl as usize,
                _ => {
                    events.push(error(b"invalid bulk length"));
                    return events;
                }
            };
            qb = nl + 2;
            if len - qb < bl + 2 {
                events.push(Event::Incomplete { at: start });
                return events;
            }
            args.push(buf[qb..qb + bl].to_vec());
            qb += bl + 2;
            left -= 1;
        }
        events.push(Event::Command(args));
    }
    events
}

/// respguard's scanner over `buf`, delivered `piece` bytes at a time.
fn respguard(buf: &[u8], piece: usize) -> Vec<Event> {
    let limits = Limits {
        max_bulk_len: BULK_MAX as usize,
        max_multibulk_len: i32::MAX as usize,
        max_inline_len: INLINE_MAX,
        ..Limits::default()
    };
    let mut events = Vec::new();
    let mut scanner = RequestScanner::new();
    let (mut spans, mut inline) = (Vec::new(), Vec::new());
    let mut start = 0;
    let mut avail = piece.min(buf.len());
    while start < buf.len() {
        let b = &buf[start..avail];
        match scanner.scan(b, &limits, &mut spans, &mut inline) {
            Ok(None) if avail == buf.len() => {
                events.push(Event::Incomplete { at: start });
                return events;
            }
            Ok(None) => avail = (avail + piece).min(buf.len()),
            Ok(Some(Request::Multibulk { len })) => {
                events.push(Event::Command(
                    spans
                        .iter()
                        .map(|s| b[s.start as usize..s.end as usize].to_vec())
                        .collect(),
                ));
                start += len;
            }
            Ok(Some(Request::Inline { len })) => {
                events.push(Event::Command(inline.clone()));
                start += len;
            }
            Ok(Some(Request::Skip { len })) => {
                start += len;
                events.push(Event::Skip { at: start });
            }
            Err(e) => {
                events.push(Event::Error(e.reply().to_vec()));
                return events;
            }
        }
        avail = avail.max(start);
    }
    events
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, data)) = data.split_first() else {
        return;
    };
    let want = model(data);
    for piece in [data.len().max(1), 1, usize::from(knob % 16) + 2] {
        assert_eq!(respguard(data, piece), want, "{piece}-byte pieces");
    }
});
