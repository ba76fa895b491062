"""A throwaway certificate authority and the sandbox's HTTPS certificate for localhost and 127.0.0.1."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

SERVER_NAMES = ("localhost", "127.0.0.1")


class Certificates:
    """A trustme CA whose PEM is written to `ca_path`, so that SDK clients can pass `connection_verify=ca_path`."""

    def __init__(self, directory: Path) -> None:
        self._ca = trustme.CA(organization_name="keyhealth sandbox")
        self._server = self._ca.issue_cert(*SERVER_NAMES)
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_path = directory / "sandbox-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_path))

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context presenting the certificate for localhost and 127.0.0.1."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side TLS context that trusts the system CAs and the sandbox CA."""
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context
