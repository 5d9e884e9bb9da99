//! Types shared by the kernel programs and the agent. Every type that crosses a map or the ring
//! buffer is defined once here, `#[repr(C)]`, so both sides agree by construction.
#![no_std]

pub mod histogram;

pub mod abi;

pub mod capture;

/// Frames stored per thread: as many as the kernel installs nested return probes
/// ([`abi::MAX_URETPROBE_DEPTH`]), so a return probe is never missing for a stored frame. Calls
/// nested deeper are counted, not timed ([`Loss::StackOverflow`], [`Loss::ReturnProbeDepth`]).
pub const MAX_DEPTH: usize = abi::MAX_URETPROBE_DEPTH as usize;

/// Upper bound on probes one agent plans; sizes the kernel maps keyed by probe id.
pub const MAX_PROBES: u32 = 1 << 16;

/// Thread-group ids that may be counted when [`Config::filter_by_tgid`] is set.
pub const MAX_TRACED_PROCESSES: u32 = 16_384;
/// A `TRACED` value: the process is counted.
pub const PROCESS_TRACED: u8 = 1;
/// A `TRACED` value: the process was traced and has exec'd, or is a wrapper that started the
/// traced program (launch mode); it is counted again only if its image becomes the traced
/// program (its entry probe), and is not counted meanwhile. Its forked children inherit it.
pub const PROCESS_EXECED: u8 = 2;

/// Integer values a probe captures at entry: arguments, or fields behind pointer arguments.
pub const CAPTURES: usize = 4;

/// Bytes of a captured C string, NUL included (longer strings are cut).
pub const TEXT_LEN: usize = 256;

/// Bytes of a captured string kept as a metric label (longer strings are cut).
pub const LABEL_LEN: usize = 48;

/// Conditions on the return value a probe's metrics can count by.
pub const MAX_CONDITIONS: usize = 2;

/// Values a probe's aggregates can sum.
pub const MAX_SUMS: usize = 3;

/// In [`ProbeSpec::sums`]: sum the return value rather than a capture.
pub const RETURN_VALUE: u8 = CAPTURES as u8;

/// Distinct (probe, outcome, label) aggregates the kernel keeps.
pub const MAX_AGGREGATES: u32 = 16_384;

/// Marks an unused argument index in a [`ProbeSpec`].
pub const NO_ARG: u8 = u8::MAX;

/// Pending hand-offs of trace context between threads; LRU, so hand-offs never adopted age out.
pub const MAX_HANDOFFS: u32 = 65_536;

/// Strings captured at entry and not yet used at exit (calls in flight across all threads).
pub const MAX_TEXTS: u32 = 16_384;

/// Bytes of the span ring buffer (a power of two; 120-byte events, 376 with a string).
pub const SPAN_RING_BYTES: u32 = 16 << 20;

/// In [`Frame::flags`]: the call's trace is sampled (decided at the root, inherited below).
pub const FRAME_SAMPLED: u32 = 1;
/// In [`Frame::flags`]: the call's return is seen by a return probe, which the kernel keeps
/// for a tail call made at the same stack pointer (see [`ShadowStack`]).
pub const FRAME_RETURN_PROBE: u32 = 2;

/// One probed call in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    pub probe_id: u32,
    /// [`FRAME_SAMPLED`], [`FRAME_RETURN_PROBE`].
    pub flags: u32,
    /// The stack pointer at entry (pointing at the return address on x86-64). The stack grows
    /// down: once the thread runs at or above it again, this call is over.
    pub entry_sp: u64,
    pub start_ns: u64,
    pub span_id: u64,
    /// 0 for a root span.
    pub parent_span_id: u64,
    /// The probe's captures, in [`ProbeSpec::captures`] order.
    pub values: [u64; CAPTURES],
}

/// In [`ShadowStack::state`]: the stack is counted in `LIVE_STACKS`.
pub const STACK_COUNTED: u32 = 1;
/// In [`ShadowStack::state`]: the thread's process was found in `TRACED` (binary mode); it
/// stays there until the process exits or execs, so later calls skip the lookup.
pub const STACK_TRACED: u32 = 2;

/// The probed calls in progress on one thread, innermost last, each validated by its entry
/// stack pointer: frames the thread's stack has been unwound past (longjmp, exception, a tail
/// call, a missed return) are closed as unwound when the next entry or return shows it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShadowStack {
    /// Frames stored, at most [`MAX_DEPTH`].
    pub depth: u32,
    /// [`STACK_COUNTED`], [`STACK_TRACED`] (a new stack is all zeroes).
    pub state: u32,
    /// The entry stack pointer of the outermost call nested too deep to be stored, or 0: calls
    /// and returns below it are counted at entry and otherwise ignored.
    pub untracked_sp: u64,
    /// The trace of the calls on this stack, set when its outermost call starts.
    pub trace_id: [u64; 2],
    pub frames: [Frame; MAX_DEPTH],
}

/// Bytes of a task's `comm` (its name: the executable's file name, 15 bytes at most, NUL-ended).
pub const COMM_LEN: usize = 16;

/// A traced process as the kernel saw it start: at fork (the child of a traced process) or at
/// exec; the agent records those it traces from before. A PID reused later gets a new `start_ns`, so (PID,
/// `start_ns`) names one process; the name stays known after the process is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessInfo {
    /// CLOCK_MONOTONIC when it was forked or last exec'd (for one traced from before, its start).
    pub start_ns: u64,
    /// `comm` then: the executable's file name (truncated) after an exec.
    pub comm: [u8; COMM_LEN],
    /// 1 once its leader thread exited.
    pub exited: u32,
    pub _padding: u32,
}

/// A span context handed from one thread to another under a key (a task pointer...).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceContext {
    pub trace_id: [u64; 2],
    /// The span the adopting call becomes a child of.
    pub span_id: u64,
    pub sampled: u64,
}

/// In [`SpanEvent::flags`]: the profile's error rule held for the return value.
pub const SPAN_FAILED: u32 = 1;
/// In [`SpanEvent::flags`]: the call ended without returning (longjmp, exception, thread exit);
/// its end is when flowtap noticed.
pub const SPAN_UNWOUND: u32 = 2;

/// Bytes of the ring buffer of [`LoadEvent`]s (a power of two, a multiple of the page size).
pub const LOAD_RING_BYTES: u32 = 64 << 10;

/// The dynamic loader of a traced process called its debugger hook: its set of loaded objects
/// is changing (`RT_ADD`, `RT_DELETE`) or has changed (`RT_CONSISTENT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadEvent {
    pub tgid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` when the hook ran.
    pub time_ns: u64,
}

/// A finished call of a sampled trace, as the exit program emits it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanEvent {
    pub trace_id: [u64; 2],
    pub span_id: u64,
    pub parent_span_id: u64,
    /// CLOCK_MONOTONIC.
    pub start_ns: u64,
    pub end_ns: u64,
    pub probe_id: u32,
    pub tgid: u32,
    pub tid: u32,
    /// [`SPAN_FAILED`], [`SPAN_UNWOUND`].
    pub flags: u32,
    pub values: [u64; CAPTURES],
    /// The return register, as is (0 for an unwound call).
    pub ret: u64,
    /// The calling thread's cgroup when stats are kept per cgroup, else 0: which pod the span
    /// belongs to, even after its process is gone.
    pub cgroup: u64,
}

/// A [`SpanEvent`] of a probe whose captured string goes on its span.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TextSpanEvent {
    pub span: SpanEvent,
    /// NUL-terminated (garbage may follow the NUL).
    pub text: [u8; TEXT_LEN],
}

/// The key of the string captured by the call at `depth` of thread `tid`, kept from its entry
/// to its exit.
#[inline(always)]
pub fn text_key(tid: u32, depth: usize) -> u64 {
    (u64::from(tid) << 8) | depth as u64
}

/// Key of the per-probe stats when [`Config::by_cgroup`] is set (per-pod metrics); otherwise
/// stats are an array indexed by probe id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StatsKey {
    pub probe_id: u32,
    pub _pad: u32,
    /// The calling thread's cgroup v2 id, or 0.
    pub cgroup: u64,
}

/// Per-probe totals, kept per CPU in the kernel and summed by the agent. Every call entered
/// ends in exactly one of: returned (timed: the histogram's count), unwound, untimed (counted
/// at entry, with a [`Loss`] reason for its missing duration), or still in flight. Calls in
/// flight are not counted apart (two atomic adds per call on the hot path): they are
/// `entered - Σ buckets - unwound - untimed`, each call being pushed at most once and closed at
/// most once.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeStats {
    pub entered: u64,
    pub unwound: u64,
    pub untimed: u64,
    /// Returns of calls entered before the probes were attached: not in `entered`.
    pub unentered_returns: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; histogram::BUCKETS],
}

impl ProbeStats {
    pub const ZERO: Self = Self {
        entered: 0,
        unwound: 0,
        untimed: 0,
        unentered_returns: 0,
        errors: 0,
        total_ns: 0,
        max_ns: 0,
        buckets: [0; histogram::BUCKETS],
    };
}

/// A comparison of a return value with a constant.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compare {
    /// Never holds: the slot is unused.
    #[default]
    Never = 0,
    Eq = 1,
    Ne = 2,
    Lt = 3,
    Le = 4,
    Gt = 5,
    Ge = 6,
}

/// `return <compare> value`: when a call failed, or a metric counts it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    pub compare: Compare,
    pub _pad: [u8; 7],
    pub value: i64,
}

impl Condition {
    pub const NEVER: Self = Self::new(Compare::Never, 0);

    pub const fn new(compare: Compare, value: i64) -> Self {
        Self {
            compare,
            _pad: [0; 7],
            value,
        }
    }

    #[inline(always)]
    pub fn holds(&self, value: i64) -> bool {
        match self.compare {
            Compare::Never => false,
            Compare::Eq => value == self.value,
            Compare::Ne => value != self.value,
            Compare::Lt => value < self.value,
            Compare::Le => value <= self.value,
            Compare::Gt => value > self.value,
            Compare::Ge => value >= self.value,
        }
    }
}

/// Where an integer capture comes from: argument `arg`, or `width` bytes at `offset` behind it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Argument register index, or [`NO_ARG`] for an unused slot.
    pub arg: u8,
    /// Read `width` bytes at `arg + offset` instead of taking the register.
    pub deref: u8,
    /// 1, 2, 4 or 8.
    pub width: u8,
    pub _pad: u8,
    pub offset: u32,
}

impl Capture {
    pub const NONE: Self = Self::register(NO_ARG);

    pub const fn register(arg: u8) -> Self {
        Self {
            arg,
            deref: 0,
            width: 8,
            _pad: 0,
            offset: 0,
        }
    }
}

/// A probe's part in carrying trace context across threads.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContextRole {
    #[default]
    None = 0,
    /// Stores the caller's span context under the key argument.
    HandOff = 1,
    /// Called first on a thread with the same key: continues that context.
    Adopt = 2,
}

/// What the kernel needs to know about one probe, indexed by probe id.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    /// When the return value means the call failed.
    pub error: Condition,
    /// Conditions on the return value the probe's aggregates are split by (outcome bits 1..).
    pub conditions: [Condition; MAX_CONDITIONS],
    pub captures: [Capture; CAPTURES],
    /// A C string captured at entry: the argument holding `char *`, or one holding a pointer to
    /// a struct whose `char *` field is at `offset` (`deref`). `width` is unused.
    pub text: Capture,
    /// Width of the return value in bytes: the upper half of `rax` is garbage for a 32-bit
    /// return and must not be read as sign.
    pub ret_bytes: u8,
    pub ret_signed: u8,
    /// Whether calls are counted in `AGGREGATES` (metrics with labels, conditions or sums).
    pub aggregate: u8,
    /// Whether the captured string labels the aggregates.
    pub text_label: u8,
    /// Whether the captured string goes on the span.
    pub text_in_span: u8,
    /// Captures (or [`RETURN_VALUE`]) summed into the aggregates, or [`NO_ARG`].
    pub sums: [u8; MAX_SUMS],
    pub context: ContextRole,
    /// The capture keying a hand-off or adoption, or [`NO_ARG`].
    pub context_capture: u8,
    /// Whether the probe's returns are seen by a return probe on its entry (else by uprobes on
    /// its return instructions): see [`FRAME_RETURN_PROBE`].
    pub return_probe: u8,
    pub _pad: [u8; 5],
    /// The buffer argument whose bytes are captured, if any.
    pub buffer: capture::BufferSpec,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            error: Condition::NEVER,
            conditions: [Condition::NEVER; MAX_CONDITIONS],
            captures: [Capture::NONE; CAPTURES],
            text: Capture::NONE,
            ret_bytes: 8,
            ret_signed: 1,
            aggregate: 0,
            text_label: 0,
            text_in_span: 0,
            sums: [NO_ARG; MAX_SUMS],
            context: ContextRole::None,
            context_capture: NO_ARG,
            return_probe: 1,
            _pad: [0; 5],
            buffer: capture::BufferSpec::NONE,
        }
    }
}

impl ProbeSpec {
    /// The return register as the function's declared return type.
    #[inline(always)]
    pub fn return_value(&self, raw: u64) -> i64 {
        widen(raw, self.ret_bytes, self.ret_signed != 0) as i64
    }

    /// Whether a call's string is needed: as a label (every call), or on a sampled span.
    #[inline(always)]
    pub fn wants_text(&self, sampled: bool) -> bool {
        self.text.arg != NO_ARG && (self.text_label != 0 || (self.text_in_span != 0 && sampled))
    }

    /// The aggregate outcome of a call: bit 0 failed, bit 1 + n condition n held.
    #[inline(always)]
    pub fn outcome(&self, value: i64, failed: bool) -> i32 {
        let mut outcome = i32::from(failed);
        let mut n = 0;
        while n < MAX_CONDITIONS {
            if self.conditions[n].holds(value) {
                outcome |= 2 << n;
            }
            n += 1;
        }
        outcome
    }
}

/// Key of the kernel's aggregates: calls of one probe with one outcome and label.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggregateKey {
    pub probe_id: u32,
    /// See [`ProbeSpec::outcome`].
    pub outcome: i32,
    /// As in [`StatsKey::cgroup`].
    pub cgroup: u64,
    /// NUL-padded.
    pub label: [u8; LABEL_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AggregateValue {
    pub calls: u64,
    /// Sums of the spec's `sums`, in order.
    pub sums: [u64; MAX_SUMS],
}

/// The low `bytes` of a register or field, sign- or zero-extended to 64 bits: the upper bytes of
/// a narrower value are garbage.
#[inline(always)]
pub fn widen(raw: u64, bytes: u8, signed: bool) -> u64 {
    let bits = u32::from(bytes) * 8;
    if bits == 0 || bits >= 64 {
        return raw;
    }
    let shift = 64 - bits;
    if signed {
        (((raw << shift) as i64) >> shift) as u64
    } else {
        (raw << shift) >> shift
    }
}

/// Why the kernel could not record something; each is a slot of the per-CPU `LOSSES` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// A call nested deeper than [`MAX_DEPTH`] stored frames: counted, not timed.
    StackOverflow = 0,
    /// A call whose exit is a return probe, nested deeper than the kernel installs them
    /// ([`abi::MAX_URETPROBE_DEPTH`]): it gets no return, so it is counted, not timed.
    ReturnProbeDepth = 1,
    /// A thread's stack could not be allocated (kernel memory).
    StackMapFull = 2,
    /// A probe's stats could not be created (map full).
    StatsMapFull = 3,
    /// An aggregate could not be created (map full: too many distinct labels).
    AggregateMapFull = 4,
    /// A sampled span found the ring buffer full.
    SpanRingFull = 5,
    /// A forked child of a traced process could not join the traced set (map full): its calls
    /// are not counted.
    TracedMapFull = 6,
    /// The dynamic loader changed a traced process's objects and the ring buffer telling the
    /// agent was full: libraries it loaded then are probed only at its next change.
    LoadRingFull = 7,
    /// A captured argument's memory (a string, or a field behind a pointer that is not NULL)
    /// could not be read at entry: not paged in (a probe cannot fault it in), or a bad
    /// pointer. The value reads as empty or 0.
    ArgumentUnreadable = 8,
}

impl Loss {
    pub const COUNT: u32 = 9;
    pub const ALL: [Loss; Self::COUNT as usize] = [
        Loss::StackOverflow,
        Loss::ReturnProbeDepth,
        Loss::StackMapFull,
        Loss::StatsMapFull,
        Loss::AggregateMapFull,
        Loss::SpanRingFull,
        Loss::TracedMapFull,
        Loss::LoadRingFull,
        Loss::ArgumentUnreadable,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Loss::StackOverflow => "stack_overflow",
            Loss::ReturnProbeDepth => "return_probe_depth",
            Loss::StackMapFull => "stack_map_full",
            Loss::StatsMapFull => "stats_map_full",
            Loss::AggregateMapFull => "aggregate_map_full",
            Loss::SpanRingFull => "span_ring_full",
            Loss::TracedMapFull => "traced_map_full",
            Loss::LoadRingFull => "load_ring_full",
            Loss::ArgumentUnreadable => "argument_unreadable",
        }
    }
}

/// Load-time settings, written into the programs' read-only globals by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Count only thread groups listed in `TRACED`: probes are attached for every process
    /// (binary-path mode, and modes following forked children, which a probe scoped to one
    /// process would miss), and unrelated processes must not count. Otherwise the attach scope
    /// already filters.
    pub filter_by_tgid: u8,
    /// Key stats and aggregates by the calling thread's cgroup too, so that metrics can carry
    /// the pod they come from.
    pub by_cgroup: u8,
    /// Where the new task's id and clone flags lie in the record of the tracepoint
    /// [`abi::NEW_TASK_TRACEPOINT`] (its format file says; records change between kernels).
    pub new_task_pid_offset: u16,
    pub new_task_flags_offset: u16,
    /// Any process that starts the traced program is enrolled at its entry point (binary
    /// mode); otherwise only one already traced before it exec'd (launch and PID modes).
    pub enrol_any: u8,
    pub _pad: u8,
    /// A new trace is sampled when a random u32 is below this: 0 emits no spans at all,
    /// `u32::MAX` all of them (see [`Config::sample_threshold`]).
    pub sample_threshold: u32,
}

impl Config {
    /// The threshold for sampling a fraction `rate` (0..=1) of traces.
    pub fn sample_threshold(rate: f64) -> u32 {
        (rate.clamp(0.0, 1.0) * u32::MAX as f64) as u32
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] plain data with explicit padding and no pointers; every bit
    // pattern the kernel writes is a valid value (the enums are only written by the agent).
    unsafe impl aya::Pod for super::ShadowStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::StatsKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProbeSpec {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AggregateKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AggregateValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TraceContext {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SpanEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessInfo {}
    // SAFETY: plain integers, repr(C), no padding.
    unsafe impl aya::Pod for super::LoadEvent {}
}
