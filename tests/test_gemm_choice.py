"""The per-shape choice between OpenBLAS and our GEMM (kernels.gemm_choice) and its use by cpu-fused."""

import json

import numba
import numpy as np
import pytest

import minivae
from kernels import gemm_choice, gemm_cpu
from kernels.cpu_fused import CpuFusedOps

SHAPES = ((7, 300, 5, False, False), (9, 260, 4, True, False))  # (M, K, N, ta, tb)


def fake_timer(times):
    """A timer that hands out the given milliseconds in order (blas, ours, blas, ours, …)."""
    it = iter(times)
    return lambda fn, repeats: (fn(), next(it))[1]


def test_measure_picks_the_faster_and_the_table_round_trips(tmp_path):
    entries = gemm_choice.measure(SHAPES, threads=1, repeats=1, timer=fake_timer([1.0, 0.5, 1.0, 2.0]))
    k1, k2 = (gemm_choice.key(*s, 1) for s in SHAPES)
    assert k1 == "7×300×5 0 0 1" and k2 == "9×260×4 1 0 1"
    assert entries == {
        k1: {"blas_ms": 1.0, "ours_ms": 0.5, "pick": "ours"},
        k2: {"blas_ms": 1.0, "ours_ms": 2.0, "pick": "blas"},
    }
    path = tmp_path / "sub" / "choice.json"
    gemm_choice.save({k1: entries[k1]}, path)
    gemm_choice.save({k2: entries[k2]}, path)  # merged into the table, not replacing it
    assert json.loads(path.read_text()) == entries
    assert gemm_choice.load(path) == {k1}
    assert gemm_choice.load(tmp_path / "absent.json") == frozenset()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"7×300×5 0 0 1": {"pick": "fast"}}', '{"k": 3}'])
def test_a_bad_table_is_ignored_with_one_warning(tmp_path, text):
    path = tmp_path / "choice.json"
    path.write_text(text)
    with pytest.warns(UserWarning, match="GEMM choice table"):
        assert gemm_choice.load(path) == frozenset()


def test_table_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(gemm_choice.ENV, str(tmp_path / "t.json"))
    assert gemm_choice.table_path() == tmp_path / "t.json"
    monkeypatch.delenv(gemm_choice.ENV)
    assert gemm_choice.table_path().name == "gemm-choice.json"


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True)])
def test_cpu_fused_runs_ours_exactly_on_the_listed_shapes(ta, tb):
    rng = np.random.default_rng(1)
    M, K, N = 13, 300, 21
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    threads = numba.get_num_threads()
    version = 3 if threads == 1 else 4
    ours, blas = np.empty((M, N), np.float32), np.empty((M, N), np.float32)
    gemm_cpu.matmul(a, b, ours, ta, tb, version=version)
    np.matmul(a.T if ta else a, b.T if tb else b, out=blas)
    assert not np.array_equal(ours, blas)  # the sums are rounded differently: the test can tell them apart
    ops = CpuFusedOps()
    ops.gemm_table = frozenset({gemm_choice.key(M, K, N, ta, tb, threads)})
    out = np.empty((M, N), np.float32)
    ops.matmul(a, b, out, ta, tb)
    assert np.array_equal(out, ours)
    ops.gemm_table = frozenset({gemm_choice.key(M, K, N, ta, tb, threads + 1)})  # another thread count
    ops.matmul(a, b, out, ta, tb)
    assert np.array_equal(out, blas)


def test_a_step_on_our_gemm_everywhere_matches_the_numpy_backend(tmp_path, monkeypatch):
    """The model of test_engine's cpu-fused check, with every product of its step on our GEMM."""
    D, Z, H, B = 30, 7, 20, 13
    threads = numba.get_num_threads()
    table = {
        gemm_choice.key(*s, threads): {"blas_ms": 1, "ours_ms": 0, "pick": "ours"}
        for s in gemm_cpu.step_shapes(Z, B=B, H=H, D=D)
    }
    gemm_choice.save(table, tmp_path / "choice.json")
    monkeypatch.setenv(gemm_choice.ENV, str(tmp_path / "choice.json"))
    calls, ours = [], gemm_cpu.matmul
    monkeypatch.setattr(gemm_cpu, "matmul", lambda *a, **k: (calls.append(a[2].shape), ours(*a, **k))[1])
    kw = dict(data_dim=D, latent=Z, hidden=(H,), seed=9, beta=0.9)
    ref, fused = minivae.VAE(**kw), minivae.VAE(**kw, backend="cpu-fused")
    x = (np.random.default_rng(3).random((B, D)) < 0.4).astype(np.float32)
    eps = np.random.default_rng(6).standard_normal((B, Z))
    loss_ref, loss = ref.forward(x, eps), fused.forward(x, eps)
    assert fused.engine.ops.gemm_table == set(table)  # the table was read, and lists all 11
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
    g_ref, g = ref.backward(), fused.backward()
    for k in g_ref:
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-4, atol=1e-5 * np.abs(g_ref[k]).max())
    assert len(calls) == 11  # every product of the step ran on our GEMM


def test_measure_refuses_a_wrong_kernel(monkeypatch):
    monkeypatch.setattr(gemm_cpu, "matmul", lambda a, b, out, ta, tb, version: out.fill(0))
    with pytest.raises(AssertionError, match="is wrong on 7×300×5 0 0 1"):
        gemm_choice.measure(SHAPES[:1], threads=1, repeats=1, timer=fake_timer([1.0, 0.5]))


def test_the_command_writes_a_table_of_the_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(gemm_choice.ENV, str(tmp_path / "choice.json"))
    argv = ["--latents", "3,5", "--hidden", "8", "--batch-size", "4", "--threads", "1", "--repeats", "1"]
    assert gemm_choice.main(argv) == 0
    table = json.loads((tmp_path / "choice.json").read_text())
    want = {gemm_choice.key(*s, 1) for z in (3, 5) for s in gemm_cpu.step_shapes(z, B=4, H=8)}
    assert set(table) == want and len(want) == 17  # 11 per size; five do not depend on Z
    assert f"of {len(want)} products (1 thread(s))" in capsys.readouterr().out


def test_the_command_refuses_bad_options_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        gemm_choice.main(["--latents", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("ours_step_ms, kept", [(2.0, False), (0.5, True)])
def test_step_check_drops_picks_that_make_the_step_slower(ours_step_ms, kept):
    Z, H, B = 3, 8, 4
    shapes = gemm_cpu.step_shapes(Z, B=B, H=H)
    entries = {gemm_choice.key(*s, 1): {"blas_ms": 1.0, "ours_ms": 2.0, "pick": "blas"} for s in shapes}
    picked = gemm_choice.key(*shapes[1], 1)
    entries[picked] = {"blas_ms": 1.0, "ours_ms": 0.5, "pick": "ours"}
    checked = gemm_choice.step_check(dict(entries), [Z], 1, H, B, repeats=1, timer=fake_timer([ours_step_ms, 1.0]))
    assert checked[picked]["pick"] == ("ours" if kept else "blas")
    if not kept:
        assert checked[picked]["step_ms"] == {"Z": Z, "ours": 2.0, "blas": 1.0}
    assert all(checked[k] == e for k, e in entries.items() if k != picked)


def test_step_check_times_real_steps_with_and_without_the_picks():
    Z, H, B = 3, 8, 4
    k = gemm_choice.key(*gemm_cpu.step_shapes(Z, B=B, H=H)[0], 1)
    seen = []

    def timer(fn, repeats):
        fn()
        seen.append(repeats)
        return 1.0

    out = gemm_choice.step_check({k: {"blas_ms": 1, "ours_ms": 0.5, "pick": "ours"}}, [Z], 1, H, B, 2, timer)
    assert seen == [2, 2] and out[k]["pick"] == "blas"  # a tie keeps OpenBLAS
