"""`cargo xtask bench`'s TLS loop: a client and a server SSL object in one process, joined by
memory BIOs; each iteration is one 200-byte SSL_write_ex on a connection whose first request
was an LLM API's (so flowtap's genai profile captures it) and one SSL_read_ex on the server's
side (which the agent marks quiet). Prints "NS ns/iteration".

usage: ssl_loop.py CERT KEY ITERATIONS
"""

import ssl, sys, time
cert, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(cert, key)
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.check_hostname = False; cctx.verify_mode = ssl.CERT_NONE
c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
client = cctx.wrap_bio(c_in, c_out); server = sctx.wrap_bio(s_in, s_out, server_side=True)
def pump():
    d = c_out.read()
    if d: s_in.write(d)
    d = s_out.read()
    if d: c_in.write(d)
for _ in range(20):
    for o in (client, server):
        try: o.do_handshake()
        except ssl.SSLWantReadError: pass
    pump()
head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"
client.write(head); pump(); server.read(65536)
data = b"x" * 200
start = time.perf_counter()
for _ in range(n):
    client.write(data); pump(); server.read(65536)
print("%.1f ns/iteration" % ((time.perf_counter() - start) / n * 1e9))
