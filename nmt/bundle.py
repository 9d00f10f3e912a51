"""Self-contained model bundles: what `nmt export` writes and what the server loads.

A bundle is a directory of plain data, never code: the weights as safetensors, the model's config
as JSON, the task's vocabulary (a sentencepiece model, or a character vocabulary in the JSON
list form ``CharVocabulary`` saves), the default decoding
options, and ``manifest.json`` naming every file with its sha256, the task and the package
versions. It is written to a temporary directory beside its destination and renamed into place,
so a bundle is either complete or absent. Loading checks every hash before it reads a byte of the
model, rebuilds the model from its config dataclass (``from_dict``) and needs neither Lightning
nor pickle. torch is imported only when a model is built, so checking a bundle stays light.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nmt.errors import UserError
from nmt.io import atomic_directory, sha256_file
from nmt.manifest import MANIFEST_NAME, new_manifest, write_manifest

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nmt.decoding import DecodingOptions
    from nmt.models.char_lm import CharVocabulary
    from nmt.wordpieces import Wordpieces

BUNDLE_FORMAT = "hypernmt-bundle"
BUNDLE_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
WORDPIECES = "wordpieces.model"
VOCABULARY = "vocabulary.json"
DECODING = "decoding.json"
QUANTIZATIONS = ("int8",)
PACKAGES = ("hypernmt", "torch", "safetensors", "sentencepiece", "numpy")
# what a bundle's decoding.json may hold: (type, largest magnitude)
DECODING_BOUNDS: dict[str, tuple[type, float]] = {
    "beam_size": (int, 256),
    "nbest": (int, 256),
    "alpha": (float, 100.0),
    "beta": (float, 100.0),
    "min_length": (int, 4096),
    "max_length": (int, 4096),
    "max_length_ratio": (float, 64.0),
    "max_length_offset": (int, 4096),
    "return_attention": (bool, 0),
}


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's model lives and which files its bundle carries besides the weights."""

    module: str
    config_class: str
    model_class: str
    files: tuple[str, ...]


TASKS: dict[str, TaskSpec] = {
    "translation": TaskSpec(
        "nmt.models.translation",
        "TranslationConfig",
        "TranslationModel",
        (CONFIG, WEIGHTS, WORDPIECES, DECODING),
    ),
    "classify": TaskSpec("nmt.models.convnet", "ConvNetConfig", "ConvNet", (CONFIG, WEIGHTS)),
    "char_lm": TaskSpec(
        "nmt.models.char_lm", "CharLMConfig", "CharLM", (CONFIG, WEIGHTS, VOCABULARY)
    ),
}


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode plus what its task needs to use it."""

    directory: Path
    manifest: dict[str, Any]
    model: nn.Module
    config: Any
    wordpieces: Wordpieces | None = None
    vocabulary: CharVocabulary | None = None
    decoding: DecodingOptions | None = None

    @property
    def task(self) -> str:
        return self.manifest["task"]


# ----------------------------------------------------------------------------- writing


def write_bundle(
    out_dir: str | os.PathLike,
    *,
    task: str,
    model: nn.Module,
    wordpieces: bytes | None = None,
    vocabulary: list[str] | None = None,
    decoding: DecodingOptions | None = None,
    quantize: str | None = None,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (which has a ``config`` dataclass) as a bundle at ``out_dir``.

    ``quantize="int8"`` stores the linear layers as int8 with their scales (dynamic quantisation);
    the loader rebuilds the same quantised modules. ``source`` is recorded in the manifest.
    """
    spec = _task_spec(task)
    _check_quantize(quantize)
    out = Path(out_dir)
    if out.exists():
        raise UserError(f"{out}: already exists; choose a new bundle directory or remove it")
    with atomic_directory(out) as tmp:
        (tmp / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
        _save_weights(model, tmp / WEIGHTS, quantize)
        if WORDPIECES in spec.files:
            if wordpieces is None:
                raise UserError(f"task {task!r} needs the sentencepiece model to export")
            (tmp / WORDPIECES).write_bytes(wordpieces)
        if VOCABULARY in spec.files:
            if vocabulary is None:
                raise UserError(f"task {task!r} needs the character vocabulary to export")
            (tmp / VOCABULARY).write_text(json.dumps(list(vocabulary), ensure_ascii=False) + "\n")
        if DECODING in spec.files:
            if decoding is None:
                from nmt.decoding import DecodingOptions

                decoding = DecodingOptions()
            (tmp / DECODING).write_text(json.dumps(decoding.to_dict(), indent=2) + "\n")
        manifest = new_manifest(
            task,
            PACKAGES,
            format=BUNDLE_FORMAT,
            version=BUNDLE_VERSION,
            quantize=quantize,
            parameters=sum(p.numel() for p in model.parameters()),
            source=source or {},
            files={name: _file_entry(tmp / name) for name in sorted(spec.files)},
        )
        write_manifest(tmp, manifest)
    return out


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    quantize: str | None = None,
    decoding: DecodingOptions | None = None,
) -> Path:
    """Export a training checkpoint of any task as a bundle (plain torch; no Lightning).

    Every task's checkpoint carries ``checkpoint["hypernmt"]`` with the task, the model config,
    and the wordpieces (translation) or the character vocabulary (char_lm).
    """
    from nmt.checkpoints import CHECKPOINT_KEY, model_state_dict, read_checkpoint

    path = Path(checkpoint)
    data = read_checkpoint(path)
    metadata = data[CHECKPOINT_KEY]
    task = metadata.get("task")
    model, _ = build_model(task, metadata.get("model_config"), where=f"{path}: {CHECKPOINT_KEY}")
    try:
        model.load_state_dict(model_state_dict(data))
    except RuntimeError as error:
        raise UserError(f"{path}: weights do not fit the model config ({error})") from None
    return write_bundle(
        out_dir,
        task=task,
        model=model.eval(),
        wordpieces=metadata.get("wordpieces"),
        vocabulary=metadata.get("vocabulary"),
        decoding=decoding,
        quantize=quantize,
        source={"checkpoint": path.name, "sha256": sha256_file(path)},
    )


def build_model(task: Any, config_data: Any, where: str) -> tuple[nn.Module, Any]:
    """A freshly initialised model of ``task`` and its config, from the config's dict form."""
    spec = _task_spec(task, where=f"{where}: field 'task'")
    module = importlib.import_module(spec.module)
    config_class = getattr(module, spec.config_class)
    model_class = getattr(module, spec.model_class)
    if not isinstance(config_data, dict):
        raise UserError(f"{where}: the model config must be a JSON object")
    try:
        config = config_class.from_dict(config_data)
    except (TypeError, ValueError, KeyError) as error:
        raise UserError(f"{where}: not a valid {spec.config_class} ({error})") from None
    return model_class(config), config


# ----------------------------------------------------------------------------- reading


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The bundle's manifest, after checking that every file is present and unchanged.

    Light on purpose (json and nmt.io only): the server checks its bundles with it before it
    starts any worker.
    """
    root = Path(directory)
    if not root.is_dir():
        raise UserError(f"{root}: not a bundle directory (it does not exist)")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: missing; {root} is not a complete bundle")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{manifest_path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise UserError(f"{manifest_path}: not a HyperNMT bundle manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise UserError(
            f"{manifest_path}: bundle version {manifest.get('version')!r}; "
            f"this HyperNMT reads version {BUNDLE_VERSION}"
        )
    task = manifest.get("task")
    spec = _task_spec(task, where=f"{manifest_path}: field 'task'")
    _check_quantize(manifest.get("quantize"), where=f"{manifest_path}: field 'quantize'")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise UserError(f"{manifest_path}: field 'files' must map file names to their sha256")
    for name in spec.files:
        if name not in files:
            raise UserError(f"{manifest_path}: field 'files' lacks {name!r}, needed by {task!r}")
    unlisted = sorted({entry.name for entry in root.iterdir()} - {MANIFEST_NAME, *files})
    if unlisted:
        raise UserError(
            f"{root / unlisted[0]}: not listed in the manifest; refusing a modified bundle"
        )
    for name, entry in files.items():
        path = root / name
        if name not in spec.files or not isinstance(entry, dict):
            raise UserError(f"{manifest_path}: unexpected entry {name!r} in field 'files'")
        if not path.is_file():
            raise UserError(f"{path}: missing; the bundle is incomplete")
        if sha256_file(path) != entry.get("sha256"):
            raise UserError(
                f"{path}: sha256 does not match the manifest; the bundle was modified or damaged"
            )
    return manifest


def load_bundle(directory: str | os.PathLike, quantize: str | None = None) -> Bundle:
    """Check and load a bundle; ``quantize="int8"`` quantises a float bundle's linear layers."""
    root = Path(directory)
    manifest = read_manifest(root)
    _check_quantize(quantize)
    spec = TASKS[manifest["task"]]
    model, config = build_model(
        manifest["task"], _read_json(root / CONFIG), where=str(root / CONFIG)
    )
    model = _load_weights(model, root / WEIGHTS, stored=manifest["quantize"]).eval()
    if quantize is not None and manifest["quantize"] is None:
        model = quantize_int8(model)
    bundle = Bundle(directory=root, manifest=manifest, model=model, config=config)
    if WORDPIECES in spec.files:
        from nmt.wordpieces import Wordpieces

        bundle.wordpieces = Wordpieces.load(root / WORDPIECES)
    if VOCABULARY in spec.files:
        from nmt.models.char_lm import CharVocabulary

        bundle.vocabulary = CharVocabulary.load(root / VOCABULARY)
    if DECODING in spec.files:
        from nmt.decoding import DecodingOptions

        options = read_decoding(root / DECODING)
        try:
            bundle.decoding = DecodingOptions(**options)
        except (TypeError, UserError) as error:
            raise UserError(f"{root / DECODING}: not valid decoding options ({error})") from None
    return bundle


# ----------------------------------------------------------------------------- weights
#
# int8 bundles keep every nn.Linear as its dynamically quantised weight (int8 values, one scale
# and zero point) plus its float bias; every other tensor stays float. Loading rebuilds the float
# model, loads the float tensors, quantises it the same way and sets the stored int8 weights.


def _save_weights(model: nn.Module, path: Path, quantize: str | None) -> None:
    import copy

    from safetensors.torch import save_file, save_model

    if quantize is None:
        # save_model drops the duplicate names of tied weights; load_model restores them.
        save_model(model, str(path), metadata={"format": "pt"})
        return
    linears = _linear_names(model)
    quantized = quantize_int8(copy.deepcopy(model))
    tensors = {
        key: value for key, value in model.state_dict().items() if not _belongs_to(key, linears)
    }
    for name in linears:
        weight, bias = quantized.get_submodule(name)._weight_bias()
        tensors.update(_int8_entries(name, weight, bias))
    # clone: safetensors refuses tensors that share memory (tied weights)
    tensors = {key: value.detach().clone().contiguous() for key, value in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "quantize": quantize})


def _load_weights(model: nn.Module, path: Path, stored: str | None) -> nn.Module:
    """Load ``path`` into ``model``; an int8 bundle returns the quantised model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, load_model

    try:
        if stored is None:
            missing, unexpected = load_model(model, str(path), strict=False)
            _check_keys(path, missing, unexpected)
            return model
        tensors = load_file(str(path))
    except SafetensorError as error:
        raise UserError(f"{path}: not a readable safetensors file ({error})") from None
    linears = _linear_names(model)
    float_tensors = {k: v for k, v in tensors.items() if not _belongs_to(k, linears)}
    missing, unexpected = model.load_state_dict(float_tensors, strict=False)
    _check_keys(path, [k for k in missing if not _belongs_to(k, linears)], unexpected)
    quantized = quantize_int8(model)
    for name in linears:
        weight, bias = _int8_weight(name, tensors, path)
        quantized.get_submodule(name).set_weight_bias(weight, bias)
    return quantized


def _int8_entries(name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> dict:
    import torch

    entries = {
        f"{name}.weight_int8": weight.int_repr(),
        f"{name}.weight_scale": torch.tensor([weight.q_scale()], dtype=torch.float64),
        f"{name}.weight_zero_point": torch.tensor([weight.q_zero_point()]),
    }
    if bias is not None:
        entries[f"{name}.bias"] = bias
    return entries


def _int8_weight(name: str, tensors: dict, path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    import torch

    try:
        weight = torch._make_per_tensor_quantized_tensor(
            tensors[f"{name}.weight_int8"],
            tensors[f"{name}.weight_scale"].item(),
            int(tensors[f"{name}.weight_zero_point"].item()),
        )
    except KeyError as error:
        raise UserError(f"{path}: the int8 weights lack {error.args[0]!r}") from None
    return weight, tensors.get(f"{name}.bias")


def _check_keys(path: Path, missing, unexpected) -> None:
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit the model in {CONFIG} "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )


def _linear_names(model: nn.Module) -> list[str]:
    """The modules dynamic quantisation replaces: exactly ``nn.Linear`` (not subclasses)."""
    from torch import nn

    return [name for name, module in model.named_modules() if type(module) is nn.Linear]


def quantize_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations float), and
    int8 per-step products in every HyperLSTM cell (its recurrent and input weights, packed
    from the float parameters when first used, so they are not stored in the bundle)."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    from nmt.modules.hyperlstm import HyperLSTMCell

    for module in model.modules():
        if isinstance(module, HyperLSTMCell):
            module.quantize_int8_()
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (not a dependency); the
        # dynamic int8 kernels it uses are still the ones torch ships.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _belongs_to(key: str, modules: list[str]) -> bool:
    return any(key.startswith(f"{name}.") for name in modules)


# ----------------------------------------------------------------------------- helpers


def read_decoding(path: Path) -> dict[str, Any]:
    """A bundle's default decoding options, their types and upper bounds checked
    (``DecodingOptions`` checks the lower bounds and their relations; a server clamps them
    further). Light like ``read_manifest``: the server checks it before starting workers."""
    options = _read_json(path)
    for name, (kind, high) in DECODING_BOUNDS.items():
        if name not in options:
            continue
        value = options[name]
        if kind is bool:
            ok = isinstance(value, bool)
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = number and (kind is float or isinstance(value, int))
            ok = ok and math.isfinite(value) and abs(value) <= high
        if not ok:
            expected = "true or false" if kind is bool else f"{kind.__name__} of at most {high}"
            raise UserError(f"{path}: field {name!r} is {value!r}; expected {expected}")
    return options


def _task_spec(task: Any, where: str = "task") -> TaskSpec:
    if task not in TASKS:
        raise UserError(f"{where}: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return TASKS[task]


def _check_quantize(quantize: Any, where: str = "quantize") -> None:
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UserError(
            f"{where}: unknown quantisation {quantize!r}; expected one of {QUANTIZATIONS}"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}
