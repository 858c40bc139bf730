"""python -m minivae.linear on bad input: result.json files that --summarize cannot use, options
that contradict --summarize, a σ² too small for the arithmetic, a diverging learning rate. Each is
one line on stderr and an exit code, nothing half-written; --summarize writes table.md and
spectrum.png both, or neither."""

import errno
import json
import pathlib
import struct
import tempfile
import warnings

import numpy as np
import pytest

from minivae import files, linear, linear_cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIGURE = b"\x89PNG\r\n\x1a\n" + b"made up" * 100
OUTPUTS = ("table.md", "spectrum.png")
NUMBERS = ("exact_train_ll", "exact_test_ll", "train_elbo", "test_elbo", "test_gap", "model_test_ll")
NUMBERS += ("posterior_gap", "test_kl", "test_kl_theory")
OR_NULL = ("collapsed_max_s2_error", "collapsed_max_w_norm", "sv_median_rel_error", "sv_max_rel_error_clear")
OR_NULL += ("sv_largest_beyond_q",)


def result(latent=5, sigma2=0.1, **changes):
    """A result.json as ``python -m minivae.linear`` writes one (minivae.linear.compare, then the
    command's own keys), made up: 784 eigenvalues, one number per unit, W's singular values."""
    lam = [float(f"{v:.5g}") for v in np.geomspace(5.0, 1e-4, 700)] + [0.0] * 84
    k = sum(v > sigma2 for v in lam)
    q = min(latent, k)
    sv = [float(f"{v:.5g}") for v in np.geomspace(2.0, 0.01, min(784, latent))]
    r = {"latent": latent, "sigma2": sigma2, "k": k, "q": q, "z_minus_q": latent - q, "eigenvalues": lam}
    r.update({key: -100.0 - i for i, key in enumerate(NUMBERS)})
    r.update(dict.fromkeys(OR_NULL))  # no unit collapsed, no direction beyond q: null
    r.update(active_units=q, predicted_active_units=q, collapsed_units=latent - q, predicted_collapsed=latent - q)
    r.update(sv_max_abs_error=0.5, n_clear=q, singular_values=sv, theory_singular_values=sv)
    r.update(var_mu_sorted=sorted(np.linspace(0, 1, latent).tolist(), reverse=True))
    r.update(kl_per_unit_sorted=sorted(np.linspace(-1e-9, 3, latent).tolist(), reverse=True))
    config = {"latent": latent, "sigma2": sigma2, "steps": 100, "batch_size": "full", "lr": 1e-3, "lr_final": 1e-5}
    r.update(config=config, data="made up", train_seconds=1.0, wall_seconds=2.0, loss_curve=[[1, 9.5], [2, 9.0]])
    r.update(changes)
    return r


def write_results(folder, *results):
    """Each result (a dict, or the text of a file) into folder/<a, b, …>/result.json."""
    for name, r in zip("abcdefgh", results, strict=False):
        (folder / name).mkdir(parents=True)
        (folder / name / "result.json").write_text(r if isinstance(r, str) else json.dumps(r))


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def command(argv, capsys):
    capsys.readouterr()
    try:
        code = linear.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own exit
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture
def figure(monkeypatch):
    """spectrum.png's bytes made up (no matplotlib: fast); the list of the results it was drawn from."""
    drawn = []

    def spectrum_png(results):
        drawn.append(results)
        return FIGURE

    monkeypatch.setattr(linear_cli, "spectrum_png", spectrum_png, raising=False)
    return drawn


# ------------------------------------------------------------------------------ --summarize

NAN, INF = float("nan"), float("inf")
BAD = {  # case: (the result's changes, the field the message names)
    "eigenvalues empty": ({"eigenvalues": []}, "eigenvalues"),
    "eigenvalues all NaN": ({"eigenvalues": [NAN] * 784}, "eigenvalues"),
    "eigenvalues 2-D": ({"eigenvalues": [[1.0, 2.0]] * 392}, "eigenvalues"),
    "eigenvalues all 0": ({"eigenvalues": [0.0] * 784}, "eigenvalues"),
    "eigenvalues ascending": ({"eigenvalues": [0.0] * 84 + [0.5] * 700}, "eigenvalues"),
    "eigenvalues one short": ({"eigenvalues": [1.0] * 783}, "eigenvalues"),
    "eigenvalue infinite": ({"eigenvalues": [INF] + [1.0] * 783}, "eigenvalues"),
    "singular values null": ({"singular_values": None}, "singular_values"),
    "singular values negative": ({"singular_values": [1.0, 0.5, 0.2, 0.1, -0.1]}, "singular_values"),
    "singular values one per latent missing": ({"singular_values": [1.0] * 4}, "singular_values"),
    "latent null": ({"latent": None}, "latent"),
    "latent 10**12": ({"latent": 10**12}, "q"),  # q, z_minus_q and the lists are the result's Z
    "latent true": ({"latent": True}, "latent"),
    "latent a float": ({"latent": 5.0}, "latent"),
    "sigma2 0": ({"sigma2": 0}, "sigma2"),
    "sigma2 NaN": ({"sigma2": NAN}, "sigma2"),
    "sigma2 1e-320": ({"sigma2": 1e-320}, "sigma2"),
    "sigma2 a string": ({"sigma2": "0.1"}, "sigma2"),
    "k above D": ({"k": 785}, "k"),
    "q not min(Z, k)": ({"q": 4}, "q"),
    "active units above Z": ({"active_units": 6}, "active_units"),
    "test ELBO NaN": ({"test_elbo": NAN}, "test_elbo"),
    "test gap null": ({"test_gap": None}, "test_gap"),
    "sv error negative": ({"sv_median_rel_error": -1.0}, "sv_median_rel_error"),
    "var mu one short": ({"var_mu_sorted": [1.0, 0.5, 0.1, 0.0]}, "var_mu_sorted"),
    "kl per unit unsorted": ({"kl_per_unit_sorted": [0.0, 1.0, 2.0, 3.0, 4.0]}, "kl_per_unit_sorted"),
    "config missing": ({"config": None}, "config"),
    "config steps 0": ({"config": {**result()["config"], "steps": 0}}, "config.steps"),
    "config batch size a word": ({"config": {**result()["config"], "batch_size": "all"}}, "config.batch_size"),
    "config latent another Z": ({"config": {**result()["config"], "latent": 6}}, "config.latent"),
    "em sweeps negative": ({"em_sweeps": -1}, "em_sweeps"),
    "loss curve NaN": ({"loss_curve": [[1, NAN]]}, "loss_curve"),
}


@pytest.mark.usefixtures("figure")
@pytest.mark.parametrize("case", BAD)
def test_summarize_refuses_a_result_it_cannot_use_before_writing(case, tmp_path, capsys):
    """A result.json that reads as JSON but holds what no run writes: one line naming the file and
    the field, exit 2, neither table.md nor spectrum.png written — also beside good results."""
    changes, field = BAD[case]
    write_results(tmp_path, result(latent=5), result(latent=7), {**result(latent=5), **changes})
    code, err = command(["--summarize", tmp_path], capsys)
    line = one_line(err)
    assert code == 2 and f"{tmp_path / 'c' / 'result.json'}" in line and f"'{field}'" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


@pytest.mark.usefixtures("figure")
@pytest.mark.parametrize(
    "text, says",
    [
        ("[1, 2]", "a JSON list"),
        ('{"sigma2": 0.1}', "'latent' is missing"),
        (json.dumps({k: v for k, v in result().items() if k != "eigenvalues"}), "'eigenvalues' is missing"),
        ("[" * 100_000 + "]" * 100_000, "cannot read"),  # deeper than the JSON reader recurses
    ],
)
def test_summarize_refuses_what_is_no_result_in_one_line(text, says, tmp_path, capsys):
    write_results(tmp_path, result(), text)
    code, err = command(["--summarize", tmp_path], capsys)
    assert code == 2 and says in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_summarize_writes_the_table_and_the_figure_of_good_results(figure, tmp_path, capsys):
    write_results(tmp_path, result(latent=7), result(latent=5, em_sweeps=3, em_seconds=0.5, em_final_loss=-9.0))
    code, err = command(["--summarize", tmp_path, "--quiet"], capsys)
    assert code == 0, err
    table = (tmp_path / "table.md").read_text()
    assert table.index("| 0.1 | 5 | 100 + 3 EM |") < table.index("| 0.1 | 7 | 100 |")
    assert (tmp_path / "spectrum.png").read_bytes() == FIGURE and [r["latent"] for r in figure[0]] == [5, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "spectrum.png", "table.md"]


@pytest.mark.usefixtures("figure")
def test_summarize_writes_both_files_or_neither(tmp_path, capsys, monkeypatch):
    """A full disk while the second of the two files is written: one line, exit 1, both files as
    they were (here: the old ones), no temporary file left."""
    failing = "spectrum.png"
    write_results(tmp_path, result())
    for name in OUTPUTS:
        (tmp_path / name).write_text(f"old {name}")
    mkstemp = tempfile.mkstemp

    def full(*args, prefix="", **kwargs):
        if prefix.startswith(f".{failing}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkstemp", full)
    code, err = command(["--summarize", tmp_path], capsys)
    line = one_line(err)
    assert code == 1 and "No space left" in line and failing in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "spectrum.png", "table.md"]
    assert [(tmp_path / name).read_text() for name in OUTPUTS] == ["old table.md", "old spectrum.png"]


def test_atomic_write_files_writes_all_or_none(tmp_path):
    (tmp_path / "b").write_text("old b")

    def fail(f):
        f.write(b"half")
        raise OSError(errno.EFBIG, "File too large")

    with pytest.raises(files.WriteError, match="cannot write .*c: File too large"):
        files.atomic_write_files({tmp_path / "a": b"new a", tmp_path / "b": b"new b", tmp_path / "c": fail})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and (tmp_path / "b").read_text() == "old b"
    files.atomic_write_files({tmp_path / "a": b"new a", tmp_path / "b": lambda f: f.write(b"new b")})
    assert [(tmp_path / n).read_text() for n in "ab"] == ["new a", "new b"]


def test_the_check_knows_every_key_the_writer_writes(tmp_path):
    """Every key of minivae.linear.compare's result is checked; the results in docs/linear (written
    by the command over its history) and the made-up one here pass the check."""
    checked = {key for key, _, _ in linear_cli.RESULT_SPEC}
    assert set(linear.RESULT_KEYS) <= checked and linear_cli.OPTIONAL_KEYS <= checked
    written = sorted((ROOT / "docs" / "linear").rglob("result.json"))
    assert written
    for path in written:
        assert linear_cli._read_result(path, path.parent.parent)["latent"] >= 1
    write_results(tmp_path, result())
    assert linear_cli._read_result(tmp_path / "a" / "result.json", tmp_path) == result()


# ------------------------------------------------------------------------------ options


@pytest.mark.usefixtures("figure")
@pytest.mark.parametrize(
    "extra",
    [
        ["--latent", "5"],
        ["--sigma2", "0.1"],
        ["--steps", "12000"],  # the default, given: still a training option
        ["--seed", "0"],
        ["--out", "OUT"],
        ["--data-dir", "OUT"],
        ["--dtype", "float64", "--em", "3"],
    ],
)
def test_summarize_refuses_training_options(extra, tmp_path, capsys):
    write_results(tmp_path / "runs", result())
    extra = [str(tmp_path / "out") if a == "OUT" else a for a in extra]
    code, err = command(["--summarize", tmp_path / "runs", *extra, "--quiet"], capsys)
    line = one_line(err)
    assert code == 2 and "--summarize" in line and extra[0] in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]


@pytest.mark.usefixtures("never_trains")
@pytest.mark.parametrize("sigma2", ["1e-320", "5e-324", "1e-40", "1e-20", "3e-11"])
def test_a_sigma2_too_small_for_the_arithmetic_is_refused_up_front(sigma2, tmp_path, capsys):
    """Below D²ε/4 ≈ 3.4e-11 the model's covariance cannot be factored in float64 (1e-20 ended in
    a LinAlgError), and the loss's 1/σ² overflows (1e-320: "loss became inf")."""
    out = tmp_path / "out"
    code, err = command(["--latent", "3", "--sigma2", sigma2, "--out", out, "--quiet"], capsys)
    line = one_line(err)
    assert code == 2 and "--sigma2" in line and "3.4e-11" in line and sigma2 in line, line
    assert not out.exists()
    assert linear_cli.SIGMA2_MIN == pytest.approx(784**2 * np.finfo(np.float64).eps / 4)
    for fine in (f"{linear_cli.SIGMA2_MIN!r}", "1e-10", "0.01"):
        assert linear.parse_args(["--latent", "3", "--sigma2", fine]).sigma2 == float(fine)


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_a_diverging_learning_rate_is_one_line_without_warnings(tmp_path, capsys):
    """--lr 1e300: the loss is not finite at step 2; the command says so in one line (exit 1)
    without NumPy's RuntimeWarnings before it, and leaves no folder."""
    r = np.random.default_rng(5)
    digits = tmp_path / "mnist"
    digits.mkdir()
    for prefix, n in (("train", 60), ("t10k", 20)):
        _write_idx(digits / f"{prefix}-images-idx3-ubyte", (r.random((n, 28, 28)) ** 4 * 255).round())
        _write_idx(digits / f"{prefix}-labels-idx1-ubyte", r.integers(0, 10, n))
    out = tmp_path / "out"
    argv = ["--latent", "3", "--sigma2", "0.1", "--lr", "1e300", "--steps", "5", "--em", "0", "--data-dir", digits]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        code, err = command(argv + ["--out", out, "--quiet"], capsys)
    line = one_line(err)
    assert code == 1 and "loss became" in line and line.endswith("; lower --lr"), line
    assert [str(w.message) for w in said if issubclass(w.category, RuntimeWarning)] == []
    assert not out.exists()
