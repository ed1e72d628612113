"""What `hvdat eval` evaluates: one registry of target kinds, each detected from TARGET, read from local files only,
and turned into a model that takes [0,1] images of the dataset and returns logits, in eval mode.

Kinds: an hvdat checkpoint or run folder; a TorchScript file; a `torch.export` file (.pt2); a Python factory
`package.module:function` (or a class) with keyword arguments and an optional state-dict file; a torchvision model
name with a local weights file; a RobustBench checkpoint laid out as RobustBench stores it
(`MODEL_DIR/DATASET/THREAT/NAME.pt`), built from the `robustbench` package's own model definitions and loader.

Rank 0 reads a target's files and broadcasts their bytes, so the workers need no shared filesystem; every rank
then builds the model from those bytes (`load_target`). Anything that does not load is one UsageError line.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import UsageError
from ..registry import Registry

Files = Dict[str, bytes]  # a target's local files, by path as given


@dataclass(frozen=True)
class TargetSpec:
    """Everything that says which model to build: TARGET, its kind, and the options that complete it."""

    target: str
    kind: str
    weights: Optional[str] = None
    model_args: Dict[str, Any] = field(default_factory=dict)
    num_classes: Optional[int] = None
    cwd: str = ""  # a factory's module is imported as `python -m` would, from the directory hvdat ran in


@dataclass
class Loaded:
    model: nn.Module
    arch: str  # a name for the report
    num_classes: Optional[int] = None  # None: read from the model's output
    shape: Optional[Tuple[int, ...]] = None  # what an hvdat checkpoint was trained on
    dataset: Optional[str] = None  # an hvdat checkpoint's own dataset
    data_dir: Optional[str] = None
    step: int = 0
    own_config: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TargetKind:
    name: str
    doc: str
    detect: Callable[[str], bool]  # does TARGET look like this kind (for --target-kind auto)
    files: Callable[[TargetSpec], List[str]]  # the local files it reads
    build: Callable[[TargetSpec, Files], Loaded]


TARGET_KINDS: Registry[TargetKind] = Registry("target kind")


def _open(files: Files, path: str) -> io.BytesIO:
    return io.BytesIO(files[path])


def _torch_load(files: Files, path: str) -> Any:
    try:
        return torch.load(_open(files, path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(
            f"{path} does not load with torch.load(weights_only=True) ({type(exc).__name__}: {_first_line(exc)})",
            "pass a state dict (tensors only) saved with torch.save",
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _is_file(target: str) -> bool:
    return Path(target).is_file()


def _zip_names(path: str) -> List[str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


# --- hvdat's own checkpoints ------------------------------------------------------------------------------------
def hvdat_checkpoint_path(target: str) -> Path:
    """A run directory (best.pt, else last.pt) or a checkpoint file."""
    from ..runtime import checkpoint

    path = Path(target)
    if path.is_dir():
        for name in (checkpoint.BEST, checkpoint.LAST):
            if (path / name).is_file():
                return path / name
        raise UsageError(
            f"{path} holds no {checkpoint.BEST} or {checkpoint.LAST}",
            "point at a run directory made by `hvdat train`, or at a checkpoint file",
        )
    if not path.exists():
        raise UsageError(f"no run directory or checkpoint at {path}", "check the path")
    return path


def _detect_hvdat(target: str) -> bool:
    path = Path(target)
    if path.is_dir():
        return True
    names = _zip_names(target) if path.is_file() else []
    return any(n.endswith("/data.pkl") for n in names) and not _detect_torchscript(target)


def _build_hvdat(spec: TargetSpec, files: Files) -> Loaded:
    from ..models import build_model

    path = str(hvdat_checkpoint_path(spec.target))
    state = _torch_load(files, path)
    if not isinstance(state, dict) or "model" not in state or "arch" not in state:
        raise UsageError(
            f"{path} is not an hvdat checkpoint",
            "expected a file written by `hvdat train`; for a state dict, name its model: "
            "`hvdat eval package.module:factory --weights FILE` or `hvdat eval resnet18 --weights FILE`",
        )
    shape = tuple(state["shape"])
    model = build_model(state["arch"], state["num_classes"], shape, [0.0] * shape[0], [1.0] * shape[0])
    model.load_state_dict(state["model"])  # mean/std buffers come from the checkpoint
    trained = state.get("config") or {}
    return Loaded(
        model,
        state["arch"],
        state["num_classes"],
        shape,
        state.get("dataset") or trained.get("dataset"),
        trained.get("data_dir"),
        int(state.get("step", 0)),
        trained,
    )


# --- TorchScript and torch.export ---------------------------------------------------------------------------------
def _detect_torchscript(target: str) -> bool:
    return _is_file(target) and any(n.endswith("/constants.pkl") or "/code/" in n for n in _zip_names(target))


def _build_torchscript(spec: TargetSpec, files: Files) -> Loaded:
    try:
        with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; the user chose the format
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(_open(files, spec.target), map_location="cpu")
    except Exception as exc:
        raise UsageError(f"{spec.target} is not a loadable TorchScript file ({_first_line(exc)})") from None
    return Loaded(model, f"torchscript:{Path(spec.target).name}", spec.num_classes)


def _detect_export(target: str) -> bool:
    return _is_file(target) and (
        target.endswith(".pt2") or any(n.endswith("serialized_exported_program.json") for n in _zip_names(target))
    )


def _build_export(spec: TargetSpec, files: Files) -> Loaded:
    try:
        model = torch.export.load(_open(files, spec.target)).module()
    except Exception as exc:
        raise UsageError(
            f"{spec.target} is not a loadable torch.export file ({_first_line(exc)})",
            "save it with torch.export.save(torch.export.export(model.eval(), ...), PATH)",
        ) from None
    return Loaded(model, f"export:{Path(spec.target).name}", spec.num_classes)


# --- Python factories and torchvision names ----------------------------------------------------------------------
def _detect_factory(target: str) -> bool:
    module, _, attr = target.partition(":")
    return bool(module and attr) and not Path(target).exists() and all(p.isidentifier() for p in module.split("."))


def _weights_files(spec: TargetSpec) -> List[str]:
    return [spec.weights] if spec.weights else []


def load_state_dict(model: nn.Module, files: Files, path: str) -> None:
    """A plain state dict, or one under 'state_dict'/'model' (DataParallel's 'module.' prefix dropped)."""
    state = _torch_load(files, path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} holds no state dict", "save one with torch.save(model.state_dict(), PATH)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    problems = [f"missing {k}" for k in result.missing_keys] + [f"unexpected {k}" for k in result.unexpected_keys]
    if problems:
        shown = ", ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise UsageError(f"{path} does not fit the model: {shown}", "check the factory and its --model-args")


def _build_factory(spec: TargetSpec, files: Files) -> Loaded:
    module_name, _, attr = spec.target.partition(":")
    if spec.cwd and spec.cwd not in sys.path:
        sys.path.insert(0, spec.cwd)
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"cannot import {module_name!r} for {spec.target} ({type(exc).__name__}: {_first_line(exc)})",
            "run hvdat from the directory that holds the package, or put it on PYTHONPATH",
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{module_name!r} has no {attr!r}", f"name a function or class in {module_name}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{spec.target} is not callable", "name a function or class that returns an nn.Module")
    try:
        model = obj(**spec.model_args)
    except Exception as exc:
        raise UsageError(
            f"{spec.target}(**{spec.model_args}) failed ({type(exc).__name__}: {_first_line(exc)})",
            "check --model-args",
        ) from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"{spec.target} returned a {type(model).__name__}, not a torch.nn.Module")
    if spec.weights:
        load_state_dict(model, files, spec.weights)
    return Loaded(model, spec.target, spec.num_classes)


def _torchvision_names() -> List[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _detect_torchvision(target: str) -> bool:
    return not Path(target).exists() and ":" not in target and target in _torchvision_names()


def _build_torchvision(spec: TargetSpec, files: Files) -> Loaded:
    import torchvision

    if spec.target not in _torchvision_names():
        raise UsageError(f"unknown torchvision model {spec.target!r}", "see torchvision.models.list_models()")
    if not spec.weights:
        raise UsageError(
            f"torchvision model {spec.target!r} needs --weights FILE",
            "hvdat loads only local files: download the weights yourself and pass their path",
        )
    args = dict(spec.model_args)
    if spec.num_classes is not None:
        args.setdefault("num_classes", spec.num_classes)
    try:
        model = torchvision.models.get_model(spec.target, weights=None, **args)
    except Exception as exc:
        raise UsageError(f"torchvision could not build {spec.target!r} ({_first_line(exc)})") from None
    load_state_dict(model, files, spec.weights)
    return Loaded(model, spec.target, spec.num_classes)


# --- RobustBench -----------------------------------------------------------------------------------------------------
RB_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}  # RobustBench's -> hvdat's


def _robustbench_parts(target: str) -> Tuple[str, str, str, str]:
    """MODEL_DIR/DATASET/THREAT/NAME.pt -> (model_dir, dataset, threat, name)."""
    path = Path(target)
    return str(path.parent.parent.parent), path.parent.parent.name, path.parent.name, path.stem


def _detect_robustbench(target: str) -> bool:
    path = Path(target)
    return (
        path.suffix == ".pt"
        and path.parent.name in ("Linf", "L2", "corruptions")
        and path.parent.parent.name in RB_DATASETS
    )


def robustbench_import_shims() -> None:
    """robustbench 1.1.1 (the last on PyPI) imports two modules its own requirements no longer provide: pkg_resources
    (gone from setuptools >= 81; it uses resource_filename, for its corruption-data loaders) and `autoattack` (its
    requirement `pyautoattack` installs the same code as `pyautoattack`). Supply them before importing it; hvdat uses
    only its model definitions and loader."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import importlib.resources
        import types

        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = lambda package, path: str(importlib.resources.files(package).joinpath(path))
        sys.modules["pkg_resources"] = shim
    try:
        import autoattack  # noqa: F401
    except ImportError:
        import pyautoattack
        import pyautoattack.state

        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state


def _robustbench_entry(spec: TargetSpec) -> Tuple[Any, Any, Any, str]:
    robustbench_import_shims()
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as exc:
        raise UsageError(f"the robustbench package is not installed ({exc})", "rerun bin/install") from None
    _, dataset, threat, name = _robustbench_parts(spec.target)
    if not _detect_robustbench(spec.target):
        raise UsageError(
            f"{spec.target} is not laid out as RobustBench stores models",
            "use MODEL_DIR/DATASET/THREAT/NAME.pt, e.g. models/cifar10/Linf/Wong2020Fast.pt",
        )
    entries = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    if name not in entries:
        raise UsageError(f"RobustBench has no {dataset}/{threat} model {name!r}", "check the file's name")
    return BenchmarkDataset(dataset), ThreatModel(threat), entries[name], name


def _robustbench_files(spec: TargetSpec) -> List[str]:
    _, _, entry, _ = _robustbench_entry(spec)
    ids = entry.get("gdrive_id")
    if isinstance(ids, list):  # an ensemble: NAME.pt_m0.pt, NAME.pt_m1.pt, ...
        return [f"{spec.target}_m{i}.pt" for i in range(len(ids))]
    return [spec.target]


def _build_robustbench(spec: TargetSpec, files: Files) -> Loaded:
    import timm
    from robustbench.utils import load_model

    dataset, threat, entry, name = _robustbench_entry(spec)
    timm_name = f"{name.lower().replace('-', '_')}_{dataset.value.lower()}_{threat.value.lower()}"
    if timm.is_model(timm_name) or entry.get("gdrive_id") is None:
        raise UsageError(
            f"RobustBench loads {name!r} through timm's hub, not from a local file",
            "export it with torch.jit.save or torch.export and evaluate that file",
        )
    with tempfile.TemporaryDirectory(prefix="hvdat-rb-") as tmp:  # RobustBench's own layout, our local bytes
        folder = Path(tmp) / dataset.value / threat.value
        folder.mkdir(parents=True)
        for path, blob in files.items():
            (folder / Path(path).name).write_bytes(blob)
        try:
            model = load_model(name, model_dir=tmp, dataset=dataset, threat_model=threat)
        except Exception as exc:
            raise UsageError(
                f"RobustBench could not load {spec.target} ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
    return Loaded(model, f"robustbench:{name}", spec.num_classes, dataset=RB_DATASETS[dataset.value])


for _kind in (
    TargetKind(
        "hvdat",
        "a run folder (best.pt, else last.pt) or a checkpoint of `hvdat train`",
        _detect_hvdat,
        lambda s: [str(hvdat_checkpoint_path(s.target))],
        _build_hvdat,
    ),
    TargetKind(
        "torchscript",
        "a TorchScript file (torch.jit.save)",
        _detect_torchscript,
        lambda s: [s.target],
        _build_torchscript,
    ),
    TargetKind(
        "export", "a torch.export file (torch.export.save, .pt2)", _detect_export, lambda s: [s.target], _build_export
    ),
    TargetKind(
        "factory",
        "package.module:function (or a class) called with --model-args, then --weights loaded into it",
        _detect_factory,
        _weights_files,
        _build_factory,
    ),
    TargetKind(
        "torchvision",
        "a torchvision model name with --weights FILE",
        _detect_torchvision,
        _weights_files,
        _build_torchvision,
    ),
    TargetKind(
        "robustbench",
        "a RobustBench checkpoint, MODEL_DIR/DATASET/THREAT/NAME.pt, built by the robustbench package",
        _detect_robustbench,
        _robustbench_files,
        _build_robustbench,
    ),
):
    TARGET_KINDS.add(_kind.name, _kind)

# auto-detection order: the most specific first (a RobustBench .pt is also a torch.save zip)
DETECTION_ORDER = ("torchscript", "export", "robustbench", "hvdat", "factory", "torchvision")


def detect_kind(target: str) -> str:
    for name in DETECTION_ORDER:
        if TARGET_KINDS.get(name).detect(target):
            return name
    if not Path(target).exists() and ":" not in target:
        raise UsageError(
            f"no run directory or checkpoint at {target}, nor a torchvision model of that name",
            "check the path, or name a factory as package.module:function",
        )
    raise UsageError(
        f"cannot tell what kind of model {target} is",
        f"pass --target-kind ({', '.join(TARGET_KINDS.names())})",
    )


def read_files(spec: TargetSpec) -> Files:
    """The target's local files as bytes (rank 0 reads them; the others get them by broadcast)."""
    paths = TARGET_KINDS.get(spec.kind).files(spec)
    files = {}
    for path in paths:
        if not Path(path).is_file():
            raise UsageError(f"no file at {path}", f"the {spec.kind} target {spec.target} needs it")
        files[path] = Path(path).read_bytes()
    return files


def load_target(spec: TargetSpec, files: Files) -> Loaded:
    """Build the model from the files' bytes. Not yet wrapped (normalisation, input size) nor in eval mode."""
    return TARGET_KINDS.get(spec.kind).build(spec, files)


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode, on the device, no parameter gradients (attacks need input gradients only)."""
    model = model.to(device)
    with contextlib.suppress(NotImplementedError):  # a torch.export module keeps the mode it was exported in
        model.eval()
    for parameter in model.parameters():  # not requires_grad_(): a ScriptModule lacks it
        parameter.requires_grad_(False)
    return model


def spec_of(cfg: Any) -> TargetSpec:
    """The TargetSpec of a resolved EvalConfig."""
    return TargetSpec(
        cfg.checkpoint, cfg.target_kind, cfg.weights, dict(cfg.model_args or {}), cfg.num_classes, cfg.cwd
    )


def build_eval_model(cfg: Any, files: Files, device: torch.device) -> Tuple[nn.Module, Loaded]:
    """The model as the attacks see it: built from the files, wrapped with --mean/--std, in eval mode."""
    from ..models import Normalized, _RepeatChannels

    loaded = load_target(spec_of(cfg), files)
    model = loaded.model
    if cfg.mean is not None:
        model = Normalized(model, cfg.mean, cfg.std)
    if cfg.input_size is not None and len(cfg.input_size) == 3 and cfg.input_size[0] == 3:
        model = nn.Sequential(_RepeatChannels(3), model)  # grey images for a colour model (a no-op on colour)
    return prepare_model(model, device), loaded


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Forward FLOPs of one example: 2 per multiply-add of its convolutions and linear layers, counted with forward
    hooks (cheap: torch's FlopCounterMode imports TorchDynamo, seconds of a short evaluation's start-up); a model
    without such modules (TorchScript, torch.export) goes to FlopCounterMode, then to 2 per parameter."""
    flops = _hooked_flops(model, x[:1])
    if flops:
        return flops
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            model(x[:1])
        flops = int(counter.get_total_flops())
    except Exception:
        flops = 0
    return flops or 2 * sum(p.numel() for p in model.parameters())


def _hooked_flops(model: nn.Module, x: torch.Tensor) -> int:
    total = [0]

    def count(module: nn.Module, inputs, output) -> None:
        if isinstance(module, nn.Linear):
            total[0] += 2 * module.in_features * output.numel()
        else:  # a convolution: each output element takes in_channels / groups * kernel multiply-adds
            per_output = module.in_channels // module.groups * int(torch.tensor(module.kernel_size).prod())
            total[0] += 2 * per_output * output.numel()

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        return 0
    finally:
        for hook in hooks:
            hook.remove()
    return total[0] // max(x.shape[0], 1)
