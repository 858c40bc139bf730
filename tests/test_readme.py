"""The README's Python examples run as written, and every relative link of the README and of the
documents it points to reaches a file (and a heading, when it names one)."""

import pathlib
import re

import pytest

from minivae import train

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [
    README,
    ROOT / "docs" / "study" / "README.md",
    ROOT / "docs" / "linear" / "README.md",
    ROOT / "docs" / "gpu.md",
    ROOT / "benchmarks" / "README.md",
    ROOT / "tests" / "README.md",
]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```$", re.S | re.M)

# The main job, as small as it gets, for the examples that load its run folder.
TINY_RUN = "--limit 256 --epochs 1 --hidden 16 --batch-size 64 --iw-samples 2 --iw-examples 20 --quiet"


def python_blocks():
    return BLOCK.findall(README.read_text())


def test_the_readme_has_python_examples():
    blocks = python_blocks()
    assert len(blocks) >= 2
    assert any("minivae.Adam(" in b and "minivae.metrics.evaluate(" in b for b in blocks)


@pytest.mark.usefixtures("offline")  # tests/conftest.py: an empty cache, no network
@pytest.mark.filterwarnings("ignore:.*offline 5k sample:UserWarning")  # load_mnist's fallback, said
@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: str(python_blocks().index(b)))
def test_each_python_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for run_dir in sorted(set(re.findall(r'"(runs/[^"]+)"', block))):  # a run the README made before
        latent = re.search(r"latent(\d+)", run_dir)
        argv = TINY_RUN.split() + ["--latent", latent.group(1) if latent else "2", "--backend", "numpy"]
        assert train.main(argv + ["--out", run_dir]) == 0
    exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})


def slug(heading):
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path):
    text = FENCE.sub("", path.read_text())
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


def relative_links(path):
    text = FENCE.sub("", path.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    links = relative_links(doc)
    broken = []
    for link in links:
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not (path.is_file() or (path.is_dir() and not anchor)):  # a folder: GitHub lists it
            broken.append(f"{link}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.name}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


def test_slug_matches_github_on_the_headings_linked_here():
    assert slug("Throughput: `benchmarks/throughput.py`") == "throughput-benchmarksthroughputpy"
    assert slug("CPU peers and our own GEMM") == "cpu-peers-and-our-own-gemm"
    assert slug("What Z > D means exactly: the linear VAE") == "what-z--d-means-exactly-the-linear-vae"
