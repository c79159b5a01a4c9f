import os

# Ray: no auth token written to ~/.ray, and the classic (quiet) output engine.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
