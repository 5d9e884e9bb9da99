//! Types shared by the kernel programs and the agent. Every type that crosses a map or the ring
//! buffer is defined once here, `#[repr(C)]`, so both sides agree by construction.
#![no_std]

pub mod histogram;

/// Deepest nesting of probed calls tracked per thread. Deeper calls are counted in
/// [`Loss::StackOverflow`] and not timed, but still keep the stack balanced.
pub const MAX_DEPTH: usize = 32;

/// Upper bound on probes one agent plans; sizes the kernel maps keyed by probe id.
pub const MAX_PROBES: u32 = 1 << 16;

/// Thread-group ids that may be counted when [`Config::filter_by_tgid`] is set.
pub const MAX_TRACED_PROCESSES: u32 = 16_384;

/// Threads with a live shadow stack at once; LRU, so a leaked entry is evicted, never a failure.
pub const MAX_TRACKED_THREADS: u32 = 65_536;

/// Integer arguments saved at entry for use at return (registers are clobbered by then).
pub const CAPTURED_ARGS: usize = 4;

/// Bytes of a string argument kept as a label (longer strings are cut).
pub const LABEL_LEN: usize = 48;

/// Distinct (probe, outcome, label) aggregates the kernel keeps.
pub const MAX_AGGREGATES: u32 = 16_384;

/// Marks an unused argument index in a [`ProbeSpec`].
pub const NO_ARG: u8 = u8::MAX;

/// Pending hand-offs of trace context between threads; LRU, so hand-offs never adopted age out.
pub const MAX_HANDOFFS: u32 = 65_536;

/// Bytes of the span ring buffer (a power of two; 72-byte events).
pub const SPAN_RING_BYTES: u32 = 16 << 20;

/// One probed call in progress on a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Frame {
    pub probe_id: u32,
    /// Whether this call's trace is sampled: decided at the root, inherited by all below.
    pub sampled: u32,
    pub start_ns: u64,
    pub span_id: u64,
    /// 0 for a root span.
    pub parent_span_id: u64,
    pub args: [u64; CAPTURED_ARGS],
}

/// The probed calls in progress on one thread, innermost last. `depth` can exceed
/// [`MAX_DEPTH`]: frames past the bound are not stored, only counted, so returns still match.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ShadowStack {
    pub depth: u32,
    pub _pad: u32,
    /// The trace of the calls on this stack, set when its outermost call starts.
    pub trace_id: [u64; 2],
    pub frames: [Frame; MAX_DEPTH],
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
    pub failed: u32,
}

/// Per-probe totals, kept per CPU in the kernel and summed by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeStats {
    pub calls: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; histogram::BUCKETS],
}

impl ProbeStats {
    pub const ZERO: Self = Self {
        calls: 0,
        errors: 0,
        total_ns: 0,
        max_ns: 0,
        buckets: [0; histogram::BUCKETS],
    };
}

/// How a probe's return value tells failure.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorRule {
    /// The return value carries no status (void, or nothing declared).
    #[default]
    Never = 0,
    Zero = 1,
    NonZero = 2,
    Negative = 3,
    Equals = 4,
}

/// How a probe's calls are aggregated beyond its histogram.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aggregate {
    #[default]
    None = 0,
    /// By failed / succeeded (outcome 1 / 0).
    ByStatus = 1,
    /// By the return value itself (small enumerations such as hit = 1 / miss = 0).
    ByReturn = 2,
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
    pub error_rule: ErrorRule,
    /// Width of the return value in bytes (4 for C `int`): the upper half of `rax` is garbage
    /// for 32-bit returns and must not be read as sign.
    pub ret_bytes: u8,
    pub aggregate: Aggregate,
    /// Argument holding a C string that labels the aggregate, or [`NO_ARG`].
    pub label_arg: u8,
    /// Integer arguments summed into the aggregate, or [`NO_ARG`].
    pub value_args: [u8; 3],
    pub context: ContextRole,
    /// The argument keying a hand-off or adoption, or [`NO_ARG`].
    pub context_arg: u8,
    pub _pad: [u8; 7],
    pub error_value: i64,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            error_rule: ErrorRule::Never,
            ret_bytes: 8,
            aggregate: Aggregate::None,
            label_arg: NO_ARG,
            value_args: [NO_ARG; 3],
            context: ContextRole::None,
            context_arg: NO_ARG,
            _pad: [0; 7],
            error_value: 0,
        }
    }
}

/// Key of the kernel's aggregates: calls of one probe with one outcome and label.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AggregateKey {
    pub probe_id: u32,
    /// 1 failed / 0 succeeded, or the return value: see [`Aggregate`].
    pub outcome: i32,
    /// NUL-padded.
    pub label: [u8; LABEL_LEN],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AggregateValue {
    pub calls: u64,
    /// Sums of the spec's `value_args`, in order.
    pub sums: [u64; 3],
}

impl ProbeSpec {
    /// Whether `raw`, the return register, means failure under this spec.
    pub fn is_error(&self, raw: u64) -> bool {
        let value = if self.ret_bytes == 4 {
            raw as u32 as i32 as i64
        } else {
            raw as i64
        };
        match self.error_rule {
            ErrorRule::Never => false,
            ErrorRule::Zero => value == 0,
            ErrorRule::NonZero => value != 0,
            ErrorRule::Negative => value < 0,
            ErrorRule::Equals => value == self.error_value,
        }
    }
}

/// Why the kernel could not record something; each is a slot of the per-CPU `LOSSES` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// A call nested deeper than [`MAX_DEPTH`]: counted, not timed.
    StackOverflow = 0,
    /// A return with no matching entry on the thread's stack (entry missed or longjmp).
    UnmatchedReturn = 1,
    /// A thread's stack could not be created (map full).
    StackMapFull = 2,
    /// A probe's stats could not be created (map full).
    StatsMapFull = 3,
    /// An aggregate could not be created (map full: too many distinct labels).
    AggregateMapFull = 4,
    /// A sampled span found the ring buffer full.
    SpanRingFull = 5,
}

impl Loss {
    pub const COUNT: u32 = 6;
    pub const ALL: [Loss; Self::COUNT as usize] = [
        Loss::StackOverflow,
        Loss::UnmatchedReturn,
        Loss::StackMapFull,
        Loss::StatsMapFull,
        Loss::AggregateMapFull,
        Loss::SpanRingFull,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Loss::StackOverflow => "stack_overflow",
            Loss::UnmatchedReturn => "unmatched_return",
            Loss::StackMapFull => "stack_map_full",
            Loss::StatsMapFull => "stats_map_full",
            Loss::AggregateMapFull => "aggregate_map_full",
            Loss::SpanRingFull => "span_ring_full",
        }
    }
}

/// Load-time settings, written into the programs' read-only globals by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Count only thread groups listed in `TRACED` (binary-path mode, where the shared libraries'
    /// probes also fire in unrelated processes). Otherwise the attach scope already filters.
    pub filter_by_tgid: u8,
    pub _pad: [u8; 3],
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
    unsafe impl aya::Pod for super::ProbeStats {}
    unsafe impl aya::Pod for super::ProbeSpec {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::AggregateKey {}
    unsafe impl aya::Pod for super::AggregateValue {}
    unsafe impl aya::Pod for super::TraceContext {}
    unsafe impl aya::Pod for super::SpanEvent {}
}
