//! flowtap's kernel programs: one generic entry and one generic exit program attached to every
//! selected function (attach cookie = probe id), a per-thread shadow stack validated by stack
//! pointer, and per-probe counters and latency histograms kept in the kernel. Nothing here
//! formats, allocates or wakes userspace.
#![no_std]
#![no_main]
// 64-bit atomic add (BPF_ATOMIC) is only reachable through the intrinsic: the bpf target
// declares load/store atomics but not read-modify-write ones.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod capture;
mod entry;
mod exit;
mod lifecycle;
mod loads;
mod log;
mod maps;
mod span;
mod stack;
mod stats;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
