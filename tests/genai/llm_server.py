"""A local HTTPS server speaking enough of the OpenAI and Anthropic APIs for flowtap's GenAI
tests: chat completions (plain, streamed with include_usage, gzip), completions, embeddings,
responses, Anthropic messages (plain and streamed), and errors on request (a model named
"rate-limited..." answers 429, "broken..." 500). Tokens are deterministic: the prompt's tokens are its
words, the completion's are 3 + the request's max_tokens % 5; every call served is appended to
a JSON-lines ledger so tests compare flowtap's counts with what was served.

usage: llm_server.py CERT KEY LEDGER  (prints "port N" once listening)
"""

import gzip
import http.server
import json
import ssl
import sys
import threading


def words(value):
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(words(v) for v in value)
    if isinstance(value, dict):
        return sum(words(v) for k, v in value.items() if k in ("content", "text", "input"))
    return 0


LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    ledger = None

    def log_message(self, *args):
        pass

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        model = request.get("model", "unknown")
        path = self.path.split("?")[0]
        if model.startswith("rate-limited"):
            return self.error(429, path, model, "rate_limit_exceeded", "rate_limit_error")
        if model.startswith("broken"):
            return self.error(500, path, model, "server_error", "api_error")
        if path.endswith("/messages"):
            prompt = words(request.get("messages", [])) + words(request.get("system", ""))
        elif path.endswith("/chat/completions"):
            prompt = words(request.get("messages", []))
        elif path.endswith("/embeddings"):
            prompt = words(request.get("input", ""))
        elif path.endswith("/responses"):
            prompt = words(request.get("input", ""))
        else:
            prompt = words(request.get("prompt", ""))
        completion = 0 if path.endswith("/embeddings") else 3 + int(request.get("max_tokens", 0) or 0) % 5
        self.record(path, model, prompt, completion, 200)
        text = " ".join(["tok"] * completion)
        if request.get("stream"):
            return self.stream(path, model, prompt, completion, text, request)
        self.send_json(200, self.body(path, model, prompt, completion, text))

    def record(self, path, model, prompt, completion, status):
        with LOCK, open(self.ledger, "a") as ledger:
            ledger.write(json.dumps({"path": path, "model": model, "prompt": prompt,
                                     "completion": completion, "status": status}) + "\n")

    def error(self, status, path, model, openai_type, anthropic_type):
        self.record(path, model, 0, 0, status)
        if path.endswith("/messages"):
            body = {"type": "error", "error": {"type": anthropic_type, "message": "test"}}
        else:
            body = {"error": {"message": "test", "type": openai_type, "code": None}}
        self.send_json(status, body, extra={"retry-after": "0"})

    def body(self, path, model, prompt, completion, text):
        if path.endswith("/messages"):
            return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {"input_tokens": prompt, "output_tokens": completion}}
        if path.endswith("/embeddings"):
            return {"object": "list", "model": model,
                    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                    "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
        if path.endswith("/responses"):
            return {"id": "resp_1", "object": "response", "model": model, "status": "completed",
                    "output": [{"type": "message", "role": "assistant",
                                "content": [{"type": "output_text", "text": text}]}],
                    "usage": {"input_tokens": prompt, "output_tokens": completion,
                              "total_tokens": prompt + completion}}
        usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                 "total_tokens": prompt + completion}
        if path.endswith("/chat/completions"):
            choice = {"index": 0, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": text}}
            return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                    "model": model, "choices": [choice], "usage": usage}
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}], "usage": usage}

    def send_json(self, status, body, extra=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        if "gzip" in self.headers.get("accept-encoding", "") and len(data) > 0:
            data = gzip.compress(data)
            self.send_header("content-encoding", "gzip")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, path, model, prompt, completion, text, request):
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for event in self.events(path, model, prompt, completion, request):
            self.chunk(event)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def chunk(self, event):
        data = event.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def events(self, path, model, prompt, completion, request):
        if path.endswith("/messages"):
            def event(name, body):
                return "event: %s\ndata: %s\n\n" % (name, json.dumps(body))
            yield event("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": 1}}})
            yield event("content_block_start", {"type": "content_block_start", "index": 0,
                                                "content_block": {"type": "text", "text": ""}})
            for _ in range(completion):
                yield event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "text_delta", "text": "tok "}})
            yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
            yield event("message_delta", {"type": "message_delta",
                                          "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                          "usage": {"output_tokens": completion}})
            yield event("message_stop", {"type": "message_stop"})
            return
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
        for n in range(completion):
            delta = {"content": "tok "}
            finish = "stop" if n == completion - 1 else None
            yield "data: %s\n\n" % json.dumps(dict(base, choices=[
                {"index": 0, "delta": delta, "finish_reason": finish}]))
        if (request.get("stream_options") or {}).get("include_usage"):
            yield "data: %s\n\n" % json.dumps(dict(base, choices=[], usage={
                "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}))
        yield "data: [DONE]\n\n"


def main():
    cert, key, ledger = sys.argv[1:4]
    Handler.ledger = ledger
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("port %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
