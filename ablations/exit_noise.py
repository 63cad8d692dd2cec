"""Interpreter-exit noise of Ray's workers and Ray's own internals, dropped from the
output forwarded to the driver's terminal (``ExitNoiseFilter``; installed by
``ablations.cluster.connect``)."""
from __future__ import annotations


class ExitNoiseFilter:
    """Drops interpreter-exit noise from the worker output Ray forwards to this terminal.

    When Ray stops a worker process (``ray.shutdown``, the end of a Tune run), its
    SIGTERM handler raises ``SystemExit`` wherever the worker's main thread is; when that
    is a garbage-collection callback (``WeakSet._remove``) during the worker's own exit,
    Python cannot propagate it and prints ``Exception ignored in: ...`` with a traceback
    through ``sigterm_handler``, ending in ``SystemExit: 1``. Nothing failed: the worker
    was exiting anyway. Only such whole blocks are dropped (a block that does not end in
    ``SystemExit`` or that never passes through a signal handler is kept), so a real
    error of a worker still reaches the user. A block cut across two batches of one
    worker's lines is held until its end arrives.

    Ray's internals are dropped too: the raylet's ``[state-dump]`` lines (its debug
    state, which it prints as it dies) always, and, once Ray is lost under the driver
    (``ray_lost``, set by ``ablations.cluster.watch``), everything still forwarded (the
    dying processes' last words; they stay in Ray's session logs).
    """

    START = "Exception ignored in"
    INTERNAL = "[state-dump]"
    ray_lost = False  # set once for the process: Ray died under the driver

    def __init__(self):
        self._held: dict = {}

    @classmethod
    def _is_noise(cls, block: list[str]) -> bool:
        return (block[-1].strip().startswith("SystemExit")
                and any("sigterm_handler" in line or "signal" in line for line in block))

    def lines(self, key, lines: list[str]) -> list[str]:
        if self.ray_lost:
            return []
        lines = [line for line in self._held.pop(key, []) + list(lines)
                 if self.INTERNAL not in line]
        out, i = [], 0
        while i < len(lines):
            if not lines[i].startswith(self.START):
                out.append(lines[i])
                i += 1
                continue
            j = i + 1  # the block: its traceback lines, up to the exception's own line
            while j < len(lines) and (lines[j].startswith((" ", "\t", "Traceback"))
                                      or not lines[j].strip()):
                j += 1
            if j == len(lines):  # the block's end is in the next batch
                self._held[key] = lines[i:]
                break
            block = lines[i:j + 1]
            if not self._is_noise(block):
                out.extend(block)
            i = j + 1
        return out

    def install(self) -> bool:
        """Wrap Ray's driver-side printer of worker output; False if Ray's internals moved
        (then the output is printed unfiltered, as before)."""
        def wrap(printer):
            def filtered(data):
                if self.ray_lost:
                    return
                if data.get("lines") and not data.get("is_err"):
                    data = {**data, "lines": [line for line in data["lines"]
                                              if self.INTERNAL not in line]}
                    if not data["lines"]:
                        return
                if data.get("is_err") and data.get("lines"):
                    data = {**data, "lines": self.lines((data.get("ip"), data.get("pid")),
                                                        data["lines"])}
                    if not data["lines"]:
                        return
                printer(data)

            return filtered

        return wrap_printer(wrap)


def wrap_printer(wrap) -> bool:
    """Replace Ray's driver-side printer of the output forwarded from workers and Ray's
    own processes (the dispatcher's ``ray_print_logs`` handler) by ``wrap(printer)``;
    False if Ray's internals moved (then nothing is replaced). Used by
    ``ExitNoiseFilter.install`` and ``ablations.cluster.quiet_node_notices``."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as disp
        name, printer = next((n, h) for n, h in disp.handlers if n == "ray_print_logs")
    except (ImportError, AttributeError, StopIteration):
        return False
    disp.remove_handler(name)
    disp.add_handler(name, wrap(printer))
    return True
