//! Bounded byte capture: a probe may copy the bytes of a buffer argument (what `SSL_write` is
//! given, what `SSL_read` filled) into the `CAPTURED` ring buffer, in chunks, up to a per-call
//! cap. Every byte offered and not delivered is counted under a [`CaptureCount`] reason, so
//! `offered = delivered + Σ lost`. Nothing is ever written to the target.

use crate::NO_ARG;

/// When a probe's buffer is read.
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BufferMode {
    /// No capture.
    #[default]
    None = 0,
    /// At entry, from `(data, length)` arguments: what the call is given.
    Entry = 1,
    /// At return, from the data pointer kept since entry and the length returned (or written
    /// through `length_out`): what the call produced or accepted. Failed calls (the profile's
    /// error rule) deliver nothing.
    Return = 2,
    /// The connection ends (`SSL_free`): no bytes; its quiet mark is dropped and the agent told.
    Close = 3,
}

/// Which way a probe's bytes flow, from the target's point of view.
pub const DIRECTION_WRITE: u8 = 0;
pub const DIRECTION_READ: u8 = 1;

/// A probe's buffer capture, in [`crate::ProbeSpec::buffer`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSpec {
    pub mode: BufferMode,
    /// Argument holding the buffer's address.
    pub data_arg: u8,
    /// Argument holding the length ([`BufferMode::Entry`]), or [`NO_ARG`].
    pub length_arg: u8,
    /// Argument holding a pointer the call writes the length through (`size_t *`, the `_ex`
    /// functions), or [`NO_ARG`]: the return value is the length.
    pub length_out_arg: u8,
    /// Argument keying the connection (`SSL *`), or [`NO_ARG`] (then 0).
    pub connection_arg: u8,
    /// [`DIRECTION_WRITE`] or [`DIRECTION_READ`].
    pub direction: u8,
    /// Width of the length argument or return value: 4 (`int`) or 8 (`size_t`).
    pub length_bytes: u8,
    pub _pad: u8,
    /// Bytes captured per call at most; the rest are counted as [`CaptureCount::OverCap`].
    pub max_bytes: u32,
    pub _pad2: u32,
}

impl BufferSpec {
    pub const NONE: Self = Self {
        mode: BufferMode::None,
        data_arg: NO_ARG,
        length_arg: NO_ARG,
        length_out_arg: NO_ARG,
        connection_arg: NO_ARG,
        direction: DIRECTION_WRITE,
        length_bytes: 8,
        _pad: 0,
        max_bytes: 0,
        _pad2: 0,
    };
}

impl Default for BufferSpec {
    fn default() -> Self {
        Self::NONE
    }
}

/// Bytes of a small chunk's data: most reads of a streamed response fit.
pub const CHUNK_SMALL: usize = 512;
/// Bytes of a large chunk's data.
pub const CHUNK_LARGE: usize = 4096;
/// Chunks one call may emit: a per-call cap is at most `MAX_CHUNKS * CHUNK_LARGE` bytes.
pub const MAX_CHUNKS: usize = 16;
/// The largest per-call cap a profile may ask for.
pub const MAX_CAPTURE_BYTES: u32 = (MAX_CHUNKS * CHUNK_LARGE) as u32;

/// Bytes of the capture ring buffer by default (a power of two).
pub const CAPTURE_RING_BYTES: u32 = 8 << 20;

/// Connections the agent marked quiet (not of interest) at once.
pub const MAX_QUIET: u32 = 16_384;
/// Return-mode calls in flight (between entry and return) across all threads.
pub const MAX_PENDING: u32 = 16_384;

/// In [`ChunkHeader::flags`]: the call's trace is sampled.
pub const CHUNK_SAMPLED: u8 = 1;
/// In [`ChunkHeader::flags`]: the connection ended ([`BufferMode::Close`]); no data.
pub const CHUNK_CLOSE: u8 = 2;

/// The start of every record of the capture ring: which call's bytes, and where they go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ChunkHeader {
    pub tgid: u32,
    pub tid: u32,
    /// The connection key (`SSL *`).
    pub connection: u64,
    /// When the call started, and when its bytes were read (CLOCK_MONOTONIC).
    pub start_ns: u64,
    pub end_ns: u64,
    /// The trace of the thread's calls and the span of the probed call active on the thread
    /// when this call was made (its caller): the parent of what the bytes describe.
    pub trace_id: [u64; 2],
    pub parent_span_id: u64,
    /// Bytes the call moved (before the cap).
    pub call_bytes: u64,
    /// Where this chunk starts within the call's bytes.
    pub offset: u32,
    /// Valid bytes of the data that follows.
    pub len: u32,
    pub probe_id: u32,
    pub direction: u8,
    /// [`CHUNK_SAMPLED`], [`CHUNK_CLOSE`].
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// A record of the capture ring with up to [`CHUNK_SMALL`] bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SmallChunk {
    pub header: ChunkHeader,
    pub data: [u8; CHUNK_SMALL],
}

/// A record of the capture ring with up to [`CHUNK_LARGE`] bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LargeChunk {
    pub header: ChunkHeader,
    pub data: [u8; CHUNK_LARGE],
}

/// The key of a connection's quiet mark.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    pub tgid: u32,
    pub _pad: u32,
    pub connection: u64,
}

/// A call's bytes ready to copy: what the entry or exit program leaves for the chunk program
/// it tail-calls (a program of its own, so that the verifier checks the copy loop once, not
/// once per path through the entry and exit programs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureArgs {
    pub header: ChunkHeader,
    pub data: u64,
    pub length: u64,
    pub max_bytes: u32,
    pub _pad: u32,
}

/// What a return-mode call's entry keeps for its return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingCapture {
    pub data: u64,
    pub length_out: u64,
    pub connection: u64,
}

/// Byte and call counters of the capture, each a slot of the per-CPU `CAPTURE_COUNTS` array.
/// For bytes: `Offered = Delivered + RingFull + OverCap + Unreadable`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureCount {
    /// Bytes the captured calls moved.
    Offered = 0,
    /// Bytes copied into the ring.
    Delivered = 1,
    /// Bytes lost: the ring was full.
    RingFull = 2,
    /// Bytes past the per-call cap.
    OverCap = 3,
    /// Bytes the kernel could not read from the target (paged out, bad pointer).
    Unreadable = 4,
    /// Calls of connections marked quiet: not captured, by design.
    QuietCalls = 5,
    /// Calls whose bytes could not be copied: a return-mode entry not kept (map full), or the
    /// chunk program not reached. Their bytes are unknown.
    PendingLost = 6,
    /// Connection ends not delivered (the ring was full): the agent forgets the connection
    /// only when it evicts it.
    CloseLost = 7,
}

impl CaptureCount {
    pub const COUNT: u32 = 8;
    pub const ALL: [CaptureCount; Self::COUNT as usize] = [
        CaptureCount::Offered,
        CaptureCount::Delivered,
        CaptureCount::RingFull,
        CaptureCount::OverCap,
        CaptureCount::Unreadable,
        CaptureCount::QuietCalls,
        CaptureCount::PendingLost,
        CaptureCount::CloseLost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            CaptureCount::Offered => "offered_bytes",
            CaptureCount::Delivered => "delivered_bytes",
            CaptureCount::RingFull => "ring_full_bytes",
            CaptureCount::OverCap => "over_cap_bytes",
            CaptureCount::Unreadable => "unreadable_bytes",
            CaptureCount::QuietCalls => "quiet_calls",
            CaptureCount::PendingLost => "pending_lost_calls",
            CaptureCount::CloseLost => "close_lost_calls",
        }
    }

    /// Whether it counts bytes lost (not offered, delivered, or skipped by design).
    pub const fn is_byte_loss(self) -> bool {
        matches!(
            self,
            CaptureCount::RingFull | CaptureCount::OverCap | CaptureCount::Unreadable
        )
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data with explicit padding and no pointers; the enum is only
    // written by the agent.
    unsafe impl aya::Pod for super::ConnectionKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PendingCapture {}
}
