"""Wire formats and configs of the algorithms: one module per algorithm.

Each module holds what both halves of an algorithm need — its config dataclass (with its
``validate`` hook), record names, config keys, constants and the rule of which model keys
stay on the clients (``local_keys``, asked by both halves) — and imports neither
``strategies`` (server halves) nor ``clients`` (client halves), which import it.  Modules
here stay import-light (no torch, no Flower at import time), so that listing and
composing configurations is fast.
"""
