"""FineGYM (Gym99 element split): element lists, annotation timestamps and category names.

Element ids look like ``{youtube_id}_E_{event_start:06d}_{event_end:06d}_A_{start:04d}_{end:04d}``
(seconds; the element's are relative to its event). ``finegym_annotation_info_v1.1.json`` gives
the exact times: ``ann[youtube_id]["E_..."]["timestamps"] = [[event_start, event_end]]`` and
``...["segments"]["A_..."]["timestamps"] = [[start, end], ...]`` (stages, relative to the event).
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional, Tuple

from data_pipelines import records
from data_pipelines.datasets import common, pyskl
from data_pipelines.datasets.common import Config, RawFormatError
from data_pipelines.skeletons import COCO17

NUM_CLASSES = 99
LABEL_MAP_VERSION = "gym99-v1.1"
ID_RE = re.compile(r"^(?P<vid>.+)_(?P<event>E_\d+_\d+)_(?P<seg>A_\d+_\d+)$")
CATEGORY_RE = re.compile(r"Clabel:\s*(\d+);.*?Glabel:\s*\d+;\s*(.+)$")


def read_element_list(path: str) -> List[Tuple[str, int]]:
  out = []
  with open(path) as fh:
    for n, line in enumerate(fh, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or not ID_RE.match(parts[0]):
        raise RawFormatError(f"{path}:{n}: expected '<element_id> <label>', got {line.strip()!r}")
      label = int(parts[1])
      if not 0 <= label < NUM_CLASSES:
        raise RawFormatError(f"{path}:{n}: label {label} outside [0, {NUM_CLASSES})")
      out.append((parts[0], label))
  return out


def read_categories(path: str) -> List[str]:
  names: Dict[int, str] = {}
  with open(path) as fh:
    for n, line in enumerate(fh, 1):
      if not line.strip():
        continue
      m = CATEGORY_RE.search(line)
      if not m:
        raise RawFormatError(f"{path}:{n}: expected 'Clabel: N; set: S; Glabel: G; name'")
      names[int(m.group(1))] = m.group(2).strip()
  if sorted(names) != list(range(NUM_CLASSES)):
    raise RawFormatError(f"{path}: expected Clabel 0..{NUM_CLASSES - 1}, got {len(names)} "
                         f"distinct labels")
  return [names[i] for i in range(NUM_CLASSES)]


def element_window(element_id: str, info: Optional[dict]) -> Tuple[str, float, float]:
  """``(youtube_id, start_s, end_s)`` of an element in its source video."""
  m = ID_RE.match(element_id)
  if not m:
    raise RawFormatError(f"element id {element_id!r} is not <vid>_E_..._A_...")
  vid, event, seg = m.group("vid"), m.group("event"), m.group("seg")
  if info is not None:
    try:
      ev = info[vid][event]
      t0 = float(ev["timestamps"][0][0])
      stages = ev["segments"][seg]["timestamps"]
      return vid, t0 + float(stages[0][0]), t0 + float(stages[-1][1])
    except (KeyError, IndexError, TypeError) as e:
      raise RawFormatError(f"annotation info: no timestamps for {element_id} ({e!r})") from None
  e0 = int(event.split("_")[1])
  a0, a1 = (int(v) for v in seg.split("_")[1:])
  return vid, float(e0 + a0), float(e0 + a1)


def read_info(path: str) -> dict:
  try:
    with open(path) as fh:
      return json.load(fh)
  except Exception as e:
    raise RawFormatError(f"{path}: unreadable annotation json ({e})") from e


# -- TFDS builder (poses and clips through datasets/pyskl.py's loader) ------------------------

MAX_PERSONS = 1  # the gymnast: the person with the highest total score (pyskl.persons)

class Finegym(common.Builder):
  """FineGYM Gym99 elements: clips cut from the event videos by the annotation timestamps, poses
  from pyskl's ``gym_hrnet.pkl`` (FineGYM has no official poses)."""
  BUILDER_CONFIGS = [Config(name="gym99", description="Gym99 v1.1 element split")]
  NUM_JOINTS = len(COCO17)
  LOAD = staticmethod(pyskl.load_video)
  LABEL_MAP_VERSION = LABEL_MAP_VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put gym99_train_element_v1.1.txt, gym99_val_element.txt, gym99_categories.txt, "
      "finegym_annotation_info_v1.1.json (optional), gym_hrnet.pkl and videos/{youtube_id}.mp4 "
      "under --manual_dir.")

  def _classes(self):
    # Gym99 labels are the dataset's Clabel indices; their names come from the manual dir's
    # gym99_categories.txt and are written to classes.txt by _items.
    return NUM_CLASSES

  def _items(self, manual_dir):
    names = read_categories(os.path.join(manual_dir, "gym99_categories.txt"))
    records.write_classes(os.fspath(self.data_dir), names)
    info_path = os.path.join(manual_dir, "finegym_annotation_info_v1.1.json")
    info = read_info(info_path) if os.path.exists(info_path) else None
    pkl = os.path.join(manual_dir, "gym_hrnet.pkl")
    _, anns = pyskl.load(pkl)
    videos = {os.path.splitext(os.path.basename(p))[0]: p
              for p in common.rglob(os.path.join(manual_dir, "videos"), "*.*")}
    out = {}
    for subset, fname in (("train", "gym99_train_element_v1.1.txt"),
                          ("test", "gym99_val_element.txt")):
      out[subset] = []
      for eid, label in read_element_list(os.path.join(manual_dir, fname)):
        try:
          vid, start, end = element_window(eid, info)
        except RawFormatError as e:
          out[subset].append({"key": eid, "error": str(e)})
          continue
        item = pyskl.item(pkl, anns, eid, videos.get(vid), self.NUM_JOINTS, start=start,
                           end=end, max_persons=MAX_PERSONS)
        if "ann" in item and int(item["ann"]["label"]) != label:
          item = {"key": eid, "error": f"{pkl}: {eid}: label {item['ann']['label']} differs "
                                       f"from {fname}'s {label}"}
        out[subset].append(item)
    return out
