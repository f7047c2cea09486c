//! The reply scanner on arbitrary bytes: it never panics or recurses, a frame lies inside the
//! input, the same frame is found when only its bytes are given, and any shorter prefix of
//! it is incomplete rather than an error or another frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::codec::{Limits, ReplyScanner};

fuzz_target!(|data: &[u8]| {
    let Some((&knob, data)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_bulk_len: 1 + usize::from(knob) * 4,
        max_inline_len: 512,
        max_depth: if knob & 1 == 0 { usize::MAX } else { 4 },
        ..Limits::default()
    };
    let mut s = ReplyScanner::new();
    let mut pos = 0;
    while pos < data.len() {
        let Ok(Some(f)) = s.scan(&data[pos..], &limits) else {
            return;
        };
        assert!(f.len > 0 && f.len <= data.len() - pos);
        assert!(f.value_at < f.len);
        let frame = &data[pos..pos + f.len];
        assert_eq!(s.scan(frame, &limits), Ok(Some(f)));
        for cut in [f.len - 1, f.len / 2, 1] {
            if cut < f.len {
                assert_eq!(s.scan(&frame[..cut], &limits), Ok(None), "prefix of {cut}");
            }
        }
        pos += f.len;
    }
});
