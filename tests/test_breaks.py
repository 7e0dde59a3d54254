"""``tests/breaks.py``'s entries fit the tree, checked without making any break: names unique,
each ``exact`` text once in its file, each test node id collected by pytest. (Running the breaks
is ``python -m tests.breaks``, docs/testing.md.)"""
import os
import subprocess
import sys

from tests import ROOT
from tests.breaks import BREAKS, Break, problems


def test_every_entry_fits_the_tree():
  assert problems(BREAKS) == []
  assert len(BREAKS) >= 50


def test_every_entrys_tests_are_collected():
  ids = sorted({t for b in BREAKS for t in b.tests})
  env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
  proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                         "-p", "no:cacheprovider", *ids], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(env, PYTHONPATH=ROOT))
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
  collected = {line.strip() for line in proc.stdout.splitlines()}
  assert set(ids) <= collected, sorted(set(ids) - collected)


def test_problems_name_the_entry_and_the_file():
  test = ("tests/test_train.py::test_classification_metrics_by_hand",)
  metrics = "deform3d/train/metrics.py"
  bad = [Break("absent", metrics, "no such text", "x", test, "w"),
         Break("twice", metrics, "import", "x", test, "w"),   # __future__ and numpy
         Break("twice", metrics, "k = min(5, num_classes)", "k = 5", test, "w"),
         Break("no-test", metrics, "k = min(5, num_classes)", "k = 5",
               ("tests/test_train.py::test_no_such_test",), "w"),
         Break("no-file", "deform3d/no_such_file.py", "x", "y", test, "w")]
  got = problems(bad)
  want = ["entry 'absent': its exact text occurs 0 times in deform3d/train/metrics.py",
          "entry 'twice': its exact text occurs 2 times in deform3d/train/metrics.py",
          "entry 'twice': name used twice",
          "entry 'no-test': tests/test_train.py has no test function 'test_no_such_test'",
          "entry 'no-file': file deform3d/no_such_file.py does not exist"]
  for w in want:
    assert any(m.startswith(w) for m in got), (w, got)
  assert len(got) == len(want), got


def test_table_puts_the_before_pass_beside_each_entry():
  from tests.breaks import markdown

  def report(commit, results):
    return {"commit": commit, "command": "python -m tests.breaks", "started": "t0",
            "finished": "t1", "planned": len(results), "results": results}

  row = lambda name, result, s: {"name": name, "file": "f.py", "tests": ["tests/t.py::x"],
                                 "result": result, "seconds": s, "why": "w"}
  before = report("a" * 40, [row("kept", "caught", 30), row("lost", "caught", 10)])
  after = report("b" * 40, [row("kept", "caught", 12), row("lost", "NOT caught", 9),
                            row("new", "caught", 5)])
  table = markdown(after, before).splitlines()
  assert "| break | file | tests | before | before s | result | seconds | guards |" in table
  rows = {l.split("|")[1].strip(): [c.strip() for c in l.split("|")[4:8]]
          for l in table if l.startswith("| `")}
  assert rows == {"`kept`": ["caught", "30", "caught", "12"],
                  "`lost`": ["caught", "10", "**NOT caught**", "9"],
                  "`new`": ["-", "-", "caught", "5"]}
  assert any("1 of 2" not in l and "2 of 2 caught" in l for l in table)
  assert "before" not in markdown(after).splitlines()[-3]  # one pass alone: no before columns
