"""Scoring of generated answers with the standard coco-caption metrics.

MIMIC-Diff-VQA results (ReAl's Table 1, and every peer: EKAID, PLURAL) are reported with the
``pycocoevalcap`` scorers: the Stanford PTBTokenizer on references and predictions, then
BLEU-1..4, METEOR, ROUGE-L and CIDEr (the CIDEr-D variant that ``pycocoevalcap`` implements:
clipped n-gram counts, Gaussian length penalty, x10). SPICE is left out (it downloads models).
This module runs exactly those scorers, so numbers are comparable with the paper, and adds
exact-match accuracy, which the coco metrics cannot show for short closed answers.

Grouping. CIDEr's IDF weights come from the references scored together, and BLEU/METEOR are
corpus-level aggregates, so a group's numbers depend on which examples are in it. Each group is
therefore scored on its own: the ``difference`` subset (the one ReAl trains and tests on), and
each question type present. An example is scored once per group it belongs to (a ``difference``
example counts in ``"difference"`` and in ``by_type["difference"]``, which are equal). Groups with
no example are omitted.

Returned metrics (all values python ``float``, counts ``int``)::

    {
      "difference": {                       # omitted if no difference question
        "BLEU-1": f, "BLEU-2": f, "BLEU-3": f, "BLEU-4": f,
        "METEOR": f, "ROUGE-L": f, "CIDEr": f,
        "exact_match": f,                   # fraction in [0, 1]
        "count": N,
      },
      "by_type": {                          # types present, in QUESTION_TYPES order
        "abnormality": {...same keys as "difference"...},
        ...
      },
      "exact_match": {                      # over all examples; "open"/"closed" omitted if empty
        "all": f, "open": f, "closed": f,
        "count": {"all": N, "open": n_open, "closed": n_closed},
      },
    }

Exact match compares answers after :func:`normalize_answer` (lowercase, strip, collapse
whitespace, drop trailing periods). A question is *closed* when its normalised reference answer
is ``"yes"`` or ``"no"``, else *open*.

Empty predictions. A model can emit EOS first and produce ``""``. With ``pycocoevalcap`` 1.2 and
Java 17 this is safe end to end (checked, and covered by the tests): the PTBTokenizer keeps the
empty line (its ``-preserveLines`` output stays aligned), BLEU/ROUGE-L/CIDEr score it 0, and the
METEOR jar scores an empty hypothesis 0. So empty strings are passed through unchanged, no
placeholder is substituted, and the numbers stay identical to calling the scorers directly.
Inside each string every run of whitespace (including ``\\r`` and Unicode line separators, which
Java would read as line breaks and which would shift the tokenizer's line alignment) becomes one
space before tokenizing; ``|||`` (METEOR's field separator) is removed from references as the
wrapper already does for hypotheses.

Java. The PTBTokenizer and METEOR are Java programs started as ``java`` from ``PATH``.
:func:`check_java` runs before any scoring and raises :class:`JavaNotFoundError` with install
instructions when ``java`` is missing or does not run. METEOR keeps one ``java`` subprocess per
scorer. :func:`score_predictions` uses one per Python process (:func:`shared_meteor_scorer`):
started at the first call, kept for the later ones (the evaluations of a training run, the
tests), closed at exit, and started afresh after a call in which it failed. ``meteor=False``
(``config.eval.meteor``) leaves METEOR out and never starts that process.

``pycocoevalcap`` writes its tokenizer's temp file inside its own package folder, so that folder
must be writable. METEOR's cost is loading its paraphrase tables, once per process (seconds of
one core, docs/testing.md); each call after that is cheap. Scoring is
host-side Python + Java: in a multi-host run, gather the predictions and call it on one process
only.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from data_pipeline.vocab import QUESTION_TYPES  # the dataset's question types, in its order

DIFFERENCE_TYPE = "difference"
CLOSED_ANSWERS = frozenset({"yes", "no"})
METRIC_NAMES: tuple[str, ...] = (
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr",
)

_JAVA_INSTALL_HINT = (
    "The coco-caption scorers (PTBTokenizer, METEOR) need a Java runtime (8 or newer) "
    "reachable as `java` on PATH. Install one, e.g. `apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu) or `conda install openjdk`, or, if a JDK/JRE is already installed, put it "
    "on PATH: `export JAVA_HOME=/path/to/jre; export PATH=$JAVA_HOME/bin:$PATH`."
)
_PYCOCOEVALCAP_HINT = (
    "Scoring needs the optional dependency pycocoevalcap: pip install 'real_jax[eval]'"
)


class JavaNotFoundError(RuntimeError):
    """Raised when no working Java runtime is on PATH (the coco-caption scorers need one)."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One generated answer with its reference and the pair/question it belongs to.

    Attributes:
      index: position of the example in the evaluated split (for joining back to the csv).
      study_id: the main image's study (MIMIC-CXR study id, as a string).
      ref_id: the reference image's study.
      subject_id: the patient.
      question_type: one of :data:`QUESTION_TYPES`.
      question: the question text.
      reference: the ground-truth answer, verbatim from the dataset.
      prediction: the generated answer (may be empty).
    """

    index: int
    study_id: str
    ref_id: str
    subject_id: str
    question_type: str
    question: str
    reference: str
    prediction: str


# --------------------------------------------------------------------------------------------
# Exact match


_WS = re.compile(r"\s+")


def metric_value(metrics: dict[str, Any], path: str) -> float:
    """`metrics["difference"]["CIDEr"]` for path `difference/CIDEr` (the best-checkpoint
    metric, `train.best_metric`)."""
    value: Any = metrics
    for key in path.split("/"):
        value = value[key]
    return float(value)


def normalize_answer(text: str) -> str:
    """Lowercase, strip, collapse whitespace to one space and drop trailing periods."""
    text = _WS.sub(" ", text.lower()).strip()
    return text.rstrip(".").rstrip()


def is_closed(reference: str) -> bool:
    """True for a yes/no question, judged by its reference answer."""
    return normalize_answer(reference) in CLOSED_ANSWERS


def exact_match(reference: str, prediction: str) -> bool:
    """True when the two answers are equal after :func:`normalize_answer`."""
    return normalize_answer(reference) == normalize_answer(prediction)


def _mean(flags: Sequence[bool]) -> float:
    return float(sum(flags)) / len(flags)


# --------------------------------------------------------------------------------------------
# Environment checks


def check_java() -> str:
    """Checks that a working ``java`` is on PATH; returns its path.

    Raises:
      JavaNotFoundError: ``java`` is not on PATH, or ``java -version`` fails.
    """
    java = shutil.which("java")
    if java is None:
        raise JavaNotFoundError(f"No `java` executable on PATH. {_JAVA_INSTALL_HINT}")
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise JavaNotFoundError(
            f"`{java} -version` could not run ({err}). {_JAVA_INSTALL_HINT}"
        ) from err
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-500:]
        raise JavaNotFoundError(
            f"`{java} -version` failed with exit code {proc.returncode}: {detail!r}. "
            f"{_JAVA_INSTALL_HINT}"
        )
    return java


def _import_scorers() -> tuple[Any, Any, Any, Any, Any]:
    """Imports the pycocoevalcap classes, with a clear error when the extra is missing."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as err:
        raise ImportError(_PYCOCOEVALCAP_HINT) from err
    return PTBTokenizer, Bleu, Meteor, Rouge, Cider


# --------------------------------------------------------------------------------------------
# Coco-caption scoring


def close_meteor(meteor: Any) -> None:
    """Closes a pycocoevalcap ``Meteor`` scorer's java subprocess and waits for it.

    ``Meteor`` only does this in ``__del__``, whose timing is up to the garbage collector. Safe to
    call twice (``__del__`` may run afterwards and finds the process already gone).
    """
    proc = getattr(meteor, "meteor_p", None)
    if proc is None:
        return
    # Meteor.compute_score holds its lock without try/finally: after a failed call (e.g. the
    # jar died) the lock stays held, and Meteor.__del__ would then block the garbage collector
    # forever. Take it if we can, close anyway, and leave a fresh lock behind.
    acquired = meteor.lock.acquire(timeout=5.0)
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            with suppress(OSError):
                proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
    finally:
        if acquired:
            meteor.lock.release()
        else:
            meteor.lock = threading.Lock()


_shared_meteor: Any = None
_shared_meteor_lock = threading.Lock()


def shared_meteor_scorer() -> Any:
    """This process's METEOR scorer, started at first use and kept until exit (loading the
    paraphrase tables is almost all of a scoring call's cost)."""
    global _shared_meteor
    with _shared_meteor_lock:
        if _shared_meteor is None or _shared_meteor.meteor_p.poll() is not None:
            _, _, meteor_cls, _, _ = _import_scorers()
            _shared_meteor = meteor_cls()
            atexit.register(close_meteor, _shared_meteor)
        return _shared_meteor


def _drop_shared_meteor() -> None:
    """Closes the shared scorer after a failed call: the next call starts a fresh one."""
    global _shared_meteor
    with _shared_meteor_lock:
        if _shared_meteor is not None:
            close_meteor(_shared_meteor)
            _shared_meteor = None


def _clean(text: str) -> str:
    """One line of text for the line-based java tools (see the module docstring)."""
    return " ".join(text.split())


def tokenize(
    references: Mapping[int, Sequence[str]], predictions: Mapping[int, str]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """PTB-tokenizes references and predictions in one java run.

    Args:
      references: key -> reference answers (one or more).
      predictions: key -> generated answer; same keys as ``references``.

    Returns:
      ``(gts, res)`` in pycocoevalcap's format: key -> list of tokenized strings (``res`` lists
      hold one string).
    """
    tokenizer_cls, *_ = _import_scorers()
    captions: dict[tuple[str, int], list[dict[str, str]]] = {}
    for key, refs in references.items():
        captions[("gts", key)] = [{"caption": _clean(r)} for r in refs]
    for key, pred in predictions.items():
        captions[("res", key)] = [{"caption": _clean(pred)}]
    tokenized = tokenizer_cls().tokenize(captions)
    n_in = sum(len(v) for v in captions.values())
    n_out = sum(len(v) for v in tokenized.values())
    if n_out != n_in:  # pycocoevalcap ignores the java exit status and zips lines silently
        raise RuntimeError(
            f"PTBTokenizer returned {n_out} lines for {n_in} captions; the java tokenizer "
            "failed or a caption contained a line break it did not expect"
        )
    gts = {key: tokenized[("gts", key)] for key in references}
    res = {key: tokenized[("res", key)] for key in predictions}
    return gts, res


def coco_scores(
    gts: Mapping[int, list[str]], res: Mapping[int, list[str]], meteor: Any
) -> dict[str, float]:
    """Scores one group of already tokenized answers with BLEU-1..4, METEOR, ROUGE-L, CIDEr.

    Args:
      gts: key -> tokenized references, as returned by :func:`tokenize`.
      res: key -> ``[tokenized prediction]``; same keys as ``gts``.
      meteor: an open pycocoevalcap ``Meteor`` scorer (see :func:`shared_meteor_scorer`), or
        None to leave METEOR out.

    Returns:
      ``{name: value}`` for :data:`METRIC_NAMES` (less METEOR without a scorer), python floats.
    """
    _, bleu_cls, _, rouge_cls, cider_cls = _import_scorers()
    gts = dict(gts)
    res = dict(res)
    out: dict[str, float] = {}
    bleu, _ = bleu_cls(4).compute_score(gts, res, verbose=0)
    for n, value in enumerate(bleu, start=1):
        out[f"BLEU-{n}"] = float(value)
    if meteor is not None:
        meteor_gts = {k: [r.replace("|||", "") for r in v] for k, v in gts.items()}
        out["METEOR"] = float(meteor.compute_score(meteor_gts, res)[0])
    out["ROUGE-L"] = float(rouge_cls().compute_score(gts, res)[0])
    out["CIDEr"] = float(cider_cls().compute_score(gts, res)[0])
    return out


def _group_metrics(
    keys: Sequence[int],
    gts: Mapping[int, list[str]],
    res: Mapping[int, list[str]],
    examples: Sequence[Prediction],
    meteor: Any,
) -> dict[str, Any]:
    metrics: dict[str, Any] = coco_scores(
        {k: gts[k] for k in keys}, {k: res[k] for k in keys}, meteor
    )
    metrics["exact_match"] = _mean(
        [exact_match(examples[k].reference, examples[k].prediction) for k in keys]
    )
    metrics["count"] = len(keys)
    return metrics


def score_predictions(examples: Sequence[Prediction], *, meteor: bool = True) -> dict[str, Any]:
    """Scores generated answers: coco metrics per group plus exact-match accuracy.

    Java is checked before anything is scored. The tokenizer runs once over all examples (it
    tokenizes each line on its own, so this equals tokenizing each group alone); the process's
    METEOR scorer serves every group (:func:`shared_meteor_scorer`), and is closed on error.

    Args:
      examples: the predictions; ``question_type`` must be one of :data:`QUESTION_TYPES`.
      meteor: False leaves METEOR out (no METEOR process is started).

    Returns:
      The nested dict described in the module docstring; ``{}`` for no examples.

    Raises:
      ValueError: an unknown question type.
      JavaNotFoundError: no working Java runtime.
      ImportError: pycocoevalcap is not installed.
    """
    examples = list(examples)
    unknown = sorted({e.question_type for e in examples} - set(QUESTION_TYPES))
    if unknown:
        raise ValueError(f"Unknown question types {unknown}; expected one of {QUESTION_TYPES}")
    if not examples:
        return {}
    _import_scorers()
    check_java()

    keys_by_type: dict[str, list[int]] = {t: [] for t in QUESTION_TYPES}
    for key, example in enumerate(examples):
        keys_by_type[example.question_type].append(key)

    gts, res = tokenize(
        {k: [e.reference] for k, e in enumerate(examples)},
        {k: e.prediction for k, e in enumerate(examples)},
    )

    result: dict[str, Any] = {}
    by_type: dict[str, dict[str, Any]] = {}
    scorer = shared_meteor_scorer() if meteor else None
    try:
        for qtype in QUESTION_TYPES:
            if keys_by_type[qtype]:
                by_type[qtype] = _group_metrics(keys_by_type[qtype], gts, res, examples, scorer)
    except BaseException:
        _drop_shared_meteor()
        raise
    if DIFFERENCE_TYPE in by_type:
        result["difference"] = dict(by_type[DIFFERENCE_TYPE])
    result["by_type"] = by_type

    matches = [exact_match(e.reference, e.prediction) for e in examples]
    closed = [is_closed(e.reference) for e in examples]
    open_matches = [m for m, c in zip(matches, closed, strict=True) if not c]
    closed_matches = [m for m, c in zip(matches, closed, strict=True) if c]
    em: dict[str, Any] = {"all": _mean(matches)}
    if open_matches:
        em["open"] = _mean(open_matches)
    if closed_matches:
        em["closed"] = _mean(closed_matches)
    em["count"] = {"all": len(matches), "open": len(open_matches), "closed": len(closed_matches)}
    result["exact_match"] = em
    return result


# --------------------------------------------------------------------------------------------
# Files


def write_predictions_jsonl(path: str | os.PathLike[str], examples: Sequence[Prediction]) -> None:
    """Writes one JSON object per line with the :class:`Prediction` fields (UTF-8), atomically
    (a kill leaves the previous file or none, never a cut-short one)."""
    _write_atomically(path, "".join(json.dumps(dataclasses.asdict(example), ensure_ascii=False)
                                    + "\n" for example in examples))


def read_predictions_jsonl(path: str | os.PathLike[str]) -> list[Prediction]:
    """Reads a file written by :func:`write_predictions_jsonl` (blank lines are skipped)."""
    fields = {f.name for f in dataclasses.fields(Prediction)}
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if set(record) != fields:
                raise ValueError(
                    f"{path}:{line_no}: fields {sorted(record)} do not match {sorted(fields)}"
                )
            out.append(Prediction(**record))
    return out


def write_metrics_json(path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> None:
    """Writes the metrics dict of :func:`score_predictions` as indented JSON, atomically."""
    _write_atomically(path, json.dumps(metrics, indent=2) + "\n")


def _write_atomically(path: str | os.PathLike[str], text: str) -> None:
    """`text` to `path` through a temporary file in the same folder and `os.replace`."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
