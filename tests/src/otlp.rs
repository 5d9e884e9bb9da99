//! A minimal OTLP/HTTP (protobuf) receiver for tests: keeps every span with its resource.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value, trace::v1::Span,
};
use prost::Message;

/// A received span and its resource's attributes (values as strings).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub resource: BTreeMap<String, String>,
    pub span: Span,
}

#[derive(Clone, Default)]
pub struct HttpReceiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

impl HttpReceiver {
    /// Serves OTLP/HTTP on `listener` from a background thread.
    pub fn start(listener: TcpListener) -> Self {
        let receiver = Self::default();
        let served = receiver.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let served = served.clone();
                std::thread::spawn(move || served.serve(stream));
            }
        });
        receiver
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Serves OTLP/HTTPS on `listener` with `config` (its certificate, and the client
    /// certificates it requires).
    pub fn start_tls(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let receiver = Self::default();
        let served = receiver.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let served = served.clone();
                let config = config.clone();
                std::thread::spawn(move || {
                    let Ok(connection) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    served.serve(rustls::StreamOwned::new(connection, stream));
                });
            }
        });
        receiver
    }

    /// One keep-alive connection: requests until the client closes it.
    fn serve(&self, stream: impl Read + Write) {
        let mut reader = BufReader::new(stream);
        loop {
            let mut content_length = 0;
            let mut line = String::new();
            let mut first = true;
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if first {
                    first = false;
                    continue;
                }
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; content_length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            let request =
                ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
            self.keep(request);
            let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
            let writer = reader.get_mut();
            if writer.write_all(answer.as_bytes()).is_err() || writer.flush().is_err() {
                return;
            }
        }
    }

    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let resource: BTreeMap<String, String> = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default()
                .into_iter()
                .map(|kv| (kv.key, value_text(kv.value.and_then(|v| v.value))))
                .collect();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(ReceivedSpan {
                        resource: resource.clone(),
                        span,
                    });
                }
            }
        }
    }
}

fn value_text(value: Option<any_value::Value>) -> String {
    match value {
        Some(any_value::Value::StringValue(s)) => s,
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}
