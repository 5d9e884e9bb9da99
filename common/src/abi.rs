//! The kernel ABI's names and limits, named once: the eBPF crate declares its maps and programs
//! under these names (checked at compile time with [`same`]), the agent looks them up by them,
//! and a unit test checks the built object defines every one.

/// Integer argument registers read at entry: the six both conventions pass arguments in
/// (x86-64: rdi, rsi, rdx, rcx, r8, r9; aarch64: x0..x5).
pub const ARGUMENT_REGISTERS: usize = 6;

/// Nested return probes the kernel installs per thread (`MAX_URETPROBE_DEPTH` in
/// `kernel/events/uprobes.c`); deeper calls get no return probe.
pub const MAX_URETPROBE_DEPTH: u32 = 64;

/// The read-only global the agent writes [`crate::Config`] into before load.
pub const CONFIG: &str = "CONFIG";

/// Map names.
pub mod maps {
    /// Per-thread shadow stacks (task storage).
    pub const STACKS: &str = "STACKS";
    /// Per-probe stats keyed by probe and cgroup (per-pod metrics).
    pub const STATS: &str = "STATS";
    /// Per-probe stats indexed by probe id (no cgroup).
    pub const PROBE_STATS: &str = "PROBE_STATS";
    pub const SPECS: &str = "SPECS";
    pub const TRACED: &str = "TRACED";
    pub const AGGREGATES: &str = "AGGREGATES";
    pub const HANDOFFS: &str = "HANDOFFS";
    pub const SPANS: &str = "SPANS";
    pub const LOSSES: &str = "LOSSES";
    /// Threads with a shadow stack (task storage cannot be listed from userspace).
    pub const LIVE_STACKS: &str = "LIVE_STACKS";
    /// Chunks of captured bytes (see [`crate::capture`]).
    pub const CAPTURED: &str = "CAPTURED";
    /// Per-CPU byte and call counters of the capture, by [`crate::capture::CaptureCount`].
    pub const CAPTURE_COUNTS: &str = "CAPTURE_COUNTS";
    /// Connections the agent marked quiet: their calls are not captured.
    pub const QUIET: &str = "QUIET";
    /// The chunk program, tail-called by the per-point entry and exit programs (slot 0).
    pub const CAPTURE_TAIL: &str = "CAPTURE_TAIL";
    /// The chunk program, tail-called by the uprobe.multi entry and exit programs (slot 0).
    pub const CAPTURE_TAIL_MULTI: &str = "CAPTURE_TAIL_MULTI";

    /// The dynamic loader's notices that a traced process's objects changed.
    pub const LOADS: &str = "LOADS";

    /// Per process: when the kernel first saw it traced (fork, exec, first call) and its name.
    pub const PROCESSES: &str = "PROCESSES";

    /// Every map the agent uses.
    pub const ALL: [&str; 17] = [
        STACKS,
        STATS,
        PROBE_STATS,
        SPECS,
        TRACED,
        AGGREGATES,
        HANDOFFS,
        SPANS,
        LOSSES,
        LIVE_STACKS,
        PROCESSES,
        CAPTURED,
        CAPTURE_COUNTS,
        QUIET,
        CAPTURE_TAIL,
        CAPTURE_TAIL_MULTI,
        LOADS,
    ];
}

/// The tracepoint a new task (process or thread) is seen at, in its parent, before it runs; and
/// its record's fields holding the new task's id and its clone flags.
pub const NEW_TASK_TRACEPOINT: (&str, &str) = ("task", "task_newtask");
pub const NEW_TASK_PID_FIELD: &str = "pid";
pub const NEW_TASK_FLAGS_FIELD: &str = "clone_flags";

/// The function glibc's dynamic loader calls whenever its list of loaded objects changes, for
/// debuggers: exported by `ld-linux*.so` (GLIBC_PRIVATE).
pub const LOADER_HOOK: &str = "_dl_debug_state";

/// Program names (the functions' names in the eBPF crate).
pub mod programs {
    pub const ENTRY: &str = "call_entry";
    pub const ENTRY_MULTI: &str = "call_entry_multi";
    /// Exit by a return probe on the entry.
    pub const RETURN: &str = "call_return";
    pub const RETURN_MULTI: &str = "call_return_multi";
    /// Exit by a uprobe at a return instruction.
    pub const RET_INSN: &str = "call_ret_insn";
    pub const RET_INSN_MULTI: &str = "call_ret_insn_multi";
    pub const ENROL: &str = "enrol_process";
    pub const THREAD_EXIT: &str = "thread_exit";
    pub const PROCESS_EXEC: &str = "process_exec";
    /// A traced process's forked child joins the traced set before its first instruction.
    pub const PROCESS_FORK: &str = "process_fork";
    /// Copies a captured buffer into the capture ring (tail-called, per-point attach).
    pub const CAPTURE_CHUNKS: &str = "capture_chunks";
    /// The same for uprobe.multi programs.
    pub const CAPTURE_CHUNKS_MULTI: &str = "capture_chunks_multi";

    /// On the dynamic loader's debugger hook ([`super::LOADER_HOOK`]).
    pub const OBJECTS_CHANGED: &str = "objects_changed";

    /// Every program of the production object the agent uses.
    pub const ALL: [&str; 13] = [
        ENTRY,
        ENTRY_MULTI,
        RETURN,
        RETURN_MULTI,
        RET_INSN,
        RET_INSN_MULTI,
        ENROL,
        THREAD_EXIT,
        PROCESS_EXEC,
        PROCESS_FORK,
        CAPTURE_CHUNKS,
        CAPTURE_CHUNKS_MULTI,
        OBJECTS_CHANGED,
    ];

    /// The benchmark's kernel floor: a separate object of programs that do nothing.
    pub mod empty {
        pub const ENTRY: &str = "empty_entry";
        pub const ENTRY_MULTI: &str = "empty_entry_multi";
        pub const RETURN: &str = "empty_return";
        pub const RETURN_MULTI: &str = "empty_return_multi";
        pub const RET_INSN: &str = "empty_ret_insn";
        pub const RET_INSN_MULTI: &str = "empty_ret_insn_multi";

        pub const ALL: [&str; 6] = [
            ENTRY,
            ENTRY_MULTI,
            RETURN,
            RETURN_MULTI,
            RET_INSN,
            RET_INSN_MULTI,
        ];
    }
}

/// Whether two names are equal, in const context: the eBPF crate asserts its literal map and
/// program names (the macros take only literals) against the constants here.
pub const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
