"""The one place where nodes/ and runner/ talk to ComfyUI.

Inside ComfyUI (its ``folder_paths`` and ``comfy.model_management`` are already imported when a
custom-node pack loads) every call goes to ComfyUI. Outside it (the headless runner, tests) the
same calls fall back to plain torch, tqdm and a ComfyUI-style models folder set with
:func:`configure_headless`. Nothing here imports ComfyUI at module level: importing ``comfy``
outside a running server probes CUDA and parses the command line.
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator, Optional, Union

import torch

from ..distributed.fsdp import local_bytes
from ..nano.files import MODELS_DIR as NANO_MODELS_DIR
from . import comfy_models
from .comfy_models import Kind as ModelKind
from .headless_progress import HeadlessProgress

MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pt2", ".pth", ".bin", ".ckpt", ".pkl", ".gguf")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Our folder keys and the sub-folders of a ComfyUI ``models/`` folder that hold them
# (ComfyUI's own defaults: ``unet`` and ``clip`` are the older names).
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "diffusion_models": ("diffusion_models", "unet"),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "clip_vision": ("clip_vision",),
    "loras": ("loras",),
}


class Interrupted(Exception):
    """The user stopped the run (headless stand-in for ComfyUI's InterruptProcessingException)."""


class UnsafeFileName(ValueError):
    """A file name that would leave its folder (``../``, absolute path)."""


class MissingFile(FileNotFoundError):
    """A model or input file named by a workflow does not exist."""


class BadSetting(ValueError):
    """A headless setting (device, output folder) that cannot be used."""


# --------------------------------------------------------------------------- detection

def _comfy_module(name: str) -> Optional[ModuleType]:
    """A ComfyUI module only if ComfyUI itself already imported it (we never trigger it)."""
    return sys.modules.get(name)


def in_comfyui() -> bool:
    """True when running inside a ComfyUI process (not the headless runner)."""
    if _headless.forced:
        return False
    return _comfy_module("folder_paths") is not None and _comfy_module("comfy.model_management") is not None


@dataclass
class _Headless:
    """Settings used outside ComfyUI; the runner fills them from its command line."""

    models_dir: Optional[Path] = None
    input_dir: Path = field(default_factory=lambda: Path.cwd() / "input")
    output_dir: Path = field(default_factory=lambda: Path.cwd() / "output")
    device: Optional[torch.device] = None
    max_vram: Optional[int] = None  # --max-vram: bytes of device memory a DiT's weights may use (block swap)
    forced: bool = False
    interrupt_requested: bool = False
    # While a headless run stages its outputs, files are written here and moved on success.
    staging_dir: Optional[Path] = None
    staged: list[tuple[Path, Path]] = field(default_factory=list)
    created_output_dirs: list[Path] = field(default_factory=list)  # made for this run; removed if left empty


_headless = _Headless()


def configure_headless(models_dir: Optional[os.PathLike | str] = None,
                       input_dir: Optional[os.PathLike | str] = None,
                       output_dir: Optional[os.PathLike | str] = None,
                       device: Optional[str] = None, force: bool = True,
                       max_vram: Optional[int] = None) -> None:
    """Point the fallbacks at a ComfyUI-style models folder and input/output folders.

    ``force`` makes the adapter ignore a ComfyUI that happens to be imported in this process,
    so the runner always uses the folders it was given.
    """
    if models_dir is not None:
        path = Path(models_dir).expanduser().resolve()
        if not path.is_dir():
            raise MissingFile(f"--models: folder {path} does not exist")
        _headless.models_dir = path
    if input_dir is not None:
        _headless.input_dir = Path(input_dir).expanduser().resolve()
    if output_dir is not None:
        out = Path(output_dir).expanduser().resolve()
        if out.exists() and not out.is_dir():
            raise BadSetting(f"--output: {out} is a file; expected a folder (it is created when missing)")
        _headless.output_dir = out
    _headless.device = _device(device) if device else None
    if max_vram is not None and max_vram <= 0:
        raise BadSetting(f"--max-vram: {max_vram} bytes; expected a positive size such as 12GB")
    _headless.max_vram = max_vram
    _headless.forced = force
    _headless.interrupt_requested = False


# --------------------------------------------------------------------------- devices and memory

def _device(name: str) -> torch.device:
    """``name`` as a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadSetting(f"--device: {name[:80]!r} is not a device; expected cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}
    if not available.get(device.type, False):
        raise BadSetting(f"--device: {name!r} is not available on this machine"
                         f" (available: {', '.join(k for k, v in available.items() if v)})")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BadSetting(f"--device: {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def max_vram() -> Optional[int]:
    """The headless ``--max-vram`` budget in bytes, or None when not set (block swap decides
    from free memory then; see ``nodes/headless_placement.py``)."""
    return _headless.max_vram


def compute_device() -> torch.device:
    """Where models run."""
    if in_comfyui():
        return _comfy_module("comfy.model_management").get_torch_device()
    if _headless.device is not None:
        return _headless.device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def offload_device() -> torch.device:
    """Where idle models wait (system RAM)."""
    if in_comfyui():
        return _comfy_module("comfy.model_management").unet_offload_device()
    return torch.device("cpu")


def text_encoder_device(on_cpu: bool = False) -> torch.device:
    """Where the text encoder runs; ``on_cpu`` keeps it off the GPU."""
    if on_cpu:
        return torch.device("cpu")
    if in_comfyui():
        return _comfy_module("comfy.model_management").text_encoder_device()
    return compute_device()


def inference_dtype(device: Optional[torch.device] = None) -> torch.dtype:
    """Dtype the DiT computes in: bf16 on GPUs that support it, else fp16; float32 on the CPU."""
    device = device or compute_device()
    if device.type == "cpu":
        return torch.float32
    if in_comfyui():
        mm = _comfy_module("comfy.model_management")
        return torch.bfloat16 if mm.should_use_bf16(device) else torch.float16
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what moving it to a device costs); of a model
    sharded across ranks, this rank's shards."""
    return local_bytes(module)


def make_room(bytes_needed: int, device: Optional[torch.device] = None) -> None:
    """Free memory on ``device`` (inside ComfyUI: unload its other models) when it is short."""
    device = device or compute_device()
    if device.type != "cpu" and free_memory_bytes(device) < bytes_needed:
        free_memory(bytes_needed, device)


@contextmanager
def model_on_compute_device(module: torch.nn.Module, kind: ModelKind = "diffusion",
                            whole: bool = False) -> Iterator[torch.device]:
    """Run a block with ``module`` on the compute device and yield that device.

    Inside ComfyUI the module is loaded through ComfyUI's model management (registered there on
    first use, see :mod:`.comfy_models`) and stays loaded until ComfyUI needs the room. Outside
    it the module is moved there (freeing memory first when it does not fit) and back to the
    offload device afterwards; a no-op when both devices are the CPU. ``whole`` asks for every
    weight on the device (training: no layer may be left in RAM).
    """
    if in_comfyui():
        yield comfy_models.load(module, kind, whole=whole)
        return
    device, offload = compute_device(), offload_device()
    if device == offload:
        yield device
        return
    make_room(module_bytes(module), device)
    module.to(device)
    try:
        yield device
    finally:
        module.to(offload)
        free_memory(0, device)


def free_memory(bytes_needed: int = 0, device: Optional[torch.device] = None) -> None:
    """Ask ComfyUI to unload other models, or just empty the CUDA cache outside it."""
    device = device or compute_device()
    if in_comfyui():
        mm = _comfy_module("comfy.model_management")
        if bytes_needed > 0:
            mm.free_memory(bytes_needed, device)
        mm.soft_empty_cache()
        return
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_memory_bytes(device: Optional[torch.device] = None) -> int:
    """Free memory on ``device`` in bytes (system RAM for the CPU)."""
    device = device or compute_device()
    if in_comfyui():
        return int(_comfy_module("comfy.model_management").get_free_memory(device))
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages)
    except (ValueError, OSError, AttributeError):
        return 0


# --------------------------------------------------------------------------- interruption and progress

def request_interrupt() -> None:
    """Headless: make the next :func:`check_interrupted` raise (e.g. from a signal handler)."""
    _headless.interrupt_requested = True


def check_interrupted() -> None:
    """Call inside long loops; raises when the user pressed Cancel / Ctrl-C."""
    if in_comfyui():
        _comfy_module("comfy.model_management").throw_exception_if_processing_interrupted()
        return
    if _headless.interrupt_requested:
        _headless.interrupt_requested = False
        raise Interrupted("interrupted by the user")


_progress_enabled = True


def set_headless_progress(enabled: bool) -> None:
    """The runner's ``--quiet`` turns the tqdm bars off."""
    global _progress_enabled
    _progress_enabled = enabled


class Progress:
    """A progress bar: ComfyUI's UI bar inside ComfyUI; outside, a tqdm bar on a terminal and
    plain lines otherwise (:mod:`.headless_progress`)."""

    def __init__(self, total: int, desc: str = ""):
        self.total = int(total)
        self.value = 0
        self._comfy_bar = None
        self._headless = None
        if in_comfyui() and _comfy_module("comfy.utils") is not None:
            self._comfy_bar = _comfy_module("comfy.utils").ProgressBar(self.total)
        else:
            self._headless = HeadlessProgress(self.total, desc, enabled=_progress_enabled)

    def update(self, n: int = 1, preview: Any = None) -> None:
        """Advance by ``n``; ``preview`` is a ComfyUI latent preview tuple when available."""
        self.value = min(self.total, self.value + n)
        if self._comfy_bar is not None:
            self._comfy_bar.update_absolute(self.value, self.total, preview)
        elif self._headless is not None:
            self._headless.update(n)

    def describe(self, note: str) -> None:
        """Say what runs now (ComfyUI shows the running node itself)."""
        if self._headless is not None:
            self._headless.describe(note)

    def close(self) -> None:
        if self._headless is not None:
            self._headless.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def latent_previewer(channels: int) -> Optional[Callable[[torch.Tensor], Any]]:
    """Inside ComfyUI: x0 (normalised latent) -> a preview image for the progress bar, following the
    user's preview setting (Wan 2.1 / 2.2 latent formats). None outside ComfyUI or when disabled."""
    if not in_comfyui():
        return None
    previews, formats = _comfy_module("latent_preview"), _comfy_module("comfy.latent_formats")
    if previews is None or formats is None:
        return None
    latent_format = formats.Wan22() if channels == 48 else formats.Wan21()
    previewer = previews.get_previewer(compute_device(), latent_format)
    if previewer is None:
        return None
    return lambda x0: previewer.decode_latent_to_preview_image("JPEG", x0)



# --------------------------------------------------------------------------- names and folders

def check_file_name(name: str, what: str = "file name") -> str:
    """Reject names that could leave their folder; returns the name unchanged.

    ``what`` names the parameter in the error, e.g. ``"model loader: model_name"``.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafeFileName(f"{what}: expected a file name, found {name!r}")
    normalised = name.replace("\\", "/")
    if os.path.isabs(name) or normalised.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeFileName(f"{what}: {name!r} is an absolute path; expected a name inside the folder")
    if any(part == ".." for part in normalised.split("/")):
        raise UnsafeFileName(f"{what}: {name!r} contains '..'; expected a name inside the folder")
    if "\0" in name:
        raise UnsafeFileName(f"{what}: {name!r} contains a NUL character")
    return name


def _check_folder_key(folder: str) -> None:
    if folder not in MODEL_FOLDERS:
        raise KeyError(f"unknown model folder {folder!r}; expected one of {sorted(MODEL_FOLDERS)}")


PACK_MODEL_FOLDERS = ("diffusion_models", "vae", "text_encoders", "loras")
"""Folders of ``nano/models`` (the WanNano files shipped with the pack) offered next to the user's."""


def _pack_folder(folder: str) -> Optional[Path]:
    path = NANO_MODELS_DIR / folder
    return path if folder in PACK_MODEL_FOLDERS and path.is_dir() else None


def register_pack_models() -> None:
    """Inside ComfyUI: list the pack's nano models in the usual model folders (after the user's own)."""
    fp = _comfy_module("folder_paths")
    if fp is None:
        return
    for folder in PACK_MODEL_FOLDERS:
        path = _pack_folder(folder)
        if path is not None:
            fp.add_model_folder_path(folder, str(path), is_default=False)


def _headless_folders(folder: str) -> list[Path]:
    """The user's models folder (if given), then the pack's nano models."""
    roots = [] if _headless.models_dir is None else [_headless.models_dir / sub for sub in MODEL_FOLDERS[folder]]
    pack = _pack_folder(folder)
    return roots + ([pack] if pack is not None else [])


def _list_tree(root: Path, extensions: tuple[str, ...]) -> list[str]:
    if not root.is_dir():
        return []
    names = []
    for path in root.rglob("*"):
        if path.is_file() and path.suffix.lower() in extensions:
            names.append(path.relative_to(root).as_posix())
    return names


def list_models(folder: str) -> list[str]:
    """File names (relative, '/' separated) available in a model folder, for combo widgets."""
    _check_folder_key(folder)
    if in_comfyui():
        fp = _comfy_module("folder_paths")
        names: list[str] = []
        for key in MODEL_FOLDERS[folder]:
            if key in fp.folder_names_and_paths:
                names.extend(fp.get_filename_list(key))
        return sorted(set(names))
    names = []
    for root in _headless_folders(folder):
        names.extend(_list_tree(root, MODEL_EXTENSIONS))
    return sorted(set(names))


def model_path(folder: str, name: str, what: str = "model") -> str:
    """Full path of a model file, or a clear error naming the parameter and the folders searched."""
    _check_folder_key(folder)
    check_file_name(name, what)
    if in_comfyui():
        fp = _comfy_module("folder_paths")
        for key in MODEL_FOLDERS[folder]:
            if key in fp.folder_names_and_paths:
                found = fp.get_full_path(key, name)
                if found:
                    return found
        searched = [p for key in MODEL_FOLDERS[folder] if key in fp.folder_names_and_paths
                    for p in fp.get_folder_paths(key)]
    else:
        searched = _headless_folders(folder)
        for root in searched:
            candidate = (root / name).resolve()
            if candidate.is_file() and candidate.is_relative_to(root.resolve()):
                return str(candidate)
        if _headless.models_dir is None:
            raise MissingFile(f"{what}: {name!r} not found: no models folder was given (use --models DIR); "
                              f"searched the pack's nano models: {', '.join(map(str, searched)) or 'none'}")
    raise MissingFile(f"{what}: {name!r} not found in {folder} (searched: {', '.join(map(str, searched))})")


def model_file_verdict(folder: str, name: str, what: str) -> Union[bool, str]:
    """For a node's VALIDATE_INPUTS: True when ``name`` is a safe name of an existing model file.

    Inside ComfyUI a problem is returned as text, which ComfyUI shows on the node; outside it the
    error is raised, so the headless runner can tell a missing file (exit 4) from a bad name (3).
    ``None`` is what ComfyUI passes for an input fed by a link: it is checked when the node runs.
    """
    if name is None:
        return True
    try:
        model_path(folder, name, what)
    except (UnsafeFileName, MissingFile) as exc:
        if in_comfyui():
            return str(exc)
        raise
    return True


def output_prefix_verdict(prefix: Optional[str], what: str) -> Union[bool, str]:
    """For a save node's VALIDATE_INPUTS: True when ``prefix`` stays inside the output folder.

    Checked before the run, so a bad prefix fails in a second rather than after sampling. Same
    conventions as :func:`model_file_verdict` (text inside ComfyUI, raised outside, None = linked).
    """
    if prefix is None:
        return True
    try:
        _output_folder(prefix, what)
    except UnsafeFileName as exc:
        if in_comfyui():
            return str(exc)
        raise
    return True


def lora_output_folder() -> Path:
    """Where a newly trained LoRA goes: ComfyUI's first ``loras`` folder; headless, the
    ``loras`` folder of ``--models`` (else of the output folder)."""
    if in_comfyui():
        return Path(_comfy_module("folder_paths").get_folder_paths("loras")[0])
    base = _headless.models_dir if _headless.models_dir is not None else Path(output_directory())
    return base / "loras"


def input_directory() -> str:
    if in_comfyui():
        return _comfy_module("folder_paths").get_input_directory()
    return str(_headless.input_dir)


def output_directory() -> str:
    if in_comfyui():
        return _comfy_module("folder_paths").get_output_directory()
    return str(_headless.output_dir)


def list_input_images() -> list[str]:
    """Image files in the input folder (for the LoadImage combo)."""
    return sorted(_list_tree(Path(input_directory()), IMAGE_EXTENSIONS))


def input_path(name: str, what: str = "image") -> str:
    """Full path of a file in the input folder, rejecting names that leave it."""
    check_file_name(name, what)
    root = Path(input_directory()).resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root):
        raise UnsafeFileName(f"{what}: {name!r} resolves outside the input folder {root}")
    if not candidate.is_file():
        raise MissingFile(f"{what}: {name!r} not found in the input folder {root}")
    return str(candidate)


# --------------------------------------------------------------------------- output files

@dataclass
class OutputFiles:
    """Where a save node writes (``paths``) and what the UI reports (``names`` in ``subfolder``)."""

    paths: list[Path]
    names: list[str]
    subfolder: str


def reserve_output_file(prefix: str, extension: str, what: str = "filename_prefix",
                        count: int = 1) -> OutputFiles:
    """Paths for ``count`` new files ``<prefix>_<counter:05>_.<ext>`` that overwrite nothing.

    The counter continues after the largest one already used for this prefix (ComfyUI's rule),
    and counts files being staged by the current headless run. Returns the paths where the
    caller must write (in a staging folder during a headless run) and the final names.
    """
    out_root, final_dir = _output_folder(prefix, what)
    stem = Path(prefix).name
    taken = {p.name for p in final_dir.iterdir()} if final_dir.is_dir() else set()
    taken |= {final.name for _, final in _headless.staged if final.parent == final_dir}
    counter = 1 + max((_counter_of(name, stem) for name in taken), default=0)
    finals = []
    while len(finals) < count:
        name = f"{stem}_{counter:05}_.{extension}"
        if name not in taken:
            finals.append(final_dir / name)
        counter += 1
    subfolder = final_dir.relative_to(out_root).as_posix()
    subfolder = "" if subfolder == "." else subfolder
    names = [final.name for final in finals]
    if in_comfyui() or _headless.staging_dir is None:
        final_dir.mkdir(parents=True, exist_ok=True)
        return OutputFiles(finals, names, subfolder)
    writes = []
    for final in finals:
        staged = _headless.staging_dir / f"{len(_headless.staged):05}_{final.name}"
        _headless.staged.append((staged, final))
        writes.append(staged)
    return OutputFiles(writes, names, subfolder)


def _output_folder(prefix: str, what: str) -> tuple[Path, Path]:
    """The output root and the folder ``prefix`` writes into; rejects prefixes that leave the root."""
    check_file_name(prefix, what)
    out_root = Path(output_directory()).resolve()
    final_dir = (out_root / prefix).parent.resolve()
    if not final_dir.is_relative_to(out_root):
        raise UnsafeFileName(f"{what}: {prefix!r} leaves the output folder {out_root}")
    return out_root, final_dir


def _counter_of(name: str, stem: str) -> int:
    if not name.startswith(stem + "_"):
        return 0
    digits = name[len(stem) + 1:].split("_")[0]
    return int(digits) if digits.isdigit() else 0


def begin_staged_outputs() -> None:
    """Headless: from now on output files are written to a staging folder (see commit/discard)."""
    out_root = Path(output_directory())
    _headless.created_output_dirs = [p for p in (out_root, *out_root.parents) if not p.exists()]
    out_root.mkdir(parents=True, exist_ok=True)
    import tempfile

    _headless.staging_dir = Path(tempfile.mkdtemp(prefix=".wanflow-staging-", dir=out_root))
    _headless.staged = []


def commit_staged_outputs() -> list[Path]:
    """Move every staged file to its final name (never replacing an existing file)."""
    moved = []
    try:
        for staged, final in _headless.staged:
            if not staged.exists():
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                raise FileExistsError(f"refusing to overwrite {final}")
            os.replace(staged, final)
            moved.append(final)
    finally:
        discard_staged_outputs()
    return moved


def discard_staged_outputs() -> None:
    """Drop the staging folder and everything in it (used when a run fails)."""
    if _headless.staging_dir is not None:
        shutil.rmtree(_headless.staging_dir, ignore_errors=True)
    _headless.staging_dir = None
    _headless.staged = []
    for folder in _headless.created_output_dirs:  # innermost first: a failed run leaves no new folder
        try:
            folder.rmdir()
        except OSError:
            break                                  # not empty (something was saved) or gone
    _headless.created_output_dirs = []
