"""notebooks/quickstart.ipynb runs top to bottom (small settings), so it cannot rot."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _outputs(nb):
  """An executed notebook's printed text and its number of PNG figures; no cell may have
  failed."""
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  return text, len([o for o in outputs if "image/png" in o.get("data", {})])


@pytest.mark.heavy
def test_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow")
  nbformat = pytest.importorskip("nbformat")
  from nbclient import NotebookClient
  monkeypatch.setenv("DEFORM3D_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("DEFORM3D_NOTEBOOK_DIR", str(tmp_path))
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  NotebookClient(nb, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  text, images = _outputs(nb)
  assert "small settings" in text and "test top-1" in text
  assert images == 3  # two explanation heatmaps and the real clip's skeleton figure
  # The real clip's top-5: five lines "prob  class" with probabilities summing to at most 1.
  classes = open(tmp_path / "data" / "classes.txt").read().split()
  top = [line.split() for line in text.splitlines()
         if len(line.split()) == 2 and line.split()[1] in classes]
  assert len(top) == 5 and 0 < sum(float(p) for p, _ in top) <= 1.0 + 1e-3
  for name in ("explain_attention/clip0_heatmap.png",
               "explain_integrated_gradients/clip0_heatmap.png", "predict/ntu_sample_skeleton.png"):
    assert (tmp_path / name).exists(), name


def test_committed_notebook_shows_a_full_run():
  """The notebook is committed with the outputs of a run in its full settings, so a reader on
  GitHub or in Colab sees the results before running anything: no errors, the full settings'
  marker, a test top-1 line, and the three figures."""
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
      "every code cell ran"
  text, images = _outputs(nb)
  assert "full settings" in text and "small settings" not in text
  assert "test top-1" in text
  assert images == 3
