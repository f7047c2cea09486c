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
    /// Deepest aggregate nesting accepted in a reply; unbounded by default (the scanner's
    /// stack grows with the reply's bytes, not with recursion).
    pub max_depth: usize,
    /// Longest inline command line (Redis `PROTO_INLINE_MAX_SIZE`, 64 KB).
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_depth: usize::MAX,
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
    /// The byte found where a `$` belongs; [`ProtocolError::reply`] shows it raw, as Redis
    /// does.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    #[error("Protocol error: too big mbulk count string")]
    MultibulkLineTooLong,
    #[error("Protocol error: too big bulk count string")]
    BulkLineTooLong,
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: client query buffer limit exceeded")]
    QueryBufferLimit,
    #[error("Protocol error: invalid reply type byte 0x{0:02x}")]
    InvalidType(u8),
    #[error("Protocol error: invalid length or integer line")]
    InvalidLine,
    #[error("Protocol error: reply nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("Protocol error: missing CRLF after bulk data")]
    MissingCrlf,
}

impl ProtocolError {
    /// The error reply Redis sends for this input, byte for byte (`-ERR Protocol error: ...`).
    pub fn reply(&self) -> bytes::Bytes {
        let mut out = bytes::BytesMut::new();
        match self {
            ProtocolError::ExpectedBulk(b) => {
                // Redis prints the byte with `%c` and turns CR and LF into spaces.
                let shown = if matches!(b, b'\r' | b'\n') { b' ' } else { *b };
                out.extend_from_slice(b"-ERR Protocol error: expected '$', got '");
                out.extend_from_slice(&[shown]);
                out.extend_from_slice(b"'\r\n");
            }
            other => encode_error(&mut out, &format!("ERR {other}")),
        }
        out.freeze()
    }
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

/// Position of the first `stop` or NUL byte in `buf`, as C's `strchr` finds `stop` in a
/// string: a NUL ends the search.
#[inline]
fn strchr(buf: &[u8], stop: u8) -> Option<usize> {
    match buf
        .iter()
        .take(SHORT_LINE)
        .position(|&b| b == stop || b == 0)
    {
        Some(i) => Some(i),
        None if buf.len() <= SHORT_LINE => None,
        None => Some(SHORT_LINE + memchr::memchr2(stop, 0, buf.get(SHORT_LINE..)?)?),
    }
}

/// Redis's `string2ll`, the one integer reader for both directions: request lengths, and the
/// integers and lengths of replies (which Redis writes with `ll2string`, so they always read
/// back). An optional `-`, then digits with no leading zero (a lone `0` aside), no `+`, no
/// `-0`, at most 20 bytes, no overflow; `i64::MIN` reads.
#[inline]
pub fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let (&first, rest) = digits.split_first()?;
    if !(b'1'..=b'9').contains(&first) {
        return None;
    }
    let mut v = u64::from(first - b'0');
    for &c in rest {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    if neg {
        // Down to i64::MIN, whose magnitude has no positive i64.
        (v <= 1 << 63).then(|| 0i64.wrapping_sub(v as i64))
    } else {
        i64::try_from(v).ok()
    }
}

/// Where the first argument of a multibulk request the scanner accepted begins: after the
/// header's `\r` and the byte Redis takes as its `\n` whatever it is (so `*3\rX` is a
/// header too, and a search for `\n` would land inside the arguments).
pub fn multibulk_args_at(raw: &[u8]) -> usize {
    strchr(raw, b'\r').map_or(raw.len(), |cr| (cr + 2).min(raw.len()))
}

/// Redis refuses a multibulk count above `INT_MAX`.
const MAX_MULTIBULK_COUNT: i64 = i32::MAX as i64;

/// Scans one client request at the start of `buf` with a fresh [`RequestScanner`].
pub fn scan_request(
    buf: &[u8],
    limits: &Limits,
    spans: &mut Vec<Span>,
    inline: &mut Vec<Vec<u8>>,
) -> Result<Option<Request>, ProtocolError> {
    RequestScanner::default().scan(buf, limits, spans, inline)
}

/// Scans client requests exactly as Redis's `processMultibulkBuffer` and
/// `processInlineBuffer` read them, so respguard and Redis always agree on where a command
/// ends and what its arguments are, and input Redis refuses gets Redis's refusal.
///
/// The scanner keeps its progress through an incomplete request: a request that arrives in
/// many reads (a million-argument `MGET` in 512-byte packets) is scanned once, not once per
/// read. Between a call that returned `Ok(None)` and the next, the caller must keep the
/// request at the start of the buffer and only append to it (or call [`RequestScanner::reset`]).
#[derive(Clone, Debug, Default)]
pub struct RequestScanner {
    /// Offset of the next unread header, or of the data of the argument in `bulk`.
    pos: usize,
    /// Where the search for the end of the current line resumes.
    searched: usize,
    /// Arguments still to come; 0 while the `*` line is unread.
    left: usize,
    /// Length of the argument whose data starts at `pos`, once its `$` line is read.
    bulk: Option<usize>,
}

impl RequestScanner {
    pub fn new() -> Self {
        RequestScanner::default()
    }

    /// Forgets an incomplete request (its bytes were dropped).
    pub fn reset(&mut self) {
        *self = RequestScanner::default();
    }

    /// Scans one request at the start of `buf`, resuming where the previous call stopped.
    ///
    /// On `Multibulk`, `spans` holds one span per argument, relative to `buf` (it is filled
    /// across calls while the request is incomplete: leave it alone in between). On
    /// `Inline`, the arguments are written to `inline` (unquoted, unescaped) because they are
    /// not contiguous in `buf`; the caller re-encodes them as a multibulk. `Ok(None)` means
    /// more bytes are needed.
    pub fn scan(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        spans: &mut Vec<Span>,
        inline: &mut Vec<Vec<u8>>,
    ) -> Result<Option<Request>, ProtocolError> {
        if buf.len() < self.pos || buf.len() < self.searched {
            // Not the buffer of the previous call: start over rather than trust offsets.
            self.reset();
        }
        let r = match buf.first() {
            None => Ok(None),
            Some(b'*') => self.multibulk(buf, limits, spans),
            Some(_) => self.inline(buf, limits, inline),
        };
        if !matches!(r, Ok(None)) {
            self.reset();
        }
        r
    }

    /// The `\r` ending the line that starts at `at`, as Redis finds it: the first `\r` before
    /// any NUL, followed by one more byte of any value (Redis skips two bytes without looking
    /// at the second). With no `\r` and more than the inline limit buffered, or a `\r` further
    /// than the limit, `too_big`.
    #[inline]
    fn line_end(
        &mut self,
        buf: &[u8],
        at: usize,
        limits: &Limits,
        too_big: ProtocolError,
    ) -> Result<Option<usize>, ProtocolError> {
        let from = self.searched.max(at);
        let rest = buf.get(from..).unwrap_or_default();
        match strchr(rest, b'\r') {
            // A line longer than the limit is refused however it arrives (Redis refuses it
            // when a read leaves more than the limit buffered without a `\r`).
            Some(i) if rest[i] == b'\r' && from + i - at > limits.max_inline_len => Err(too_big),
            Some(i) if rest[i] == b'\r' => {
                self.searched = from + i;
                Ok((from + i + 1 < buf.len()).then_some(from + i))
            }
            found => {
                // After a NUL no line end is ever found: Redis waits until the limit.
                self.searched = from + found.unwrap_or(rest.len());
                if buf.len() - at > limits.max_inline_len {
                    return Err(too_big);
                }
                Ok(None)
            }
        }
    }

    fn multibulk(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        spans: &mut Vec<Span>,
    ) -> Result<Option<Request>, ProtocolError> {
        if self.left == 0 {
            spans.clear();
            let Some(cr) = self.line_end(buf, 0, limits, ProtocolError::MultibulkLineTooLong)?
            else {
                return Ok(None);
            };
            let n = string2ll(&buf[1..cr])
                .filter(|&n| n <= MAX_MULTIBULK_COUNT)
                .ok_or(ProtocolError::InvalidMultibulkLength)?;
            let after = cr + 2;
            if n <= 0 {
                return Ok(Some(Request::Skip { len: after }));
            }
            if n as u64 > limits.max_multibulk_len as u64 {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            self.left = n as usize;
            self.pos = after;
            self.searched = after;
            self.bulk = None;
        }
        while self.left > 0 {
            let len = match self.bulk {
                Some(len) => len,
                None => {
                    let at = self.pos;
                    let Some(cr) =
                        self.line_end(buf, at, limits, ProtocolError::BulkLineTooLong)?
                    else {
                        return Ok(None);
                    };
                    // Redis looks at the type byte only once the whole line is in.
                    if buf[at] != b'$' {
                        return Err(ProtocolError::ExpectedBulk(buf[at]));
                    }
                    let len = string2ll(&buf[at + 1..cr])
                        .filter(|&l| l >= 0 && l as u64 <= limits.max_bulk_len as u64)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    self.pos = cr + 2;
                    self.bulk = Some(len as usize);
                    len as usize
                }
            };
            let start = self.pos;
            // Redis skips the two bytes after the data without checking they are CRLF.
            let Some(next) = start.checked_add(len).and_then(|e| e.checked_add(2)) else {
                return Err(ProtocolError::InvalidBulkLength);
            };
            if buf.len() < next {
                return Ok(None);
            }
            if next > u32::MAX as usize {
                // Spans are 32-bit: a request this large is past any sane buffer limit.
                return Err(ProtocolError::QueryBufferLimit);
            }
            spans.push(Span {
                start: start as u32,
                end: (start + len) as u32,
            });
            self.pos = next;
            self.searched = next;
            self.bulk = None;
            self.left -= 1;
        }
        Ok(Some(Request::Multibulk { len: self.pos }))
    }

    fn inline(
        &mut self,
        buf: &[u8],
        limits: &Limits,
        inline: &mut Vec<Vec<u8>>,
    ) -> Result<Option<Request>, ProtocolError> {
        let from = self.searched;
        let rest = buf.get(from..).unwrap_or_default();
        let nl = match strchr(rest, b'\n') {
            Some(i) if rest[i] == b'\n' => from + i,
            found => {
                // Without a line feed before any NUL the line is not complete (Redis
                // searches with `strchr`) until it is too long.
                self.searched = from + found.unwrap_or(rest.len());
                if buf.len() > limits.max_inline_len {
                    return Err(ProtocolError::InlineTooLong);
                }
                return Ok(None);
            }
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
///
/// Like [`RequestScanner`], it keeps its progress through an incomplete reply, so a large
/// reply arriving in many reads is scanned once. Between a call that returned `Ok(None)` and
/// the next, the reply must stay at the start of the buffer and only be appended to (or call
/// [`ReplyScanner::reset`]); a fresh scanner or one that just returned a frame or an error
/// takes any buffer.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Elements still owed by each open aggregate, outermost first.
    stack: Vec<i64>,
    /// Offset of the next header to read in the reply being scanned (0: none in progress).
    pos: usize,
    /// The frame's value: type byte, offset and count, once its header is read.
    top: Option<(u8, usize, i64)>,
}

impl ReplyScanner {
    pub fn new() -> Self {
        ReplyScanner::default()
    }

    /// Forgets an incomplete reply (its bytes were dropped).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.top = None;
        self.stack.clear();
        if self.stack.capacity() > 4096 {
            // A deep reply grew the stack: do not keep that memory for the next one.
            self.stack = Vec::new();
        }
    }

    /// Scans one reply at the start of `buf`, resuming where the previous call stopped.
    /// `Ok(None)`: incomplete.
    pub fn scan(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<ReplyFrame>, ProtocolError> {
        if self.pos == 0 || self.pos > buf.len() {
            self.reset();
        }
        let r = self.scan_from(buf, limits);
        if !matches!(r, Ok(None)) {
            self.pos = 0;
        }
        r
    }

    fn scan_from(
        &mut self,
        buf: &[u8],
        limits: &Limits,
    ) -> Result<Option<ReplyFrame>, ProtocolError> {
        // Each iteration reads one value header; aggregates push their element count and the
        // loop continues until every open aggregate has received all its elements. On
        // `Ok(None)`, `self.pos` is the header of the element that is not complete yet: the
        // stack and `top` do not include it, so the next call starts over from that header.
        loop {
            let header_at = self.pos;
            let Some(&t) = buf.get(header_at) else {
                return Ok(None);
            };
            let Some(eol) = find_crlf(buf, header_at + 1) else {
                // Incomplete: refused once no CRLF could still end it within the limit (its
                // CR may be the last byte buffered).
                if buf.len() - header_at > limits.max_inline_len.saturating_add(1) {
                    return Err(ProtocolError::InvalidLine);
                }
                return Ok(None);
            };
            if eol - header_at > limits.max_inline_len {
                // Refused however the line arrives, not only when a read ends inside it.
                return Err(ProtocolError::InvalidLine);
            }
            let line = &buf[header_at + 1..eol];
            let mut pos = eol + 2;
            let mut children: i64 = 0;
            let mut count: i64 = 0;
            match t {
                b'+' | b'-' | b'_' | b'#' | b',' | b'(' => {}
                b':' => {
                    string2ll(line).ok_or(ProtocolError::InvalidLine)?;
                }
                b'$' | b'!' | b'=' => {
                    let len = string2ll(line).ok_or(ProtocolError::InvalidBulkLength)?;
                    if len >= 0 {
                        if len as u64 > limits.max_bulk_len as u64 {
                            return Err(ProtocolError::InvalidBulkLength);
                        }
                        let Some(end) = pos.checked_add(len as usize) else {
                            return Err(ProtocolError::InvalidBulkLength);
                        };
                        if buf.len() < end.saturating_add(2) {
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
                    let n = string2ll(line).ok_or(ProtocolError::InvalidMultibulkLength)?;
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
            // The header (and a blob's data) is complete: commit it.
            self.pos = pos;
            if self.stack.is_empty() && t != b'|' {
                self.top = Some((t, header_at, count));
            }
            if children > 0 {
                if self.stack.len() >= limits.max_depth {
                    return Err(ProtocolError::TooDeep(limits.max_depth));
                }
                self.stack.push(children);
                continue;
            }
            // A leaf (or empty aggregate) completes one element of each finished parent.
            while let Some(rem) = self.stack.last_mut() {
                *rem -= 1;
                if *rem > 0 {
                    break;
                }
                self.stack.pop();
            }
            if self.stack.is_empty() {
                if let Some((kind, value_at, count)) = self.top.take() {
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

/// True for the type byte of an error reply: a simple error `-`, or a RESP3 blob error `!`.
#[inline]
pub fn is_error(kind: u8) -> bool {
    kind == b'-' || kind == b'!'
}

/// The integer on a reply's first line (`:5`, `*3`, `%2`, `$-1`), read like the reply scanner
/// reads it ([`string2ll`]). `None` without a line end or for anything but a decimal integer.
pub fn header_int(reply: &[u8]) -> Option<i64> {
    let end = memchr::memchr(b'\r', reply)?;
    string2ll(reply.get(1..end)?)
}

/// The elements of an aggregate reply, in order: see [`elements`].
#[derive(Debug)]
pub struct Elements<'b, 'l> {
    reply: &'b [u8],
    /// Offset of the next element's header.
    pos: usize,
    scanner: ReplyScanner,
    limits: &'l Limits,
}

/// One element of an aggregate reply.
#[derive(Clone, Copy, Debug)]
pub struct Element<'b> {
    /// Offset of the element in the walked reply.
    pub at: usize,
    pub frame: ReplyFrame,
    /// The element's bytes, attribute prefix included.
    pub bytes: &'b [u8],
}

impl<'b> Element<'b> {
    /// The element's value, without an attribute that precedes it (type byte first).
    pub fn value(&self) -> &'b [u8] {
        self.bytes.get(self.frame.value_at..).unwrap_or_default()
    }
}

/// Walks the elements of the aggregate whose header starts `reply` (an array, set, push or
/// map: a map's keys and values are separate elements), one complete frame each. The walk
/// ends at the end of `reply` or at the first element that is not a complete, valid frame.
/// Allocation-free unless an element nests aggregates.
pub fn elements<'b, 'l>(reply: &'b [u8], limits: &'l Limits) -> Elements<'b, 'l> {
    let pos = memchr::memchr(b'\n', reply).map_or(reply.len(), |nl| nl + 1);
    Elements {
        reply,
        pos,
        scanner: ReplyScanner::new(),
        limits,
    }
}

impl<'b> Iterator for Elements<'b, '_> {
    type Item = Element<'b>;

    fn next(&mut self) -> Option<Element<'b>> {
        let rest = self.reply.get(self.pos..).filter(|r| !r.is_empty())?;
        let Ok(Some(frame)) = self.scanner.scan(rest, self.limits) else {
            self.pos = self.reply.len();
            return None;
        };
        let at = self.pos;
        self.pos += frame.len;
        Some(Element {
            at,
            frame,
            bytes: rest.get(..frame.len)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_walks_each_complete_element_and_stops_at_a_broken_one() {
        let limits = Limits::default();
        let reply = b"*4\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n-ERR x\r\n|1\r\n+a\r\n+b\r\n:7\r\n";
        let els: Vec<_> = elements(reply, &limits).collect();
        assert_eq!(els.len(), 4);
        assert_eq!(els[0].bytes, b"$3\r\nabc\r\n");
        assert_eq!((els[0].at, els[0].frame.kind), (4, b'$'));
        assert_eq!(els[1].bytes, b"$-1\r\n");
        assert_eq!(els[2].bytes, b"*2\r\n:1\r\n-ERR x\r\n");
        assert_eq!(els[2].frame.count, 2);
        // An attribute is part of its element; the value follows it.
        assert_eq!(els[3].bytes, b"|1\r\n+a\r\n+b\r\n:7\r\n");
        assert_eq!(els[3].value(), b":7\r\n");
        let at: usize = els.iter().map(|e| e.bytes.len()).sum::<usize>() + 4;
        assert_eq!(at, reply.len());

        // A map's keys and values are elements of their own.
        assert_eq!(elements(b"%1\r\n+k\r\n:2\r\n", &limits).count(), 2);
        // An empty aggregate, and a walk that meets an incomplete or invalid element.
        assert_eq!(elements(b"*0\r\n", &limits).count(), 0);
        assert_eq!(elements(b"*2\r\n:1\r\n$5\r\nab", &limits).count(), 1);
        assert_eq!(elements(b"*2\r\n:1\r\n?x\r\n", &limits).count(), 1);
        assert_eq!(elements(b"*2", &limits).count(), 0);
    }

    #[test]
    fn errors_are_simple_and_blob_errors_only() {
        assert!(is_error(b'-') && is_error(b'!'));
        for kind in *b"+:$*%~>_#,(=|" {
            assert!(!is_error(kind), "{}", kind as char);
        }
    }

    #[test]
    fn header_int_reads_the_first_line_as_the_scanner_does() {
        assert_eq!(header_int(b":5\r\n"), Some(5));
        assert_eq!(header_int(b"*3\r\n$1\r\na\r\n"), Some(3));
        assert_eq!(header_int(b"$-1\r\n"), Some(-1));
        assert_eq!(header_int(b":-9223372036854775808\r\n"), Some(i64::MIN));
        assert_eq!(header_int(b":9223372036854775808\r\n"), None);
        assert_eq!(header_int(b":+5\r\n"), None);
        // Redis replies the smallest integer too (INCRBY down to it): a complete frame.
        let min = b":-9223372036854775808\r\n";
        let frame = ReplyScanner::new().scan(min, &Limits::default()).unwrap();
        assert_eq!(frame.map(|f| f.len), Some(min.len()));
        assert_eq!(header_int(b":\r\n"), None);
        assert_eq!(header_int(b":5"), None);
        assert_eq!(header_int(b"+OK\r\n"), None);
    }

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
        assert_eq!(
            scan(b"*1\r\n+x\r\n"),
            Err(ProtocolError::ExpectedBulk(b'+'))
        );
        assert_eq!(scan(b"*0\r\n"), Ok(Some(Request::Skip { len: 4 })));
        assert_eq!(scan(b"PING\r\n"), Ok(Some(Request::Inline { len: 6 })));
    }

    #[test]
    fn string2ll_reads_lengths_as_redis_does() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"12"), Some(12));
        assert_eq!(string2ll(b"-7"), Some(-7));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"1a",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"000000000000000000001",
        ] {
            assert_eq!(string2ll(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    /// Scans `input` whole: the outcome and, for a multibulk, its arguments.
    fn scan_all(input: &[u8]) -> (Result<Option<Request>, ProtocolError>, Vec<Vec<u8>>) {
        let mut spans = Vec::new();
        let mut inline = Vec::new();
        let r = scan_request(input, &Limits::default(), &mut spans, &mut inline);
        let args = match r {
            Ok(Some(Request::Multibulk { .. })) => spans
                .iter()
                .map(|s| input[s.start as usize..s.end as usize].to_vec())
                .collect(),
            Ok(Some(Request::Inline { .. })) => inline,
            _ => Vec::new(),
        };
        (r, args)
    }

    #[test]
    fn request_lengths_and_lines_follow_redis() {
        use ProtocolError::*;
        let bad_count: [&[u8]; 6] = [
            b"*+1\r\n$4\r\nPING\r\n",
            b"*01\r\n$4\r\nPING\r\n",
            b"*-0\r\n",
            b"* 3\r\n",
            b"*2147483648\r\n",
            b"*\r\n",
        ];
        for input in bad_count {
            assert_eq!(scan_all(input).0, Err(InvalidMultibulkLength), "{input:?}");
        }
        for input in [
            &b"*1\r\n$04\r\nPING\r\n"[..],
            b"*1\r\n$+4\r\nPING\r\n",
            b"*1\r\n$-0\r\nPING\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$536870913\r\n",
        ] {
            assert_eq!(scan_all(input).0, Err(InvalidBulkLength), "{input:?}");
        }
        // Skipped as Redis skips them.
        assert_eq!(scan_all(b"*0\r\n").0, Ok(Some(Request::Skip { len: 4 })));
        assert_eq!(scan_all(b"*-5\r\n").0, Ok(Some(Request::Skip { len: 5 })));
        // Redis takes any byte after a header's CR as its LF, and skips the two bytes after
        // bulk data unread: respguard must frame such input identically.
        let (r, args) = scan_all(b"*1\rX$4\r\nPINGxy*1");
        assert_eq!(r, Ok(Some(Request::Multibulk { len: 14 })));
        assert_eq!(args, vec![b"PING".to_vec()]);
        // The type byte is only checked once its line is complete.
        assert_eq!(scan_all(b"*1\r\nx4").0, Ok(None));
        assert_eq!(scan_all(b"*1\r\nx4\r\n").0, Err(ExpectedBulk(b'x')));
        assert_eq!(
            ExpectedBulk(0xff).reply(),
            &b"-ERR Protocol error: expected '$', got '\xff'\r\n"[..]
        );
        assert_eq!(
            ExpectedBulk(b'\r').reply(),
            &b"-ERR Protocol error: expected '$', got ' '\r\n"[..]
        );
        // A NUL before the line end hides it (Redis searches with strchr): the request waits
        // until the line is too long.
        for input in [&b"*1\0\r\n"[..], b"*1\r\n$4\0\r\nPING\r\n", b"PING\0\r\n"] {
            assert_eq!(scan_all(input).0, Ok(None), "{input:?}");
        }
        let mut long = b"*1\0".to_vec();
        long.resize(64 * 1024 + 2, b'x');
        assert_eq!(scan_all(&long).0, Err(MultibulkLineTooLong));
        let mut long = b"*1\r\n$4".to_vec();
        long.resize(4 + 64 * 1024, b'x');
        assert_eq!(scan_all(&long).0, Ok(None));
        long.push(b'x');
        assert_eq!(scan_all(&long).0, Err(BulkLineTooLong));
        // Inline: CRLF or LF ends the line; an empty line is skipped.
        assert_eq!(scan_all(b"\n").0, Ok(Some(Request::Skip { len: 1 })));
        assert_eq!(scan_all(b"  \r\n").0, Ok(Some(Request::Skip { len: 4 })));
        let (r, args) = scan_all(b"PING\rPING\n");
        assert_eq!(r, Ok(Some(Request::Inline { len: 10 })));
        assert_eq!(args, vec![b"PING".to_vec(), b"PING".to_vec()]);
    }

    #[test]
    fn a_request_in_pieces_scans_like_the_whole() {
        let limits = Limits::default();
        let mut inputs: Vec<Vec<u8>> = vec![
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n".to_vec(),
            b"*1\rX$4\r\nPINGxy".to_vec(),
            b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n".to_vec(),
            b"SET a \"b c\"\r\n".to_vec(),
            b"*1\r\n$04\r\nPING\r\n".to_vec(),
            b"*1\r\nx4\r\n".to_vec(),
        ];
        let mut big = b"*1001\r\n$4\r\nMGET\r\n".to_vec();
        for i in 0..1000 {
            big.extend_from_slice(
                format!("${}\r\nkey:{i}\r\n", 4 + i.to_string().len()).as_bytes(),
            );
        }
        inputs.push(big);
        for input in &inputs {
            let whole = scan_all(input);
            for piece in [1, 2, 3, 7, 512] {
                let mut s = RequestScanner::new();
                let mut spans = Vec::new();
                let mut inline = Vec::new();
                let mut got = Ok(None);
                let mut end = 0;
                while end < input.len() {
                    end = (end + piece).min(input.len());
                    got = s.scan(&input[..end], &limits, &mut spans, &mut inline);
                    if !matches!(got, Ok(None)) {
                        break;
                    }
                }
                let args: Vec<Vec<u8>> = match got {
                    Ok(Some(Request::Multibulk { .. })) => spans
                        .iter()
                        .map(|s| input[s.start as usize..s.end as usize].to_vec())
                        .collect(),
                    Ok(Some(Request::Inline { .. })) => inline.clone(),
                    _ => Vec::new(),
                };
                assert_eq!(
                    (got, args),
                    whole,
                    "{piece}-byte pieces of {:?}",
                    &input[..20.min(input.len())]
                );
            }
        }
    }

    #[test]
    fn a_reply_line_over_the_limit_is_refused_whole_or_in_pieces() {
        let limits = Limits {
            max_inline_len: 16,
            ..Limits::default()
        };
        let mut line = b"+".to_vec();
        line.extend_from_slice(&[b'x'; 20]);
        line.extend_from_slice(b"\r\n");
        let mut s = ReplyScanner::new();
        assert_eq!(
            s.scan(&line[..18], &limits),
            Err(ProtocolError::InvalidLine)
        );
        assert_eq!(s.scan(&line, &limits), Err(ProtocolError::InvalidLine));
        let ok = b"+xxxxxxxxxxxxxxx\r\n";
        assert_eq!(s.scan(&ok[..17], &limits), Ok(None));
        assert_eq!(s.scan(ok, &limits).map(|f| f.map(|f| f.len)), Ok(Some(18)));
    }

    #[test]
    fn a_reply_in_pieces_scans_like_the_whole() {
        let limits = Limits::default();
        let whole =
            b"|1\r\n+ttl\r\n:3\r\n*3\r\n$5\r\nhello\r\n%1\r\n+k\r\n~2\r\n#t\r\n_\r\n,1.5\r\n";
        let want = ReplyScanner::new().scan(whole, &limits);
        assert_eq!(
            want.clone().map(|f| f.map(|f| f.len)),
            Ok(Some(whole.len()))
        );
        for piece in 1..8 {
            let mut s = ReplyScanner::new();
            let mut end = 0;
            let got = loop {
                end = (end + piece).min(whole.len());
                match s.scan(&whole[..end], &limits) {
                    Ok(None) if end < whole.len() => {}
                    other => break other,
                }
            };
            assert_eq!(got, want, "{piece}-byte pieces");
        }
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
