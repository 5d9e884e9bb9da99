//! Any bytes given as an ELF object: flowtap's symbol reader must answer or refuse, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = flowtap::ElfObject::parse(std::path::Path::new("fuzzed"), data);
});
