"""The step profile's category table (`launch/profile_step.py`, `real_jax.benchmark.profile`):
a real trace of the tiny preset's train step on CPU, and GPU-style HLO and trace lines built by
hand, whose accounting is known exactly."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from configs.real import get_config
from real_jax.benchmark import profile

REPO = Path(__file__).resolve().parents[2]


def _profile_step_module():
    spec = importlib.util.spec_from_file_location("profile_step", REPO / "launch/profile_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_preset_trace_categories_sum_to_the_step(tmp_path):
    summary = _profile_step_module().profile_step(
        get_config("tiny"), vocab_size=64, steps=2, warmup=0, out=tmp_path, roofline=False)
    rows = summary["categories"]
    assert set(rows) == set(profile.CATEGORIES)
    assert all(row["seconds_per_step"] >= 0 for row in rows.values()), rows
    total = sum(row["seconds_per_step"] for row in rows.values())
    assert math.isclose(total, summary["seconds_per_step"], rel_tol=1e-9), (total, summary)
    assert math.isclose(sum(row["share"] for row in rows.values()), 1.0, rel_tol=1e-9)
    # The tiny model has convolutions, matmuls (GPT-2) and AdamW: each must be found by name.
    for category in (profile.CONV, profile.MATMUL, profile.OPTIMIZER, profile.NORM):
        assert rows[category]["seconds_per_step"] > 0, (category, rows)
    assert summary["unmatched_kernels"] == 0
    # The traced window is the steps' wall time less what lies outside the first and last op.
    assert summary["seconds_per_step"] <= summary["wall_s_per_step"] * 1.001
    # Our FLOP count of the executed ops against XLA's whole-program count: elementwise FLOPs
    # are counted slightly differently (module docstring), so agreement within 25 %.
    ours = sum(row["flops_per_step"] for row in rows.values())
    assert ours == pytest.approx(summary["xla_compiled_flops_per_step"], rel=0.25)
    table = profile.markdown_table(summary)
    assert all(f"| {category} |" in table for category in profile.CATEGORIES)


GPU_HLO = """HloModule jit_step, is_scheduled=true

%fused_add (param_0: f32[8,64], param_1: f32[8,64]) -> f32[8,64] {
  %param_0 = f32[8,64]{1,0} parameter(0)
  %param_1 = f32[8,64]{1,0} parameter(1)
  ROOT %add.1 = f32[8,64]{1,0} add(%param_0, %param_1)
}

%fused_adam (param_0.1: f32[64]) -> f32[64] {
  %param_0.1 = f32[64]{0} parameter(0)
  ROOT %multiply.2 = f32[64]{0} multiply(%param_0.1, %param_0.1), metadata={op_name="jit(step)/mul" stack_frame_id=2}
}

ENTRY %main (p0: f32[8,16,16,4], p1: f32[3,3,4,8], p2: f32[8,32], p3: f32[32,64], p4: f32[64]) -> f32[8,64] {
  %p0 = f32[8,16,16,4]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,4,8]{3,2,1,0} parameter(1)
  %p2 = f32[8,32]{1,0} parameter(2)
  %p3 = f32[32,64]{1,0} parameter(3)
  %p4 = f32[64]{0} parameter(4)
  %cudnn-conv.1 = (f32[8,16,16,8]{3,2,1,0}, u8[0]{0}) custom-call(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/image_encoder/conv2/conv_general_dilated" stack_frame_id=1}
  %custom-call.2 = (f32[8,64]{1,0}, s8[1024]{0}) custom-call(%p2, %p3), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  %get-tuple-element.2 = f32[8,64]{1,0} get-tuple-element(%custom-call.2), index=0
  %loop_add_fusion = f32[8,64]{1,0} fusion(%get-tuple-element.2, %get-tuple-element.2), kind=kLoop, calls=%fused_add
  %loop_multiply_fusion.3 = f32[64]{0} fusion(%p4), kind=kLoop, calls=%fused_adam
  ROOT %copy.3 = f32[8,64]{0,1} copy(%loop_add_fusion)
}

FileNames
1 "/site-packages/flax/linen/linear.py"
2 "/site-packages/optax/_src/transform.py"
FunctionNames
1 "f"
FileLocations
1 {file_name_id=1 function_name_id=1 line=1 end_line=1 column=1 end_column=2}
2 {file_name_id=2 function_name_id=1 line=1 end_line=1 column=1 end_column=2}
StackFrames
1 {file_location_id=1 parent_frame_id=1}
2 {file_location_id=2 parent_frame_id=2}
"""  # noqa: E501  (HLO as XLA prints it)


def test_gpu_hlo_ops_are_categorised_and_counted():
    module = profile.parse_hlo(GPU_HLO)
    assert module.name == "jit_step"
    ops = module.ops
    assert profile.classify_op(ops["cudnn-conv.1"], module) == profile.CONV
    assert profile.classify_op(ops["custom-call.2"], module) == profile.MATMUL
    assert profile.classify_op(ops["loop_add_fusion"], module) == profile.NORM
    assert profile.classify_op(ops["loop_multiply_fusion.3"], module) == profile.OPTIMIZER
    assert profile.classify_op(ops["copy.3"], module) == profile.LAYOUT
    # 2 x output elements x (3 x 3 x 4 inputs per output) and 2 x 8 x 64 x 32.
    assert profile.op_flops(ops["cudnn-conv.1"], module) == 2 * 8 * 16 * 16 * 8 * 36
    assert profile.op_flops(ops["custom-call.2"], module) == 2 * 8 * 64 * 32
    assert profile.op_flops(ops["loop_add_fusion"], module) == 8 * 64
    # operands (input, kernel) + the result tuple (output, empty workspace)
    assert profile.op_bytes(ops["cudnn-conv.1"], module) == 4 * (8 * 16 * 16 * 4 + 3 * 3 * 4 * 8
                                                                 + 8 * 16 * 16 * 8)
    for name, category in (("sm90_xmma_gemm_f32f32_tn", profile.MATMUL),
                           ("cudnn::implicit_convolve_sgemm", profile.CONV),
                           ("transpose_2", profile.LAYOUT),
                           ("input_reduce_fusion_7", profile.NORM)):
        assert profile.classify_name(name) == category, name


def _gpu_trace() -> dict:
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 7, "args": {"name": "Stream #7"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 8, "args": {"name": "Stream #8"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 9, "args": {"name": "XLA Ops"}}]
    x = lambda pid, tid, ts, dur, name, **args: {"ph": "X", "pid": pid, "tid": tid, "ts": ts,
                                                 "dur": dur, "name": name, "args": args}
    return {"traceEvents": meta + [
        x(1, 7, 0, 10, "conv", hlo_op="cudnn-conv.1", hlo_module="jit_step"),
        x(1, 7, 10, 5, "gemm", hlo_op="custom-call.2", hlo_module="jit_step"),
        # on the second stream, overlapping the GEMM for 2 us: the 2 us are shared
        x(1, 8, 13, 4, "loop_multiply_fusion_3", hlo_module="jit_step"),  # no hlo_op: by name
        x(1, 7, 20, 10, "loop_add_fusion", hlo_op="loop_add_fusion", hlo_module="jit_step"),
        x(1, 7, 40, 10, "sm90_xmma_gemm_f32f32", hlo_module="jit_step"),  # a library kernel
        x(1, 7, 50, 99, "other module", hlo_op="copy.3", hlo_module="jit_other"),
        x(1, 9, 0, 60, "loop_add_fusion", hlo_op="loop_add_fusion"),  # derived line: left out
        x(2, 1, 0, 60, "host", hlo_op="copy.3"),  # host line on a GPU trace: left out
    ]}


def test_gpu_trace_accounting_is_exact():
    module = profile.parse_hlo(GPU_HLO)
    events = profile.trace_events(_gpu_trace(), module="jit_step")
    assert len(events) == 5
    times = profile.category_times(events, module)
    s = {k: v * 1e6 for k, v in times["seconds"].items()}  # microseconds
    assert s[profile.CONV] == pytest.approx(10)
    assert s[profile.MATMUL] == pytest.approx(3 + 1 + 10)   # 13-15 shared with the fusion
    assert s[profile.OPTIMIZER] == pytest.approx(1 + 2)     # found by its kernel name
    assert s[profile.NORM] == pytest.approx(10)
    assert s[profile.IDLE] == pytest.approx(3 + 10)         # 17-20 and 30-40
    assert times["window_s"] * 1e6 == pytest.approx(50)
    assert sum(s.values()) == pytest.approx(50)
    assert times["unmatched_kernels"] == 1


def test_nested_events_count_once():
    """A CPU thunk inside another (a while loop's body) owns its own time."""
    module = profile.parse_hlo(GPU_HLO)
    trace = {"traceEvents": [
        {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 100, "name": "copy.3",
         "args": {"hlo_op": "copy.3"}},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 20, "dur": 30, "name": "cudnn-conv.1",
         "args": {"hlo_op": "cudnn-conv.1"}}]}
    times = profile.category_times(profile.trace_events(trace), module)
    assert times["seconds"][profile.LAYOUT] * 1e6 == pytest.approx(70)
    assert times["seconds"][profile.CONV] * 1e6 == pytest.approx(30)
    assert times["seconds"][profile.IDLE] == pytest.approx(0, abs=1e-12)
