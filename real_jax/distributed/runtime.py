"""Multi-host start-up: `jax.distributed.initialize` when the run spans several processes.

JAX runs one controller process per host (or per GPU); each sees its local devices, and
`jax.devices()` lists every device of every process once the processes have met at a
coordinator. `maybe_initialize` decides whether this process is part of such a run:

- `--coordinator_address` (with `--num_processes`, `--process_id`), or the same arguments:
  `jax.distributed.initialize(address, n, i)` (the local launcher, manual launches);
- SLURM (`srun`, `SLURM_JOB_ID` set and `SLURM_NTASKS` > 1), Open MPI (`mpirun`,
  `OMPI_COMM_WORLD_SIZE` > 1), a multi-host TPU pod slice (`TPU_WORKER_HOSTNAMES` lists more
  than one host, or `MEGASCALE_COORDINATOR_ADDRESS`): plain `jax.distributed.initialize()`,
  which reads the coordinator, process count and index from that environment;
- anything else: nothing, one process.

It must run before anything touches the devices (`jax.devices()`, the first computation), so
`real_jax.main` calls it first thing in `main()`. The CPU backend exchanges collectives between
processes through gloo (`jax_cpu_collectives_implementation`, already gloo by default in jax
0.10; set explicitly so an older default cannot silently make multi-process CPU runs fail);
GPUs use NCCL and TPUs their interconnect whatever that option says.
"""

import os
from collections.abc import Mapping, Sequence

import jax
from absl import flags, logging

from real_jax.errors import RunFailure, UserError

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator for a multi-process run (the local launcher and "
    "manual launches); unset under SLURM / Open MPI / TPU pods, which are detected.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index in [0, num_processes).")
_LOCAL_DEVICE_IDS = flags.DEFINE_list(
    "local_device_ids", None,
    "Local device ids this process drives (e.g. one GPU per process: 0); default: all.")

_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", None,
    "A process silent this long counts as dead: JAX's coordination service then ends the "
    "others (those blocked outside a collective, e.g. in a checkpoint's barrier). Default: "
    "JAX's (100 s).")


class ClusterEnvironmentError(UserError):
    """A launcher's variables are malformed or disagree with the processes that came up."""


class LostProcessError(RuntimeError, RunFailure):
    """A collective with the other processes of a multi-process run failed (one has died)."""


SIZE_VARIABLES = {"slurm": "SLURM_NTASKS", "openmpi": "OMPI_COMM_WORLD_SIZE"}


def detect_cluster(environ: Mapping[str, str] | None = None) -> str | None:
    """Name of the multi-process launcher found in the environment, or None for one process.

    A process-count variable that is set but not a positive integer is an error: read as 1 it
    would start a single-process run on every task, each training alone.
    """
    env = os.environ if environ is None else environ

    def count(name: str) -> int:
        value = env.get(name)
        if value is None:
            return 1
        if not value.strip().isdigit() or int(value) < 1:
            raise ClusterEnvironmentError(
                f"{name}={value!r} is not a positive process count; fix the launcher's "
                f"environment (or unset it for a single-process run)")
        return int(value)

    if env.get("SLURM_JOB_ID") and count("SLURM_NTASKS") > 1:
        return "slurm"
    if count("OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def maybe_initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    environ: Mapping[str, str] | None = None,
    heartbeat_timeout_seconds: int | None = None,
) -> bool:
    """Initialises `jax.distributed` when this is a multi-process run; returns whether it did.

    With `coordinator_address`, `num_processes` and `process_id` are required. Without it, a
    SLURM / Open MPI / TPU-pod environment is auto-detected by `jax.distributed.initialize()`.
    Idempotent: a second call does nothing.
    """
    if jax.distributed.is_initialized():
        return True
    if coordinator_address:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} not in [0, {num_processes})")
        cluster = "explicit"
    else:
        cluster = detect_cluster(environ)
        if cluster is None:
            return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("initialising jax.distributed (%s): coordinator=%s num_processes=%s "
                 "process_id=%s", cluster, coordinator_address or "auto",
                 num_processes or "auto", process_id if process_id is not None else "auto")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=list(local_device_ids) if local_device_ids is not None else None,
        **({} if heartbeat_timeout_seconds is None
           else {"heartbeat_timeout_seconds": heartbeat_timeout_seconds}),
    )
    logging.info("process %d/%d: %d local devices, %d in all", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    env = os.environ if environ is None else environ
    expected = num_processes or (int(env[SIZE_VARIABLES[cluster]])
                                 if SIZE_VARIABLES.get(cluster) in env else None)
    if expected is not None and jax.process_count() != expected:
        raise ClusterEnvironmentError(
            f"{cluster}: {expected} processes expected, {jax.process_count()} came up")
    return True


def initialize_from_flags() -> bool:
    """`maybe_initialize` from this module's absl flags (call after flags are parsed)."""
    ids = _LOCAL_DEVICE_IDS.value
    return maybe_initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
        local_device_ids=[int(i) for i in ids] if ids else None,
        heartbeat_timeout_seconds=_HEARTBEAT_TIMEOUT.value,
    )


def wait_for_all_processes(name: str, timeout_s: float = 1800.0) -> None:
    """Blocks until every process reaches the barrier `name` (no-op on one process).

    Uses the coordination service, whose timeout is ours, rather than a gloo collective, whose
    30 s start-up limit is fixed: hosts can reach the first collective minutes apart (one still
    building its input pipeline while another is ready).
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("several JAX processes but no distributed client: call "
                           "real_jax.distributed.runtime.maybe_initialize first")
    client.wait_at_barrier(name, int(timeout_s * 1000))
