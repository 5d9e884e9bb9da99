//! The benchmark's kernel floor, a separate object from the production programs: the same
//! attach points with programs that do nothing, so `cargo xtask bench` can tell the uprobe's
//! own cost from flowtap's.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use flowtap_common::abi::{programs::empty, same};

const _: () = assert!(same(empty::ENTRY_MULTI, "empty_entry_multi"));
const _: () = assert!(same(empty::ENTRY, "empty_entry"));
const _: () = assert!(same(empty::RETURN_MULTI, "empty_return_multi"));
const _: () = assert!(same(empty::RETURN, "empty_return"));
const _: () = assert!(same(empty::RET_INSN_MULTI, "empty_ret_insn_multi"));
const _: () = assert!(same(empty::RET_INSN, "empty_ret_insn"));

#[uprobe(multi)]
pub(crate) fn empty_entry_multi(_ctx: ProbeContext) -> u32 {
    0
}

#[uprobe]
pub(crate) fn empty_entry(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe(multi)]
pub(crate) fn empty_return_multi(_ctx: RetProbeContext) -> u32 {
    0
}

#[uretprobe]
pub(crate) fn empty_return(_ctx: RetProbeContext) -> u32 {
    0
}

#[uprobe(multi)]
pub(crate) fn empty_ret_insn_multi(_ctx: ProbeContext) -> u32 {
    0
}

#[uprobe]
pub(crate) fn empty_ret_insn(_ctx: ProbeContext) -> u32 {
    0
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
