//! The request scanner on arbitrary bytes, fed whole and in pieces: it never panics, every
//! frame and span lies inside the input, each frame makes progress, and scanning in pieces
//! (resuming between reads) finds exactly what scanning the whole buffer finds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::codec::{Limits, ProtocolError, Request, RequestScanner, Span};

#[derive(Debug, PartialEq)]
enum Event {
    Args(Vec<Vec<u8>>),
    Skip(usize),
    Error(ProtocolError),
}

/// Scans every request of `data`, delivering it `piece` bytes at a time.
fn scan(data: &[u8], limits: &Limits, piece: usize) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut scanner = RequestScanner::new();
    let mut spans: Vec<Span> = Vec::new();
    let mut inline = Vec::new();
    let mut start = 0;
    let mut avail = piece.min(data.len());
    loop {
        let buf = &data[start..avail];
        if buf.is_empty() && avail == data.len() {
            return (events, start);
        }
        match scanner.scan(buf, limits, &mut spans, &mut inline) {
            Ok(None) => {
                if avail == data.len() {
                    return (events, start);
                }
                avail = (avail + piece).min(data.len());
            }
            Ok(Some(Request::Multibulk { len })) => {
                assert!(len > 0 && len <= buf.len());
                let args = spans
                    .iter()
                    .map(|s| {
                        assert!(s.start <= s.end && s.end as usize <= len);
                        buf[s.start as usize..s.end as usize].to_vec()
                    })
                    .collect();
                events.push(Event::Args(args));
                start += len;
            }
            Ok(Some(Request::Inline { len })) => {
                assert!(len > 0 && len <= buf.len());
                assert!(!inline.is_empty());
                events.push(Event::Args(inline.clone()));
                start += len;
            }
            Ok(Some(Request::Skip { len })) => {
                assert!(len > 0 && len <= buf.len());
                events.push(Event::Skip(len));
                start += len;
            }
            Err(e) => {
                events.push(Event::Error(e));
                return (events, start);
            }
        }
        if avail < start {
            avail = start;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_bulk_len: 1 + usize::from(knob & 0x3f) * 16,
        max_multibulk_len: 64,
        max_inline_len: 256,
        ..Limits::default()
    };
    let whole = scan(data, &limits, data.len().max(1));
    for piece in [1, 2, 3, 7, usize::from(knob >> 6) + 5] {
        assert_eq!(scan(data, &limits, piece), whole, "{piece}-byte pieces");
    }
});
