"""The two consoles every `mkf` command prints to: results on stdout, errors on stderr.

Tables stay readable when piped or logged (rich would squeeze them into 80 columns).
"""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 220)
err_console = Console(stderr=True)
