"""What XLA made of a compiled program (shared by the benchmark harnesses)."""
from __future__ import annotations

import re

_NOT_KERNELS = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")


def mb(n) -> float:
  return round(n / 2**20, 1)


def xla_stats(compiled) -> dict:
  """What XLA made of a compiled program: its temporary buffer size and its op count, i.e. the
  instructions of the optimized entry computation that run as kernels (fusions, dots, custom
  calls, ...; not parameters, constants, tuples or bitcasts), and the same count over every
  computation that is not a fusion's body (while-loop bodies included). Empty where a backend
  does not report them."""
  stats = {}
  try:
    stats["xla_temp_mb"] = mb(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # not every backend reports it
    pass
  try:
    text = compiled.as_text()
  except Exception:
    return stats
  entry = text[text.index("\nENTRY"):] if "\nENTRY" in text else ""
  entry = entry[:entry.find("\n}") + 1]
  ops = re.findall(r"^\s*(?:ROOT )?\S+ = [^=]*? ([a-z][\w-]*)\(", entry, re.M)
  stats["xla_ops"] = sum(op not in _NOT_KERNELS for op in ops)
  stats["xla_fusions"] = sum(op == "fusion" for op in ops)
  stats["xla_ops_all"] = _ops_outside_fusions(text)
  return stats


def _ops_outside_fusions(text: str) -> int:
  """Kernel ops of every computation that is not the body of a fusion: the entry, while-loop
  bodies and conditions, conditional branches (a scanned block's ops are counted once)."""
  fused = set(re.findall(r"calls=%?([\w.-]+)", " ".join(
      line for line in text.splitlines() if " fusion(" in line)))
  count, name = 0, None
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%?([\w.-]+) .*\{\s*$", line)
    if head:
      name = head.group(1)
      continue
    if name is None or name in fused or line.startswith("}"):
      continue
    op = re.match(r"^\s*(?:ROOT )?\S+ = [^=]*? ([a-z][\w-]*)\(", line)
    if op and op.group(1) not in _NOT_KERNELS:
      count += 1
  return count
