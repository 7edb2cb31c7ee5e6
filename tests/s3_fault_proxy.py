"""An HTTP proxy on 127.0.0.1 in front of the S3 server that makes a share of requests fail.

Point a client (or Metaflow, with METAFLOW_S3_ENDPOINT_URL) at ``proxy.endpoint``. Each
request is forwarded to the server unless it is picked to fail, in one of these ways:

- ``"500"``: answered with 500 InternalError, never forwarded;
- ``"503"``: answered with 503 SlowDown (S3's throttling), never forwarded;
- ``"drop"``: the connection is closed without an answer, never forwarded;
- ``"cut"``: forwarded (the server acts on it), then the answer is cut off halfway
  through its body, or before it when it has none: the client cannot know whether
  its request took effect.

Transient failures: a request that failed ``max_consecutive`` times in a row (same
method, target and range) goes through on its next try, so a client that retries often
enough always gets through. ``max_consecutive=None`` with ``share=1.0`` fails every
request (a persistent outage). ``only`` restricts failures to requests whose target
contains that text (e.g. "_implicit_checkpoints", to leave Metaflow's own artifacts
alone); the others always go through.
"""

import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Sequence

FAULTS = ("500", "503", "drop", "cut")

_ERROR_BODIES = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}

#: Request headers that belong to one hop, not to the request.
_HOP_HEADERS = {"connection", "keep-alive", "expect", "transfer-encoding", "content-length", "proxy-connection"}


class FaultProxy:
    """The proxy; ``start()`` / ``stop()``, or use it as a context manager."""

    def __init__(
        self,
        upstream: str,
        share: float = 0.0,
        faults: Sequence[str] = FAULTS,
        max_consecutive: Optional[int] = 3,
        only: Optional[str] = None,
        seed: int = 0,
    ):
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError("unknown fault kinds %s; choose from %s" % (sorted(unknown), FAULTS))
        self.upstream = upstream.split("://", 1)[-1].rstrip("/")
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._failed_in_a_row: Dict[tuple, int] = {}
        self.configure(share, faults, max_consecutive, only)
        #: Requests seen, forwarded, and failed (by kind).
        self.requests = 0
        self.forwarded = 0
        self.failures: Dict[str, int] = {kind: 0 for kind in FAULTS}
        self._server: Optional[ThreadingHTTPServer] = None

    def configure(
        self,
        share: float,
        faults: Sequence[str] = FAULTS,
        max_consecutive: Optional[int] = 3,
        only: Optional[str] = None,
    ) -> None:
        """Change how requests fail from now on."""
        with self._lock:
            self.share = share
            self.faults = tuple(faults)
            self.max_consecutive = max_consecutive
            self.only = only

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return "http://%s:%d" % (host, port)

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def _pick_fault(self, method: str, target: str, byte_range: str) -> Optional[str]:
        """The way this request fails, or None to let it through."""
        request = (method, target, byte_range)
        with self._lock:
            self.requests += 1
            in_a_row = self._failed_in_a_row.get(request, 0)
            if (
                (self.only is None or self.only in target)
                and (self.max_consecutive is None or in_a_row < self.max_consecutive)
                and self._random.random() < self.share
            ):
                kind = self._random.choice(self.faults)
                self._failed_in_a_row[request] = in_a_row + 1
                self.failures[kind] += 1
                return kind
            self._failed_in_a_row.pop(request, None)
            self.forwarded += 1
            return None


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

    def log_message(self, *args) -> None:
        pass

    def do_GET(self):
        self._handle()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _handle(self) -> None:
        body = self._read_body()
        fault = self.owner._pick_fault(self.command, self.path, self.headers.get("Range", ""))
        if fault in _ERROR_BODIES:
            self._send_error(*_ERROR_BODIES[fault])
            return
        if fault == "drop":
            self.close_connection = True
            return
        status, reason, headers, payload = self._forward(body)
        if fault == "cut" and not payload:
            self.close_connection = True  # the server acted; the answer is lost
            return
        self.send_response(status, reason)
        for name, value in headers:
            name_lower = name.lower()
            if name_lower in _HOP_HEADERS and not (name_lower == "content-length" and self.command == "HEAD"):
                continue
            self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if fault == "cut":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def _forward(self, body: bytes):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        # A fresh connection per request: the server's keep-alive state never leaks
        # between the proxy's threads.
        connection = http.client.HTTPConnection(self.owner.upstream, timeout=120)
        try:
            connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
            return response.status, response.reason, response.getheaders(), payload
        finally:
            connection.close()

    def _send_error(self, status: int, code: str, message: str) -> None:
        payload = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
            "<RequestId>fault-proxy</RequestId></Error>" % (code, message)
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has no body: one here is read as the next answer
            self.wfile.write(payload)
