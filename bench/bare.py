"""The floor: a bare functions-framework HTTP function, served exactly like `webhook` is."""

from __future__ import annotations

import functions_framework


@functions_framework.http
def bare(request):
    """Answer `{}` and nothing else."""
    return {}
