"""Stop requests for the training loop: SIGTERM and SIGINT, and JAX's
multi-host preemption sync point.

Clusters and TPU pods send SIGTERM (a preemption notice) some time before
they take a machine. Inside ``StopRequests`` the first SIGTERM or SIGINT
only sets a flag: the loop finishes the step in flight, writes a checkpoint
at that step, waits until it is durable and raises ``errors.Preempted``. A
second signal ends the process at once (exit code 128 + the signal number).

In a multi-process run the hosts must agree on the step at which they all
save. There SIGTERM is left to JAX's preemption service, which
``jax.distributed.initialize`` starts: it catches the signal on any host
and ``multihost_utils.reached_preemption_sync_point`` (through orbax's
``CheckpointManager.reached_preemption``) returns True on every host at the
same step. A SIGINT there stops only its own host, which the others cannot
follow to a common step, so it ends that process at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
  """Context manager turning stop signals into ``requested()``.

  Args:
    multi_process: True in a multi-process run (see the module docstring).
  """

  def __init__(self, multi_process: bool = False):
    self._multi = multi_process
    self._received: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> "StopRequests":
    # Python only lets the main thread install handlers; a loop running in
    # another thread (a notebook helper) keeps the default behaviour.
    if threading.current_thread() is threading.main_thread():
      for signum in _SIGNALS:
        if self._multi and signum == signal.SIGTERM:
          continue  # JAX's preemption service owns it
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc: Any) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if self._received is not None or self._multi:
      print(f"\n{name}: stopping at once; run the same command to resume "
            "from the last checkpoint", file=sys.stderr, flush=True)
      os._exit(128 + signum)
    self._received = signum
    print(f"\n{name}: finishing this step and writing a checkpoint (a second "
          "signal stops at once)", file=sys.stderr, flush=True)

  def requested(self) -> bool:
    """Whether a stop signal arrived (this process's signals only)."""
    return self._received is not None
