"""LLM calls through the official OpenAI and Anthropic Python SDKs, against the test server
(its CA given the standard way, SSL_CERT_FILE). One line per call on stdout: "call NAME".
Model names end with SUFFIX, so that a test probing every process's libssl tells its calls
from other tests'.

usage: sdk_calls.py BASE_URL SUFFIX  (BASE_URL: https://localhost:PORT)
"""

import sys

import anthropic
import openai


def main():
    base, suffix = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base + "/v1", api_key="test", max_retries=0)
    messages = [{"role": "user", "content": "say something short please"}]
    client.chat.completions.create(model="gpt-4o-mini" + suffix, messages=messages, max_tokens=1)
    print("call openai-plain", flush=True)
    stream = client.chat.completions.create(
        model="gpt-4o" + suffix, messages=messages, max_tokens=2, stream=True,
        stream_options={"include_usage": True})
    for _ in stream:
        pass
    print("call openai-stream", flush=True)
    client.embeddings.create(model="text-embedding-3-small" + suffix, input="four words of input")
    print("call openai-embeddings", flush=True)
    for model in ("rate-limited" + suffix, "broken" + suffix):
        try:
            client.chat.completions.create(model=model, messages=messages)
        except openai.APIStatusError as error:
            print("call openai-%d" % error.status_code, flush=True)
    claude = anthropic.Anthropic(base_url=base, api_key="test", max_retries=0)
    claude.messages.create(model="claude-sonnet-4" + suffix, max_tokens=3, messages=messages)
    print("call anthropic-plain", flush=True)
    with claude.messages.stream(model="claude-3-5-haiku" + suffix, max_tokens=4,
                                messages=messages) as stream:
        for _ in stream.text_stream:
            pass
    print("call anthropic-stream", flush=True)


if __name__ == "__main__":
    main()
