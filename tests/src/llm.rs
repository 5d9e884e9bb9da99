//! The GenAI tests' HTTPS server speaking the OpenAI and Anthropic APIs (`genai/llm_server.py`,
//! with a CA of its own made here), and the curl calls that exercise it.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The system's libssl, which library mode (`--exe`) probes in every process mapping it.
pub const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

pub fn genai_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("genai")
}

/// The test server and its ledger of the calls it served.
pub struct LlmServer {
    child: Child,
    pub port: u16,
    /// The CA that signed its certificate, for clients.
    pub ca: PathBuf,
    ledger: PathBuf,
}

/// What the server served, from its ledger.
#[derive(Debug, Default, PartialEq)]
pub struct Served {
    /// (model, status) → calls.
    pub requests: BTreeMap<(String, u64), u64>,
    /// (model, kind) → tokens.
    pub tokens: BTreeMap<(String, &'static str), u64>,
}

impl LlmServer {
    pub fn start(dir: &Path) -> Self {
        let ca = make_certificates(dir);
        let ledger = dir.join("ledger.jsonl");
        let mut child = Command::new("/usr/bin/python3.11")
            .arg(genai_dir().join("llm_server.py"))
            .arg(dir.join("server.pem"))
            .arg(dir.join("server.key"))
            .arg(&ledger)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the test LLM server (python3.11)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the server's first line is its port: {line:?}"));
        Self {
            child,
            port,
            ca,
            ledger,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// The ledger's calls of models ending with `suffix`.
    pub fn served(&self, suffix: &str) -> Served {
        let text = std::fs::read_to_string(&self.ledger).unwrap_or_default();
        let mut served = Served::default();
        for line in text.lines() {
            let call: serde_json::Value = serde_json::from_str(line).unwrap();
            let model = call["model"].as_str().unwrap().to_string();
            if !model.ends_with(suffix) {
                continue;
            }
            let status = call["status"].as_u64().unwrap();
            *served.requests.entry((model.clone(), status)).or_default() += 1;
            for kind in ["prompt", "completion"] {
                *served.tokens.entry((model.clone(), kind)).or_default() +=
                    call[kind].as_u64().unwrap();
            }
        }
        served
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for localhost it signed, made with the openssl tool.
fn make_certificates(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .expect("running openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flowtap test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    dir.join("ca.pem")
}

/// Every kind of call the server answers, as (URL, JSON body), for models ending with `suffix`.
pub fn calls(server: &LlmServer, suffix: &str) -> Vec<(String, String)> {
    let chat = server.url("/v1/chat/completions");
    let messages = r#"[{"role":"user","content":"say something short please"}]"#;
    vec![
        (
            chat.clone(),
            format!(r#"{{"model":"gpt-4o-mini{suffix}","messages":{messages},"max_tokens":1}}"#),
        ),
        (
            chat.clone(),
            format!(
                r#"{{"model":"gpt-4o{suffix}","messages":{messages},"max_tokens":2,"stream":true,"stream_options":{{"include_usage":true}}}}"#
            ),
        ),
        (
            chat.clone(),
            format!(r#"{{"model":"rate-limited{suffix}","messages":{messages}}}"#),
        ),
        (
            chat,
            format!(r#"{{"model":"broken{suffix}","messages":{messages}}}"#),
        ),
        (
            server.url("/v1/messages"),
            format!(
                r#"{{"model":"claude-sonnet-4{suffix}","max_tokens":3,"messages":{messages}}}"#
            ),
        ),
        (
            server.url("/v1/messages"),
            format!(
                r#"{{"model":"claude-3-5-haiku{suffix}","max_tokens":4,"stream":true,"messages":{messages}}}"#
            ),
        ),
        (
            server.url("/v1/embeddings"),
            format!(
                r#"{{"model":"text-embedding-3-small{suffix}","input":"four words of input"}}"#
            ),
        ),
        (
            server.url("/v1/completions"),
            format!(r#"{{"model":"davinci-002{suffix}","prompt":"once upon a time"}}"#),
        ),
        (
            server.url("/v1/responses"),
            format!(r#"{{"model":"gpt-4.1{suffix}","input":"two words"}}"#),
        ),
    ]
}

/// One curl process making every kind of call over one kept-alive connection (`--next`).
pub fn curl_calls(server: &LlmServer, suffix: &str) -> Vec<String> {
    let mut args = vec!["--silent".to_string(), "--show-error".to_string()];
    for (n, (url, body)) in calls(server, suffix).into_iter().enumerate() {
        if n > 0 {
            args.push("--next".into());
        }
        args.extend([
            "--cacert".into(),
            server.ca.display().to_string(),
            "--compressed".into(),
            "-H".into(),
            "content-type: application/json".into(),
            "-o".into(),
            "/dev/null".into(),
            "-d".into(),
            body,
            url,
        ]);
    }
    args
}
