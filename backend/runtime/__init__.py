"""The provider runtime: what runs a ``Provider`` in its own OS process and talks to it.

Owns: ``provider`` (the base class users subclass), ``registry`` (key -> import path),
``messages`` (typed hub <-> provider messages that cross the pipe), ``runner`` (inside the
provider process: calls the hooks), ``output`` (the process's prints as log lines),
``pipe_out`` (its events to the hub), ``supervisor`` (in the hub: starts, pings and restarts
provider processes) and ``clocks`` (what time it is for a series, as its provider sees it).
May import: ``model``, ``errors``, ``logs``. Settings are passed in, never read here.
"""
