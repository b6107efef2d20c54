"""Inbound authentication: how each sender proves a delivery is theirs.

`signatures` holds the schemes (verify on raw bytes, and the matching `sign`), `config` builds them
from a workflow's `auth` block, `idtoken` verifies Google-signed ID tokens, and `openapi` describes
each scheme for the generated OpenAPI document.
"""
