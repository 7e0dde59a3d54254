"""The docs say what exists: every repository path that README.md and docs/ name exists, every
``launch/`` command they show names flags its script defines, every docs page is reachable
from README.md, and every image under docs/ is shown by some page."""
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("deform3d/", "data_pipelines/", "configs/", "launch/", "tests/", "docs/", "benchmarks/",
       "notebooks/", ".ci/")
TOP_FILES = ("README.md", "CHANGELOG.md", "LICENSE", "setup.py")


def _pages():
  pages = ["README.md", "CHANGELOG.md"] + sorted(
      os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "**", "*.md"),
                                                  recursive=True))
  return [p for p in pages if os.path.exists(os.path.join(REPO, p))]


def _read(page):
  with open(os.path.join(REPO, page), encoding="utf-8") as fh:
    return fh.read()


def named_paths(text: str):
  """Repository paths a page names: in backticks or as the target of a relative link."""
  out = set()
  for span in re.findall(r"`([^`\n]+)`", text):
    for word in span.split():
      word = word.strip("'\"(),;").split("::")[0].split(":")[0]
      if word.startswith(TOP) or word in TOP_FILES:
        out.add(word)
  return out


def linked(text: str, page: str):
  """Relative link targets of a page, resolved from the repository root."""
  out = set()
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+://|#|mailto:", target):
      continue
    target = target.split("#")[0]
    if target:
      out.add(os.path.normpath(os.path.join(os.path.dirname(page), target)))
  return out


def _exists(path: str) -> bool:
  if any(ch in path for ch in "*{<"):  # a pattern or a placeholder, not a path
    return True
  # A module path written with dots (benchmarks.traffic) is checked by the command check.
  return os.path.exists(os.path.join(REPO, path.rstrip("/")))


@pytest.mark.parametrize("page", [p for p in _pages() if p != "CHANGELOG.md"])
def test_every_path_a_page_names_exists(page):
  """(CHANGELOG.md is history: it names files as they were.)"""
  text = _read(page)
  missing = sorted(p for p in named_paths(text) | linked(text, page) if not _exists(p))
  assert not missing, f"{page} names paths that do not exist: {missing}"


def _defined_flags(script: str) -> set:
  source = _read(script)
  names = set(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", source))
  names |= set(re.findall(r"add_argument\(\s*[\"']--([\w-]+)[\"']", source))
  names |= {f"no{n}" for n in names}  # absl booleans: --noflag
  return names


def launch_commands(text: str):
  """``(script, [flag names])`` of every ``python launch/X.py ...`` command in a page."""
  out = []
  for line in text.splitlines():
    for m in re.finditer(r"python3? (launch/[\w/]+\.py)((?: +[^|`;&\n]*)?)", line):
      flags = [f.split("=")[0] for f in re.findall(r"(?<![\w-])--([\w.\-]+(?:=\S*)?)",
                                                  m.group(2))]
      out.append((m.group(1), flags))
  return out


@pytest.mark.parametrize("page", _pages())
def test_every_launch_command_names_flags_its_script_defines(page):
  for script, flags in launch_commands(_read(page)):
    assert os.path.exists(os.path.join(REPO, script)), f"{page}: {script} does not exist"
    defined = _defined_flags(script)
    for flag in flags:
      base = flag.split(".")[0]  # --config.model.dtype: the config flag's overrides
      assert base in defined or flag in defined, (
          f"{page}: `{script} --{flag}`: {script} defines no flag {base!r} "
          f"(it has {sorted(f for f in defined if not f.startswith('no'))})")


def test_every_docs_page_is_linked_from_the_readme():
  readme = linked(_read("README.md"), "README.md")
  pages = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
  pages.append("docs/experiments/README.md")
  unlinked = [p for p in pages if p not in readme]
  assert not unlinked, f"docs pages that README.md does not link: {unlinked}"


def test_every_image_under_docs_is_shown_by_a_page():
  texts = {page: _read(page) for page in _pages()}
  images = sorted(os.path.relpath(p, REPO) for p in glob.glob(
      os.path.join(REPO, "docs", "**", "*.png"), recursive=True))
  shown = set()
  for page, text in texts.items():
    shown |= linked(text, page)
    shown |= {os.path.normpath(os.path.join(os.path.dirname(page), p))
              for p in re.findall(r"`([^`\s]+\.png)`", text)}
    shown |= named_paths(text)
  unshown = [p for p in images if p not in shown]
  assert not unshown, f"images under docs/ that no page shows: {unshown}"


def test_the_checks_can_fail():
  """A stale path, an unknown flag and an unlinked page are each seen."""
  assert named_paths("run `launch/nope.py` and `docs/gone.md`") == {"launch/nope.py",
                                                                   "docs/gone.md"}
  assert not _exists("launch/nope.py")
  assert launch_commands("`python launch/train.py --config c.py --workdir w --nosuch=1`") == [
      ("launch/train.py", ["config", "workdir", "nosuch"])]
  assert "nosuch" not in _defined_flags("launch/train.py")
  assert "config" in _defined_flags("launch/train.py")
  assert linked("[a](docs/x.md#part) [b](https://x.org) [c](#top)", "README.md") == {"docs/x.md"}
