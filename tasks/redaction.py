"""Keep secrets out of logs, artifacts, outputs and error messages."""

from __future__ import annotations

import re

from pydantic import SecretStr

# Anything shaped like an API key or bearer token, even partly masked by a server ("sk-ab***yz").
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-*.]{3,}|Bearer\s+\S+)")


def redact(text: str, *secrets: SecretStr | str | None) -> str:
    """`text` with every given secret and every API-key-shaped string replaced by ***."""
    for secret in secrets:
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return _KEY_PATTERN.sub("***", text)
