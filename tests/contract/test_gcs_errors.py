"""storage/gcs.py's one error table, and the rule that only it imports Google's library."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import urllib3
from google.api_core import exceptions as api
from google.auth import exceptions as auth

from octuefs.errors import (
    BucketNotFound,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RangeNotSatisfiable,
    StorageError,
    TransientError,
)
from octuefs.storage.gcs import translate_error

PACKAGE = Path(__file__).resolve().parents[2] / "octuefs"


@pytest.mark.parametrize(
    "exc, name, expected",
    [
        (api.NotFound("No such object: b/o"), "o", NotFound),
        (api.NotFound("The specified bucket does not exist."), "o", BucketNotFound),
        (api.NotFound("Not Found"), None, BucketNotFound),
        (api.PreconditionFailed("x"), "o", PreconditionFailed),
        (api.NotModified("x"), "o", PreconditionFailed),
        (api.Unauthorized("x"), "o", PermissionDenied),
        (api.Forbidden("x"), "o", PermissionDenied),
        (api.RequestRangeNotSatisfiable("x"), "o", RangeNotSatisfiable),
        (api.from_http_status(408, "x"), "o", TransientError),
        (api.TooManyRequests("x"), "o", TransientError),
        (api.InternalServerError("x"), "o", TransientError),
        (api.BadGateway("x"), "o", TransientError),
        (api.ServiceUnavailable("x"), "o", TransientError),
        (api.GatewayTimeout("x"), "o", TransientError),
        (api.BadRequest("x"), "o", StorageError),
        (requests.exceptions.ConnectionError("refused"), "o", TransientError),
        (requests.exceptions.ReadTimeout("slow"), "o", TransientError),
        (requests.exceptions.ChunkedEncodingError("cut"), "o", TransientError),
        (urllib3.exceptions.ProtocolError("reset"), "o", TransientError),
        (ConnectionResetError(104, "reset"), "o", TransientError),
        (socket.timeout("timed out"), "o", TransientError),
        (auth.TransportError("dns"), "o", TransientError),
        (auth.RefreshError("invalid_grant"), "o", PermissionDenied),
        (auth.DefaultCredentialsError("none"), "o", PermissionDenied),
    ],
)
def test_translation(exc, name, expected):
    ours = translate_error(exc, "bkt", name)
    assert type(ours) is expected
    assert "\n" not in str(ours)


def test_unknown_exceptions_pass_through():
    exc = KeyError("bug")
    assert translate_error(exc, "bkt", "o") is exc


def test_credentials_message_says_what_to_do():
    message = str(translate_error(auth.DefaultCredentialsError("x"), "bkt"))
    assert "gcloud auth application-default login" in message and "GOOGLE_APPLICATION_CREDENTIALS" in message


def test_storage_package_imports_without_google():
    code = "import sys, octuefs.storage, octuefs.storage.fake; print(sorted(m for m in sys.modules if m.startswith('google')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_gcs_storage_modules_import_google():
    allowed = {PACKAGE / "storage" / "gcs.py", PACKAGE / "storage" / "jsonapi.py"}
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path not in allowed and any(m == "google" or m.startswith("google.") for m in _imports(path))
    ]
    assert offenders == []
