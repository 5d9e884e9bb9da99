//! Span output: a finished call of a sampled trace, into the ring buffer the agent reads in
//! batches (never woken per span: that would cost more than the probe itself).

use aya_ebpf::helpers::generated::bpf_probe_read_kernel_str;
use flowtap_common::{Loss, SpanEvent, TEXT_LEN, TextSpanEvent};

use crate::maps::SPANS;

const BPF_RB_NO_WAKEUP: u64 = 1;

/// Emits `span`, with the call's captured string when its probe puts one on the span.
#[inline(always)]
pub(crate) fn emit(
    span: &SpanEvent,
    with_text: bool,
    text: Option<&[u8; TEXT_LEN]>,
) -> Result<(), Loss> {
    if with_text {
        emit_text_span(span, text)
    } else {
        let mut entry = SPANS.reserve::<SpanEvent>(0).ok_or(Loss::SpanRingFull)?;
        entry.write(*span);
        entry.submit(BPF_RB_NO_WAKEUP);
        Ok(())
    }
}

#[inline(always)]
fn emit_text_span(span: &SpanEvent, text: Option<&[u8; TEXT_LEN]>) -> Result<(), Loss> {
    let mut entry = SPANS
        .reserve::<TextSpanEvent>(0)
        .ok_or(Loss::SpanRingFull)?;
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is the reserved, writable ring-buffer record; the string is copied from
    // a map value, at most TEXT_LEN bytes, NUL-terminated.
    unsafe {
        (*event).span = *span;
        match text {
            Some(text) => {
                bpf_probe_read_kernel_str(
                    (*event).text.as_mut_ptr().cast(),
                    TEXT_LEN as u32,
                    text.as_ptr().cast(),
                );
            }
            None => (*event).text[0] = 0,
        }
    }
    entry.submit(BPF_RB_NO_WAKEUP);
    Ok(())
}
