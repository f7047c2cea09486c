//! Prefilters: cheap scans that never call a value clean when the full scan would find
//! something in it, so that most values are copied without being parsed (see [`super`] for
//! why they are complete).

use super::{is_separator, json, SensitiveRules};

/// A set of small integers, `64 * W` bits.
#[derive(Clone, Copy)]
pub(super) struct Bits<const W: usize>([u64; W]);

impl<const W: usize> Default for Bits<W> {
    fn default() -> Self {
        Bits([0; W])
    }
}

impl<const W: usize> Bits<W> {
    /// `i` must be below `64 * W`.
    pub(super) fn insert(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i >> 6) {
            *w |= 1 << (i & 63);
        }
    }
    #[inline]
    pub(super) fn contains(&self, i: usize) -> bool {
        self.0.get(i >> 6).is_some_and(|w| w & (1 << (i & 63)) != 0)
    }
}

/// Bytes, as a 256-bit set.
pub(super) type ByteSet = Bits<4>;

/// A 1024-bit filter over (length, first byte, last byte) of the normalized names. Document
/// member names share first and last letters with configured names often (`status` and
/// `ssn`, `email` and `cvl`); with the length they rarely do, and a name that fails here
/// costs no normalization and no search.
#[derive(Clone, Default)]
pub(super) struct ShapeFilter(Bits<16>);

impl ShapeFilter {
    #[inline]
    pub(super) fn slot(len: usize, first: u8, last: u8) -> usize {
        (len.wrapping_mul(131) ^ usize::from(first).wrapping_mul(31) ^ usize::from(last) << 3)
            & 1023
    }
    pub(super) fn insert(&mut self, len: usize, first: u8, last: u8) {
        self.0.insert(Self::slot(len, first, last));
    }
    #[inline]
    pub(super) fn contains(&self, len: usize, first: u8, last: u8) -> bool {
        self.0.contains(Self::slot(len, first, last))
    }
}

impl SensitiveRules {
    /// The field-name prefilter described in the module documentation.
    pub(super) fn may_contain_field(&self, doc: &[u8]) -> bool {
        let r = &*self.inner;
        for colon in Positions::new(doc, b':') {
            // 1. The closing quote of a member name precedes its colon, up to whitespace.
            let mut close = colon;
            while close > 0 && matches!(doc[close - 1], b' ' | b'\t' | b'\n' | b'\r') {
                close -= 1;
            }
            if close == 0 || doc[close - 1] != b'"' {
                continue;
            }
            close -= 1;
            // 2. Its last non-separator byte must end some configured name.
            let mut k = close;
            while k > 0 && is_separator(doc[k - 1]) {
                k -= 1;
            }
            if k == 0 {
                continue;
            }
            let ends_escape = (k >= 2 && doc[k - 2] == b'\\') || (k >= 6 && doc[k - 6] == b'\\');
            if !ends_escape
                && !r
                    .last
                    .contains(usize::from(doc[k - 1].to_ascii_lowercase()))
            {
                continue;
            }
            // 3. The name runs from the nearest quote before (names are short: a plain loop
            // beats memrchr's setup); normalize and look it up.
            let mut open = k - 1;
            let mut escaped = doc[open] == b'\\';
            while open > 0 && doc[open - 1] != b'"' {
                open -= 1;
                escaped |= doc[open] == b'\\';
            }
            if open == 0 {
                continue;
            }
            let name = &doc[open..close];
            if self.lookup(name, escaped).is_some() {
                return true;
            }
        }
        false
    }

    /// The detector prefilter: probes every 11th byte for a run of digits, spaces and dashes.
    /// `exact` applies the full detector rules to each run; otherwise the check is the
    /// superset used on raw JSON (≥ 13 digits in the run, or the SSN shape anywhere in it).
    pub(super) fn may_detect(&self, s: &[u8], exact: bool) -> bool {
        self.detect_in(s, exact).is_some()
    }
}

/// Offsets of every `needle` byte in `hay`, eight bytes at a time ([`json::swar`]). A
/// document has a colon every few dozen bytes; `memchr_iter` pays a call and a vector setup
/// per hit, which made up 40% of the clean-document prefilter.
pub(super) struct Positions<'a> {
    pub(super) hay: &'a [u8],
    pub(super) needle: u8,
    /// Offset of the word in `mask`.
    pub(super) base: usize,
    /// High bit set in each byte of the current word that equals `needle`.
    pub(super) mask: u64,
}

impl<'a> Positions<'a> {
    pub(super) fn new(hay: &'a [u8], needle: u8) -> Self {
        Positions {
            hay,
            needle,
            base: 0,
            mask: Self::word_mask(hay, 0, needle),
        }
    }

    #[inline]
    pub(super) fn word_mask(hay: &[u8], at: usize, needle: u8) -> u64 {
        let (v, real) = json::swar::load(hay, at);
        json::swar::eq(v, needle) & real
    }
}

impl Iterator for Positions<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 8;
            if self.base >= self.hay.len() {
                return None;
            }
            self.mask = Self::word_mask(self.hay, self.base, self.needle);
        }
        let i = self.base + (self.mask.trailing_zeros() / 8) as usize;
        self.mask &= self.mask - 1;
        Some(i)
    }
}

/// True when the first non-whitespace byte opens an object or array.
#[inline]
pub(super) fn starts_container(v: &[u8]) -> bool {
    v.iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{' || b == b'[')
}

#[inline]
pub(super) fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || b == b' ' || b == b'-'
}

/// True when a `\u00XX` escape could decode to a digit, space or dash (U+0020-U+003F), the
/// one way a leaf's digits can hide from the raw detector prefilter.
pub(super) fn has_detectable_escape(doc: &[u8]) -> bool {
    memchr::memmem::find_iter(doc, b"\\u00").any(|i| matches!(doc.get(i + 4), Some(b'2' | b'3')))
}
