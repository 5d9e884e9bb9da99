//! The kernel programs tested in-process, the way aya's own integration tests do: load the
//! embedded object, attach to `#[no_mangle] extern "C"` trigger functions of this test binary,
//! call them, and read what the kernel recorded. Needs root (fails loudly without).

use std::{ffi::CStr, hint::black_box};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use flowtap_common::{
    AggregateKey, AggregateValue, Capture, Compare, Condition, Config, Loss, NO_ARG, ProbeSpec,
    ProbeStats, SPAN_FAILED, SPAN_UNWOUND, SpanEvent, TextSpanEvent,
    abi::{self, maps, programs},
    capture::{BufferMode, BufferSpec, CaptureCount, ChunkHeader, DIRECTION_READ, DIRECTION_WRITE},
};

use crate::loader::KERNEL_PROGRAMS;

/// The production object, every span sampled.
fn load() -> Ebpf {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the kernel tests load eBPF programs and must run as root"
    );
    let config = Config {
        sample_threshold: u32::MAX,
        ..Config::default()
    };
    EbpfLoader::new()
        .allow_unsupported_maps()
        .override_global(abi::CONFIG, &config, true)
        .load(KERNEL_PROGRAMS)
        .expect("loading the kernel programs")
}

/// Attaches `program` at each trigger symbol of this binary, cookie = probe id.
fn attach(ebpf: &mut Ebpf, program: &str, triggers: &[(&'static str, u32)]) {
    let uprobe: &mut UProbe = ebpf.program_mut(program).unwrap().try_into().unwrap();
    if uprobe.fd().is_err() {
        uprobe.load().expect("the verifier accepts the program");
    }
    let pid = std::num::NonZeroU32::new(std::process::id()).unwrap();
    for &(symbol, id) in triggers {
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::Symbol(symbol),
            cookie: Some(u64::from(id)),
        };
        uprobe
            .attach([point], "/proc/self/exe", UProbeScope::OneProcess(pid))
            .unwrap_or_else(|error| panic!("attaching {program} to {symbol}: {error}"));
    }
}

/// Entry and return probes on every trigger (exits first, as the agent does).
fn attach_calls(ebpf: &mut Ebpf, triggers: &[(&'static str, u32)]) {
    attach(ebpf, programs::RETURN, triggers);
    attach(ebpf, programs::ENTRY, triggers);
}

fn set_spec(ebpf: &mut Ebpf, id: u32, spec: ProbeSpec) {
    let mut specs: Array<_, ProbeSpec> =
        Array::try_from(ebpf.map_mut(maps::SPECS).unwrap()).unwrap();
    specs.set(id, &spec, 0).unwrap();
}

/// A probe's stats summed over CPUs: (entered, returned, unwound, in flight, errors).
fn stats(ebpf: &Ebpf, id: u32) -> (u64, u64, u64, u64, u64) {
    let map: PerCpuArray<_, ProbeStats> =
        PerCpuArray::try_from(ebpf.map(maps::PROBE_STATS).unwrap()).unwrap();
    let mut sums = (0, 0, 0, 0u64, 0);
    let mut untimed = 0;
    for cpu in map.get(&id, 0).unwrap().iter() {
        sums.0 += cpu.entered;
        sums.1 += cpu.buckets.iter().sum::<u64>();
        sums.2 += cpu.unwound;
        untimed += cpu.untimed;
        sums.4 += cpu.errors;
    }
    // In flight: entered and not ended (the kernel does not count them apart).
    sums.3 = sums.0 - sums.1 - sums.2 - untimed;
    sums
}

/// Every span record in the ring: the span, and its string when it carries one.
fn spans(ebpf: &mut Ebpf) -> Vec<(SpanEvent, Option<String>)> {
    let mut ring = RingBuf::try_from(ebpf.take_map(maps::SPANS).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        // SAFETY: the kernel writes a whole SpanEvent (plain #[repr(C)]) at the start of every
        // record, a TextSpanEvent when the record is that large; read unaligned.
        let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SpanEvent>()) };
        let text = (item.len() >= size_of::<TextSpanEvent>()).then(|| {
            // SAFETY: as above, the whole TextSpanEvent.
            let full = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<TextSpanEvent>()) };
            CStr::from_bytes_until_nul(&full.text)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        });
        out.push((event, text));
    }
    out
}

#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn flowtap_test_inner(x: u64) -> u64 {
    black_box(x) + 1
}

#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn flowtap_test_outer(x: u64) -> u64 {
    black_box(flowtap_test_inner(x) + flowtap_test_inner(x + 1))
}

#[test]
fn nested_calls_are_children_of_their_caller() {
    let mut ebpf = load();
    attach_calls(
        &mut ebpf,
        &[("flowtap_test_outer", 0), ("flowtap_test_inner", 1)],
    );
    assert_eq!(flowtap_test_outer(black_box(1)), 5);
    assert_eq!(stats(&ebpf, 0), (1, 1, 0, 0, 0));
    assert_eq!(stats(&ebpf, 1), (2, 2, 0, 0, 0));
    let spans = spans(&mut ebpf);
    assert_eq!(spans.len(), 3, "{spans:?}");
    let outer = spans.iter().find(|(s, _)| s.probe_id == 0).unwrap().0;
    assert_eq!(outer.parent_span_id, 0, "the outer call is the root");
    for (inner, _) in spans.iter().filter(|(s, _)| s.probe_id == 1) {
        assert_eq!(inner.parent_span_id, outer.span_id);
        assert_eq!(inner.trace_id, outer.trace_id);
        assert!(outer.start_ns <= inner.start_ns && inner.end_ns <= outer.end_ns);
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn flowtap_test_no_exit(x: u64) -> u64 {
    black_box(x)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn flowtap_test_after(x: u64) -> u64 {
    black_box(x) * 2
}

/// Calls whose return is never seen (here: no exit probe, as after a longjmp) are closed as
/// unwound by the next call at the same stack pointer, and never wedge the stack.
#[inline(never)]
fn calls_without_returns() -> u64 {
    let mut sum = 0;
    for i in 0..3 {
        sum += flowtap_test_no_exit(black_box(i));
    }
    sum + flowtap_test_after(black_box(1))
}

#[test]
fn frames_the_stack_passed_are_closed_as_unwound() {
    let mut ebpf = load();
    // A return-instruction exit (return_probe = 0): no tail call can keep it alive.
    for id in [0, 1] {
        set_spec(
            &mut ebpf,
            id,
            ProbeSpec {
                return_probe: 0,
                ..ProbeSpec::default()
            },
        );
    }
    attach(&mut ebpf, programs::ENTRY, &[("flowtap_test_no_exit", 0)]);
    attach_calls(&mut ebpf, &[("flowtap_test_after", 1)]);
    assert_eq!(calls_without_returns(), 5);
    assert_eq!(stats(&ebpf, 0), (3, 0, 3, 0, 0), "three calls, all unwound");
    assert_eq!(stats(&ebpf, 1), (1, 1, 0, 0, 0));
    let spans = spans(&mut ebpf);
    let unwound: Vec<_> = spans
        .iter()
        .filter(|(s, _)| s.flags & SPAN_UNWOUND != 0)
        .collect();
    assert_eq!(unwound.len(), 3, "{spans:?}");
    assert!(unwound.iter().all(|(s, _)| s.probe_id == 0));
    let after = spans.iter().find(|(s, _)| s.probe_id == 1).unwrap().0;
    assert_eq!(
        after.parent_span_id, 0,
        "a sibling, not a child of a stale frame"
    );
}

// A function whose return instruction is at a known offset (8): push rbp (1 byte), mov rbp, rsp
// (3), mov rax, rdi (3), pop rbp (1), ret.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl flowtap_test_ret_insn",
    ".type flowtap_test_ret_insn, @function",
    "flowtap_test_ret_insn:",
    "push rbp",
    "mov rbp, rsp",
    "mov rax, rdi",
    "pop rbp",
    "ret",
    ".size flowtap_test_ret_insn, . - flowtap_test_ret_insn",
);

#[cfg(target_arch = "x86_64")]
unsafe extern "C" {
    fn flowtap_test_ret_insn(x: u64) -> u64;
}

/// Exits seen by a uprobe at the return instruction: the stack pointer there is the entry's.
#[cfg(target_arch = "x86_64")]
#[test]
fn returns_at_the_return_instruction_pop_their_frames() {
    let mut ebpf = load();
    set_spec(
        &mut ebpf,
        0,
        ProbeSpec {
            return_probe: 0,
            error: Condition::new(Compare::Eq, 42),
            ..ProbeSpec::default()
        },
    );
    let uprobe: &mut UProbe = ebpf
        .program_mut(programs::RET_INSN)
        .unwrap()
        .try_into()
        .unwrap();
    uprobe.load().expect("the verifier accepts the program");
    let pid = std::num::NonZeroU32::new(std::process::id()).unwrap();
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::SymbolOffset("flowtap_test_ret_insn", 8),
        cookie: Some(0),
    };
    uprobe
        .attach([point], "/proc/self/exe", UProbeScope::OneProcess(pid))
        .expect("attaching at the return instruction");
    attach(&mut ebpf, programs::ENTRY, &[("flowtap_test_ret_insn", 0)]);
    for x in [1, 42, 3] {
        // SAFETY: the function above returns its argument and touches nothing else.
        assert_eq!(unsafe { flowtap_test_ret_insn(black_box(x)) }, x);
    }
    assert_eq!(
        stats(&ebpf, 0),
        (3, 3, 0, 0, 1),
        "the return value read from rax"
    );
}

#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn flowtap_test_status(x: i64) -> i64 {
    black_box(x)
}

#[test]
fn outcome_bits_count_errors_and_conditions() {
    let mut ebpf = load();
    set_spec(
        &mut ebpf,
        0,
        ProbeSpec {
            aggregate: 1,
            error: Condition::new(Compare::Lt, 0),
            conditions: [Condition::new(Compare::Eq, 7), Condition::NEVER],
            ..ProbeSpec::default()
        },
    );
    attach_calls(&mut ebpf, &[("flowtap_test_status", 0)]);
    for value in [-1, 7, 3, 7] {
        flowtap_test_status(black_box(value));
    }
    assert_eq!(stats(&ebpf, 0).4, 1, "one failed call");
    let aggregates: HashMap<_, AggregateKey, AggregateValue> =
        HashMap::try_from(ebpf.map(maps::AGGREGATES).unwrap()).unwrap();
    let mut by_outcome: Vec<(i32, u64)> = aggregates
        .iter()
        .map(|entry| entry.map(|(key, value)| (key.outcome, value.calls)))
        .collect::<Result<_, _>>()
        .unwrap();
    by_outcome.sort();
    assert_eq!(by_outcome, [(0, 1), (1, 1), (2, 2)]);
    let spans = spans(&mut ebpf);
    assert_eq!(
        spans
            .iter()
            .filter(|(s, _)| s.flags & SPAN_FAILED != 0)
            .count(),
        1
    );
}

#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn flowtap_test_text(text: *const libc::c_char) -> usize {
    if text.is_null() {
        return 0;
    }
    // SAFETY: the test passes a NUL-terminated string.
    black_box(unsafe { CStr::from_ptr(text) }.count_bytes())
}

/// The programs with probe 0 on `flowtap_test_text`, its string argument on the span.
fn capturing_text() -> Ebpf {
    let mut ebpf = load();
    set_spec(
        &mut ebpf,
        0,
        ProbeSpec {
            text: Capture::register(0),
            text_in_span: 1,
            ..ProbeSpec::default()
        },
    );
    attach_calls(&mut ebpf, &[("flowtap_test_text", 0)]);
    ebpf
}

#[test]
fn a_string_argument_is_captured_at_entry_onto_the_span() {
    let mut ebpf = capturing_text();
    // The kernel reads only memory that is paged in (it cannot fault at a probe): a string in a
    // page of the binary nothing touched yet reads as empty, as it would in any target.
    let text = c"checkout/step-3";
    black_box(text.to_bytes().to_vec());
    assert_eq!(flowtap_test_text(text.as_ptr()), 15);
    let spans = spans(&mut ebpf);
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].1.as_deref(), Some("checkout/step-3"));
}

#[test]
fn a_string_not_paged_in_reads_empty_and_is_counted_and_a_null_one_is_not() {
    let mut ebpf = capturing_text();
    // SAFETY: a fresh anonymous page, readable, that nothing touches before the probe reads it
    // (the kernel maps it on the first access, which the function makes after the probe).
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    assert_eq!(flowtap_test_text(page.cast()), 0);
    assert_eq!(flowtap_test_text(std::ptr::null()), 0);
    let spans = spans(&mut ebpf);
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(spans.iter().all(|(_, text)| text.as_deref() == Some("")));
    let losses: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(maps::LOSSES).unwrap()).unwrap();
    let unreadable: u64 = losses
        .get(&(Loss::ArgumentUnreadable as u32), 0)
        .unwrap()
        .iter()
        .sum();
    assert_eq!(unreadable, 1);
}

/// The chunk program in the slot the per-point entry and exit programs tail-call.
fn load_capture_chunks(ebpf: &mut Ebpf) {
    let uprobe: &mut UProbe = ebpf
        .program_mut(programs::CAPTURE_CHUNKS)
        .unwrap()
        .try_into()
        .unwrap();
    uprobe
        .load()
        .expect("the verifier accepts the chunk program");
    let fd = uprobe.fd().unwrap().try_clone().unwrap();
    let mut slots = ProgramArray::try_from(ebpf.map_mut(maps::CAPTURE_TAIL).unwrap()).unwrap();
    slots.set(0, &fd, 0).unwrap();
}

/// Every chunk in the capture ring, with its bytes.
fn chunks(ebpf: &mut Ebpf) -> Vec<(ChunkHeader, Vec<u8>)> {
    let mut ring = RingBuf::try_from(ebpf.take_map(maps::CAPTURED).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        // SAFETY: every record starts with a whole ChunkHeader (plain #[repr(C)]); read unaligned.
        let header = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ChunkHeader>()) };
        let data = &item[size_of::<ChunkHeader>()..][..header.len as usize];
        out.push((header, data.to_vec()));
    }
    out
}

/// The capture's counters summed over CPUs.
fn capture_count(ebpf: &Ebpf, counter: CaptureCount) -> u64 {
    let map: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(maps::CAPTURE_COUNTS).unwrap()).unwrap();
    map.get(&(counter as u32), 0).unwrap().iter().sum()
}

/// The programs with probe 0 on `trigger`, capturing its buffer in `mode` (arguments:
/// connection, data, length).
fn capturing(trigger: &'static str, mode: BufferMode, direction: u8, max_bytes: u32) -> Ebpf {
    let mut ebpf = load();
    load_capture_chunks(&mut ebpf);
    let spec = ProbeSpec {
        buffer: BufferSpec {
            mode,
            connection_arg: 0,
            data_arg: 1,
            length_arg: if mode == BufferMode::Entry { 2 } else { NO_ARG },
            direction,
            max_bytes,
            ..BufferSpec::NONE
        },
        ..ProbeSpec::default()
    };
    set_spec(&mut ebpf, 0, spec);
    attach_calls(&mut ebpf, &[(trigger, 0)]);
    ebpf
}

/// Bytes that tell their offset apart (no period of a chunk's length).
fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i * 7 % 251) as u8).collect()
}

#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn flowtap_test_write(
    connection: u64,
    data: *const u8,
    length: usize,
) -> i64 {
    black_box((connection, data));
    black_box(length as i64)
}

#[test]
fn a_buffer_is_captured_at_entry_in_chunks_up_to_its_cap() {
    let mut ebpf = capturing(
        "flowtap_test_write",
        BufferMode::Entry,
        DIRECTION_WRITE,
        6000,
    );
    let written = pattern(10_000);
    assert_eq!(
        flowtap_test_write(42, written.as_ptr(), written.len()),
        10_000
    );
    let chunks = chunks(&mut ebpf);
    let mut delivered = Vec::new();
    for (header, data) in &chunks {
        assert_eq!(
            (header.connection, header.call_bytes, header.direction),
            (42, 10_000, DIRECTION_WRITE)
        );
        assert_eq!(header.offset as usize, delivered.len(), "chunks in order");
        delivered.extend_from_slice(data);
    }
    assert_eq!(delivered, written[..6000], "{} chunks", chunks.len());
    assert_eq!(capture_count(&ebpf, CaptureCount::Offered), 10_000);
    assert_eq!(capture_count(&ebpf, CaptureCount::Delivered), 6000);
    assert_eq!(capture_count(&ebpf, CaptureCount::OverCap), 4000);
}

#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn flowtap_test_read(connection: u64, data: *mut u8, room: usize) -> i64 {
    black_box(connection);
    let filled = room.min(700);
    // SAFETY: the test passes a buffer of `room` bytes.
    let buffer = unsafe { std::slice::from_raw_parts_mut(data, filled) };
    buffer.copy_from_slice(&pattern(filled));
    black_box(filled as i64)
}

#[test]
fn a_buffer_is_captured_at_return_as_long_as_the_call_says() {
    let mut ebpf = capturing(
        "flowtap_test_read",
        BufferMode::Return,
        DIRECTION_READ,
        65_536,
    );
    let mut buffer = vec![0u8; 4096];
    assert_eq!(flowtap_test_read(7, buffer.as_mut_ptr(), buffer.len()), 700);
    // A call that moved nothing delivers nothing.
    assert_eq!(flowtap_test_read(7, buffer.as_mut_ptr(), 0), 0);
    let chunks = chunks(&mut ebpf);
    let delivered: Vec<u8> = chunks.iter().flat_map(|(_, data)| data.clone()).collect();
    assert_eq!(delivered, pattern(700), "{} chunks", chunks.len());
    assert!(
        chunks
            .iter()
            .all(|(header, _)| (header.connection, header.direction) == (7, DIRECTION_READ))
    );
    assert_eq!(capture_count(&ebpf, CaptureCount::Offered), 700);
    assert_eq!(capture_count(&ebpf, CaptureCount::Delivered), 700);
}
