//! Key shapes: a key with its variable parts folded, so `user42` and `user7` are both
//! `user{n}`, `form:8c0e...` is `form:{hex}` and a UUID is `{uuid}`. The audit counts keys by
//! shape (in a table of bounded size) to show what the keys in no namespace look like, and the
//! suggested policy turns shapes into namespace patterns.
//!
//! Folding works on alphanumeric runs: a run that is a UUID (8-4-4-4-12 hex digits) becomes
//! `{uuid}`; a run of 8 or more hex digits with at least one decimal digit becomes `{hex}`;
//! otherwise each run of decimal digits becomes `{n}`. Bytes outside printable ASCII are shown
//! as `\xNN`, and a shape is cut after [`MAX_SHAPE_LEN`] bytes.

use std::fmt::Write;

/// Longest shape kept; longer ones end in `...`.
pub const MAX_SHAPE_LEN: usize = 120;

/// The shape of `key`.
pub fn of(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len().min(MAX_SHAPE_LEN) + 8);
    let mut i = 0;
    while i < key.len() {
        if out.len() >= MAX_SHAPE_LEN {
            out.push_str("...");
            break;
        }
        let b = key[i];
        if b.is_ascii_alphanumeric() {
            if is_uuid_at(key, i) {
                out.push_str("{uuid}");
                i += 36;
                continue;
            }
            let end = key[i..]
                .iter()
                .position(|c| !c.is_ascii_alphanumeric())
                .map_or(key.len(), |p| i + p);
            let run = &key[i..end];
            if run.len() >= 8
                && run.iter().all(u8::is_ascii_hexdigit)
                && run.iter().any(u8::is_ascii_digit)
            {
                out.push_str("{hex}");
            } else {
                fold_digits(run, &mut out);
            }
            i = end;
            continue;
        }
        push_byte(b, &mut out);
        i += 1;
    }
    if out.len() > MAX_SHAPE_LEN + 3 {
        // Only ASCII is ever pushed, so every index is a char boundary.
        out.truncate(MAX_SHAPE_LEN);
        out.push_str("...");
    }
    out
}

/// `key` shown for a report: printable ASCII as is, other bytes as `\xNN`, cut like a shape.
pub fn show(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len().min(MAX_SHAPE_LEN));
    for &b in key {
        if out.len() >= MAX_SHAPE_LEN {
            out.push_str("...");
            break;
        }
        push_byte(b, &mut out);
    }
    out
}

fn push_byte(b: u8, out: &mut String) {
    match b {
        b'\\' => out.push_str("\\\\"),
        0x20..=0x7e => out.push(char::from(b)),
        _ => {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

fn fold_digits(run: &[u8], out: &mut String) {
    let mut in_digits = false;
    for &b in run {
        if b.is_ascii_digit() {
            if !in_digits {
                out.push_str("{n}");
                in_digits = true;
            }
        } else {
            in_digits = false;
            out.push(char::from(b));
        }
    }
}

/// A UUID starts at `i` and is not part of a longer alphanumeric run.
fn is_uuid_at(key: &[u8], i: usize) -> bool {
    let Some(s) = key.get(i..i + 36) else {
        return false;
    };
    let dashes_ok = s.iter().enumerate().all(|(j, &c)| match j {
        8 | 13 | 18 | 23 => c == b'-',
        _ => c.is_ascii_hexdigit(),
    });
    dashes_ok && !key.get(i + 36).is_some_and(u8::is_ascii_alphanumeric)
}

/// Whether a shape segment is a folded variable part.
pub fn is_variable(segment: &str) -> bool {
    segment.contains("{n}") || segment.contains("{hex}") || segment.contains("{uuid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_uuids_and_hex_runs_fold() {
        assert_eq!(of(b"user42"), "user{n}");
        assert_eq!(of(b"42_limit"), "{n}_limit");
        assert_eq!(of(b"form:12"), "form:{n}");
        assert_eq!(of(b"user_profile:7"), "user_profile:{n}");
        assert_eq!(
            of(b"sess:123e4567-e89b-12d3-a456-426614174000:web"),
            "sess:{uuid}:web"
        );
        assert_eq!(of(b"blob:8c0e5f3a9d"), "blob:{hex}");
        // Words made of hex letters alone are words, not ids.
        assert_eq!(of(b"cafe:deadbeefcafe"), "cafe:deadbeefcafe");
        assert_eq!(of(b"v2:a1b2"), "v{n}:a{n}b{n}");
    }

    #[test]
    fn binary_and_long_keys_are_shown_safely() {
        assert_eq!(of(b"k\xff\r\n"), "k\\xff\\x0d\\x0a");
        let long = vec![b'a'; 500];
        assert_eq!(of(&long).len(), MAX_SHAPE_LEN + 3);
        assert_eq!(show(&[b'x'; 300]).len(), MAX_SHAPE_LEN + 3);
    }
}
