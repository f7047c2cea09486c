//! RESP framing: finds complete frames in a byte buffer without copying them.
//!
//! Requests from clients are arrays of bulk strings (or inline commands); replies from Redis are
//! any RESP2/RESP3 value. Both scanners are check-then-parse: they first establish that a whole
//! frame is buffered, checking every declared length against the configured limits before
//! anything is allocated, and report `Ok(None)` for an incomplete frame. Neither recurses, so a
//! deeply nested reply cannot overflow the stack.

/// Byte range of one argument inside the buffer a request was scanned from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

/// A scanned request: its arguments as slices of the original buffer.
///
/// `Argv` borrows; it never copies argument bytes. Index 0 is the command name.
#[derive(Clone, Copy, Debug)]
pub struct Argv<'a> {
    buf: &'a [u8],
    spans: &'a [Span],
}

impl<'a> Argv<'a> {
    pub fn new(buf: &'a [u8], spans: &'a [Span]) -> Self {
        Argv { buf, spans }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Argument `i`, or `None` past the end.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        let s = self.spans.get(i)?;
        self.buf.get(s.start as usize..s.end as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        (0..self.len()).filter_map(move |i| self.get(i))
    }
}

/// An owned command, for building an [`Argv`] away from a connection buffer (tests,
/// benchmarks, tools).
#[derive(Clone, Debug, Default)]
pub struct OwnedArgv {
    buf: Vec<u8>,
    spans: Vec<Span>,
}

impl OwnedArgv {
    pub fn new(args: &[&[u8]]) -> Self {
        let mut owned = OwnedArgv::default();
        for a in args {
            let start = owned.buf.len() as u32;
            owned.buf.extend_from_slice(a);
            owned.spans.push(Span {
                start,
                end: owned.buf.len() as u32,
            });
        }
        owned
    }

    pub fn argv(&self) -> Argv<'_> {
        Argv::new(&self.buf, &self.spans)
    }
}

/// Size limits applied while scanning, before any buffer grows to hold a frame.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest bulk string accepted (Redis `proto-max-bulk-len`, 512 MB).
    pub max_bulk_len: usize,
    /// Most elements in one request array (Redis accepts 1024 * 1024 * 1024; we default lower).
    pub max_multibulk_len: usize,
    /// Deepest aggregate nesting accepted in a reply.
    pub max_depth: usize,
    /// Longest inline command line (Redis `PROTO_INLINE_MAX_SIZE`, 64 KB).
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_depth: 128,
            max_inline_len: 64 * 1024,
        }
    }
}

/// Why a byte stream is not valid RESP. Messages follow Redis's own wording where it has one,
/// so clients see what they would see talking to Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: invalid reply type byte 0x{0:02x}")]
    InvalidType(u8),
    #[error("Protocol error: invalid length or integer line")]
    InvalidLine,
    #[error("Protocol error: reply nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("Protocol error: missing CRLF after bulk data")]
    MissingCrlf,
}

/// Outcome of scanning the start of a client buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A multibulk command of `len` bytes; its argument spans were written to the span vector.
    Multibulk { len: usize },
    /// An inline command line of `len` bytes; its split arguments were written to `inline`.
    Inline { len: usize },
    /// Bytes Redis silently skips (`*0`, `*-1`, an empty inline line).
    Skip { len: usize },
}

/// Lines this short are searched byte by byte; see [`find_crlf`].
const SHORT_LINE: usize = 16;

/// Finds a CRLF-terminated line starting at `from`; returns the index of the `\r`.
#[inline]
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let mut off = 0;
    loop {
        let window = rest.get(off..)?;
        // Header lines (`*3`, `$12`) are a few bytes: looking at the first bytes directly
        // beats the setup of a `memchr` call, which only pays off on long lines.
        let i = match window.iter().take(SHORT_LINE).position(|&b| b == b'\r') {
            Some(i) => i,
            None if window.len() <= SHORT_LINE => return None,
            None => SHORT_LINE + memchr::memchr(b'\r', window.get(SHORT_LINE..)?)?,
        };
        let at = off + i;
        match rest.get(at + 1) {
            Some(b'\n') => return Some(from + at),
            Some(_) => off = at + 1,
            None => return None,
        }
    }
}

/// Parses a decimal integer line body. Rejects empty, signs other than a leading `-`, and
/// overflow, so a hostile length can never wrap.
#[inline]
fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// Scans one client request at the start of `buf`.
///
/// On `Multibulk`, `spans` holds one span per argument, relative to `buf`. On `Inline`, the
/// arguments are written to `inline` (unquoted, unescaped) because they are not contiguous in
/// `buf`; the caller re-encodes them as a multibulk. `Ok(None)` means more bytes are needed.
pub fn scan_request(
    buf: &[u8],
    limits: &Limits,
    spans: &mut Vec<Span>,
    inline: &mut Vec<Vec<u8>>,
) -> Result<Option<Request>, ProtocolError> {
    spans.clear();
    match buf.first() {
        None => Ok(None),
        Some(b'*') => scan_multibulk(buf, limits, spans),
        Some(_) => scan_inline(buf, limits, inline),
    }
}

fn scan_multibulk(
    buf: &[u8],
    limits: &Limits,
    spans: &mut Vec<Span>,
) -> Result<Option<Request>, ProtocolError> {
    let Some(eol) = find_crlf(buf, 1) else {
        // Redis refuses a header line longer than its inline limit; so do we, so a client
        // cannot make us buffer an endless header.
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        return Ok(None);
    };
    let n = parse_int(&buf[1..eol]).ok_or(ProtocolError::InvalidMultibulkLength)?;
    let mut pos = eol + 2;
    if n <= 0 {
        return Ok(Some(Request::Skip { len: pos }));
    }
    let n = n as usize;
    if n > limits.max_multibulk_len {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    for _ in 0..n {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&c) => return Err(ProtocolError::ExpectedBulk(c as char)),
        }
        let Some(eol) = find_crlf(buf, pos + 1) else {
            if buf.len() - pos > 32 {
                return Err(ProtocolError::InvalidBulkLength);
            }
            return Ok(None);
        };
        let len = parse_int(&buf[pos + 1..eol]).ok_or(ProtocolError::InvalidBulkLength)?;
        if len < 0 || len as usize > limits.max_bulk_len {
            return Err(ProtocolError::InvalidBulkLength);
        }
        let start = eol + 2;
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        spans.push(Span {
            start: start as u32,
            end: end as u32,
        });
        pos = end + 2;
    }
    Ok(Some(Request::Multibulk { len: pos }))
}

fn scan_inline(
    buf: &[u8],
    limits: &Limits,
    inline: &mut Vec<Vec<u8>>,
) -> Result<Option<Request>, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::InlineTooLong);
        }
        return Ok(None);
    };
    if nl > limits.max_inline_len {
        return Err(ProtocolError::InlineTooLong);
    }
    let line = match buf[..nl].last() {
        Some(b'\r') => &buf[..nl - 1],
        _ => &buf[..nl],
    };
    split_inline_args(line, inline)?;
    if inline.is_empty() {
        return Ok(Some(Request::Skip { len: nl + 1 }));
    }
    Ok(Some(Request::Inline { len: nl + 1 }))
}

/// C's `isspace`: what Redis skips between inline arguments and accepts after a quote.
fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// What ends an unquoted inline argument in `sdssplitargs` (narrower than `isspace`).
fn ends_unquoted(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Splits an inline command line the way Redis's `sdssplitargs` does: whitespace separates
/// arguments, double quotes allow `\n`-style and `\xHH` escapes, single quotes allow `\'`.
fn split_inline_args(line: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), ProtocolError> {
    out.clear();
    // Redis splits a C string: a NUL byte ends the line. (Every byte that ends an unquoted
    // argument is also skipped as space, so each turn of the loop below makes progress.)
    let line = &line[..memchr::memchr(0, line).unwrap_or(line.len())];
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && c_isspace(line[i]) {
            i += 1;
        }
        if i >= n {
            return Ok(());
        }
        let mut arg = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                let Some(&c) = line.get(i) else {
                    return Err(ProtocolError::UnbalancedQuotes);
                };
                if c == b'\\' && i + 3 < n && line[i + 1] == b'x' {
                    let hex = |b: u8| (b as char).to_digit(16);
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        arg.push((h * 16 + l) as u8);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < n {
                    let e = match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    };
                    arg.push(e);
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    // A closing quote must be followed by a space or the end.
                    if i + 1 < n && !c_isspace(line[i + 1]) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                arg.push(c);
                i += 1;
            } else if in_sq {
                let Some(&c) = line.get(i) else {
                    return Err(ProtocolError::UnbalancedQuotes);
                };
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    arg.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    if i + 1 < n && !c_isspace(line[i + 1]) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                arg.push(c);
                i += 1;
            } else {
                match line.get(i) {
                    None => break,
                    Some(&c) if ends_unquoted(c) => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(&c) => arg.push(c),
                }
                i += 1;
            }
        }
        out.push(arg);
    }
}

/// Appends `args` to `out` as a RESP multibulk.
pub fn encode_command<'a>(
    out: &mut bytes::BytesMut,
    args: impl ExactSizeIterator<Item = &'a [u8]>,
) {
    let mut ib = itoa_buf();
    out.extend_from_slice(b"*");
    out.extend_from_slice(fmt_int(&mut ib, args.len() as i64));
    out.extend_from_slice(b"\r\n");
    encode_args(out, args);
}

/// Appends `args` as bulk strings, without an array header (to extend a command).
pub fn encode_args<'a>(out: &mut bytes::BytesMut, args: impl Iterator<Item = &'a [u8]>) {
    let mut ib = itoa_buf();
    for a in args {
        out.extend_from_slice(b"$");
        out.extend_from_slice(fmt_int(&mut ib, a.len() as i64));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

/// Formats an integer into `buf` without allocating.
pub fn fmt_int(buf: &mut [u8; 20], v: i64) -> &[u8] {
    let mut i = buf.len();
    let neg = v < 0;
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Appends an error reply (`-MSG\r\n`), replacing CR/LF in the message so the frame stays valid.
pub fn encode_error(out: &mut bytes::BytesMut, msg: &str) {
    out.extend_from_slice(b"-");
    for b in msg.bytes() {
        out.extend_from_slice(&[if b == b'\r' || b == b'\n' { b' ' } else { b }]);
    }
    out.extend_from_slice(b"\r\n");
}

/// What the reply scanner learned about one complete reply frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyFrame {
    /// Bytes the frame occupies, attribute prefix included.
    pub len: usize,
    /// Type byte of the value (after any RESP3 attribute): `+ - : $ * % ~ > _ # , ( ! = |`.
    pub kind: u8,
    /// Offset of the value's type byte (non-zero only when an attribute precedes it).
    pub value_at: usize,
    /// Element count for aggregates, byte length for blobs, -1 for RESP2 nulls, 0 otherwise.
    pub count: i64,
}

/// Scans replies without recursion; reuses its stack between frames.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    stack: Vec<i64>,
}

impl ReplyScanner {
    pub fn new() -> Self {
        ReplyScanner { stack: Vec::new() }
    }

    /// Scans one reply at the start of `buf`. `Ok(None)`: incomplete.
    pub fn scan(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<ReplyFrame>, ProtocolError> {
        self.stack.clear();
        let mut pos = 0usize;
        let mut top: Option<(u8, usize, i64)> = None;
        // Each iteration reads one value header; aggregates push their element count and the
        // loop continues until every open aggregate has received all its elements.
        loop {
            let Some(&t) = buf.get(pos) else {
                return Ok(None);
            };
            let Some(eol) = find_crlf(buf, pos + 1) else {
                if buf.len() - pos > limits.max_inline_len {
                    return Err(ProtocolError::InvalidLine);
                }
                return Ok(None);
            };
            let line = &buf[pos + 1..eol];
            let header_at = pos;
            pos = eol + 2;
            let mut children: i64 = 0;
            let mut count: i64 = 0;
            match t {
                b'+' | b'-' | b'_' | b'#' | b',' | b'(' => {}
                b':' => {
                    parse_int(line).ok_or(ProtocolError::InvalidLine)?;
                }
                b'$' | b'!' | b'=' => {
                    let len = parse_int(line).ok_or(ProtocolError::InvalidBulkLength)?;
                    if len >= 0 {
                        if len as usize > limits.max_bulk_len {
                            return Err(ProtocolError::InvalidBulkLength);
                        }
                        let end = pos + len as usize;
                        if buf.len() < end + 2 {
                            return Ok(None);
                        }
                        if &buf[end..end + 2] != b"\r\n" {
                            return Err(ProtocolError::MissingCrlf);
                        }
                        pos = end + 2;
                    } else if len != -1 {
                        return Err(ProtocolError::InvalidBulkLength);
                    }
                    count = len;
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line).ok_or(ProtocolError::InvalidMultibulkLength)?;
                    if n < -1 || (t != b'*' && n < 0) {
                        return Err(ProtocolError::InvalidMultibulkLength);
                    }
                    count = n;
                    let n = n.max(0);
                    children = if t == b'%' || t == b'|' {
                        n.checked_mul(2)
                    } else {
                        Some(n)
                    }
                    .ok_or(ProtocolError::InvalidMultibulkLength)?;
                    // An attribute is metadata for the value that follows it: nested, that value
                    // is one more element of the attribute; at the top, the frame's value is
                    // scanned after the attribute map completes.
                    if t == b'|' && !self.stack.is_empty() {
                        children += 1;
                    }
                }
                other => return Err(ProtocolError::InvalidType(other)),
            }
            if self.stack.is_empty() && t != b'|' {
                top = Some((t, header_at, count));
            }
            if children > 0 {
                if self.stack.len() >= limits.max_depth {
                    return Err(ProtocolError::TooDeep(limits.max_depth));
                }
                self.stack.push(children);
                continue;
            }
            // A leaf (or empty aggregate) completes one element of each finished parent.
            loop {
                match self.stack.last_mut() {
                    None => break,
                    Some(rem) => {
                        *rem -= 1;
                        if *rem > 0 {
                            break;
                        }
                        self.stack.pop();
                    }
                }
            }
            if self.stack.is_empty() {
                if let Some((kind, value_at, count)) = top {
                    return Ok(Some(ReplyFrame {
                        len: pos,
                        kind,
                        value_at,
                        count,
                    }));
                }
                // A top-level attribute just completed: its value follows.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        let mut out = Vec::new();
        split_inline_args(line, &mut out).map(|()| out)
    }

    #[test]
    fn find_crlf_agrees_with_a_naive_search_around_the_short_line_window() {
        fn naive(buf: &[u8], from: usize) -> Option<usize> {
            (from..buf.len().saturating_sub(1)).find(|&i| buf[i] == b'\r' && buf[i + 1] == b'\n')
        }
        // Every placement of a lone CR, a CRLF and a trailing CR around the 16-byte window.
        for len in 0..40 {
            for cr in 0..=len {
                for crlf in 0..=len {
                    let mut buf = vec![b'x'; len + 2];
                    buf[cr] = b'\r';
                    if crlf + 1 < buf.len() {
                        buf[crlf] = b'\r';
                        buf[crlf + 1] = b'\n';
                    }
                    for cut in [buf.len(), buf.len() - 1, cr + 1] {
                        let b = &buf[..cut.min(buf.len())];
                        for from in [0, 1, 3] {
                            assert_eq!(find_crlf(b, from), naive(b, from), "{b:?} from {from}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn inline_splitting_follows_sdssplitargs() {
        assert_eq!(
            split(b"SET a b").unwrap(),
            vec![b"SET".to_vec(), b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            split(b"SET \"a b\" 'c\\'d'").unwrap()[1..],
            [b"a b".to_vec(), b"c'd".to_vec()]
        );
        assert_eq!(split(b"ECHO \"\\x41\\n\"").unwrap()[1], b"A\n".to_vec());
        assert_eq!(split(b"\x0bPING").unwrap(), vec![b"PING".to_vec()]);
        assert_eq!(split(b"GET \"a\"b"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(split(b"GET \"a"), Err(ProtocolError::UnbalancedQuotes));
        // A NUL ends the line, as in Redis's C string; it must never stall the splitter.
        assert_eq!(split(&[0u8; 64]).unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(split(b"PING\0junk").unwrap(), vec![b"PING".to_vec()]);
    }

    #[test]
    fn requests_are_checked_before_they_are_buffered() {
        let limits = Limits {
            max_bulk_len: 8,
            max_multibulk_len: 2,
            ..Limits::default()
        };
        let mut spans = Vec::new();
        let mut inline = Vec::new();
        let mut scan = |b: &[u8]| scan_request(b, &limits, &mut spans, &mut inline);
        assert_eq!(scan(b"*1\r\n$4\r\nPI"), Ok(None));
        assert_eq!(
            scan(b"*1\r\n$4\r\nPING\r\n"),
            Ok(Some(Request::Multibulk { len: 14 }))
        );
        assert_eq!(scan(b"*3\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(scan(b"*1\r\n$9\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(scan(b"*1\r\n+x\r\n"), Err(ProtocolError::ExpectedBulk('+')));
        assert_eq!(scan(b"*0\r\n"), Ok(Some(Request::Skip { len: 4 })));
        assert_eq!(scan(b"PING\r\n"), Ok(Some(Request::Inline { len: 6 })));
    }

    #[test]
    fn replies_of_every_type_and_nesting() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let mut s = ReplyScanner::new();
        let whole = b"*2\r\n%1\r\n+k\r\n,1.5\r\n~1\r\n_\r\n";
        let f = s.scan(whole, &limits).unwrap().unwrap();
        assert_eq!((f.len, f.kind, f.count), (whole.len(), b'*', 2));
        assert_eq!(s.scan(&whole[..whole.len() - 1], &limits), Ok(None));
        let attr = b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n";
        let f = s.scan(attr, &limits).unwrap().unwrap();
        assert_eq!((f.len, f.kind, f.value_at), (attr.len(), b'$', 14));
        let deep = b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n";
        assert_eq!(s.scan(deep, &limits), Err(ProtocolError::TooDeep(3)));
        assert_eq!(
            s.scan(b"?1\r\n", &limits),
            Err(ProtocolError::InvalidType(b'?'))
        );
    }
}
