"""A stand-in for the AWS Lambda Invoke API that checks every request's Signature Version 4 with
botocore (the AWS SDK for Python's own signer), an implementation independent of fnbroker's.

    python3 lambda_invoke.py PORT ACCESS_KEY_ID SECRET_ACCESS_KEY

Serves POST /2015-03-31/functions/{name}/invocations as the Lambda API reference's "Invoke"
describes it: 403 InvalidSignatureException when the signature does not verify; otherwise
X-Amz-Invocation-Type Event answers 202, and RequestResponse 200 with the function's result. The
function named `fails` reports a function error (200 with X-Amz-Function-Error: Unhandled). A
payload that is a JSON array (a batch) is answered with Lambda's partial batch response, naming
the events whose data has `"fail": true`. Every accepted request is printed as one JSON line on
stdout.
"""
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

PORT, KEY_ID, SECRET = int(sys.argv[1]), sys.argv[2], sys.argv[3]
AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]{64})$"
)
# Requests are handled on threads: one line at a time, or two could interleave.
PRINTED = threading.Lock()
PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations(\?.*)?$")


def expected_signature(handler, body, match):
    headers = {h: handler.headers[h] for h in match["signed"].split(";")}
    request = AWSRequest(method="POST", url=f"http://{handler.headers['host']}{handler.path}", data=body, headers=headers)
    signer = SigV4Auth(Credentials(KEY_ID, SECRET, handler.headers.get("x-amz-security-token")), match["service"], match["region"])
    request.context["timestamp"] = handler.headers["x-amz-date"]
    canonical = signer.canonical_request(request)
    return signer.signature(signer.string_to_sign(request, canonical), request)


class Invoke(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        path = PATH.match(self.path)
        if not path:
            return self.answer(404, {"Type": "User", "message": "no such resource"})
        match = AUTH.match(self.headers.get("authorization", ""))
        if not match or match["key"] != KEY_ID or match["service"] != "lambda":
            return self.answer(403, {"message": "missing or foreign credentials"}, [("x-amzn-ErrorType", "UnrecognizedClientException")])
        if expected_signature(self, body, match) != match["signature"]:
            return self.answer(
                403,
                {"message": "The request signature we calculated does not match the signature you provided."},
                [("x-amzn-ErrorType", "InvalidSignatureException")],
            )
        name = unquote(path["name"])
        event = json.loads(body)
        kind = self.headers.get("x-amz-invocation-type", "RequestResponse")
        line = json.dumps({"function": name, "query": self.path.partition("?")[2], "type": kind,
                           "region": match["region"], "content_type": self.headers.get("content-type"), "event": event})
        with PRINTED:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if kind == "Event":
            return self.answer(202, {})
        if isinstance(event, list):
            # A batch: the events whose data says `fail` are reported as Lambda's partial batch
            # response has it.
            failed = [{"itemIdentifier": e["id"]} for e in event if isinstance(e.get("data"), dict) and e["data"].get("fail")]
            return self.answer(200, {"batchItemFailures": failed})
        if name == "fails":
            return self.answer(200, {"errorMessage": "boom", "errorType": "Error"}, [("X-Amz-Function-Error", "Unhandled")])
        return self.answer(200, {"echo": event.get("id"), "data": event.get("data")})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Invoke).serve_forever()
