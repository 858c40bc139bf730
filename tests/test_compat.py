"""Today's code gives the numbers and reads the files of the code before it.

tests/data/golden.json holds what the code of commit 0ce8dcb gave (tests/data/make_golden.py made it
and the small files in tests/data/old/ with that code): the main job on numpy and cpu-fused, a tiny
sweep and a tiny budget curve, the sweep's settings keys, and the ends of an old main job and an old
sweep run resumed from their checkpoints. On the machine kind the golden values were made on (same
BLAS kernels and threads, NumPy and the SIMD targets it dispatches to, Numba and the CPU LLVM compiles
for: make_golden.environment) every number and every array must be the same, bit for bit; elsewhere
the arrays' sums and the numbers must agree closely (another CPU rounds otherwise).
"""

import json
import math
import pathlib

import pytest

from minivae import checkpoint, runs, sweep
from minivae.config import Progress, RunConfig

DATA = pathlib.Path(__file__).resolve().parent / "data"


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden_script = _load_script()
GOLDEN = json.loads((DATA / "golden.json").read_text())
EXACT = golden_script.environment() == GOLDEN["environment"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    return golden_script.measure(tmp_path_factory.mktemp("compat"))


def same(got, want, where="", exact=EXACT):
    """The places where ``got`` differs from ``want`` (exactly, or closely when not ``exact``)."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in want for d in same(got[k], want[k], f"{where}/{k}", exact)]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, expected {len(want)}"]
        if len(want) == 4 and isinstance(want[0], str) and len(want[0]) == 64 and not exact:  # an array
            return same(got[1:], want[1:], where, exact)
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in same(g, w, f"{where}[{i}]", exact)]
    both_nan = isinstance(want, float) and isinstance(got, float) and math.isnan(want) and math.isnan(got)
    if isinstance(want, float) and isinstance(got, float) and not exact:
        ok = math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6) or both_nan
    else:
        ok = got == want or both_nan
    return [] if ok else [f"{where}: {got!r}, expected {want!r}"]


@pytest.mark.parametrize(
    "part", ["train-numpy", "train-cpu-fused", "sweep", "budgets", "keys", "old-train", "old-sweep"]
)
def test_the_numbers_and_files_are_those_of_the_code_before(part, measured):
    differences = same(measured[part], GOLDEN[part], part)
    assert not differences, "\n".join(differences[:20])


def test_the_comparison_is_exact_on_the_machine_the_values_were_made_on():
    if not EXACT:
        pytest.skip(f"another machine kind than golden.json's ({GOLDEN['environment']}): compared closely")
    assert same(1.0, 1.0 + 1e-12) and not same(1.0, 1.0)


def test_an_old_run_folder_loads_as_its_model():
    vae = runs.load(DATA / "old" / "train-run", backend="numpy")
    assert (vae.latent, vae.hidden) == (3, (4,))


def test_an_old_config_json_reads_back_and_writes_the_same_text():
    path = DATA / "old" / "train-run" / "config.json"
    text = path.read_text()
    config = RunConfig.from_json(json.loads(text))
    assert json.dumps(config.to_json(), indent=2) + "\n" == text
    assert RunConfig.from_json(config.to_json()) == config


def test_a_config_from_before_the_schedules_takes_the_constant_rate():
    obj = json.loads((DATA / "old" / "train-run" / "config.json").read_text())
    del obj["lr_schedule"], obj["decay_frac"]
    config = RunConfig.from_json(obj)
    assert (config.lr_schedule, config.decay_frac) == ("constant", 0.2)


@pytest.mark.parametrize("name", sorted(GOLDEN["sweep"]["models"]))
def test_a_kept_models_config_reads_back_and_writes_the_same_object(name):
    obj = GOLDEN["sweep"]["models"][name]["config"]
    config = RunConfig.from_json(obj, required=runs.LOADABLE)
    assert config.to_json(sweep.KEPT) == obj and config.extra == {k: obj[k] for k in ("steps", "sweep_settings")}


def test_the_old_sweep_checkpoint_is_one_the_checkpoint_module_continues_from():
    (path,) = (DATA / "old" / "sweep" / "runs").glob("*.resume.npz")
    ck = checkpoint.read(path)
    record, epoch, step = checkpoint.check(ck, path)
    assert Progress.from_json(record["done"]).to_json() == record["done"]
    assert (epoch, step, record["done"]["step"]) == (1, 2, 7)  # 5 steps an epoch: 7 = 1·5 + 2
