//! Any text given as `flowtap.toml`: turned into `run` arguments or refused with a one-line
//! located message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(message) = flowtap::cli::config_file_args(text) {
        assert!(!message.contains('\n'), "a multi-line message: {message}");
    }
});
