"""Which cross-device collectives the compiled train step uses: the HLO reader on a known
program, then the tiny model's step on 8 forced CPU devices (`launch/collectives.py`, which
measures the paper model's for BENCHMARKS.md section 9), data parallel (all-reduce only) and
FSDP (parameters all-gathered, gradients summed)."""

import json
import subprocess
import sys
from pathlib import Path

from launch.local import process_env
from real_jax.distributed import hlo

REPO = Path(__file__).resolve().parents[2]
VOCAB_SIZE = 64

# The shape of XLA's HLO text: an async all-gather pair, a combined (tuple) all-reduce, a
# collective-permute, all-reduces over one-device groups (listed and mesh-axis forms), an
# all-reduce in a loop body run 4 times, and an async-wrapped reduce-scatter.
HLO_TEXT = """\
HloModule jit_f, is_scheduled=true, entry_computation_layout={(f32[4,8]{1,0})->f32[32,8]{1,0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(f32[] %x, f32[] %y)
}

%body (state: (s32[], f32[8])) -> (s32[], f32[8]) {
  %state = (s32[], f32[8]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[8]{0}) %state), index=0
  %v = f32[8]{0} get-tuple-element((s32[], f32[8]{0}) %state), index=1
  %all-reduce.1 = f32[8]{0} all-reduce(f32[8]{0} %v), channel_id=2, replica_groups=[1,8]<=[8], use_global_device_ids=true, to_apply=%add
  ROOT %t = (s32[], f32[8]{0}) tuple(s32[] %i, f32[8]{0} %all-reduce.1)
}

%cond (state.1: (s32[], f32[8])) -> pred[] {
  %state.1 = (s32[], f32[8]{0}) parameter(0)
  %j = s32[] get-tuple-element((s32[], f32[8]{0}) %state.1), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(s32[] %j, s32[] %n), direction=LT
}

%wrapped_reduce_scatter (p: bf16[64]) -> bf16[8] {
  %p = bf16[64]{0} parameter(0)
  ROOT %reduce-scatter.2 = bf16[8]{0} reduce-scatter(bf16[64]{0} %p), channel_id=6, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}, to_apply=%add
}

ENTRY %main (p0: f32[4,8], p1: bf16[16], p2: bf16[64]) -> f32[32,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = bf16[16]{0} parameter(1)
  %p2 = bf16[64]{0} parameter(2)
  %c = f32[] constant(1)
  %all-gather-start = (f32[4,8]{1,0}, f32[32,8]{1,0}) all-gather-start(f32[4,8]{1,0} %p0), channel_id=1, replica_groups=[1,8]<=[8], dimensions={0}, use_global_device_ids=true
  %all-gather-done = f32[32,8]{1,0} all-gather-done((f32[4,8]{1,0}, f32[32,8]{1,0}) %all-gather-start)
  %all-reduce = (bf16[16]{0}, f32[]) all-reduce(bf16[16]{0} %p1, f32[] %c), channel_id=3, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%add
  %trivial = f32[4,8]{1,0} all-reduce(f32[4,8]{1,0} %p0), channel_id=4, replica_groups={{0},{1},{2},{3},{4},{5},{6},{7}}, to_apply=%add
  %all-reduce.3 = f32[2,2]{1,0} all-reduce(%p0), channel_id=8, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, use_global_device_ids=true, to_apply=%add
  %trivial.1 = f32[2,2]{1,0} all-reduce(%p0), channel_id=9, replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_1'}, use_global_device_ids=true, to_apply=%add
  %collective-permute = f32[4,8]{1,0} collective-permute(f32[4,8]{1,0} %p0), channel_id=5, source_target_pairs={{0,1},{1,0}}
  %self-permute = f32[4,8]{1,0} collective-permute(f32[4,8]{1,0} %p0), channel_id=7, source_target_pairs={{0,0},{1,1}}
  %rs-start = ((bf16[64]{0}), bf16[8]{0}) async-start(bf16[64]{0} %p2), calls=%wrapped_reduce_scatter
  %rs-done = bf16[8]{0} async-done(((bf16[64]{0}), bf16[8]{0}) %rs-start)
  %zero = s32[] constant(0)
  %v0 = f32[8]{0} broadcast(f32[] %c), dimensions={}
  %init = (s32[], f32[8]{0}) tuple(s32[] %zero, f32[8]{0} %v0)
  %loop = (s32[], f32[8]{0}) while((s32[], f32[8]{0}) %init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  ROOT %out = f32[32,8]{1,0} copy(f32[32,8]{1,0} %all-gather-done)
}
"""  # noqa: E501


def test_shape_bytes():
    assert hlo.shape_bytes("f32[8,64]{1,0}") == 8 * 64 * 4
    assert hlo.shape_bytes("bf16[3,5]{0,1}") == 30
    assert hlo.shape_bytes("(f32[2]{0}, (s8[3]{0}, pred[]), u32[])") == 8 + 3 + 1 + 4
    assert hlo.shape_bytes("s32[<=8]{0}") == 32
    assert hlo.shape_bytes("f8e4m3fn[10]{0}") == 10
    assert hlo.shape_bytes("token[]") == 0


def test_collectives_of_a_known_program():
    totals = hlo.collective_totals(HLO_TEXT)
    assert totals["all-gather"] == hlo.KindTotals(count=1, executed=1, bytes=32 * 8 * 4)
    # the tuple and the mesh-grouped all-reduce once, the loop's 4 times; those over groups
    # of one device move nothing
    assert totals["all-reduce"] == hlo.KindTotals(count=3, executed=6,
                                                  bytes=16 * 2 + 4 + 2 * 2 * 4 + 4 * 8 * 4)
    assert totals["collective-permute"] == hlo.KindTotals(count=1, executed=1, bytes=4 * 8 * 4)
    assert totals["reduce-scatter"] == hlo.KindTotals(count=1, executed=1, bytes=8 * 2)
    assert totals["all-to-all"] == hlo.KindTotals()
    names = {c.name for c in hlo.find_collectives(HLO_TEXT)}
    assert names == {"all-gather-start", "all-reduce", "all-reduce.1", "all-reduce.3",
                     "collective-permute", "reduce-scatter.2"}


def test_train_step_uses_only_the_collectives_of_its_layout():
    command = [sys.executable, "launch/collectives.py", "--config=configs/real.py:tiny",
               f"--vocab_size={VOCAB_SIZE}"]
    result = subprocess.run(command, cwd=REPO, env=process_env(8), capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)  # the report alone (progress goes to stderr)
    print(json.dumps(report, indent=1))
    assert report["device_count"] == 8
    used = lambda mode: {k for k, t in report[mode]["collectives"].items() if t["count"]}
    data_parallel, fsdp = report["data_parallel"], report["fsdp"]
    model = data_parallel["model"]
    assert (model["encoder"], model["n_layer"], model["n_embd"], model["vocab_size"]) == (
        "resnet_micro", 1, 32, VOCAB_SIZE)
    gradient_bytes = 4 * data_parallel["param_count"]  # float32 parameters
    # Beyond the gradients: the tied token embedding's gradient once more, as its two parts (the
    # lookup's scatter-add, the LM head's matmul) are each summed across devices: XLA's CPU
    # pipeline has no pass that adds the parts before one all-reduce (its GPU pipeline has
    # AllReduceReassociate). And batch-norm statistics and metrics: each batch-norm layer
    # all-reduces its batch's per-channel mean and mean square in the forward pass (as many
    # bytes as its running statistics, `batch_stats`) and per-channel sums in the backward pass
    # (at most as many again; 1.5x `batch_stats` in all, measured), and each metric is at most
    # one scalar. Bounded by those sizes rather than by a fraction of the gradient bytes: they
    # are 0.08 % of the paper model's gradient bytes but 2 % of the tiny model's, whose
    # batch-norm layers stay wide while its decoder shrinks to 32 features.
    most_all_reduced = (gradient_bytes + 4 * model["vocab_size"] * model["n_embd"]
                        + 2 * data_parallel["batch_stats_bytes"]
                        + 4 * data_parallel["metric_scalars"])

    assert data_parallel["sharded_params"] == 0
    assert used("data_parallel") == {"all-reduce"}, data_parallel["collectives"]
    all_reduced = data_parallel["collectives"]["all-reduce"]["bytes"]
    assert gradient_bytes <= all_reduced <= most_all_reduced, (all_reduced, gradient_bytes)

    # FSDP: each split parameter all-gathered once, whole (float32, or bfloat16 if XLA casts
    # first), and nothing else; the gradients summed whole and sliced, which XLA's CPU pipeline
    # keeps as all-reduce + slice (its GPU pipeline's ReduceScatterCreator makes them
    # reduce-scatters, whose result is one device's eighth).
    assert fsdp["sharded_params"] > 0
    assert used("fsdp") <= {"all-reduce", "all-gather", "reduce-scatter"}, fsdp["collectives"]
    gathered = fsdp["collectives"]["all-gather"]
    assert gathered["count"] == fsdp["sharded_params"], fsdp["collectives"]
    assert fsdp["sharded_param_bytes"] / 2 <= gathered["bytes"] <= fsdp["sharded_param_bytes"]
    summed = (fsdp["collectives"]["all-reduce"]["bytes"]
              + fsdp["collectives"]["reduce-scatter"]["bytes"] * 8)
    assert summed <= most_all_reduced, fsdp["collectives"]
