"""benchmarks/roofline.py on tiny shapes: its byte and FLOP counts by hand, the parts it finds in a
recorded step against the model's layers, its reading of a part against the roofs, and the command
end to end with --quick (nothing it times is checked: benchmarks are never timed tests)."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_benchmark import BEYOND_THE_MACHINE, refused_line
from test_command_faults import _data_dir
from test_load_explore import saved_model

from benchmarks import roofline, throughput
from kernels import gemm_cpu

ROOT = Path(__file__).resolve().parents[1]


def test_a_product_and_adam_are_counted_by_hand():
    # (2, 3) · (3, 4): 2·2·3·4 multiply-adds counted as two FLOPs each; 6 + 12 + 8 floats of 4 bytes.
    assert roofline.product_cost(2, 3, 4) == (48, 104)
    # Adam over 10 parameters: reads θ, g, m, v and writes θ, m, v (7 floats), 14 FLOPs each.
    assert roofline.adam_cost(10) == (140, 280)
    # A recorded call with a transposed operand: op(a) = aᵀ is (3, 2) · (2, 5) → (3, 5).
    a, b, out = np.zeros((2, 3), np.float32), np.zeros((2, 5), np.float32), np.zeros((3, 5), np.float32)
    assert roofline.cost("matmul", {"a": a, "b": b, "out": out, "ta": True, "tb": False}) == (60, 4 * (6 + 10 + 15))


def test_passes_count_what_they_read_and_write():
    B, N = 4, 6
    y, bias = np.zeros((B, N), np.float32), np.zeros(N, np.float32)
    assert roofline.cost("bias_act", {"a": y, "b": bias, "act": "relu", "out": y}) == (2 * B * N, 4 * (2 * B * N + N))
    assert roofline.cost("colsum", {"dy": y, "out": bias}) == ((B - 1) * N, 4 * (B * N + N))
    assert roofline.cost("act_backward", {"dy": y, "y": y, "act": "relu", "out": y}) == (B * N, 12 * B * N)


def _parts(Z, hidden, B):
    vae, opt, x = roofline.build_step(Z, hidden, B)
    return vae, roofline.step_parts(vae, roofline.record_step(vae, opt, x))


@pytest.mark.parametrize("hidden", [(8,), (8, 6)])
def test_the_parts_are_every_op_of_the_step(hidden):
    Z, B = 3, 4
    vae, parts = _parts(Z, hidden, B)
    L = len(hidden) + 1  # dense layers a side
    ops = Counter(p["op"] for p in parts)
    # Three products per layer (forward, ∂W, ∂x), but no ∂x for the data input: 6L − 1, eleven for one hidden layer.
    assert ops["matmul"] == 6 * L - 1
    assert ops["bias_act"] == ops["colsum"] == 2 * L
    assert ops["act_backward"] == 2 * (L - 1)  # the hidden layers' ReLUs; the two last layers are linear
    for op in ("standard_normal", "reparam_kl", "reparam_kl_backward", "bernoulli_nll", "adam"):
        assert ops[op] == 1, op
    assert len({p["part"] for p in parts}) == len(parts)  # every part named apart
    products = [p for p in parts if p["kind"] == "product"]
    assert sum(p["flops"] for p in products) == throughput.sizes(Z, hidden, B)["flops_per_step"]
    (adam,) = [p for p in parts if p["kind"] == "Adam"]
    assert adam["bytes"] == 28 * vae.engine.P and adam["flops"] == 14 * vae.engine.P


def test_the_products_are_those_of_the_step_shapes():
    Z, H, B = 3, 8, 4
    _, parts = _parts(Z, (H,), B)
    from benchmarks.kernels import shape_label

    want = Counter(shape_label(*s) for s in gemm_cpu.step_shapes(Z, B=B, H=H))
    assert Counter(p["shape"] for p in parts if p["kind"] == "product") == want
    assert {p["impl"] for p in parts if p["kind"] == "product"} == {"OpenBLAS"}  # the tests have no choice table
    names = [p["part"] for p in parts]
    assert names[0] == "noise ε" and names[-1] == "Adam"
    assert names.index("enc0 forward") < names.index("dec1 forward") < names.index("dec1 ∂W") < names.index("enc0 ∂W")


def test_recording_a_step_changes_nothing():
    """A recorded step computes what an unrecorded one does, and leaves the ops object as it was."""
    a, opt_a, x = roofline.build_step(2, (8,), 4)
    b, opt_b, _ = roofline.build_step(2, (8,), 4)
    roofline.record_step(a, opt_a, x)
    b.forward(x)
    opt_b.step(b.backward())
    assert a.last == b.last
    np.testing.assert_array_equal(a.params.flat, b.params.flat)
    assert not set(vars(a.engine.ops)) & set(roofline.OPS)  # no recorder left on the instance


def test_a_part_is_read_against_its_roof():
    roofs = {"peak_gflops": 100.0, "bandwidth_gbs": 10.0, "balance_flop_per_byte": 10.0}
    part = {"part": "p", "kind": "product", "flops": 2e9, "bytes": 1e8, "call": None}  # 20 FLOP/byte
    row = roofline.read_part(part, [0.04, 0.05, 0.06], 1, 0.1, roofs)
    assert row["seconds"] == 0.05 and row["share"] == 0.5 and "call" not in row
    assert row["bound"] == "compute" and row["gflops"] == pytest.approx(40.0)
    assert row["fraction_of_roof"] == pytest.approx(0.4)  # 40 of the peak's 100 GFLOP/s
    part = dict(part, flops=1e8)  # 1 FLOP/byte: below the balance
    row = roofline.read_part(part, [0.05], 1, 0.05, roofs)
    assert row["bound"] == "memory" and row["fraction_of_roof"] == pytest.approx(0.2)  # 2 of 10 GB/s


def test_quick_run_writes_the_parts_and_the_machine(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "roofline.py"), "--quick", "--latents", "2", "--hidden", "16"]
    cmd += ["--batch", "8", "--threads", "1", "--repeats", "2", "--settle", "0", "--stream-mib", "1"]
    cmd += ["--stream-repeats", "2", "--peak-n", "64", "--peak-repeats", "1", "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "roofline-t1.json").read_text())
    for key in ("cpu_model", "cpu_isa", "blas", "threads", "load_start", "load_end", "warnings"):
        assert key in doc["machine"], key
    assert doc["roofs"]["peak_gflops"] > 0 and doc["roofs"]["bandwidth_gbs"] > 0
    entry = doc["latents"]["2"]
    parts = entry["parts"]
    assert sum(p["share"] for p in parts) == pytest.approx(1.0)
    assert sum(p["kind"] == "product" for p in parts) == 11
    assert sum(k["parts"] for k in entry["kinds"].values()) == len(parts)
    assert entry["step_s"] > 0 and entry["products_alone_s"] > 0
    assert all(p["bound"] in ("compute", "memory") for p in parts)
    assert "Adam" in r.stdout and "step / products alone" in r.stdout


@pytest.mark.parametrize("bad", [["--repeats", "0"], ["--latents", "x"], ["--threads", "-1"], ["--bogus"]])
def test_a_bad_option_is_one_line_and_exit_2(bad, capsys):
    try:
        code = roofline.main(bad)
    except SystemExit as e:  # argparse's own exit
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("benchmarks.roofline: error: "), err


def test_an_out_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("")
    assert roofline.main(["--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("benchmarks.roofline: error: ") and "Traceback" not in err[0]


def test_by_default_it_writes_under_runs_bench_named_by_the_threads():
    args = roofline.parse_args([])
    assert args.out == Path("runs/bench") and not args.out.is_absolute()
    assert (args.repeats, args.peak_n) == (roofline.DEFAULTS["repeats"], roofline.DEFAULTS["peak_n"])
    quick = roofline.parse_args(["--quick", "--repeats", "7"])
    assert quick.repeats == 7 and quick.target == roofline.QUICK["target"]  # what is given still applies


def _engine_arrays(vae, opt, B):
    """Copies of every array the step keeps: parameters, gradients, Adam's moments, the workspace."""
    e, ws = vae.engine, vae.engine.workspace(B)
    arrays = {"params": e.params.flat, "grads": e.grads.flat}
    arrays.update({f"{k}:{i}": a for k in ("enc_y", "dec_y") for i, a in enumerate(getattr(ws, k))})
    arrays.update({f"opt:{k}": v for k, v in vars(opt).items() if isinstance(v, np.ndarray)})
    return {k: np.array(v, copy=True) for k, v in arrays.items()}


def test_a_part_timed_again_and_again_changes_nothing_the_step_keeps():
    """Every part called 300 times in the step's order (as the timing does) leaves every array of
    the step as it was, and computes finite numbers; each part but Adam computes the same numbers
    at every call (a bias added in place on the step's own y would grow by b at each call)."""
    Z, B = 3, 4
    vae, opt, x = roofline.build_step(Z, (8,), B)
    calls = roofline.record_step(vae, opt, x)
    parts = roofline.step_parts(vae, calls)
    kept = _engine_arrays(vae, opt, B)
    private = [roofline.private_arguments(op, g, before) for op, _, g, before in calls]
    firsts = []
    for (op, method, _, _), kw in zip(calls, private, strict=True):
        method(**kw)
        firsts.append({k: kw[k].copy() for k in roofline.WRITES[op]})
    for _ in range(300):
        for (_, method, _, _), kw in zip(calls, private, strict=True):
            method(**kw)
    for part in parts:
        part["call"]()
    for name, before in kept.items():
        np.testing.assert_array_equal(_engine_arrays(vae, opt, B)[name], before, err_msg=name)
    for (op, _, _, _), kw, first in zip(calls, private, firsts, strict=True):
        for k in roofline.WRITES[op]:
            assert np.isfinite(kw[k]).all(), (op, k)
            if op != "adam":
                np.testing.assert_array_equal(kw[k], first[k], err_msg=f"{op} {k}")


def test_a_part_computes_what_the_step_computed():
    """Called on its private arguments, a product writes the product of the step's arrays, and
    an in-place bias + ReLU (y ← ReLU(y + b)) reads its private copy of the step's y = x·W and
    writes ReLU(x·W + b) however often it is called."""
    vae, opt, x = roofline.build_step(3, (8,), 4)
    W = vae.engine.params["enc0.W"].copy()  # the step's Adam changes it
    calls = roofline.record_step(vae, opt, x)
    (first, bias) = [(op, g, b) for op, _, g, b in calls if op in ("matmul", "bias_act")][:2]
    assert first[0] == "matmul" and bias[0] == "bias_act" and np.shares_memory(bias[1]["a"], bias[1]["out"])
    kw = roofline.private_arguments(*first)
    vae.engine.ops.matmul(**kw)
    np.testing.assert_allclose(kw["out"], x @ vae.engine.params["enc0.W"], rtol=1e-5, atol=1e-6)  # W now
    np.testing.assert_allclose(bias[2]["out"], x @ W, rtol=1e-5, atol=1e-6)  # the step's input: W before its Adam
    kw = roofline.private_arguments(*bias)
    assert not np.shares_memory(kw["a"], kw["out"])  # timed out of place: its input stays as the step left it
    vae.engine.ops.bias_act(**kw)
    vae.engine.ops.bias_act(**kw)
    # its own input (x·W as the step had it) plus the bias it reads from the step (as Adam left it)
    np.testing.assert_allclose(kw["out"], np.maximum(x @ W + vae.engine.params["enc0.b"], 0), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Subnormal numbers, and a trained model's step (--trained)
# --------------------------------------------------------------------------------------------


def test_subnormal_reads_counts_the_numbers_a_part_reads_not_those_it_overwrites():
    tiny = np.finfo(np.float32).tiny
    a = np.ones((4, 5), np.float32)
    a[0, :3] = tiny / 4  # three subnormals
    a[1, 0] = -tiny / 2  # one negative subnormal
    a[2, 0] = tiny  # the smallest normal: not subnormal
    b = np.zeros((5, 2), np.float32)  # zeros are not subnormal
    out = np.full((4, 2), tiny / 8, np.float32)  # written by the product: never read
    kw = {"a": a, "b": b, "out": out, "ta": False, "tb": False}
    assert roofline.subnormal_reads("matmul", kw) == 4
    p, g, m, v = (np.full(6, tiny / 3, np.float32) for _ in range(4))
    assert roofline.subnormal_reads("adam", {"p": p, "g": g, "m": m, "v": v, "lr": 1e-3}) == 24  # Adam reads θ, m, v


def test_a_fresh_step_reads_no_subnormal_number():
    vae, opt, x = roofline.build_step(3, (8,), 4)
    parts = roofline.step_parts(vae, roofline.record_step(vae, opt, x))
    assert [p["subnormal_reads"] for p in parts] == [0] * len(parts)


def test_a_trained_models_batches_are_real_digits_and_it_trains_first(tmp_path):
    import minivae

    digits = np.random.default_rng(1).random((50, 784)).astype(np.float32)
    saved_model(tmp_path / "run", "cpu-fused")
    vae = minivae.load(tmp_path / "run", backend="cpu-fused")
    before = vae.params["enc0.W"].copy()
    vae, opt, x = roofline.trained_step(vae, digits, 6, steps=2)
    assert x.shape == (6, 784) and x.dtype == np.float32
    assert all(any(np.array_equal(row, d) for d in digits) for row in x)  # every row one of the digits
    assert opt.t == 3 and not np.array_equal(vae.params["enc0.W"], before)  # Numba's warm-up step and 2 more


def _tiny_run(tmp_path, extra):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "roofline.py"), "--quick", "--batch", "8", "--threads", "1"]
    cmd += ["--repeats", "2", "--settle", "0", "--stream-mib", "1", "--stream-repeats", "2", "--peak-n", "64"]
    cmd += ["--peak-repeats", "1", "--out", str(tmp_path / "out"), *map(str, extra)]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_trained_times_the_saved_models_step_on_real_digits(tmp_path):
    saved_model(tmp_path / "run", "cpu-fused")
    digits = _data_dir(tmp_path / "digits", n_train=40, n_test=10)
    r = _tiny_run(tmp_path, ["--trained", tmp_path / "run", "--data-dir", digits, "--state-steps", "3"])
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "roofline-t1.json").read_text())
    assert doc["latents"] == {} and doc["config"]["state_steps"] == 3  # no fresh model unless --latents asks
    (entry,) = doc["trained"]
    assert (entry["from"], entry["latent"], entry["hidden"], entry["state_steps"]) == ("run", 3, [8], 3)
    assert sum(p["kind"] == "product" for p in entry["parts"]) == 11
    assert all(isinstance(p["subnormal_reads"], int) and p["subnormal_reads"] >= 0 for p in entry["parts"])
    assert "trained: run" in r.stdout and "subnormal numbers read:" in r.stdout and "data: MNIST" in r.stdout


def _refused(tmp_path, argv, capsys):
    line = refused_line(roofline.main, "roofline", ["--quick", "--out", tmp_path / "out", *argv], capsys)
    assert not (tmp_path / "out").exists()  # refused before anything was measured or written
    return line


def test_a_trained_folder_that_is_not_a_run_is_one_line_before_anything_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "empty" in _refused(tmp_path, ["--trained", tmp_path / "empty"], capsys)
    assert "nowhere" in _refused(tmp_path, ["--trained", tmp_path / "nowhere"], capsys)


def test_a_float64_trained_model_is_refused(tmp_path, capsys):
    saved_model(tmp_path / "run", "numpy", "float64")
    assert "float64" in _refused(tmp_path, ["--trained", tmp_path / "run"], capsys)


def test_a_data_dir_that_is_not_mnist_is_one_line(tmp_path, capsys):
    saved_model(tmp_path / "run", "cpu-fused")
    (tmp_path / "digits").mkdir()
    _refused(tmp_path, ["--trained", tmp_path / "run", "--data-dir", tmp_path / "digits"], capsys)
    too_long = tmp_path / ("d" * 300)  # ENAMETOOLONG: pathlib raises it, and load_mnist does not catch it
    assert "--data-dir" in _refused(tmp_path, ["--trained", tmp_path / "run", "--data-dir", too_long], capsys)


def test_state_steps_must_not_be_negative(tmp_path, capsys):
    _refused(tmp_path, ["--state-steps", "-1"], capsys)


@pytest.mark.parametrize("bad", BEYOND_THE_MACHINE)
def test_a_size_or_time_beyond_the_machine_is_refused_before_anything_runs(bad, tmp_path, capsys):
    _refused(tmp_path, bad, capsys)


def test_an_out_that_cannot_be_made_is_refused_before_anything_runs(tmp_path, capsys):
    assert "/proc/nope/x" in _refused(tmp_path, ["--threads", "1", "--out", "/proc/nope/x"], capsys)
    assert not Path("/proc/nope").exists()


def test_a_result_name_taken_by_a_folder_is_refused_before_anything_runs(tmp_path, capsys):
    (tmp_path / "out" / "roofline-t1.json").mkdir(parents=True)
    assert roofline.main(["--quick", "--threads", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("benchmarks.roofline: error: ") and "roofline-t1.json" in err[0]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["roofline-t1.json"]


def test_no_warmup_calls_are_allowed():
    calls = []
    timed = throughput.measure({"part": (lambda: calls.append(1), None)}, 1, 0, 1e-4, 0)
    assert len(timed["part"][0]) == 1 and len(calls) == 1 + timed["part"][1]


def test_a_write_that_fails_after_the_timing_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(throughput, "atomic_write_text", refuse)

    def run(args):  # the timing is done: only the writing is left
        return throughput.write_doc(tmp_path / "out", "roofline-t1.json", {})

    assert throughput.run_command("benchmarks.roofline", run, lambda argv: None) == 1
    err = capsys.readouterr().err.strip().splitlines()
    path = tmp_path / "out" / "roofline-t1.json"
    assert err == [f"benchmarks.roofline: error: cannot write {path}: Permission denied"]
    assert not any((tmp_path / "out").iterdir())
