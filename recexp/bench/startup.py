"""Fixed start-up of a run: ``python -m recexp model=pop logger=none`` against ``python -c "import torch"``.

The Pop run reads a tiny dataset (40 users x 60 items), so what it takes is what every run pays before
and around its data and fit work: interpreter, imports, config composition, RecBole's set-up, records.
Both commands run in fresh processes, interleaved, best of ``repeat``. One more Pop run under
``python -X importtime`` lists the heavy packages it imported: a Pop run needs RecBole, not
transformers, peft, wandb, scikit-learn, torch._dynamo or numba.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from recexp.bench.common import ONE_THREAD

TARGET_S = 1.5  # a Pop run's fixed start-up over `import torch`
HEAVY = ("recbole", "transformers", "peft", "wandb", "sklearn", "torch._dynamo", "scipy.stats", "accelerate", "numba")
NOT_FOR_POP = ("transformers", "peft", "wandb", "sklearn", "torch._dynamo", "numba")
TINY = "tiny"  # dataset name: tiny.inter (+ tiny.item)


def write_tiny_dataset(folder: Path, n_users: int = 40, n_items: int = 60, per_user: int = 12) -> Path:
    """RecBole atomic files ``tiny.inter`` (user, item, rating, timestamp) and ``tiny.item`` (a title) in ``folder``."""
    rng = random.Random(0)
    rows = [f"u{u}\ti{i}\t{rng.randint(1, 5)}\t{1000 + u * 100 + j}"
            for u in range(n_users) for j, i in enumerate(rng.sample(range(n_items), per_user))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(rows) + "\n")
    (folder / f"{TINY}.item").write_text("item_id:token\ttitle:token_seq\n"
                                         + "".join(f"i{i}\tmovie number {i}\n" for i in range(n_items)))
    return folder


def run_command(data: Path, run_dir: Path, cache: Path, *overrides: str) -> list[str]:
    """``python -m recexp`` on the tiny dataset in ``data`` (``model=pop logger=none`` unless overridden)."""
    return [sys.executable, "-m", "recexp", "model=pop", "logger=none", "progress=false", "dataset=atomic",
            f"dataset.path={data}", f"dataset.name={TINY}", f"hydra.run.dir={run_dir}", f"cache_dir={cache}", *overrides]


def wall_s(command: list[str]) -> float:
    """Wall time of ``command`` in a fresh one-thread process; a RuntimeError with its stderr if it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return elapsed


def imported_modules(command: list[str]) -> set[str]:
    """Every module ``command`` (a ``python ...`` command line) imported, read off ``python -X importtime``."""
    traced = [command[0], "-X", "importtime", *command[1:]]
    done = subprocess.run(traced, env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    lines = (line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:"))
    return {name for name in lines if name and name != "package"}


def heavy_imports(modules: set[str]) -> dict[str, bool]:
    """Which of :data:`HEAVY` (or a submodule of it) are among ``modules``."""
    return {name: any(m == name or m.startswith(f"{name}.") for m in modules) for name in HEAVY}


def bench_startup(repeat: int = 5) -> dict[str, Any]:
    """Best-of-``repeat`` wall times of ``import torch`` and of a tiny Pop run, interleaved; their difference
    against :data:`TARGET_S`; and which heavy packages the Pop run imported."""
    best = {"import_torch": float("inf"), "pop_run": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        data, cache = write_tiny_dataset(Path(tmp) / "data"), Path(tmp) / "cache"
        wall_s(run_command(data, Path(tmp) / "warm", cache))  # the split cache and file cache, as later runs find them
        for attempt in range(repeat):
            best["import_torch"] = min(best["import_torch"], wall_s([sys.executable, "-c", "import torch"]))
            best["pop_run"] = min(best["pop_run"], wall_s(run_command(data, Path(tmp) / f"run{attempt}", cache)))
        imported = heavy_imports(imported_modules(run_command(data, Path(tmp) / "traced", cache)))
    startup = best["pop_run"] - best["import_torch"]
    return {"import_torch_s": best["import_torch"], "pop_run_s": best["pop_run"], "startup_s": startup,
            "ratio": best["pop_run"] / best["import_torch"], "target_s": TARGET_S, "repeat": repeat,
            "within_target": startup <= TARGET_S, "pop_imports": imported,
            "only_needed_imports": not any(imported[name] for name in NOT_FOR_POP)}


if __name__ == "__main__":
    import json

    print(json.dumps(bench_startup(), indent=2))
