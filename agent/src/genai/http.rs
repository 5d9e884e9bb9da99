//! HTTP/1.1 messages out of one direction of a connection's plaintext: heads with `httparse`,
//! bodies framed by `Content-Length` or chunked transfer coding (or, for a response, the
//! connection's end), several messages back to back (keep-alive, pipelining). Bounded: a
//! message larger than [`MAX_MESSAGE_BYTES`] is dropped, and counted by the caller.

use std::io::Read;

/// Bytes one message (head and body) may take; larger ones are dropped.
pub(crate) const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Headers read per message.
const MAX_HEADERS: usize = 64;

/// A request or response head.
#[derive(Debug, Clone, Default)]
pub(crate) struct Head {
    /// Request method, or empty for a response.
    pub method: String,
    pub path: String,
    /// Response status, or 0 for a request.
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A whole message: its head, its body (transfer coding removed, content coding not yet), and
/// when its first byte, first body byte and last byte were seen (CLOCK_MONOTONIC).
#[derive(Debug, Clone)]
pub(crate) struct Message<C> {
    pub head: Head,
    pub body: Vec<u8>,
    pub first_ns: u64,
    pub first_body_ns: Option<u64>,
    pub last_ns: u64,
    /// What the caller attached to the message's first bytes (its trace context).
    pub context: C,
}

/// Why a stream's bytes could not be read as HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamError {
    /// Not HTTP/1.x (HTTP/2's preface, TLS-wrapped something else, or we came in mid-message).
    NotHttp,
    Http2,
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    /// A response without length: until the connection ends.
    UntilClose,
}

struct Partial<C> {
    head: Head,
    /// Already handed out by [`Stream::deliver_early`]: its end is only waited for.
    delivered: bool,
    framing: Framing,
    first_ns: u64,
    first_body_ns: Option<u64>,
    context: C,
    body: Vec<u8>,
}

/// One direction of a connection.
pub(crate) struct Stream<C> {
    response: bool,
    buffer: Vec<u8>,
    /// When the buffer's first byte came, and with what context.
    buffer_start: Option<(u64, C)>,
    partial: Option<Partial<C>>,
}

impl<C: Clone> Stream<C> {
    pub(crate) fn requests() -> Self {
        Self::new(false)
    }

    pub(crate) fn responses() -> Self {
        Self::new(true)
    }

    fn new(response: bool) -> Self {
        Self {
            response,
            buffer: Vec::new(),
            buffer_start: None,
            partial: None,
        }
    }

    /// Bytes held for messages not yet complete.
    pub(crate) fn held(&self) -> usize {
        self.buffer.len() + self.partial.as_ref().map_or(0, |p| p.body.len())
    }

    /// The head of the message whose body is being read, if any.
    pub(crate) fn current_head(&self) -> Option<&Head> {
        self.partial.as_ref().map(|p| &p.head)
    }

    /// Whether a message is under way (its first bytes seen).
    pub(crate) fn in_message(&self) -> bool {
        !self.buffer.is_empty() || self.partial.is_some()
    }

    /// Adds bytes seen at `now`; returns the messages they complete. `no_body` says whether
    /// the next response has no body whatever its head says (the answer to a HEAD request).
    pub(crate) fn push(
        &mut self,
        bytes: &[u8],
        now: u64,
        context: &C,
        no_body: impl Fn() -> bool,
    ) -> Result<Vec<Message<C>>, StreamError> {
        if self.buffer_start.is_none() && self.partial.is_none() {
            self.buffer_start = Some((now, context.clone()));
        }
        self.buffer.extend_from_slice(bytes);
        if self.held() > MAX_MESSAGE_BYTES {
            self.reset();
            return Err(StreamError::TooLarge);
        }
        let mut done = Vec::new();
        loop {
            if self.partial.is_none() && !self.parse_head(&no_body)? {
                break;
            }
            match self.parse_body(now)? {
                Body::Done(message) => {
                    done.extend(message);
                    if self.buffer.is_empty() {
                        break;
                    }
                    self.buffer_start = Some((now, context.clone()));
                }
                Body::Incomplete => break,
            }
        }
        Ok(done)
    }

    /// The connection ended: the message under way is as complete as it will get (a
    /// response read until the end, or a stream its reader stopped reading).
    pub(crate) fn close(&mut self, now: u64) -> Option<Message<C>> {
        let partial = self.partial.take()?;
        if partial.delivered {
            return None;
        }
        let mut body = partial.body;
        if partial.framing == Framing::UntilClose {
            body.append(&mut self.buffer);
        }
        Some(finish(
            partial.head,
            body,
            partial.first_ns,
            partial.first_body_ns,
            now,
            partial.context,
        ))
    }

    /// The body read so far of the message under way.
    pub(crate) fn current_body(&self) -> Option<&[u8]> {
        self.partial.as_ref().map(|p| p.body.as_slice())
    }

    /// Hands out the message under way before its framing ends (a stream whose last event
    /// has come: its reader may never read the rest); its end is still consumed.
    pub(crate) fn deliver_early(&mut self, now: u64) -> Option<Message<C>> {
        let partial = self.partial.as_mut().filter(|p| !p.delivered)?;
        partial.delivered = true;
        Some(finish(
            partial.head.clone(),
            partial.body.clone(),
            partial.first_ns,
            partial.first_body_ns,
            now,
            partial.context.clone(),
        ))
    }

    pub(crate) fn reset(&mut self) {
        self.buffer.clear();
        self.buffer_start = None;
        self.partial = None;
    }

    /// Parses a head at the start of the buffer; false when more bytes are needed.
    fn parse_head(&mut self, no_body: &impl Fn() -> bool) -> Result<bool, StreamError> {
        if self.buffer.starts_with(b"PRI * HTTP/2") {
            return Err(StreamError::Http2);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (length, head) = if self.response {
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buffer) {
                Ok(httparse::Status::Complete(n)) => (n, response_head(&response)),
                Ok(httparse::Status::Partial) => return Ok(false),
                Err(_) => return Err(StreamError::NotHttp),
            }
        } else {
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&self.buffer) {
                Ok(httparse::Status::Complete(n)) => (n, request_head(&request)),
                Ok(httparse::Status::Partial) => return Ok(false),
                Err(_) => return Err(StreamError::NotHttp),
            }
        };
        self.buffer.drain(..length);
        let framing = framing(&head, self.response, self.response && no_body());
        let (first_ns, context) = self.buffer_start.take().ok_or(StreamError::NotHttp)?;
        self.partial = Some(Partial {
            head,
            delivered: false,
            framing,
            first_ns,
            first_body_ns: None,
            context,
            body: Vec::new(),
        });
        Ok(true)
    }

    /// Moves body bytes out of the buffer; the message when it is complete.
    fn parse_body(&mut self, now: u64) -> Result<Body<C>, StreamError> {
        let Some(partial) = &mut self.partial else {
            return Ok(Body::Incomplete);
        };
        if !self.buffer.is_empty() && partial.first_body_ns.is_none() {
            partial.first_body_ns = Some(now);
        }
        let complete = match partial.framing {
            Framing::Length(total) => {
                let take = (total - partial.body.len()).min(self.buffer.len());
                partial.body.extend(self.buffer.drain(..take));
                partial.body.len() == total
            }
            Framing::Chunked => dechunk(&mut self.buffer, &mut partial.body)?,
            Framing::UntilClose => {
                partial.body.append(&mut self.buffer);
                false
            }
        };
        if !complete {
            return Ok(Body::Incomplete);
        }
        let Some(partial) = self.partial.take() else {
            return Ok(Body::Incomplete);
        };
        if partial.delivered {
            return Ok(Body::Done(None));
        }
        Ok(Body::Done(Some(finish(
            partial.head,
            partial.body,
            partial.first_ns,
            partial.first_body_ns,
            now,
            partial.context,
        ))))
    }
}

/// Where a message's body got to.
enum Body<C> {
    Incomplete,
    /// Complete; the message, unless it was delivered early.
    Done(Option<Message<C>>),
}

fn finish<C>(
    head: Head,
    body: Vec<u8>,
    first_ns: u64,
    first_body_ns: Option<u64>,
    last_ns: u64,
    context: C,
) -> Message<C> {
    Message {
        head,
        body,
        first_ns,
        first_body_ns,
        last_ns,
        context,
    }
}

fn headers(raw: &[httparse::Header]) -> Vec<(String, String)> {
    raw.iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect()
}

fn request_head(request: &httparse::Request) -> Head {
    Head {
        method: request.method.unwrap_or_default().to_string(),
        path: request.path.unwrap_or_default().to_string(),
        status: 0,
        headers: headers(request.headers),
    }
}

fn response_head(response: &httparse::Response) -> Head {
    Head {
        status: response.code.unwrap_or_default(),
        headers: headers(response.headers),
        ..Head::default()
    }
}

fn framing(head: &Head, response: bool, no_body: bool) -> Framing {
    let informational = response && (100..200).contains(&head.status);
    if no_body || informational || (response && matches!(head.status, 204 | 304)) {
        return Framing::Length(0);
    }
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return Framing::Chunked;
    }
    match head.header("content-length").and_then(|v| v.parse().ok()) {
        Some(length) => Framing::Length(length),
        None if response => Framing::UntilClose,
        None => Framing::Length(0),
    }
}

/// Moves whole chunks from `buffer` to `body`; true once the last chunk (and its trailers)
/// has been read.
fn dechunk(buffer: &mut Vec<u8>, body: &mut Vec<u8>) -> Result<bool, StreamError> {
    let mut at = 0;
    let done = loop {
        match httparse::parse_chunk_size(&buffer[at..]) {
            Ok(httparse::Status::Complete((header, 0))) => {
                // The last chunk: trailers end with an empty line.
                let rest = &buffer[at + header..];
                match rest.windows(2).position(|w| w == b"\r\n") {
                    Some(0) => {
                        at += header + 2;
                        break true;
                    }
                    Some(_) => match rest.windows(4).position(|w| w == b"\r\n\r\n") {
                        Some(end) => {
                            at += header + end + 4;
                            break true;
                        }
                        None => break false,
                    },
                    None => break false,
                }
            }
            Ok(httparse::Status::Complete((header, size))) => {
                let size = usize::try_from(size).map_err(|_| StreamError::TooLarge)?;
                let end = at + header + size;
                if buffer.len() < end + 2 {
                    break false;
                }
                body.extend_from_slice(&buffer[at + header..end]);
                at = end + 2;
            }
            Ok(httparse::Status::Partial) => break false,
            Err(_) => return Err(StreamError::NotHttp),
        }
    };
    buffer.drain(..at);
    Ok(done)
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("unsupported content encoding {0}")]
    Unsupported(String),
    #[error("cannot decode the body")]
    Corrupt(#[source] std::io::Error),
}

/// The body without its content coding (`gzip`, `deflate`, `br`, `zstd`), at most
/// [`MAX_MESSAGE_BYTES`] of it.
pub(crate) fn decode_body(head: &Head, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let encoding = head
        .header("content-encoding")
        .unwrap_or("identity")
        .to_ascii_lowercase();
    let limit = MAX_MESSAGE_BYTES as u64;
    let mut out = Vec::new();
    let read = match encoding.trim() {
        "" | "identity" => return Ok(body.to_vec()),
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => {
            // `deflate` is zlib-wrapped by the standard, raw in some servers.
            let zlib = flate2::read::ZlibDecoder::new(body)
                .take(limit)
                .read_to_end(&mut out);
            if zlib.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(body)
                    .take(limit)
                    .read_to_end(&mut out)
            } else {
                zlib
            }
        }
        "br" => brotli::Decompressor::new(body, 4096)
            .take(limit)
            .read_to_end(&mut out),
        "zstd" => zstd::stream::read::Decoder::new(body)
            .and_then(|decoder| decoder.take(limit).read_to_end(&mut out)),
        other => return Err(DecodeError::Unsupported(other.to_string())),
    };
    read.map_err(DecodeError::Corrupt)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_all(stream: &mut Stream<()>, bytes: &[u8]) -> Vec<Message<()>> {
        stream.push(bytes, 1, &(), || false).expect("valid HTTP")
    }

    #[test]
    fn keep_alive_requests_are_split_by_content_length() {
        let mut stream = Stream::requests();
        let two = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}POST /v1/embeddings HTTP/1.1\r\nContent-Length: 3\r\n\r\n[1]";
        let messages = push_all(&mut stream, &two[..30]);
        assert!(messages.is_empty());
        let messages = push_all(&mut stream, &two[30..]);
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].head.path, "/v1/chat/completions");
        assert_eq!(messages[0].body, b"{}");
        assert_eq!(messages[1].head.path, "/v1/embeddings");
        assert_eq!(messages[1].body, b"[1]");
        assert!(!stream.in_message());
    }

    #[test]
    fn chunked_responses_are_dechunked_across_pushes() {
        let mut stream = Stream::responses();
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut messages = Vec::new();
        for byte in text.chunks(7) {
            messages.extend(push_all(&mut stream, byte));
        }
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].head.status, 200);
        assert_eq!(messages[0].body, b"hello world");
    }

    #[test]
    fn a_message_delivered_early_is_not_delivered_again() {
        let mut stream = Stream::responses();
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n";
        assert!(push_all(&mut stream, head).is_empty());
        let early = stream.deliver_early(5).expect("a message under way");
        assert_eq!(early.body, b"hello");
        assert!(stream.deliver_early(6).is_none());
        let next = b"0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let messages = push_all(&mut stream, next);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].head.status, 204);
    }

    #[test]
    fn a_response_without_length_ends_with_the_connection() {
        let mut stream = Stream::responses();
        assert!(push_all(&mut stream, b"HTTP/1.1 200 OK\r\n\r\nabc").is_empty());
        let message = stream.close(9).expect("complete at close");
        assert_eq!(message.body, b"abc");
        assert_eq!(message.last_ns, 9);
    }

    #[test]
    fn http2_and_garbage_are_told_apart() {
        let mut stream = Stream::<()>::requests();
        let error = stream.push(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 1, &(), || false);
        assert_eq!(error.unwrap_err(), StreamError::Http2);
        let mut stream = Stream::<()>::responses();
        let error = stream.push(b"\x00\x01binary", 1, &(), || false);
        assert_eq!(error.unwrap_err(), StreamError::NotHttp);
    }

    #[test]
    fn oversized_messages_are_dropped() {
        let mut stream = Stream::<()>::requests();
        let head = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_MESSAGE_BYTES * 2
        );
        assert!(push_all(&mut stream, head.as_bytes()).is_empty());
        let body = vec![b'x'; MAX_MESSAGE_BYTES + 1];
        let error = stream.push(&body, 1, &(), || false);
        assert_eq!(error.unwrap_err(), StreamError::TooLarge);
        assert_eq!(stream.held(), 0);
    }

    #[test]
    fn bodies_are_decoded_by_content_encoding() {
        use std::io::Write;
        let text = br#"{"model":"m"}"#;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gzip.write_all(text).unwrap();
        let gzip = gzip.finish().unwrap();
        let zstd = zstd::encode_all(&text[..], 3).unwrap();
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(text)
            .unwrap();
        let mut deflate =
            flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        deflate.write_all(text).unwrap();
        let deflate = deflate.finish().unwrap();
        for (encoding, body) in [
            ("gzip", gzip),
            ("zstd", zstd),
            ("br", br),
            ("deflate", deflate),
        ] {
            let head = Head {
                headers: vec![("content-encoding".into(), encoding.into())],
                ..Head::default()
            };
            assert_eq!(decode_body(&head, &body).unwrap(), text, "{encoding}");
        }
    }
}
