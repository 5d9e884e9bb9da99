//! Bounded byte capture (see [`flowtap_common::capture`]): a probe's buffer argument copied
//! from the target into the `CAPTURED` ring in chunks, up to the probe's per-call cap, with
//! every byte offered and not delivered counted by reason. Only reads the target.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_loop, bpf_probe_read_user},
    },
    macros::uprobe,
    maps::ProgramArray,
    programs::ProbeContext,
};
use flowtap_common::{
    FRAME_SAMPLED, Frame, NO_ARG, ProbeSpec,
    abi::{ARGUMENT_REGISTERS, programs, same},
    capture::{
        BufferMode, BufferSpec, CHUNK_CLOSE, CHUNK_LARGE, CHUNK_SAMPLED, CHUNK_SMALL, CaptureArgs,
        CaptureCount, ChunkHeader, ConnectionKey, LargeChunk, MAX_CAPTURE_BYTES, MAX_CHUNKS,
        PendingCapture, SmallChunk,
    },
    text_key, widen,
};

use crate::{
    maps::{CAPTURE_ARGS, CAPTURE_COUNTS, CAPTURED, PENDING, QUIET},
    stack,
    stats::{add, opaque},
};

const BPF_RB_NO_WAKEUP: u64 = 1;

/// The trace a captured call belongs to: the thread's trace and the call's parent span.
pub(crate) struct CallContext {
    pub(crate) trace_id: [u64; 2],
    pub(crate) parent_span_id: u64,
    pub(crate) sampled: bool,
}

/// At the entry of a probe with a buffer capture, stored at `depth` of the thread's stack:
/// readies what an entry-mode call is given for the chunk program (true: tail-call it), or
/// keeps where a return-mode call's bytes will be. Out of line: its chunk header would
/// otherwise add to the entry program's stack, which the realigning path's adds to as well.
#[inline(never)]
pub(crate) fn at_entry(
    registers: &[u64; ARGUMENT_REGISTERS],
    spec: &ProbeSpec,
    probe_id: u32,
    depth: usize,
    context: &CallContext,
) -> bool {
    let buffer = &spec.buffer;
    let pid_tgid = bpf_get_current_pid_tgid();
    let connection = register(registers, buffer.connection_arg);
    let key = ConnectionKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        connection,
    };
    if buffer.mode == BufferMode::Close {
        let _ = QUIET.remove(&key);
        let now = stack::now_ns();
        let mut header = header(pid_tgid, probe_id, buffer, connection, now, context);
        header.flags |= CHUNK_CLOSE;
        if emit_small(&mut header, 0, 0).is_err() {
            count(CaptureCount::CloseLost, 1);
        }
        return false;
    }
    // SAFETY: a lookup of a plain value.
    if unsafe { QUIET.get(&key) }.is_some() {
        count(CaptureCount::QuietCalls, 1);
        return false;
    }
    let data = register(registers, buffer.data_arg);
    if buffer.mode == BufferMode::Entry {
        let length = widen(
            register(registers, buffer.length_arg),
            buffer.length_bytes,
            true,
        ) as i64;
        let now = stack::now_ns();
        let header = header(pid_tgid, probe_id, buffer, connection, now, context);
        return ready(header, data, length.max(0) as u64, buffer.max_bytes);
    }
    let pending = PendingCapture {
        data,
        length_out: register(registers, buffer.length_out_arg),
        connection,
    };
    if PENDING
        .insert(&text_key(pid_tgid as u32, depth), &pending, 0)
        .is_err()
    {
        count(CaptureCount::PendingLost, 1);
    }
    false
}

/// At the return of a return-mode call stored at `level`: readies the bytes it produced for
/// the chunk program (true: tail-call it). A call returning 0 or less moved nothing (`SSL_read`
/// and `SSL_write` return the bytes moved, the `_ex` functions 1 on success).
#[inline(always)]
pub(crate) fn at_return(
    spec: &ProbeSpec,
    trace_id: [u64; 2],
    level: usize,
    frame: &Frame,
    ret: u64,
    now: u64,
) -> bool {
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = text_key(pid_tgid as u32, level);
    // SAFETY: a lookup of a plain value, copied before the entry is removed.
    let Some(pending) = (unsafe { PENDING.get(&key) }).copied() else {
        return false;
    };
    let _ = PENDING.remove(&key);
    if widen(ret, 4, true) as i64 <= 0 {
        return false;
    }
    let buffer = &spec.buffer;
    let length = if buffer.length_out_arg != NO_ARG {
        read_length(pending.length_out, buffer.length_bytes)
    } else {
        widen(ret, buffer.length_bytes, true)
    } as i64;
    let context = CallContext {
        trace_id,
        parent_span_id: frame.parent_span_id,
        sampled: frame.flags & FRAME_SAMPLED != 0,
    };
    let mut header = header(
        pid_tgid,
        frame.probe_id,
        buffer,
        pending.connection,
        now,
        &context,
    );
    header.start_ns = frame.start_ns;
    ready(header, pending.data, length.max(0) as u64, buffer.max_bytes)
}

/// Leaves a call's bytes for the chunk program; false when there is nothing to copy. The slot
/// is per CPU and read by the tail call right after; a uprobe program of another thread
/// preempting between the two on this CPU (uprobe programs run with migration disabled, not
/// preemption) could overwrite it: that call's bytes would go out twice and this one's not.
/// Rare, and seen by the agent as a gap; a per-thread slot would close it at a lookup's cost.
#[inline(always)]
fn ready(header: ChunkHeader, data: u64, length: u64, max_bytes: u32) -> bool {
    if length == 0 {
        return false;
    }
    let Some(args) = CAPTURE_ARGS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; the tail call that reads it follows in the same program run.
    unsafe {
        *args = CaptureArgs {
            header,
            data,
            length,
            max_bytes,
            _pad: 0,
        };
    }
    true
}

/// Jumps to the chunk program; returns only when it could not (then the call's bytes are
/// counted as a lost call).
#[inline(always)]
pub(crate) fn tail_call<C: EbpfContext>(ctx: &C, programs: &ProgramArray) {
    // SAFETY: slot 0 holds the chunk program of this program's kind, set by the agent.
    unsafe { programs.tail_call(ctx, 0) };
    count(CaptureCount::PendingLost, 1);
}

const _: () = assert!(same(programs::CAPTURE_CHUNKS, "capture_chunks"));
const _: () = assert!(same(programs::CAPTURE_CHUNKS_MULTI, "capture_chunks_multi"));

/// Copies the bytes the entry or exit program readied, tail-called by per-point programs.
#[uprobe]
pub(crate) fn capture_chunks(_ctx: ProbeContext) -> u32 {
    copy_readied();
    0
}

/// The same, tail-called by uprobe.multi programs.
#[uprobe(multi)]
pub(crate) fn capture_chunks_multi(_ctx: ProbeContext) -> u32 {
    copy_readied();
    0
}

#[inline(always)]
fn copy_readied() {
    let Some(args) = CAPTURE_ARGS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, written by the program that tail-called this one.
    let mut args = unsafe { *args };
    emit_call(&mut args.header, args.data, args.length, args.max_bytes);
}

#[inline(always)]
fn header(
    pid_tgid: u64,
    probe_id: u32,
    buffer: &BufferSpec,
    connection: u64,
    now: u64,
    context: &CallContext,
) -> ChunkHeader {
    ChunkHeader {
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        connection,
        start_ns: now,
        end_ns: now,
        trace_id: context.trace_id,
        parent_span_id: context.parent_span_id,
        call_bytes: 0,
        offset: 0,
        len: 0,
        probe_id,
        direction: buffer.direction,
        flags: if context.sampled { CHUNK_SAMPLED } else { 0 },
        _pad: [0; 2],
    }
}

/// The length a call wrote through `pointer` (`size_t *` or `int *`).
#[inline(always)]
fn read_length(pointer: u64, bytes: u8) -> u64 {
    // SAFETY: the helper reads user memory and fails safely on a bad address.
    let raw = unsafe { aya_ebpf::helpers::bpf_probe_read_user(pointer as *const u64) };
    widen(raw.unwrap_or(0), bytes, true)
}

/// Copies `length` bytes at `data` (at most `max_bytes`) in chunks, counting every byte. The
/// chunks are a `bpf_loop`: its callback is verified once, not once per iteration and path of
/// the probe that calls it, which would exceed the verifier's budget.
#[inline(always)]
fn emit_call(header: &mut ChunkHeader, data: u64, length: u64, max_bytes: u32) {
    header.call_bytes = length;
    count(CaptureCount::Offered, length);
    let wanted = length.min(u64::from(max_bytes.min(MAX_CAPTURE_BYTES)));
    if length > wanted {
        count(CaptureCount::OverCap, length - wanted);
    }
    if wanted == 0 {
        return;
    }
    let mut emission = Emission {
        header: *header,
        data,
        wanted,
        offset: 0,
    };
    // SAFETY: the callback is a BPF function taking (index, context); the context is this
    // stack slot, which outlives the loop.
    unsafe {
        bpf_loop(
            MAX_CHUNKS as u32,
            emit_next as *const () as *mut c_void,
            (&raw mut emission).cast(),
            0,
        );
    }
}

/// The state of one call's chunks across the loop's iterations.
#[repr(C)]
struct Emission {
    header: ChunkHeader,
    data: u64,
    wanted: u64,
    offset: u64,
}

/// One chunk: 0 to go on, 1 when done (all sent, or the ring is full).
#[inline(never)]
extern "C" fn emit_next(_index: u64, context: *mut c_void) -> i64 {
    // SAFETY: `context` is the Emission `emit_call` passed, on its stack for the whole loop.
    let emission = unsafe { &mut *context.cast::<Emission>() };
    if emission.offset >= emission.wanted {
        return 1;
    }
    let rest = emission.wanted - emission.offset;
    emission.header.offset = emission.offset as u32;
    let source = emission.data.wrapping_add(emission.offset);
    let result = if rest <= CHUNK_SMALL as u64 {
        emit_small(&mut emission.header, source, rest)
    } else {
        emit_large(&mut emission.header, source, rest)
    };
    match result {
        Ok(sent) => {
            count(CaptureCount::Delivered, sent);
            emission.offset += sent;
            0
        }
        Err(Lost::Unreadable(lost)) => {
            count(CaptureCount::Unreadable, lost);
            emission.offset += lost;
            0
        }
        Err(Lost::RingFull) => {
            count(CaptureCount::RingFull, rest);
            emission.offset = emission.wanted;
            1
        }
    }
}

enum Lost {
    RingFull,
    /// This many bytes could not be read.
    Unreadable(u64),
}

/// One chunk of at most [`CHUNK_SMALL`] bytes; returns the bytes sent.
#[inline(always)]
fn emit_small(header: &mut ChunkHeader, source: u64, rest: u64) -> Result<u64, Lost> {
    let mut entry = CAPTURED.reserve::<SmallChunk>(0).ok_or(Lost::RingFull)?;
    let chunk = entry.as_mut_ptr();
    let n = opaque(rest as usize).min(CHUNK_SMALL);
    header.len = n as u32;
    // SAFETY: `chunk` is the reserved, writable record; at most CHUNK_SMALL bytes are read
    // into its data, from user memory, faulting safely.
    let read = unsafe {
        (*chunk).header = *header;
        if n == 0 {
            0
        } else {
            bpf_probe_read_user(
                (*chunk).data.as_mut_ptr().cast::<c_void>(),
                n as u32,
                source as *const c_void,
            )
        }
    };
    if read != 0 {
        entry.discard(0);
        return Err(Lost::Unreadable(n as u64));
    }
    entry.submit(BPF_RB_NO_WAKEUP);
    Ok(n as u64)
}

/// One chunk of at most [`CHUNK_LARGE`] bytes; returns the bytes sent.
#[inline(always)]
fn emit_large(header: &mut ChunkHeader, source: u64, rest: u64) -> Result<u64, Lost> {
    let mut entry = CAPTURED.reserve::<LargeChunk>(0).ok_or(Lost::RingFull)?;
    let chunk = entry.as_mut_ptr();
    let n = opaque(rest as usize).min(CHUNK_LARGE);
    header.len = n as u32;
    // SAFETY: as in `emit_small`, at most CHUNK_LARGE bytes.
    let read = unsafe {
        (*chunk).header = *header;
        if n == 0 {
            0
        } else {
            bpf_probe_read_user(
                (*chunk).data.as_mut_ptr().cast::<c_void>(),
                n as u32,
                source as *const c_void,
            )
        }
    };
    if read != 0 {
        entry.discard(0);
        return Err(Lost::Unreadable(n as u64));
    }
    entry.submit(BPF_RB_NO_WAKEUP);
    Ok(n as u64)
}

#[inline(always)]
fn count(counter: CaptureCount, value: u64) {
    if value == 0 {
        return;
    }
    if let Some(slot) = CAPTURE_COUNTS.get_ptr_mut(counter as u32) {
        // SAFETY: a live per-CPU array slot.
        unsafe { add(slot, value) };
    }
}

/// Argument `arg` (bounded again here for the verifier), or 0.
#[inline(always)]
fn register(registers: &[u64; ARGUMENT_REGISTERS], arg: u8) -> u64 {
    registers
        .get(opaque(usize::from(arg)))
        .copied()
        .unwrap_or(0)
}
