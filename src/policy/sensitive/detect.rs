//! The value detectors: card numbers (Luhn-valid digit groups) and US social security numbers.

use super::prefilter::is_number_byte;
use super::{Detector, SensitiveRules};

impl SensitiveRules {
    /// Runs the detectors over a plain string.
    pub fn detect(&self, s: &[u8]) -> Option<Detector> {
        self.detect_in(s, true)
    }

    pub(super) fn detect_in(&self, s: &[u8], exact: bool) -> Option<Detector> {
        const STRIDE: usize = 11;
        let r = &*self.inner;
        if r.card.is_none() && r.ssn.is_none() {
            return None;
        }
        let mut p = STRIDE - 1;
        while p < s.len() {
            if !is_number_byte(s[p]) {
                p += STRIDE;
                continue;
            }
            let mut a = p;
            while a > 0 && is_number_byte(s[a - 1]) {
                a -= 1;
            }
            let mut b = p + 1;
            while b < s.len() && is_number_byte(s[b]) {
                b += 1;
            }
            let run = &s[a..b];
            // Both detectors need 11 bytes (an SSN; a card needs 13 digits).
            if run.len() < STRIDE {
                p = b + STRIDE;
                continue;
            }
            if r.card.is_some() {
                let digits = run.iter().filter(|c| c.is_ascii_digit()).count();
                let hit = digits >= 13 && (!exact || has_card_number(run));
                if hit {
                    return Some(Detector::CardNumber);
                }
            }
            if r.ssn.is_some() && has_ssn(s, a, b, exact) {
                return Some(Detector::UsSsn);
            }
            // The next run of 11 starts after `b` (a non-number byte), so it covers b + 11.
            p = b + STRIDE;
        }
        None
    }
}

/// Luhn checksum over the digits of `s` (other bytes ignored).
pub(super) fn luhn(s: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for &c in s.iter().rev().filter(|c| c.is_ascii_digit()) {
        let mut d = u32::from(c - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum % 10 == 0
}

/// A card number inside a run of digits, spaces and dashes: a chain of digit groups joined
/// by single separators, 13-19 digits in all, starting with a payment-card industry digit
/// (2-6; this spares 13-digit millisecond timestamps and snowflake ids, which start with 1),
/// Luhn-valid. Groups of a separated number have at least 3 digits, as every card layout
/// does, so lists of small numbers (`20 30 40 ...`) are not cards. A card may be preceded or
/// followed by other groups of the chain (`4111 1111 1111 1111 12/25`).
pub(super) fn has_card_number(run: &[u8]) -> bool {
    let mut i = 0;
    while i < run.len() {
        if run[i].is_ascii_digit() {
            if card_starting_at(run, i) {
                return true;
            }
            while i < run.len() && run[i].is_ascii_digit() {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    false
}

pub(super) fn card_starting_at(run: &[u8], start: usize) -> bool {
    if !(b'2'..=b'6').contains(&run[start]) {
        return false;
    }
    let (mut digits, mut groups, mut short) = (0, 0, false);
    let mut j = start;
    loop {
        let g = j;
        while j < run.len() && run[j].is_ascii_digit() {
            j += 1;
        }
        digits += j - g;
        groups += 1;
        short |= j - g < 3;
        if digits > 19 {
            return false;
        }
        if digits >= 13 && (groups == 1 || !short) && luhn(&run[start..j]) {
            return true;
        }
        match (run.get(j), run.get(j + 1)) {
            (Some(b' ' | b'-'), Some(d)) if d.is_ascii_digit() => j += 1,
            _ => return false,
        }
    }
}

/// An SSN shape `ddd-dd-dddd` within `s[a..b]`; `exact` adds the boundary and SSA rules.
pub(super) fn has_ssn(s: &[u8], a: usize, b: usize, exact: bool) -> bool {
    if b - a < 11 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| s[r].iter().all(u8::is_ascii_digit);
    (a..=b - 11).any(|i| {
        if s[i + 3] != b'-'
            || s[i + 6] != b'-'
            || !digits(i..i + 3)
            || !digits(i + 4..i + 6)
            || !digits(i + 7..i + 11)
        {
            return false;
        }
        if !exact {
            return true;
        }
        let free = |c: Option<&u8>| c.is_none_or(|&c| !c.is_ascii_digit() && c != b'-');
        let (area, group, serial) = (&s[i..i + 3], &s[i + 4..i + 6], &s[i + 7..i + 11]);
        free(i.checked_sub(1).and_then(|j| s.get(j)))
            && free(s.get(i + 11))
            && area != b"000"
            && area != b"666"
            && area[0] != b'9'
            && group != b"00"
            && serial != b"0000"
    })
}
