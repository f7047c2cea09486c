//! The configuration loader on arbitrary text: it never panics; a file it accepts is
//! accepted again, and a refusal names at least one problem.
#![no_main]

use libfuzzer_sys::fuzz_target;
use respguard::config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.yaml", &Overrides::default()) {
        Ok(_) => assert!(Config::parse(text, "fuzz.yaml", &Overrides::default()).is_ok()),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
