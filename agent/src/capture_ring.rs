//! The captured bytes out of the kernel: the `CAPTURED` ring buffer the probes fill in chunks
//! without waking anyone, read here in batches on a timer (see [`flowtap_common::capture`]).

use aya::maps::{MapData, RingBuf};
use flowtap_common::capture::{CHUNK_CLOSE, CHUNK_SAMPLED, ChunkHeader, DIRECTION_READ};

/// One chunk of a call's bytes, or a connection's end.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub header: ChunkHeader,
    pub data: Vec<u8>,
}

impl Chunk {
    pub(crate) fn is_close(&self) -> bool {
        self.header.flags & CHUNK_CLOSE != 0
    }

    pub(crate) fn is_read(&self) -> bool {
        self.header.direction == DIRECTION_READ
    }

    pub(crate) fn sampled(&self) -> bool {
        self.header.flags & CHUNK_SAMPLED != 0
    }
}

pub(crate) struct CaptureStream {
    ring: RingBuf<MapData>,
}

impl CaptureStream {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Appends every chunk available now, in the order the probes reserved them.
    pub(crate) fn drain(&mut self, out: &mut Vec<Chunk>) {
        while let Some(item) = self.ring.next() {
            if let Some(chunk) = parse(&item) {
                out.push(chunk);
            }
        }
    }
}

/// A record: the header, then its data (the record's size tells the data's capacity).
fn parse(record: &[u8]) -> Option<Chunk> {
    if record.len() < size_of::<ChunkHeader>() {
        return None;
    }
    // SAFETY: the kernel wrote a whole ChunkHeader, plain #[repr(C)] data, at the start of
    // every record; the ring gives no alignment guarantee, hence the unaligned read.
    let header = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<ChunkHeader>()) };
    let data = &record[size_of::<ChunkHeader>()..];
    let len = (header.len as usize).min(data.len());
    Some(Chunk {
        header,
        data: data[..len].to_vec(),
    })
}
