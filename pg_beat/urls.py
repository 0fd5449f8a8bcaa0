"""Database URLs: accept every form users paste, hand psycopg a conninfo, never show a secret.

Accepted, with any of the schemes ``postgresql``, ``postgres``, ``postgresql+psycopg`` and
``postgresql+psycopg2``:

- libpq's URI, including several hosts: ``postgresql://u@h1:5432,h2:5432/db?target_session_attrs=read-write``;
- SQLAlchemy's repeated query form: ``postgresql+psycopg://u@/db?host=h1:5432&host=h2:5432``;
- libpq's lists in the query: ``postgresql://u@/db?host=h1,h2&port=5432,5433``;
- libpq's keyword form: ``host=h1,h2 port=5432 dbname=db user=u``.

Every connection pg_beat opens (the scheduler's, LISTEN, the CLI, Alembic) goes through
:func:`conninfo`, so libpq options such as ``target_session_attrs`` apply to all of them.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_beat.exceptions import ConfigurationError

_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")
_URI_PASSWORD = re.compile(r"^(?P<head>[^:/?#]+://[^:/?#@]*):[^@/?#]*@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&#]*", re.IGNORECASE)
_DSN_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_EXAMPLE = "expected postgresql://user@host/db or host=... dbname=..."


def parse(url: str) -> dict[str, str]:
    """The libpq keywords of ``url`` (any accepted form); raises :class:`ConfigurationError`."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"invalid database URL {url!r}: {_EXAMPLE}")
    text = url.strip()
    match = _SCHEME.match(text)
    if match is not None:
        scheme = match["scheme"]
        if scheme not in _SCHEMES:
            raise ConfigurationError(
                f"unsupported database URL scheme {scheme!r} in {redact_url(text)!r}: "
                "pg_beat needs postgresql://"
            )
        text = _merge_repeated_hosts("postgresql" + text[len(scheme) :])
    elif "=" not in text:
        raise ConfigurationError(f"invalid database URL {redact_url(text)!r}: {_EXAMPLE}")
    try:
        params = conninfo_to_dict(text)
    except Exception as exc:  # psycopg.ProgrammingError, or ValueError on bad escapes
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigurationError(f"invalid database URL {redact_url(text)!r}: {reason}") from exc
    result = {key: str(value) for key, value in params.items()}
    _check_ports(url, result.get("port"))
    return result


def conninfo(url: str, **overrides: Any) -> str:
    """``url`` as a libpq conninfo string, with ``overrides`` (None values are left out)."""
    params: dict[str, Any] = parse(url)
    params.update({k: v for k, v in overrides.items() if v is not None})
    return make_conninfo(**params)


def libpq_url(url: str) -> str:
    """``url`` in a form psycopg and libpq accept (a conninfo string)."""
    return conninfo(url)


def redact_url(url: str) -> str:
    """``url`` as the user wrote it, with any password replaced by ``***``."""
    text = str(url)
    if _SCHEME.match(text):
        text = _URI_PASSWORD.sub(r"\g<head>:***@", text)
        return _QUERY_PASSWORD.sub(r"\g<head>***", text)
    return _DSN_PASSWORD.sub(r"\g<head>***", text)


def describe(url: str) -> str:
    """Where ``url`` points, for logs: ``user@host:port/db`` (several hosts comma-separated)."""
    try:
        params = parse(url)
    except ConfigurationError:
        return redact_url(url)
    hosts = params.get("host", "") or "localhost"
    ports = params.get("port", "")
    pairs = []
    host_list, port_list = hosts.split(","), ports.split(",") if ports else [""]
    for index, host in enumerate(host_list):
        port = port_list[index] if index < len(port_list) else port_list[-1]
        pairs.append(f"{host}:{port}" if port else host)
    user = params.get("user")
    where = ",".join(pairs) + "/" + params.get("dbname", "")
    return f"{user}@{where}" if user else where


def _merge_repeated_hosts(uri: str) -> str:
    """SQLAlchemy's ``?host=h1:5432&host=h2:5433`` as libpq's ``?host=h1,h2&port=5432,5433``
    (libpq keeps only the last of repeated keywords)."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    hosts = [value for key, value in query if key == "host"]
    if len(hosts) < 2 and not any(_host_port(h)[1] for h in hosts):
        return uri
    names, ports = zip(*(_host_port(h) for h in hosts), strict=True)
    rest = [(k, v) for k, v in query if k not in ("host", "port")]
    merged = [("host", ",".join(names))]
    if any(ports):
        merged.append(("port", ",".join(p or "5432" for p in ports)))
    encoded = urlencode(merged + rest, quote_via=quote, safe=",/:")
    return urlunsplit(parts._replace(query=encoded))


def _host_port(value: str) -> tuple[str, str]:
    """``h:5432`` -> (``h``, ``5432``); a socket directory or plain host has no port."""
    if value.startswith("/") or value.count(":") != 1:
        return value, ""
    host, _, port = value.rpartition(":")
    return (host, port) if port.isdigit() else (value, "")


def _check_ports(url: str, ports: str | None) -> None:
    for port in (ports or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(
                f"invalid database URL {redact_url(url)!r}: port {port!r} is not a number "
                "from 1 to 65535"
            )
