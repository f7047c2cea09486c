//! The value inside a `RESTORE` payload, for the sensitive-data stage: Redis's `DUMP` format
//! read as far as a string value goes.
//!
//! A payload is the serialized object (one type byte, then the value in RDB encoding), the
//! 2-byte RDB version and an 8-byte CRC64, both little-endian. Only strings are decoded: type
//! 0, then a length-encoded string that may be stored as an integer or LZF-compressed. Redis
//! reads the object from the start of the payload and checks the version and checksum itself,
//! so the bytes decoded here are the bytes Redis would store, or Redis refuses the payload.
//! Any other type, or a payload that does not decode, is reported as such; the stage refuses
//! it where sensitive rules apply, since it cannot look inside.

/// Most bytes a compressed string may expand to before respguard gives up on inspecting it.
pub const MAX_DECODED: usize = 64 * 1024 * 1024;

/// Why a payload's value is not available for inspection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Opaque {
    #[error("it holds a value of RDB type {0}, which respguard does not decode (only strings)")]
    NotAString(u8),
    #[error("it is not a well-formed DUMP payload")]
    Malformed,
    #[error("its string would decompress to more than {} MiB", MAX_DECODED >> 20)]
    TooLarge,
}

const TRAILER: usize = 10;
const RDB_TYPE_STRING: u8 = 0;

/// The string value a `DUMP` payload holds: borrowed when stored plainly, decoded otherwise.
pub fn string_value(payload: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Opaque> {
    let body_len = payload
        .len()
        .checked_sub(TRAILER)
        .ok_or(Opaque::Malformed)?;
    let body = payload.get(..body_len).ok_or(Opaque::Malformed)?;
    let (&kind, rest) = body.split_first().ok_or(Opaque::Malformed)?;
    if kind != RDB_TYPE_STRING {
        return Err(Opaque::NotAString(kind));
    }
    let mut r = Reader { buf: rest, at: 0 };
    r.string()
}

/// A length as RDB encodes it, or the marker of a specially encoded string.
enum Len {
    Plain(u64),
    Encoded(u8),
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], Opaque> {
        let end = self.at.checked_add(n).ok_or(Opaque::Malformed)?;
        let out = self.buf.get(self.at..end).ok_or(Opaque::Malformed)?;
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, Opaque> {
        Ok(self.bytes(1)?.first().copied().unwrap_or_default())
    }

    /// `rdbLoadLenByRef`.
    fn len(&mut self) -> Result<Len, Opaque> {
        let first = self.byte()?;
        match first >> 6 {
            0 => Ok(Len::Plain(u64::from(first & 0x3f))),
            1 => {
                let next = self.byte()?;
                Ok(Len::Plain(u64::from(first & 0x3f) << 8 | u64::from(next)))
            }
            2 => match first {
                0x80 => {
                    let b = self.bytes(4)?;
                    Ok(Len::Plain(u64::from(u32::from_be_bytes(
                        b.try_into().map_err(|_| Opaque::Malformed)?,
                    ))))
                }
                0x81 => {
                    let b = self.bytes(8)?;
                    Ok(Len::Plain(u64::from_be_bytes(
                        b.try_into().map_err(|_| Opaque::Malformed)?,
                    )))
                }
                _ => Err(Opaque::Malformed),
            },
            _ => Ok(Len::Encoded(first & 0x3f)),
        }
    }

    fn plain_len(&mut self) -> Result<usize, Opaque> {
        match self.len()? {
            Len::Plain(n) => usize::try_from(n).map_err(|_| Opaque::Malformed),
            Len::Encoded(_) => Err(Opaque::Malformed),
        }
    }

    /// `rdbGenericLoadStringObject`.
    fn string(&mut self) -> Result<std::borrow::Cow<'a, [u8]>, Opaque> {
        let int = |v: i64| Ok(v.to_string().into_bytes().into());
        match self.len()? {
            Len::Plain(n) => {
                let n = usize::try_from(n).map_err(|_| Opaque::Malformed)?;
                Ok(self.bytes(n)?.into())
            }
            Len::Encoded(0) => int(i64::from(self.byte()? as i8)),
            Len::Encoded(1) => {
                let b = self.bytes(2)?;
                int(i64::from(i16::from_le_bytes(
                    b.try_into().map_err(|_| Opaque::Malformed)?,
                )))
            }
            Len::Encoded(2) => {
                let b = self.bytes(4)?;
                int(i64::from(i32::from_le_bytes(
                    b.try_into().map_err(|_| Opaque::Malformed)?,
                )))
            }
            Len::Encoded(3) => {
                let clen = self.plain_len()?;
                let len = self.plain_len()?;
                if len > MAX_DECODED {
                    return Err(Opaque::TooLarge);
                }
                let compressed = self.bytes(clen)?;
                lzf_decompress(compressed, len).map(Into::into)
            }
            Len::Encoded(_) => Err(Opaque::Malformed),
        }
    }
}

/// LZF decompression (the format of liblzf, which Redis uses), to exactly `len` bytes: Redis
/// refuses a string whose data decompresses to any other length.
fn lzf_decompress(input: &[u8], len: usize) -> Result<Vec<u8>, Opaque> {
    let mut out: Vec<u8> = Vec::with_capacity(len);
    let mut ip = 0;
    while ip < input.len() {
        let ctrl = usize::from(input[ip]);
        ip += 1;
        if ctrl < 32 {
            // A literal run of ctrl + 1 bytes.
            let run = input.get(ip..ip + ctrl + 1).ok_or(Opaque::Malformed)?;
            if out.len() + run.len() > len {
                return Err(Opaque::Malformed);
            }
            out.extend_from_slice(run);
            ip += ctrl + 1;
        } else {
            // A back reference: copy from earlier output, possibly overlapping itself.
            let mut n = ctrl >> 5;
            if n == 7 {
                n += usize::from(*input.get(ip).ok_or(Opaque::Malformed)?);
                ip += 1;
            }
            let low = usize::from(*input.get(ip).ok_or(Opaque::Malformed)?);
            ip += 1;
            let back = ((ctrl & 0x1f) << 8) + low + 1;
            n += 2;
            let from = out.len().checked_sub(back).ok_or(Opaque::Malformed)?;
            if out.len() + n > len {
                return Err(Opaque::Malformed);
            }
            for i in from..from + n {
                let b = out[i];
                out.push(b);
            }
        }
    }
    if out.len() == len {
        Ok(out)
    } else {
        Err(Opaque::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(body: &[u8]) -> Vec<u8> {
        let mut p = body.to_vec();
        // Version and checksum: not checked here (Redis checks them).
        p.extend_from_slice(&[10, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        p
    }

    #[test]
    fn plain_integer_and_compressed_strings_decode() {
        let hello = payload(b"\x00\x05hello");
        assert_eq!(&*string_value(&hello).unwrap(), b"hello");
        assert_eq!(&*string_value(&payload(b"\x00\xc0\xfb")).unwrap(), b"-5");
        assert_eq!(
            &*string_value(&payload(b"\x00\xc1\x39\x30")).unwrap(),
            b"12345"
        );
        assert_eq!(
            &*string_value(&payload(b"\x00\xc2\x40\xe2\x01\x00")).unwrap(),
            b"123456"
        );
        // "aaaaaaaaaa": literal "a", then a back reference of 9 bytes at distance 1.
        let lzf = b"\x00\xc3\x05\x0a\x00a\xe0\x00\x00";
        assert_eq!(&*string_value(&payload(lzf)).unwrap(), b"aaaaaaaaaa");
        // 14-bit length.
        let mut long = b"\x00\x41\x00".to_vec();
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(string_value(&payload(&long)).unwrap().len(), 256);
    }

    #[test]
    fn other_types_and_broken_payloads_are_opaque() {
        assert_eq!(
            string_value(&payload(b"\x04\x01")),
            Err(Opaque::NotAString(4))
        );
        assert_eq!(string_value(b"\x00\x05hel"), Err(Opaque::Malformed));
        assert_eq!(
            string_value(&payload(b"\x00\x05hel")),
            Err(Opaque::Malformed)
        );
        // Wrong decompressed length, a reference before the start, an oversized claim.
        assert_eq!(
            string_value(&payload(b"\x00\xc3\x05\x0b\x00a\xe0\x00\x00")),
            Err(Opaque::Malformed)
        );
        assert_eq!(
            string_value(&payload(b"\x00\xc3\x02\x03\x20\x05")),
            Err(Opaque::Malformed)
        );
        assert_eq!(
            string_value(&payload(b"\x00\xc3\x01\x80\x10\x00\x00\x00\x00")),
            Err(Opaque::TooLarge)
        );
    }
}
