//! Any text given as a profile: compiled or refused with a located message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(error) = flowtap::Profile::parse(text, "fuzz.toml") {
        // Formatting the error walks the positions computed from the input.
        let _ = error.to_string();
    }
});
