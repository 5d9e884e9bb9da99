//! The HTTP side of `/metrics`, on a thread and event loop of its own so that scrapes, however
//! large or slow, never hold up the span reader. Clients are bounded: a connection must send
//! its request head within [`HEADER_TIMEOUT`] and is done within [`CONNECTION_TIMEOUT`]; at
//! most [`MAX_CONNECTIONS`] are open, and when all are taken, the oldest one that has not yet
//! sent a request makes room, so idle or trickling clients cannot keep a real scrape out.

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hyper::{Request, Response, StatusCode, body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpStream, sync::watch, task::AbortHandle};

use super::prometheus::Exporter;

const MAX_CONNECTIONS: usize = 256;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts of the clients the limits turned away, for `/metrics` itself.
#[derive(Debug, Default)]
pub(crate) struct ServerCounts {
    /// Connections closed before their request to make room for a new one.
    pub evicted: AtomicU64,
    /// Connections refused because every open one was busy with a request.
    pub refused: AtomicU64,
}

/// The server's thread; stopped (and joined) by [`MetricsServer::stop`].
pub(crate) struct MetricsServer {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

impl MetricsServer {
    pub(crate) fn start(
        exporter: Arc<Exporter>,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("flowtap-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, exporter, stopped).await,
                        Err(error) => eprintln!("flowtap: warning: cannot serve metrics: {error}"),
                    }
                });
            })?;
        Ok(Self { stop, thread })
    }

    pub(crate) fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// Open connections: how many, and those still waiting for their request, oldest first.
#[derive(Default)]
struct Connections {
    open: usize,
    next_id: u64,
    waiting: VecDeque<(u64, AbortHandle)>,
}

type Shared = Arc<Mutex<Connections>>;

async fn accept_loop(
    listener: tokio::net::TcpListener,
    exporter: Arc<Exporter>,
    mut stopped: watch::Receiver<bool>,
) {
    let connections = Shared::default();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        match stream {
            Ok((stream, _)) => admit(stream, &connections, &exporter),
            // Out of descriptors, say: let connections close, then accept again.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Serves `stream` when there is room, making room by closing the oldest waiting connection.
fn admit(stream: TcpStream, connections: &Shared, exporter: &Arc<Exporter>) {
    let mut state = connections.lock().expect("connections lock");
    if state.open >= MAX_CONNECTIONS {
        match state.waiting.pop_front() {
            Some((_, oldest)) => {
                oldest.abort();
                exporter.server.evicted.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                exporter.server.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    let id = state.next_id;
    state.next_id += 1;
    state.open += 1;
    let guard = Open {
        id,
        connections: connections.clone(),
    };
    // On this single-threaded loop the task cannot start before it is listed as waiting.
    let task = tokio::spawn(serve_connection(stream, exporter.clone(), guard));
    state.waiting.push_back((id, task.abort_handle()));
}

/// One connection's place in [`Connections`], given back when its task ends or is aborted.
struct Open {
    id: u64,
    connections: Shared,
}

impl Open {
    /// Its request has arrived: no longer a candidate for eviction.
    fn busy(&self) {
        let mut state = self.connections.lock().expect("connections lock");
        state.waiting.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.busy();
        self.connections.lock().expect("connections lock").open -= 1;
    }
}

async fn serve_connection(stream: TcpStream, exporter: Arc<Exporter>, guard: Open) {
    let guard = Arc::new(guard);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        guard.busy();
        let exporter = exporter.clone();
        async move { Ok::<_, Infallible>(respond(&request, &exporter)) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
}

fn respond(request: &Request<Incoming>, exporter: &Exporter) -> Response<String> {
    let (status, body) = match request.uri().path() {
        "/metrics" => match exporter.render() {
            Ok(text) => (StatusCode::OK, text),
            Err(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("flowtap: scrape failed: {error}\n"),
            ),
        },
        "/" => (StatusCode::OK, "flowtap: metrics at /metrics\n".into()),
        _ => (
            StatusCode::NOT_FOUND,
            "flowtap: metrics at /metrics\n".into(),
        ),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
