"""The signature file (``*.rws``): one self-describing binary file, no pickle.

Layout::

  b"RWSIG\\n"                      6 bytes, magic
  header length                   8 bytes, unsigned little-endian
  header                          UTF-8 JSON (below)
  payload                         the tensors, one after another

The header::

  {"format": "robustjax-rws", "version": 1,
   "bits": 8 | null, "payload_bytes": N, "payload_sha256": "...",
   "tensors": [{"path": "features/conv1/kernel", "shape": [3, 3, 3, 16],
                "offset": 0, "nbytes": 432, "low": -0.01, "step": 7.8e-05},
               ...],                          # depth order
   "meta": {"corruption": "fog", "theta_pre": "...", ...}}

An unquantized tensor is float32 little-endian, C order (``low``/``step``
absent). A quantized one is its codes ``0 .. 2**bits - 1`` packed to exactly
``bits`` bits each (least significant bit first, ``numpy.packbits`` with
``bitorder='little'`` over the codes' bits, padded to a whole byte), value =
``low + step * code``. ``load`` checks the magic, the header, the payload size
and its SHA-256, so a truncated or altered file stops with one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from typing import Any

import numpy as np

from robustjax.errors import ConfigError
from robustjax.rws.signatures import Signature, check_bits, dequantize

MAGIC = b"RWSIG\n"
FORMAT = "robustjax-rws"
VERSION = 1
SUFFIX = ".rws"


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
  """uint codes -> ``ceil(n * bits / 8)`` bytes (``bits`` per code)."""
  flat = np.asarray(codes, np.uint64).ravel()
  if bits in (8, 16, 32):  # whole bytes: no bit shuffling needed
    return flat.astype(f"<u{bits // 8}").tobytes()
  shifts = np.arange(bits, dtype=np.uint64)
  bit_matrix = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
  return np.packbits(bit_matrix.ravel(), bitorder="little").tobytes()


def unpack_codes(raw: bytes, count: int, bits: int) -> np.ndarray:
  """The inverse of ``pack_codes``: ``count`` uint32 codes."""
  if bits in (8, 16, 32):
    return np.frombuffer(raw, f"<u{bits // 8}", count).astype(np.uint32)
  bit_values = np.unpackbits(np.frombuffer(raw, np.uint8),
                             bitorder="little")[:count * bits]
  weights = (np.uint64(1) << np.arange(bits, dtype=np.uint64))
  return (bit_values.reshape(count, bits).astype(np.uint64) @ weights
          ).astype(np.uint32)


def _nbytes(count: int, bits: int | None) -> int:
  return 4 * count if bits is None else (count * bits + 7) // 8


def save(sig: Signature, path: str) -> str:
  """Writes ``sig`` to ``path`` (``.rws`` added if missing), atomically (a
  temporary file renamed into place). Returns the path written."""
  if not path.endswith(SUFFIX):
    path += SUFFIX
  entries, chunks, offset = [], [], 0
  for name, value in sig.tensors.items():
    if sig.bits is None:
      raw = np.asarray(value, "<f4").tobytes()
    else:
      raw = pack_codes(sig.codes[name], sig.bits)
    entry = {"path": name, "shape": list(value.shape), "offset": offset,
             "nbytes": len(raw)}
    if sig.bits is not None:
      entry["low"], entry["step"] = (float(x) for x in sig.quant[name])
    entries.append(entry)
    chunks.append(raw)
    offset += len(raw)
  payload = b"".join(chunks)
  header = json.dumps({
      "format": FORMAT, "version": VERSION, "bits": sig.bits,
      "payload_bytes": len(payload),
      "payload_sha256": hashlib.sha256(payload).hexdigest(),
      "tensors": entries, "meta": sig.meta}).encode("utf-8")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(MAGIC + struct.pack("<Q", len(header)) + header + payload)
  os.replace(tmp, path)
  return path


def _bad(path: str, why: str) -> ConfigError:
  return ConfigError(f"{path} is not a readable signature file: {why}; "
                     "extract it again (rws task or rws.extract + rws.save)")


def load(path: str) -> Signature:
  """Reads a ``.rws`` file written by ``save``; ConfigError (one line) for
  a missing, truncated, altered or foreign file."""
  if not os.path.isfile(path):
    raise ConfigError(f"no signature file at {path}; pass the path of a "
                      f"{SUFFIX} file")
  with open(path, "rb") as f:
    blob = f.read()
  if not blob.startswith(MAGIC):
    raise _bad(path, "it does not start with the signature magic bytes")
  start = len(MAGIC) + 8
  if len(blob) < start:
    raise _bad(path, "it is truncated inside the header")
  (header_len,) = struct.unpack("<Q", blob[len(MAGIC):start])
  if len(blob) < start + header_len:
    raise _bad(path, "it is truncated inside the header")
  try:
    header = json.loads(blob[start:start + header_len].decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as err:
    raise _bad(path, f"its header is not valid JSON ({err.msg})") from err
  if not isinstance(header, dict) or header.get("format") != FORMAT:
    raise _bad(path, "its header does not name the robustjax-rws format")
  if header.get("version") != VERSION:
    raise _bad(path, f"format version {header.get('version')} is not "
                     f"{VERSION}")
  payload = blob[start + header_len:]
  if len(payload) != header["payload_bytes"]:
    raise _bad(path, f"the payload has {len(payload)} bytes but the header "
                     f"says {header['payload_bytes']} (truncated?)")
  if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
    raise _bad(path, "the payload checksum does not match (the file was "
                     "altered or damaged)")
  try:
    bits = check_bits(header["bits"])
  except ConfigError as err:
    raise _bad(path, str(err)) from err
  tensors, quant, codes = {}, {}, {}
  for entry in header["tensors"]:
    shape = tuple(int(d) for d in entry["shape"])
    count = int(np.prod(shape, dtype=np.int64))
    lo, n = int(entry["offset"]), int(entry["nbytes"])
    if n != _nbytes(count, bits) or lo < 0 or lo + n > len(payload):
      raise _bad(path, f"tensor {entry['path']} does not fit the payload")
    raw = payload[lo:lo + n]
    name = entry["path"]
    if bits is None:
      tensors[name] = np.frombuffer(raw, "<f4", count).reshape(shape).astype(
          np.float32)
    else:
      codes[name] = unpack_codes(raw, count, bits).reshape(shape)
      quant[name] = (float(entry["low"]), float(entry["step"]))
      tensors[name] = dequantize(codes[name], *quant[name])
  return Signature(tensors, bits, quant, codes, dict(header.get("meta", {})))


def file_bytes(path: str) -> int:
  return os.path.getsize(path)


def describe(sig: Signature) -> dict[str, Any]:
  """A JSON-able summary: paths, shapes, bits, parameter count, meta."""
  return {"paths": sig.paths,
          "shapes": {p: list(v.shape) for p, v in sig.tensors.items()},
          "bits": sig.bits, "num_params": sig.num_params, "meta": sig.meta}
