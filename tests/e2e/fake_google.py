"""Google's endpoints, faked on 127.0.0.1, so a mount can run with real service-account credentials.

:class:`FakeGoogle` is an HTTPS proxy for the client's ``HTTPS_PROXY``: it answers ``CONNECT`` for
``oauth2.googleapis.com`` and ``storage.googleapis.com`` itself, with a certificate of its own
(trusted through ``REQUESTS_CA_BUNDLE``), issues access tokens for signed JWT assertions, and
forwards storage requests to a fake-gcs-server. Nothing leaves the machine: the client never
resolves a Google host name (the proxy does the "connecting"), every other host is refused,
and the metadata server is pointed at 127.0.0.1 too.
"""

from __future__ import annotations

import datetime as dt
import http.client
import http.server
import json
import socketserver
import ssl
import threading
import urllib.parse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

HOSTS = ("oauth2.googleapis.com", "storage.googleapis.com")


def new_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def service_account_json(private_key: str, project: str = "octuefs-security-test") -> str:
    return json.dumps({
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": private_key,
        "client_email": f"tester@{project}.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": "https://oauth2.googleapis.com/token",
    })


def _certificate(directory: Path) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "octuefs test Google")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "google-cert.pem", directory / "google-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


class _Inner(http.server.BaseHTTPRequestHandler):
    """HTTP inside one CONNECT tunnel, already TLS-unwrapped."""

    protocol_version = "HTTP/1.1"
    host = ""  # set per tunnel
    google: FakeGoogle

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        body = self._body()
        self.google.seen.append((self.host, self.command, self.path.split("?")[0],
                                 self.headers.get("Authorization", "")[:20]))
        if self.host == "oauth2.googleapis.com":
            form = urllib.parse.parse_qs(body.decode())
            if "assertion" not in form:
                self._reply(400, b'{"error": "invalid_grant"}', [("Content-Type", "application/json")])
                return
            token = json.dumps({"access_token": "fake-access-token", "expires_in": 3600, "token_type": "Bearer"})
            self._reply(200, token.encode(), [("Content-Type", "application/json")])
            return
        conn = http.client.HTTPConnection(self.google.backend_host, self.google.backend_port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding")}
        headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self._reply(resp.status, data, resp.getheaders())

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class FakeGoogle:
    """``with FakeGoogle(tmp_path, emulator_url) as g: env = g.env(key_file)``."""

    def __init__(self, directory: Path, backend_url: str):
        parsed = urllib.parse.urlparse(backend_url)
        self.backend_host, self.backend_port = parsed.hostname, parsed.port
        self.cert, key = _certificate(directory)
        self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._tls.load_cert_chain(self.cert, key)
        self.seen: list[tuple[str, str, str, str]] = []
        self.refused: list[str] = []
        google = self

        class Proxy(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline().decode("latin-1").split()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                host = line[1].rsplit(":", 1)[0] if len(line) > 1 and line[0] == "CONNECT" else ""
                if host not in HOSTS:
                    google.refused.append(" ".join(line[:2]))
                    self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    return
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self.wfile.flush()
                tls = google._tls.wrap_socket(self.connection, server_side=True)
                inner = type("Inner", (_Inner,), {"host": host, "google": google})
                inner(tls, self.client_address, self.server)

        class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Proxy)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGoogle:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def env(self, credentials_file: str) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{self.port}"
        return {
            "GOOGLE_APPLICATION_CREDENTIALS": credentials_file,
            "HTTPS_PROXY": proxy, "https_proxy": proxy, "HTTP_PROXY": proxy, "http_proxy": proxy,
            "NO_PROXY": "", "no_proxy": "",
            "REQUESTS_CA_BUNDLE": self.cert,
            # Never ask a metadata server anything, and if something did, ask 127.0.0.1.
            "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1",
        }

