//! RESP bytes for expectations: frames built by hand, commands encoded as clients send them,
//! and readable renderings for assertion messages.

use bytes::BytesMut;

/// A RESP2 bulk string frame.
pub fn bulk(b: &[u8]) -> Vec<u8> {
    let mut v = format!("${}\r\n", b.len()).into_bytes();
    v.extend_from_slice(b);
    v.extend_from_slice(b"\r\n");
    v
}

/// A RESP2 array of bulk strings.
pub fn bulk_array(items: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", items.len()).into_bytes();
    for i in items {
        v.extend_from_slice(&bulk(i));
    }
    v
}

/// A RESP3 push frame of bulk strings (`>n`).
pub fn bulk_push(items: &[&[u8]]) -> Vec<u8> {
    let mut v = bulk_array(items);
    v[0] = b'>';
    v
}

/// Several commands as multibulks in one buffer (for one write).
pub fn encode_many(cmds: &[&[&[u8]]]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for c in cmds {
        respguard::codec::encode_command(&mut b, c.iter().copied());
    }
    b.to_vec()
}

/// Shows a reply readably in assertion messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

/// Panics, showing both sides as escaped text, when two RESP byte strings differ.
#[track_caller]
pub fn check_resp<G, W>(got: &G, want: &W, what: std::fmt::Arguments<'_>)
where
    G: AsRef<[u8]> + ?Sized,
    W: AsRef<[u8]> + ?Sized,
{
    let (g, w) = (got.as_ref(), want.as_ref());
    if g != w {
        let excerpt = |b: &[u8]| {
            if b.len() <= 300 {
                format!("\"{}\"", show(b))
            } else {
                format!(
                    "\"{}\" ... \"{}\" ({} bytes)",
                    show(&b[..200]),
                    show(&b[b.len() - 40..]),
                    b.len()
                )
            }
        };
        panic!("{what}\n   got: {}\n  want: {}", excerpt(g), excerpt(w));
    }
}
