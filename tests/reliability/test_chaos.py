"""`launch/chaos.py`, short: the tiny preset killed four times, once in each phase (mid-step,
during an evaluation, during an asynchronous checkpoint write, during the final save) with SIGKILL
and SIGTERM both, restarted after each kill, on a dataset with an undecodable training image. It
must end bitwise equal to an uninterrupted run (train state, optimizer state, data-iterator
position), with `metrics.jsonl` holding each step once with the same values, the same
evaluations, and no partial file left behind. A SIGTERM saves a checkpoint at the step reached and
exits 0. Every kill must land inside its phase. docs/reliability.md gives the long run's figures
(25 kills)."""

from launch.chaos import PHASES, run_chaos
from tests.reliability.conftest import BAD_RECORD
from tests.runs import STEPS  # the tests' common step count: the programs are cached


def test_four_kills_in_every_phase_resume_to_the_uninterrupted_run(damaged, tmp_path):
    report = run_chaos(tmp_path, kills=4, steps=STEPS, eval_every=8, seed=0,
                       extra=[f"--config.data.dir={damaged}", "--config.data.synthetic_source=",
                              "--config.eval.meteor=False"])
    kills = report["kills"]
    print(kills)
    assert report["comparison"]["ok"], report["comparison"]
    assert [k["phase"] for k in kills][-1] == "final_save" and len(kills) == 4
    assert {k["phase"] for k in kills} == set(PHASES)
    assert {k["signal"] for k in kills} == {"SIGKILL", "SIGTERM"}
    # Each signal went out while its run was in the planned phase (`Kill.hit`), not merely
    # once the phase had been reached: a kill after the phase ended tests another phase.
    assert [k["phase"] for k in kills if not k["hit"]] == [], kills
    assert report["phase_hits"] == len(kills)
    for kill in kills:
        if kill["signal"] == "SIGKILL":
            assert kill["exit_status"] == -9, kill
        elif kill["phase"] != "final_save":  # graceful: a checkpoint at the step reached
            assert kill["exit_status"] == 0 and kill["stopped_at"] is not None, kill
    skipped = f"unreadable image in record {BAD_RECORD}"
    assert skipped in (tmp_path / "straight.log").read_text()
    assert skipped in (tmp_path / "chaotic_00.log").read_text()
