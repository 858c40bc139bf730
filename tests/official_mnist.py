"""Where the tests look for the official MNIST files (the four IDX files, gzipped or not).

``$MINIVAE_TEST_MNIST`` when set, else ``../shared/data/mnist`` beside the repository. Tests that
need the files skip, saying so, when they are not there.
"""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def official_mnist_dir():
    env = os.environ.get("MINIVAE_TEST_MNIST")
    if env:
        return pathlib.Path(env).expanduser().absolute()
    return REPO.parent / "shared" / "data" / "mnist"


OFFICIAL_MNIST = official_mnist_dir()


def official_file(name):
    """The file ``name`` (e.g. ``t10k-images-idx3-ubyte.gz``) in :data:`OFFICIAL_MNIST`, gzipped
    or under the name without .gz; None when neither is there."""
    for path in (OFFICIAL_MNIST / name, OFFICIAL_MNIST / name.removesuffix(".gz")):
        if path.is_file():
            return path
    return None


def have(*names):
    """True when every file of ``names`` is in :data:`OFFICIAL_MNIST`."""
    return all(official_file(name) is not None for name in names)
