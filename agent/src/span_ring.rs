//! The span stream out of the kernel: the ring buffer the exit program fills without waking
//! anyone, read here in batches on a timer.

use aya::maps::{MapData, RingBuf};
use flowtap_common::{SpanEvent, TextSpanEvent};

use crate::loader::{LoadError, Probes};

/// A finished call of a sampled trace, with the string its probe captured, if it captures one.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    pub event: SpanEvent,
    pub text: Option<String>,
}

pub(crate) struct SpanStream {
    ring: RingBuf<MapData>,
}

impl SpanStream {
    pub(crate) fn take(probes: &mut Probes) -> Result<Self, LoadError> {
        Ok(Self {
            ring: probes.take_span_ring()?,
        })
    }

    /// Appends every span available now.
    pub(crate) fn drain(&mut self, out: &mut Vec<SpanRecord>) {
        while let Some(item) = self.ring.next() {
            if item.len() < size_of::<SpanEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole SpanEvent, a plain #[repr(C)] value, at the
            // start of every record; the ring gives no alignment guarantee, hence the
            // unaligned read.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SpanEvent>()) };
            // The record's size tells whether a string follows.
            let text = (item.len() >= size_of::<TextSpanEvent>()).then(|| {
                let bytes = &item[size_of::<SpanEvent>()..size_of::<TextSpanEvent>()];
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                String::from_utf8_lossy(&bytes[..end]).into_owned()
            });
            out.push(SpanRecord { event, text });
        }
    }
}
