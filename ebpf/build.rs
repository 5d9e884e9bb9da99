fn main() -> aya_build::Result<()> {
    // `bpf_target_arch`: which registers hold the stack pointer and return value.
    aya_build::emit_bpf_target_arch_cfg()
}
