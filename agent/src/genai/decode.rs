//! What an HTTP exchange means as an LLM call, told by the request's path and bodies (never by
//! vendor headers): OpenAI-compatible chat completions, completions, responses and embeddings,
//! and Anthropic messages; plain JSON or server-sent events; errors by status and the API's
//! error type.

use serde_json::Value;

/// An API the request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    ChatCompletions,
    Completions,
    Responses,
    Embeddings,
    AnthropicMessages,
}

impl Api {
    /// The API a request path names (a gateway may put a prefix before `/v1/`).
    pub(crate) fn from_path(path: &str) -> Option<Self> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = path.trim_end_matches('/');
        [
            ("/chat/completions", Api::ChatCompletions),
            ("/v1/completions", Api::Completions),
            ("/v1/responses", Api::Responses),
            ("/v1/embeddings", Api::Embeddings),
            ("/v1/messages", Api::AnthropicMessages),
        ]
        .into_iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, api)| api)
    }

    /// `gen_ai.operation.name`.
    pub(crate) fn operation(self) -> &'static str {
        match self {
            Api::ChatCompletions | Api::Responses | Api::AnthropicMessages => "chat",
            Api::Completions => "text_completion",
            Api::Embeddings => "embeddings",
        }
    }

    /// `gen_ai.provider.name`: the API's protocol (an OpenAI-compatible gateway speaks
    /// OpenAI's).
    pub(crate) fn provider(self) -> &'static str {
        match self {
            Api::AnthropicMessages => "anthropic",
            _ => "openai",
        }
    }
}

/// What the request said.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestFacts {
    pub model: Option<String>,
    pub stream: bool,
    /// The prompt as sent (messages, input or prompt), as JSON text.
    pub content: Option<String>,
}

pub(crate) fn request_facts(api: Api, body: &[u8]) -> RequestFacts {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return RequestFacts::default();
    };
    let content = match api {
        Api::ChatCompletions | Api::AnthropicMessages => json.get("messages"),
        Api::Completions => json.get("prompt"),
        Api::Responses | Api::Embeddings => json.get("input"),
    };
    RequestFacts {
        model: text(&json, "model"),
        stream: json.get("stream").and_then(Value::as_bool).unwrap_or(false),
        content: content.map(Value::to_string),
    }
}

/// What the response said.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ResponseFacts {
    pub model: Option<String>,
    pub id: Option<String>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub finish_reasons: Vec<String>,
    /// The API's error type (`rate_limit_error`, `server_error`...).
    pub error_type: Option<String>,
    /// The completion's text, as far as it could be put together.
    pub content: String,
}

/// Reads a response body: JSON, or server-sent events when `events`.
pub(crate) fn response_facts(api: Api, body: &[u8], events: bool) -> ResponseFacts {
    let mut facts = ResponseFacts::default();
    if events {
        for data in sse_data(body) {
            if let Ok(json) = serde_json::from_str::<Value>(&data) {
                absorb(api, &json, &mut facts);
            }
        }
    } else if let Ok(json) = serde_json::from_slice::<Value>(body) {
        absorb(api, &json, &mut facts);
    }
    facts
}

/// Whether these last bytes of an event stream hold its final event: OpenAI's `[DONE]`,
/// Anthropic's `message_stop`, the Responses API's `response.completed` (or failure).
pub(crate) fn last_event_in(tail: &[u8]) -> bool {
    let text = String::from_utf8_lossy(tail);
    let ended = |marker: &str| {
        text.find(marker)
            .is_some_and(|at| text[at..].contains("\n\n") || text[at..].contains("\r\n\r\n"))
    };
    [
        "data: [DONE]",
        "\"message_stop\"",
        "\"response.completed\"",
        "\"response.failed\"",
    ]
    .iter()
    .any(|marker| ended(marker))
}

/// The `data:` payloads of a server-sent event stream, one per event.
pub(crate) fn sse_data(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let mut events = Vec::new();
    let mut data = String::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if !data.is_empty() {
                events.push(std::mem::take(&mut data));
            }
            continue;
        }
        if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    if !data.is_empty() {
        events.push(data);
    }
    events
}

/// Takes what one JSON document (a whole response, or one streamed event) tells.
fn absorb(api: Api, json: &Value, facts: &mut ResponseFacts) {
    if let Some(error) = json.get("error").filter(|e| !e.is_null()) {
        facts.error_type = text(error, "type")
            .or_else(|| text(error, "code"))
            .or_else(|| error.as_str().map(str::to_string));
    }
    match api {
        Api::AnthropicMessages => absorb_anthropic(json, facts),
        Api::Responses => {
            // Streamed: the final event carries the whole response.
            let response = json.get("response").unwrap_or(json);
            set(&mut facts.model, text(response, "model"));
            set(&mut facts.id, text(response, "id"));
            if let Some(usage) = response.get("usage").filter(|u| !u.is_null()) {
                set(&mut facts.input_tokens, number(usage, "input_tokens"));
                set(&mut facts.output_tokens, number(usage, "output_tokens"));
            }
            if let Some(status) = text(response, "status").filter(|s| s != "in_progress") {
                facts.finish_reasons = vec![status];
            }
            if let Some(delta) = json.get("delta").and_then(Value::as_str) {
                facts.content.push_str(delta);
            }
        }
        _ => absorb_openai(json, facts),
    }
}

fn absorb_openai(json: &Value, facts: &mut ResponseFacts) {
    set(&mut facts.model, text(json, "model"));
    set(&mut facts.id, text(json, "id"));
    if let Some(usage) = json.get("usage").filter(|u| !u.is_null()) {
        set(&mut facts.input_tokens, number(usage, "prompt_tokens"));
        set(&mut facts.output_tokens, number(usage, "completion_tokens"));
    }
    for choice in json
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(reason) = text(choice, "finish_reason") {
            facts.finish_reasons.push(reason);
        }
        let piece = choice
            .pointer("/message/content")
            .or_else(|| choice.pointer("/delta/content"))
            .or_else(|| choice.get("text"))
            .and_then(Value::as_str);
        if let Some(piece) = piece {
            facts.content.push_str(piece);
        }
    }
}

/// Anthropic: a whole message, or the stream's `message_start` (model, input tokens),
/// `content_block_delta` (text) and `message_delta` (stop reason, output tokens, cumulative).
fn absorb_anthropic(json: &Value, facts: &mut ResponseFacts) {
    let message = json.get("message").unwrap_or(json);
    if text(json, "type").as_deref() != Some("error") {
        set(&mut facts.model, text(message, "model"));
        set(&mut facts.id, text(message, "id"));
    }
    if let Some(usage) = message.get("usage").or_else(|| json.get("usage")) {
        if let Some(input) = number(usage, "input_tokens") {
            facts.input_tokens = Some(input);
        }
        if let Some(output) = number(usage, "output_tokens") {
            facts.output_tokens = Some(output);
        }
    }
    let stop = text(message, "stop_reason").or_else(|| {
        json.get("delta")
            .and_then(|delta| text(delta, "stop_reason"))
    });
    if let Some(stop) = stop {
        facts.finish_reasons = vec![stop];
    }
    if let Some(piece) = json.pointer("/delta/text").and_then(Value::as_str) {
        facts.content.push_str(piece);
    }
    for block in message
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(piece) = block.get("text").and_then(Value::as_str) {
            facts.content.push_str(piece);
        }
    }
}

fn set<T>(slot: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *slot = value;
    }
}

fn text(json: &Value, key: &str) -> Option<String> {
    json.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn number(json: &Value, key: &str) -> Option<u64> {
    json.get(key).and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apis_are_told_by_path() {
        assert_eq!(
            Api::from_path("/v1/chat/completions"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(
            Api::from_path("/openai/deployments/x/chat/completions?api-version=1"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(Api::from_path("/v1/messages"), Some(Api::AnthropicMessages));
        assert_eq!(Api::from_path("/v1/embeddings/"), Some(Api::Embeddings));
        assert_eq!(Api::from_path("/v1/models"), None);
        assert_eq!(Api::from_path("/index.html"), None);
    }

    #[test]
    fn openai_stream_usage_comes_from_the_final_chunk() {
        let body = b"data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"id\":\"c1\",\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";
        let facts = response_facts(Api::ChatCompletions, body, true);
        assert_eq!(facts.model.as_deref(), Some("gpt-4o"));
        assert_eq!(
            (facts.input_tokens, facts.output_tokens),
            (Some(7), Some(2))
        );
        assert_eq!(facts.finish_reasons, ["stop"]);
        assert_eq!(facts.content, "Hello");
    }

    #[test]
    fn anthropic_stream_takes_input_at_start_and_output_at_delta() {
        let body = b"event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"model\":\"claude-sonnet-4\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\r\n\r\n\
event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":5}}\r\n\r\n";
        let facts = response_facts(Api::AnthropicMessages, body, true);
        assert_eq!(facts.model.as_deref(), Some("claude-sonnet-4"));
        assert_eq!(
            (facts.input_tokens, facts.output_tokens),
            (Some(11), Some(5))
        );
        assert_eq!(facts.finish_reasons, ["end_turn"]);
        assert_eq!(facts.content, "Hi");
    }

    #[test]
    fn final_events_are_recognised_once_whole() {
        assert!(last_event_in(b"data: {}\n\ndata: [DONE]\n\n"));
        assert!(!last_event_in(b"data: {}\n\ndata: [DONE]\n"));
        assert!(last_event_in(
            b"event: message_stop\r\ndata: {\"type\": \"message_stop\"}\r\n\r\n"
        ));
        assert!(!last_event_in(b"data: {\"choices\":[]}\n\n"));
    }

    #[test]
    fn errors_give_the_api_error_type() {
        let openai =
            br#"{"error":{"message":"slow down","type":"rate_limit_exceeded","code":null}}"#;
        let facts = response_facts(Api::ChatCompletions, openai, false);
        assert_eq!(facts.error_type.as_deref(), Some("rate_limit_exceeded"));
        let anthropic = br#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#;
        let facts = response_facts(Api::AnthropicMessages, anthropic, false);
        assert_eq!(facts.error_type.as_deref(), Some("overloaded_error"));
    }

    #[test]
    fn embeddings_and_responses_usage() {
        let body = br#"{"object":"list","model":"text-embedding-3-small","usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        let facts = response_facts(Api::Embeddings, body, false);
        assert_eq!(facts.input_tokens, Some(4));
        let body = b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"ok\"}\n\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"model\":\"gpt-4.1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n";
        let facts = response_facts(Api::Responses, body, true);
        assert_eq!(
            (facts.input_tokens, facts.output_tokens),
            (Some(3), Some(1))
        );
        assert_eq!(facts.finish_reasons, ["completed"]);
        assert_eq!(facts.content, "ok");
    }
}
