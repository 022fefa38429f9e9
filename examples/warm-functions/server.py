"""An HTTP function on $PORT (the Knative and OpenFaaS of-watchdog contract)."""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    # Headers and body go out in two writes: without this, Nagle's algorithm and the client's
    # delayed ACK add 40 ms to every answer on a kept-alive connection.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        out = json.dumps({"thumbnail_of": body.decode(), "id": self.headers.get("ce-id")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
