//! Any text given to `--symbols`: parsed or refused with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = text.parse::<flowtap::SymbolSelector>();
});
