"""Loaded by Python's `site` in every process of a fault scenario (tests/test_faults.py puts this folder on
PYTHONPATH, after the code under test). Does nothing unless MKF_FAULT_DIR is set; then installs the faults the
scenario's environment asks for (mkf_fault_hooks). It never imports the project: the hooks patch modules lazily,
when the process imports them, so the process under test is unchanged until then."""

import os

if os.environ.get("MKF_FAULT_DIR"):
    try:
        import mkf_fault_hooks

        mkf_fault_hooks.install()
    except Exception as exc:  # an injection that cannot install must not take the process down with it
        import sys

        sys.stderr.write(f"mkf fault hooks: not installed ({type(exc).__name__}: {exc})\n")
