//! The span stream out of the kernel: the ring buffer the exit program fills without waking
//! anyone, read here in batches on a timer.

use aya::maps::{MapData, RingBuf};
use flowtap_common::SpanEvent;

use crate::loader::{LoadError, Probes};

pub struct SpanStream {
    ring: RingBuf<MapData>,
}

impl SpanStream {
    pub fn take(probes: &mut Probes) -> Result<Self, LoadError> {
        Ok(Self {
            ring: probes.take_span_ring()?,
        })
    }

    /// Appends every span event available now.
    pub fn drain(&mut self, out: &mut Vec<SpanEvent>) {
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<SpanEvent>() {
                // SAFETY: the kernel wrote a whole SpanEvent, a plain #[repr(C)] value; the ring
                // gives no alignment guarantee, hence the unaligned read.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SpanEvent>()) });
            }
        }
    }
}
