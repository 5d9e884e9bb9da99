//! LLM calls out of captured TLS plaintext: the capture ring's chunks are put back together
//! per connection (process, `SSL *`) and direction, read as HTTP/1.1 exchanges ([`http`]),
//! decoded as LLM API calls by request path and body ([`decode`]), and turned into exact
//! metrics ([`metrics`]) and, for sampled traces, GenAI client spans ([`span`]). A connection
//! whose first request is not an LLM API is marked quiet in the kernel, which then stops
//! capturing it.

pub(crate) mod decode;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod span;

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use flowtap_common::capture::ConnectionKey;

use crate::{
    capture_ring::{CaptureStream, Chunk},
    loader::QuietConnections,
};
use decode::{Api, RequestFacts, ResponseFacts};
use http::{Head, Message, Stream, StreamError};
use metrics::{Dropped, LlmMetrics};

/// Connections followed at once; past it the least recently active is evicted (counted).
const MAX_CONNECTIONS: usize = 4096;
/// Bytes held over all connections for messages not yet complete.
const MAX_HELD_BYTES: usize = 64 << 20;

/// The trace context of the call that moved a message's first bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallContext {
    pub tid: u32,
    pub trace_id: [u64; 2],
    pub parent_span_id: u64,
    pub sampled: bool,
}

/// One decoded LLM call.
#[derive(Debug, Clone)]
pub(crate) struct LlmCall {
    pub api: Api,
    pub pid: u32,
    pub context: CallContext,
    pub request_model: Option<String>,
    pub streamed: bool,
    pub status: u16,
    pub response: ResponseFacts,
    /// When the request's first byte was written, the response's first body byte and last
    /// byte read (CLOCK_MONOTONIC).
    pub start_ns: u64,
    pub first_body_ns: Option<u64>,
    pub end_ns: u64,
    pub server_address: Option<String>,
    pub server_port: u16,
    /// The prompt as sent (JSON), kept only with `--capture-content`.
    pub prompt: Option<String>,
}

impl LlmCall {
    /// The model a metric counts it under: the response's, else the request's.
    pub(crate) fn model(&self) -> &str {
        self.response
            .model
            .as_deref()
            .or(self.request_model.as_deref())
            .unwrap_or("unknown")
    }

    pub(crate) fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }

    /// For streams: from the request to the first chunk of the answer.
    pub(crate) fn time_to_first_chunk_ns(&self) -> Option<u64> {
        self.first_body_ns
            .filter(|_| self.streamed && self.status < 400)
            .map(|first| first.saturating_sub(self.start_ns))
    }

    /// `error.type`: the API's error type, else the HTTP status, for a failed call.
    pub(crate) fn error_type(&self) -> Option<String> {
        (self.status >= 400 || self.response.error_type.is_some()).then(|| {
            self.response
                .error_type
                .clone()
                .unwrap_or_else(|| self.status.to_string())
        })
    }
}

/// A request sent and not answered yet.
struct Sent {
    api: Option<Api>,
    head: Head,
    facts: RequestFacts,
    start_ns: u64,
    context: CallContext,
}

/// Where the last call's chunks of one direction got to: a chunk not following on is a gap.
#[derive(Default)]
struct Cursor {
    call: (u32, u64),
    next: u64,
    call_bytes: u64,
}

impl Cursor {
    /// Takes a chunk; false when bytes before it are missing.
    fn follows(&mut self, chunk: &Chunk) -> bool {
        let header = &chunk.header;
        let call = (header.tid, header.start_ns);
        let offset = u64::from(header.offset);
        let whole = if call == self.call {
            offset == self.next
        } else {
            let previous_whole = self.next >= self.call_bytes;
            self.call = call;
            self.call_bytes = header.call_bytes;
            previous_whole && offset == 0
        };
        self.next = offset + u64::from(header.len);
        whole
    }
}

struct Connection {
    requests: Stream<CallContext>,
    responses: Stream<CallContext>,
    sent: VecDeque<Sent>,
    writes: Cursor,
    reads: Cursor,
    last_ns: u64,
    /// Whether an LLM API request was seen on it.
    llm_seen: bool,
}

impl Connection {
    fn new() -> Self {
        Self {
            requests: Stream::requests(),
            responses: Stream::responses(),
            sent: VecDeque::new(),
            writes: Cursor::default(),
            reads: Cursor::default(),
            last_ns: 0,
            llm_seen: false,
        }
    }

    fn held(&self) -> usize {
        self.requests.held() + self.responses.held()
    }
}

/// What becomes of a connection after some of its bytes.
enum Verdict {
    Follow,
    /// Not an LLM API: stop capturing it.
    Quiet,
}

/// The capture's consumer: connections, decoding, metrics and spans.
pub(crate) struct LlmTap {
    stream: CaptureStream,
    quiet: QuietConnections,
    connections: HashMap<ConnectionKey, Connection>,
    pub metrics: Arc<Mutex<LlmMetrics>>,
    spans: span::LlmSpans,
    capture_content: bool,
    chunks: Vec<Chunk>,
}

impl LlmTap {
    pub(crate) fn new(
        stream: CaptureStream,
        quiet: QuietConnections,
        metrics: Arc<Mutex<LlmMetrics>>,
        capture_content: bool,
    ) -> Self {
        Self {
            stream,
            quiet,
            connections: HashMap::new(),
            metrics,
            spans: span::LlmSpans::new(capture_content),
            capture_content,
            chunks: Vec::new(),
        }
    }

    /// Reads every chunk available now; returns the spans of the sampled calls they completed,
    /// with their process ids.
    pub(crate) fn pump(&mut self) -> Vec<(u32, opentelemetry_sdk::trace::SpanData)> {
        self.chunks.clear();
        self.stream.drain(&mut self.chunks);
        let chunks = std::mem::take(&mut self.chunks);
        let mut calls = Vec::new();
        for chunk in &chunks {
            self.take(chunk, &mut calls);
        }
        self.chunks = chunks;
        self.bound_memory();
        let mut metrics = self.metrics.lock().expect("llm metrics lock");
        let mut spans = Vec::new();
        for call in &calls {
            metrics.record(call);
            if call.context.sampled {
                spans.push((call.pid, self.spans.span(call, &mut metrics)));
            }
        }
        spans
    }

    fn take(&mut self, chunk: &Chunk, calls: &mut Vec<LlmCall>) {
        let header = &chunk.header;
        let key = ConnectionKey {
            tgid: header.tgid,
            _pad: 0,
            connection: header.connection,
        };
        if chunk.is_close() {
            if let Some(mut connection) = self.connections.remove(&key) {
                let now = header.end_ns;
                if let Some(message) = connection.responses.close(now) {
                    self.answer(&mut connection, message, header.tgid, calls);
                }
            }
            return;
        }
        let mut connection = self
            .connections
            .remove(&key)
            .unwrap_or_else(Connection::new);
        connection.last_ns = header.end_ns;
        let verdict = if chunk.is_read() {
            self.take_read(&mut connection, chunk, calls)
        } else {
            self.take_write(&mut connection, chunk)
        };
        match verdict {
            Verdict::Follow => {
                self.connections.insert(key, connection);
            }
            Verdict::Quiet => {
                // The kernel's LRU map bounds it; a failed insert only costs captures.
                let _ = self.quiet.insert(&key, &1, 0);
                self.metrics
                    .lock()
                    .expect("llm metrics lock")
                    .quiet_connections += 1;
            }
        }
    }

    fn take_write(&mut self, connection: &mut Connection, chunk: &Chunk) -> Verdict {
        if !connection.writes.follows(chunk) && connection.requests.in_message() {
            connection.requests.reset();
            self.dropped(Dropped::Gap);
        }
        let header = &chunk.header;
        let context = call_context(chunk);
        let pushed = connection
            .requests
            .push(&chunk.data, header.start_ns, &context, || false);
        let messages = match pushed {
            Ok(messages) => messages,
            Err(error) => return self.stream_error(connection, error, false),
        };
        // The first request tells whether the connection talks to an LLM API; later ones on
        // it (a model list...) are followed and not counted.
        if !connection.llm_seen {
            let mut heads = messages
                .iter()
                .map(|m| &m.head)
                .chain(connection.requests.current_head());
            if let Some(first) = heads.next() {
                if Api::from_path(&first.path).is_none() {
                    return Verdict::Quiet;
                }
                connection.llm_seen = true;
            }
        }
        for message in messages {
            connection.sent.push_back(self.sent(message));
        }
        Verdict::Follow
    }

    fn sent(&self, message: Message<CallContext>) -> Sent {
        let api = Api::from_path(&message.head.path);
        let mut facts = api
            .map(|api| request_facts(api, &message))
            .unwrap_or_default();
        if !self.capture_content {
            facts.content = None;
        }
        Sent {
            api,
            head: message.head,
            facts,
            start_ns: message.first_ns,
            context: message.context,
        }
    }

    fn take_read(
        &mut self,
        connection: &mut Connection,
        chunk: &Chunk,
        calls: &mut Vec<LlmCall>,
    ) -> Verdict {
        if !connection.reads.follows(chunk) && connection.responses.in_message() {
            connection.responses.reset();
            connection.sent.pop_front();
            self.dropped(Dropped::Gap);
        }
        let header = &chunk.header;
        let context = call_context(chunk);
        let head_request = connection
            .sent
            .front()
            .is_some_and(|sent| sent.head.method == "HEAD");
        let pushed = connection
            .responses
            .push(&chunk.data, header.end_ns, &context, || head_request);
        let mut messages = match pushed {
            Ok(messages) => messages,
            Err(error) => return self.stream_error(connection, error, true),
        };
        if stream_ended(&connection.responses) {
            messages.extend(connection.responses.deliver_early(header.end_ns));
        }
        for message in messages {
            self.answer(connection, message, header.tgid, calls);
        }
        Verdict::Follow
    }

    /// Pairs a response with the oldest unanswered request.
    fn answer(
        &mut self,
        connection: &mut Connection,
        message: Message<CallContext>,
        pid: u32,
        calls: &mut Vec<LlmCall>,
    ) {
        if (100..200).contains(&message.head.status) {
            return;
        }
        let Some(sent) = connection.sent.pop_front() else {
            self.dropped(Dropped::Unmatched);
            return;
        };
        let Some(api) = sent.api else {
            return;
        };
        let body = match http::decode_body(&message.head, &message.body) {
            Ok(body) => body,
            Err(_) => {
                self.dropped(Dropped::BadEncoding);
                Vec::new()
            }
        };
        let events = message
            .head
            .header("content-type")
            .is_some_and(|t| t.contains("text/event-stream"));
        let (server_address, server_port) = server(&sent.head);
        calls.push(LlmCall {
            api,
            pid,
            context: sent.context,
            request_model: sent.facts.model,
            streamed: sent.facts.stream || events,
            status: message.head.status,
            response: decode::response_facts(api, &body, events),
            start_ns: sent.start_ns,
            first_body_ns: message.first_body_ns,
            end_ns: message.last_ns,
            server_address,
            server_port,
            prompt: sent.facts.content,
        });
    }

    /// Bytes that cannot be read as HTTP/1.1: a connection that never spoke it is quiet from
    /// now on; one that did restarts at its next message.
    fn stream_error(
        &mut self,
        connection: &mut Connection,
        error: StreamError,
        read: bool,
    ) -> Verdict {
        let reason = match error {
            StreamError::NotHttp => Dropped::NotHttp,
            StreamError::Http2 => Dropped::Http2,
            StreamError::TooLarge => Dropped::TooLarge,
        };
        self.dropped(reason);
        // Never spoke HTTP/1.1 as a client: HTTP/2, another protocol, or the server's side
        // of a connection (its writes are responses, its reads requests).
        let never_client = !connection.llm_seen && connection.sent.is_empty();
        if error == StreamError::Http2 || never_client {
            return Verdict::Quiet;
        }
        if read {
            connection.responses.reset();
            connection.sent.pop_front();
        } else {
            connection.requests.reset();
        }
        Verdict::Follow
    }

    fn dropped(&self, reason: Dropped) {
        self.metrics
            .lock()
            .expect("llm metrics lock")
            .count_drop(reason);
    }

    /// Evicts the least recently active connections past the bounds.
    fn bound_memory(&mut self) {
        loop {
            let held: usize = self.connections.values().map(Connection::held).sum();
            if self.connections.len() <= MAX_CONNECTIONS && held <= MAX_HELD_BYTES {
                return;
            }
            let Some(oldest) = self
                .connections
                .iter()
                .min_by_key(|(_, c)| c.last_ns)
                .map(|(key, _)| *key)
            else {
                return;
            };
            self.connections.remove(&oldest);
            self.dropped(Dropped::Evicted);
        }
    }
}

/// Whether the event stream under way has sent its last event: readers (the SDKs) stop
/// reading there, and may never read the transfer coding's end.
fn stream_ended(responses: &Stream<CallContext>) -> bool {
    let events = responses
        .current_head()
        .and_then(|head| head.header("content-type"))
        .is_some_and(|t| t.contains("text/event-stream"));
    let Some(body) = responses.current_body().filter(|_| events) else {
        return false;
    };
    let tail = &body[body.len().saturating_sub(512)..];
    decode::last_event_in(tail)
}

fn call_context(chunk: &Chunk) -> CallContext {
    let header = &chunk.header;
    CallContext {
        tid: header.tid,
        trace_id: header.trace_id,
        parent_span_id: header.parent_span_id,
        sampled: chunk.sampled(),
    }
}

fn request_facts(api: Api, message: &Message<CallContext>) -> RequestFacts {
    match http::decode_body(&message.head, &message.body) {
        Ok(body) => decode::request_facts(api, &body),
        Err(_) => RequestFacts::default(),
    }
}

/// `server.address` and `server.port` from the request's `Host` (HTTPS: 443 by default).
fn server(head: &Head) -> (Option<String>, u16) {
    let Some(host) = head.header("host") else {
        return (None, 443);
    };
    if let Some(rest) = host.strip_prefix('[')
        && let Some((address, port)) = rest.split_once(']')
    {
        let port = port.strip_prefix(':').and_then(|p| p.parse().ok());
        return (Some(address.to_string()), port.unwrap_or(443));
    }
    match host.rsplit_once(':') {
        Some((address, port)) if port.parse::<u16>().is_ok() => {
            (Some(address.to_string()), port.parse().unwrap_or(443))
        }
        _ => (Some(host.to_string()), 443),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_give_address_and_port() {
        let head = |host: &str| Head {
            headers: vec![("host".into(), host.into())],
            ..Head::default()
        };
        assert_eq!(
            server(&head("api.openai.com")),
            (Some("api.openai.com".into()), 443)
        );
        assert_eq!(
            server(&head("localhost:8443")),
            (Some("localhost".into()), 8443)
        );
        assert_eq!(server(&head("[::1]:9000")), (Some("::1".into()), 9000));
    }

    #[test]
    fn a_chunk_not_following_on_is_a_gap() {
        let chunk = |tid, start_ns, offset, len, call_bytes| Chunk {
            header: flowtap_common::capture::ChunkHeader {
                tid,
                start_ns,
                offset,
                len,
                call_bytes,
                ..Default::default()
            },
            data: Vec::new(),
        };
        let mut cursor = Cursor::default();
        assert!(cursor.follows(&chunk(1, 10, 0, 512, 600)));
        assert!(cursor.follows(&chunk(1, 10, 512, 88, 600)));
        assert!(cursor.follows(&chunk(1, 20, 0, 100, 100)));
        // A call cut at the cap: the next call shows the gap.
        assert!(cursor.follows(&chunk(1, 30, 0, 100, 900)));
        assert!(!cursor.follows(&chunk(1, 40, 0, 10, 10)));
        // A chunk of the same call missing (ring full).
        assert!(!cursor.follows(&chunk(1, 50, 512, 10, 600)));
    }
}
