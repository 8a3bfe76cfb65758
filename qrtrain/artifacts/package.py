"""Package an artifact version for where it will run, and prove the package matches the adapter.

    qrtrain package outputs/NAME/v1 --format bundle      # NAME-v1-bundle.tar.gz: the version + manifest
    qrtrain package outputs/NAME/v1 --format hf          # a folder for `hf upload` (no upload)
    qrtrain package outputs/NAME/v1 --format merged      # base + adapter merged, safetensors shards
    qrtrain package outputs/NAME/v1 --format ollama      # GGUF LoRA adapter + Modelfile
    qrtrain package outputs/NAME/v1 --format gguf        # one merged GGUF file (--quant q8_0 | f16), no base needed
    qrtrain unpack NAME-v1-bundle.tar.gz DEST            # safe extraction

Only a version that passes `qrtrain verify` is packaged. Every output carries its own
checksums.json and a metadata.json whose `package` entry names the source version and its
root digest; every output passes `qrtrain verify`.
"""

import json
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from qrtrain import __version__
from qrtrain.artifacts.gguf_export import DEFAULT_QUANT, QUANTS, permute_rows
from qrtrain.artifacts.manifest import MANIFEST_NAME, write_manifest
from qrtrain.errors import QrtrainError
from qrtrain.files import write_json

FORMATS = ("bundle", "hf", "merged", "ollama", "gguf")
MERGE_TOLERANCE = 1e-3   # max |logit difference| between merged and base+adapter, float32
SAMPLE_PROMPTS = ["What is the capital of Veloria?", "Who wrote the Velorian anthem?", "Say hello in one sentence."]


def package(target: Path, fmt: str, output: Path | None = None, base: Path | None = None, sign_with=None,
            quant: str | None = None) -> Path:
    """Package a verified version. The version is first copied into a private folder and verified there:
    every format is built from those verified bytes, so a file changed meanwhile can never come out verified.
    A bundle carries the version's signature (model.sig) as it is; the other formats write new files, and
    are signed with `sign_with` (an hf package of a signed version must be). `quant`: gguf only."""
    from qrtrain.artifacts.resolve import resolve_target
    from qrtrain.artifacts.signing import SIGNATURE_NAME, check_sign_with

    if fmt not in FORMATS:
        raise QrtrainError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if quant is not None and fmt != "gguf":
        raise QrtrainError(f"--quant {quant}: only --format gguf is quantized; leave --quant out for --format {fmt}")
    if fmt == "gguf":
        quant = quant or DEFAULT_QUANT
        if quant not in QUANTS:
            raise QrtrainError(f"--quant {quant}: expected one of {', '.join(QUANTS)} (the quantizations whose "
                               "perplexity qrtrain checks)")
    version, recorded_base = resolve_target(Path(target))
    if version is None:
        raise QrtrainError(f"{target}: not an artifact version; give outputs/NAME/vN (or outputs/NAME for the latest)")
    if sign_with is not None and fmt == "bundle":
        raise QrtrainError("--sign-key: a bundle carries the version's own signature unchanged; sign the version "
                           f"first (qrtrain sign {version} --key KEY), then package it")
    if sign_with is None and fmt == "hf" and (version / SIGNATURE_NAME).exists():
        raise QrtrainError(f"{version} is signed, and its hf package rewrites metadata.json, training_config.yaml and "
                           "checksums.json (no local paths), so the version's signature cannot cover it: pass "
                           "--sign-key KEY to sign the package")
    if sign_with is not None:
        check_sign_with(sign_with, "--sign-key")
    name = f"{version.parent.name}-{version.name}-{fmt}" + (f"-{quant}" if fmt == "gguf" else "")
    # default: ROOT/packages/ beside the artifacts (git-ignored with outputs/), not the current folder
    out = Path(output) if output else version.parent.parent / "packages" / (name + (".tar.gz" if fmt == "bundle" else ""))
    if out.exists() or out.is_symlink():
        raise QrtrainError(f"{out} already exists; remove it or pass --output to another path")
    refuse_inside_artifacts(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # private (0700) until renamed
    try:
        source, digest = verified_copy(version, work / "source")
        metadata = json.loads((source / "metadata.json").read_text())
        from qrtrain.terminal import quiet_libraries

        quiet_libraries()
        if fmt == "bundle":
            bundle = write_bundle(source, metadata, work / "bundle.tar.gz")
            prove_bundle(bundle, digest)
            bundle.rename(out)
            return out
        staging = work / "out"
        staging.mkdir()
        source_name = f"{version.parent.name}/{version.name}"
        info = {"format": fmt, "source_version": source_name if fmt == "hf" else str(version.resolve()),
                "source_root_digest": digest,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "qrtrain_version": __version__}
        base_folder = Path(base) if base else recorded_base
        if fmt == "hf":
            extra = build_hf(source, staging)
        elif fmt == "merged":
            extra = build_merged(source, base_folder, staging)
        elif fmt == "gguf":
            extra = build_gguf(source, base_folder, metadata, staging, quant)
        else:
            extra = build_ollama(source, base_folder, metadata, staging)
        recorded = portable_metadata(metadata) if fmt == "hf" else metadata
        write_json(staging / "metadata.json", {**recorded, "package": {**info, **extra}})
        write_manifest(staging)
        if fmt == "hf":
            prove_copies(staging, source)
        if sign_with is not None:
            from qrtrain.artifacts.signing import sign_folder

            sign_folder(staging, sign_with)
        staging.chmod(0o755)
        staging.rename(out)
        if fmt == "hf":
            from qrtrain.terminal import say

            say(f"upload it with: hf upload YOUR_ORG/{version.parent.name} {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def refuse_inside_artifacts(out: Path) -> None:
    """An output inside a version (it would damage it) or beside versions (`list` would show it) is refused."""
    from qrtrain.artifacts.versions import LATEST_NAME, VERSION_RE

    where = out.absolute()
    for folder in where.parents:
        if (folder / MANIFEST_NAME).is_file():
            raise QrtrainError(f"--output {out} is inside the artifact version {folder}; writing there would "
                               "change a verified version: choose a folder outside the artifact root")
    if (where.parent / LATEST_NAME).exists() or (VERSION_RE.fullmatch(where.name) and any(
            VERSION_RE.fullmatch(p.name) for p in where.parent.iterdir() if p.is_dir())
            if where.parent.is_dir() else False):
        raise QrtrainError(f"--output {out} is beside the versions of the artifact {where.parent}; `qrtrain list` "
                           "would take it for a version: choose a folder outside the artifact root")


def verified_copy(version: Path, into: Path) -> tuple[Path, str]:
    """(a private copy of the version's regular files, its root digest) once the copy passes verification."""
    from qrtrain.artifacts.verify import verify_version

    for path in sorted(version.rglob("*")):
        if path.is_file() and not path.is_symlink():
            target = into / path.relative_to(version)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    result = verify_version(into) if into.is_dir() else {"verified": False, "problems": []}
    if not result["verified"]:
        listed = "; ".join(f"{p['file']}: {p['message']}" for p in result["problems"][:5])
        raise QrtrainError(f"{version} changed while it was being packaged ({listed}); nothing was written; "
                           f"see `qrtrain verify {version}`", exit_code=1)
    return into, result["root_digest"]


def prove_copies(staging: Path, source: Path) -> None:
    """Every file a copying format (hf) wrote has the sha256 the verified manifest lists for it (the two it
    rewrites to portable form, metadata.json and training_config.yaml, aside)."""
    from qrtrain.files import sha256_file

    entries = {e["path"]: e["sha256"] for e in json.loads((source / MANIFEST_NAME).read_text())["files"]}
    for path in sorted(staging.rglob("*")):
        relative = path.relative_to(staging).as_posix()
        if path.is_file() and relative in entries and relative not in (MANIFEST_NAME, "metadata.json",
                                                                       "training_config.yaml") \
                and sha256_file(path) != entries[relative]:
            raise QrtrainError(f"{relative}: the packaged copy differs from the verified version; nothing was "
                               "written", exit_code=1)


def prove_bundle(bundle: Path, digest: str) -> None:
    from qrtrain.artifacts.verify import verify_path

    result = verify_path(bundle)[0]
    if not result["verified"] or result["root_digest"] != digest:
        raise QrtrainError("the written bundle does not verify against the version's manifest; nothing was written",
                           exit_code=1)


def write_bundle(version: Path, metadata: dict, out: Path) -> Path:
    """A .tar.gz of the version under one top folder, checksums.json first."""
    top = f"{metadata['name']}-{metadata['version']}"
    files = sorted((p for p in version.rglob("*") if p.is_file()), key=lambda p: (p.name != MANIFEST_NAME, str(p)))
    with tarfile.open(out, "w:gz") as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=f"{top}/{path.relative_to(version).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return out


def unpack(bundle: Path, dest: Path) -> Path:
    """Extract a bundle into DEST/TOP: only a bundle that verifies, never over an existing folder, with room
    checked first, into a private folder that is renamed into place once the extracted files verify."""
    from qrtrain.artifacts.verify import verify_path, verify_version

    bundle, dest = Path(bundle), Path(dest)
    if not bundle.is_file():
        raise QrtrainError(f"{bundle}: no such bundle file (expected a .tar.gz written by `qrtrain package --format bundle`)")
    if not bundle.name.endswith((".tar.gz", ".tgz")):
        raise QrtrainError(f"{bundle}: expected a .tar.gz bundle")
    try:
        with tarfile.open(bundle, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            problems = [f"{m.name}: {why}" for m in tar.getmembers() if (why := member_problem(m))]
            if problems:
                raise QrtrainError(f"{bundle}: refusing to unpack, unsafe members: " + "; ".join(problems[:10]))
            checked = verify_path(bundle)[0]
            if not checked["verified"]:
                listed = "; ".join(f"{p['file']}: {p['message']}" for p in checked["problems"][:5])
                raise QrtrainError(f"{bundle} fails verification, nothing was unpacked ({listed})", exit_code=1)
            top = PurePosixPath(members[0].name).parts[0]
            if (dest / top).exists() or (dest / top).is_symlink():
                raise QrtrainError(f"{dest / top} already exists; nothing was unpacked: remove it or unpack elsewhere")
            dest.mkdir(parents=True, exist_ok=True)
            needed = sum(m.size for m in members)
            free = shutil.disk_usage(dest).free
            if needed > free:
                raise QrtrainError(f"{bundle} needs {needed:,} bytes and {dest} has {free:,} free; nothing was unpacked")
            work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest))
            try:
                tar.extractall(work, members=members, filter="data")
                extracted = verify_version(work / top)
                if not extracted["verified"] or extracted["root_digest"] != checked["root_digest"]:
                    raise QrtrainError(f"{bundle} changed while it was unpacked; nothing was unpacked", exit_code=1)
                (work / top).rename(dest / top)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise QrtrainError(f"{bundle}: cannot unpack ({error}); nothing was unpacked") from None
    return dest / top


def member_problem(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in path.parts:
        return "'..' in the path"
    if member.issym() or member.islnk():
        return "link"
    if not (member.isfile() or member.isdir()):
        return "device or special file"
    return None


def build_hf(version: Path, staging: Path) -> dict:
    """The Hub layout: adapter, tokenizer, model card (front matter), config; metadata, the training config
    and the manifest rewritten to carry portable facts only (names and digests, no local paths)."""
    from omegaconf import OmegaConf

    for path in version.iterdir():
        if path.is_file() and path.name not in (MANIFEST_NAME, "metadata.json", "training_config.yaml", "model.sig",
                                                "provenance.intoto.json"):
            shutil.copy2(path, staging / path.name)
    config = OmegaConf.load(version / "training_config.yaml")
    for key in ("artifact.root", "model.path", "data.eval"):
        value = OmegaConf.select(config, key)
        if isinstance(value, str):
            OmegaConf.update(config, key, None if key == "artifact.root" else Path(value).name)
    train = OmegaConf.select(config, "data.train")
    if train is not None:
        OmegaConf.update(config, "data.train", [Path(str(p)).name for p in train] if OmegaConf.is_list(train)
                         else Path(str(train)).name)
    (staging / "training_config.yaml").write_text(OmegaConf.to_yaml(config), encoding="utf-8")
    return {"upload": "hf upload YOUR_ORG/NAME .   (run inside this folder)"}


def portable_metadata(value):
    """metadata.json for a public place: every local path (an absolute or home-relative string) becomes its
    file name, and the base model's local folder is left out; names, hashes, rows and settings stay."""
    if isinstance(value, dict):
        return {k: portable_metadata(v) for k, v in value.items() if not (k == "path" and "hub_id" in value)}
    if isinstance(value, list):
        return [portable_metadata(v) for v in value]
    if isinstance(value, str) and value.startswith(("/", "~")):
        return Path(value).name
    return value


def sample_inputs(tokenizer, device):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in SAMPLE_PROMPTS]
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)


def build_merged(version: Path, base_folder: Path, staging: Path) -> dict:
    """Merge into a full-precision copy of the base and check logits against base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qrtrain.models.loading import load_chat_tokenizer

    _check_base(base_folder)
    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, version).eval()
    tokenizer = load_chat_tokenizer(version)
    inputs = sample_inputs(tokenizer, "cpu")
    with torch.no_grad():
        expected = model(**inputs).logits
        merged = model.merge_and_unload().eval()
        actual = merged(**inputs).logits
    mask = inputs["attention_mask"].bool()
    difference = (expected - actual).abs()[mask].max().item()
    if difference > MERGE_TOLERANCE:
        raise QrtrainError(f"merged logits differ from base+adapter by {difference:.3g} > {MERGE_TOLERANCE}; "
                           "nothing was written", exit_code=1)
    merged.save_pretrained(staging, max_shard_size="200MB")
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(staging)
    return {"merge_check": {"max_abs_logit_difference": difference, "tolerance": MERGE_TOLERANCE,
                            "prompts": SAMPLE_PROMPTS, "dtype": "float32", "base": str(base_folder)}}


def build_gguf(version: Path, base_folder: Path, metadata: dict, staging: Path, quant: str) -> dict:
    """Merge into a float32 copy of the base, write NAME-vN.QUANT.gguf, and prove it: loaded back, its tokenizer
    gives the version's ids and its held-out perplexity is within tolerance of base + adapter's."""
    import torch
    from omegaconf import OmegaConf
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qrtrain.artifacts.gguf_export import (check_llama, gguf_perplexity_check, gguf_tokenizer_check,
                                               heldout_pairs, write_model_gguf)
    from qrtrain.models.generation import answer_loss
    from qrtrain.models.loading import load_chat_tokenizer

    _check_base(base_folder)
    check_llama(json.loads((Path(base_folder) / "config.json").read_text()))
    heldout, pairs = heldout_pairs(version, metadata.get("model_type", "dialogue"))
    max_length = OmegaConf.select(OmegaConf.load(version / "training_config.yaml"), "training.max_length")
    tokenizer = load_chat_tokenizer(version)
    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32).eval()
    adapted = PeftModel.from_pretrained(base, version).eval()
    adapter_loss = answer_loss(adapted, tokenizer, pairs, max_length=max_length)
    with torch.no_grad():
        merged = adapted.merge_and_unload().eval()
    path = staging / f"{metadata['name']}-{metadata['version']}.{quant}.gguf"
    tensor_types = write_model_gguf(merged, tokenizer, path, quant, f"{metadata['name']}-{metadata['version']}")
    del merged, adapted, base
    conversations = [[{"role": "user", "content": p}] for p in SAMPLE_PROMPTS] + [p for p, _ in pairs[:3]
                                                                                 if isinstance(p, list)]
    tokenizer_check = gguf_tokenizer_check(path, tokenizer, conversations)
    perplexity = gguf_perplexity_check(path, pairs, adapter_loss, quant, max_length)
    return {"gguf_file": path.name, "quant": quant, "tensor_types": tensor_types,
            "perplexity_check": {**perplexity, "heldout": heldout.name, "dtype_of_reference": "float32"},
            "tokenizer_check": tokenizer_check, "base_folder": str(base_folder)}


def _check_base(base_folder: Path) -> None:
    if not (Path(base_folder) / "config.json").is_file():
        raise QrtrainError(f"base model folder {base_folder} is missing; pass --base FOLDER")


def lora_tensors_for_gguf(version: Path, base_config: dict) -> dict:
    """The adapter's tensors named and laid out as llama.cpp expects: blk.N.<tensor>.weight.lora_a / lora_b.

    lora_a is A (rank x in), lora_b is B (out x rank); B of q_proj and k_proj gets llama.cpp's rotary
    permutation of the output rows, as convert_hf_to_gguf applies to the base weights."""
    import gguf
    from safetensors.numpy import load_file

    if base_config.get("model_type") != "llama":
        raise QrtrainError(f"ollama packaging supports Llama-architecture bases; this base is {base_config.get('model_type')!r}")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, base_config["num_hidden_layers"])
    n_head, n_kv = base_config["num_attention_heads"], base_config.get("num_key_value_heads") or base_config["num_attention_heads"]
    out = {}
    for name, array in sorted(load_file(version / "adapter_model.safetensors").items()):
        module = name.split(".lora_")[0].removeprefix("base_model.model.")
        target = names.get_name(module)
        if target is None:
            raise QrtrainError(f"adapter tensor {name}: no llama.cpp name for module {module}")
        part = "lora_a" if ".lora_A." in name else "lora_b"
        if part == "lora_b" and module.endswith(("q_proj", "k_proj")):
            array = permute_rows(array, n_head if module.endswith("q_proj") else n_kv)
        out[f"{target}.weight.{part}"] = array.astype("float32")
    return out


def build_ollama(version: Path, base_folder: Path, metadata: dict, staging: Path) -> dict:
    import gguf

    from qrtrain.models.loading import load_chat_tokenizer

    _check_base(base_folder)
    base_config = json.loads((base_folder / "config.json").read_text())
    adapter_config = json.loads((version / "adapter_config.json").read_text())
    if adapter_config.get("use_dora"):
        raise QrtrainError("--format ollama: llama.cpp's LoRA adapters cannot carry DoRA's magnitude vectors, so this "
                           "DoRA adapter would run as a different model; use --format gguf (the merged model in one "
                           "GGUF file, for Ollama's FROM) or --format merged")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise QrtrainError("--format ollama: this adapter has per-layer ranks (rank_pattern, e.g. from lora.init=eva), "
                           "and llama.cpp's adapter has one alpha for all; use --format gguf or --format merged")
    alpha = float(adapter_config["lora_alpha"])
    if adapter_config.get("use_rslora"):  # llama.cpp scales by alpha / r; rsLoRA by alpha / sqrt(r)
        alpha *= float(adapter_config["r"]) ** 0.5
    writer = gguf.GGUFWriter(staging / "adapter.gguf", "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(metadata["name"])
    for name, array in lora_tensors_for_gguf(version, base_config).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tokenizer = load_chat_tokenizer(version)
    formats = [d.get("format") for d in metadata.get("datasets", []) if d.get("role") == "train"]
    if formats and formats[0] in ("alpaca", "prompt-completion", "text"):  # trained on prompts, not chats
        template = ("### Instruction:\n{{ .Prompt }}\n\n### Response:\n" if formats[0] == "alpaca"
                    else "{{ .Prompt }}")
        default_system = None
    else:
        template, default_system = ollama_template(tokenizer)
    base_gguf = base_model_gguf(metadata)
    if base_gguf is not None:  # the shipped base travels with the adapter, covered by the package's manifest
        shutil.copyfile(base_gguf, staging / "base.gguf")
    lines = [f"# ollama create {metadata['name']} -f Modelfile   (in this folder)",
             f"FROM {'./base.gguf' if base_gguf else base_folder}", "ADAPTER ./adapter.gguf", f'TEMPLATE """{template}"""']
    if default_system:
        lines.append(f'SYSTEM """{default_system}"""')
    stops = sorted({tokenizer.eos_token} | {t for t in ("<|im_end|>", "<|im_start|>") if t in tokenizer.get_vocab()})
    lines += [f'PARAMETER stop "{s}"' for s in stops] + ["PARAMETER temperature 0", "PARAMETER num_ctx 2048"]
    (staging / "Modelfile").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"base_gguf": base_gguf.name if base_gguf else None, "base_folder": str(base_folder)}


def base_model_gguf(metadata: dict) -> Path | None:
    """The shipped GGUF of a base model option with source gguf (the default model), else None."""
    from qrtrain.config import compose, group_options
    from qrtrain.models.loading import gguf_path

    name = (metadata.get("base_model") or {}).get("name")
    if name not in group_options("model"):
        return None
    model_cfg = compose([f"model={name}"]).model
    return gguf_path(model_cfg) if model_cfg.source == "gguf" else None


def ollama_template(tokenizer) -> tuple[str, str | None]:
    """An Ollama (Go) TEMPLATE equivalent to a ChatML-like chat template, and its default system prompt.

    The HF template is probed with marker contents. It must render every turn as
    OPEN + role + MIDDLE + content + SUFFIX (with an optional BOS first), as ChatML does."""
    def render(messages, generation_prompt=False):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    unsupported = QrtrainError("ollama packaging maps ChatML-like chat templates only; this template could not be mapped")
    s_, u_, a_ = "\x01S\x01", "\x01U\x01", "\x01A\x01"
    full = render([{"role": "system", "content": s_}, {"role": "user", "content": u_}, {"role": "assistant", "content": a_}])
    if not all(full.count(mark) == 1 for mark in (s_, u_, a_)):
        raise unsupported
    p0, rest = full.split(s_)
    p1, rest = rest.split(u_)
    p2, suffix = rest.split(a_)
    if not suffix or not p1.startswith(suffix) or "user" not in p1:
        raise unsupported
    opening, _, middle = p1[len(suffix):].partition("user")
    if p2 != suffix + opening + "assistant" + middle or not p0.endswith(opening + "system" + middle):
        raise unsupported
    bos = p0[:len(p0) - len(opening + "system" + middle)]
    before_user = render([{"role": "user", "content": u_}]).split(u_)[0]
    if not before_user.startswith(bos) or not before_user.endswith(opening + "user" + middle):
        raise unsupported
    system_block = before_user[len(bos):len(before_user) - len(opening + "user" + middle)]
    default_system = None
    if system_block:
        if not (system_block.startswith(opening + "system" + middle) and system_block.endswith(suffix)):
            raise unsupported
        default_system = system_block[len(opening + "system" + middle):len(system_block) - len(suffix)]
    generation = render([{"role": "user", "content": u_}], True).split(u_)[1]
    if not generation.startswith(suffix):
        raise unsupported
    generation = generation[len(suffix):]
    # Ollama passes every turn, system turns included, in .Messages (and the Modelfile's SYSTEM as a system turn
    # when a request has none); its .System repeats the system turns, so the template must not use it too.
    template = f"{bos}{{{{ range .Messages }}}}{opening}{{{{ .Role }}}}{middle}{{{{ .Content }}}}{suffix}{{{{ end }}}}{generation}"
    return template, default_system
