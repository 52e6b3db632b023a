"""TLS certificates of the public endpoints: when does the one users are served expire?

A failed auto-renewal is silent until the day browsers refuse the site, so preflight reads the
certificate each endpoint actually serves. It reads it without verifying: an expired or
self-signed certificate is exactly what we want to see, not an error that hides its date.
"""

from __future__ import annotations

import socket
import ssl
from datetime import datetime
from urllib.parse import urlsplit

from cryptography import x509

TIMEOUT = 10.0


def served_not_after(url: str, timeout: float = TIMEOUT) -> datetime:
    """The notAfter (UTC) of the certificate the endpoint of `url` serves.

    Raises OSError (unreachable, TLS handshake failed) or ValueError (no readable certificate).
    """
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # SNI with the URL's host, so a server hosting many sites shows this site's certificate.
    with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=parts.hostname) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ValueError("the server sent no certificate")
    return x509.load_der_x509_certificate(der).not_valid_after_utc
