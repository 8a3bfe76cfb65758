"""What a request to the service may ask for: typed bodies (pydantic), an allow-list of settings.

    curl -X POST localhost:8765/api/jobs -H 'content-type: application/json' \\
         -d '{"model": "tiny", "training": {"max_steps": 20}, "data": {"train": "my.jsonl"}}'
    python -c "from qrtrain.service.requests import TrainRequest; print(TrainRequest.model_json_schema())"

A request is data, never Hydra: group choices are names of files in `conf/`, extensions are names
with their documented parameters, settings are numbers, booleans and enums within ranges, and paths
are paths (marked PATH in the schema, confined by `checks.py`). No field can hold `${...}`, `_target_`,
a `+`/`~` prefix or a Hydra key: every string is matched against an allow-listed alphabet. Unknown
fields are refused (422). `overrides()` turns a checked request into the CLI's `key=value` tokens.
"""

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from qrtrain.config import LORA_INITS, OPTIMIZERS

PATH = "path"  # the schema's format for a file or folder path; checks.py confines each to the service's roots
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
# Letters, digits, space and . _ - / @ + , : only: no quote, backslash, $, {, }, [, ], =, ~ or control character.
PATH_PATTERN = r"^[A-Za-z0-9._/@+-][A-Za-z0-9._/@+, :-]{0,1023}$"
MAX_INT = 2**31 - 1

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class IsPath:
    """Marks a path type in the schema: every field whose type holds it is confined (found by type, not name)."""


RequestPath = Annotated[str, StringConstraints(pattern=PATH_PATTERN), Field(json_schema_extra={"format": PATH}), IsPath()]
ModuleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")]
VersionRef = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/v[1-9][0-9]{0,8})?$")]
Scalar = (bool | Annotated[int, Field(ge=-10**9, le=10**9)] | Annotated[float, Field(ge=-1e9, le=1e9)]
          | Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._ -]{0,100}$")])
AutoOrBool = Literal["auto"] | bool


class Body(BaseModel):
    """Every request object: unknown fields refused, JSON types taken as they are (no "5" for 5)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class DataSettings(Body):
    train: RequestPath | list[RequestPath] | None = Field(None, description="A file or saved dataset folder (or a list); null: the shipped demo")
    eval: RequestPath | None = Field(None, description="The held-out file; null: a share of train")
    eval_fraction: float | None = Field(None, ge=0, lt=1)
    eval_max_examples: int | None = Field(None, ge=1, le=MAX_INT)
    weights: list[Annotated[float, Field(gt=0, le=1e6)]] | None = Field(None, max_length=64)

    @field_validator("train")
    @classmethod
    def some_sources(cls, value):
        if isinstance(value, list) and not 1 <= len(value) <= 64:
            raise ValueError("expected 1 to 64 paths")
        return value


class LoraSettings(Body):
    r: int | None = Field(None, ge=1, le=1024)
    alpha: float | None = Field(None, gt=0, le=1e4)
    dropout: float | None = Field(None, ge=0, lt=1)
    target_modules: Literal["all-linear"] | Annotated[list[ModuleName], Field(min_length=1, max_length=64)] | None = None
    use_dora: bool | None = None
    use_rslora: bool | None = None
    init: Literal[LORA_INITS] | None = None


class TrainingSettings(Body):
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    batch_size: int | None = Field(None, ge=1, le=4096)
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=4096)
    learning_rate: float | None = Field(None, gt=0, le=1)
    weight_decay: float | None = Field(None, ge=0, le=10)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] | None = None
    max_length: int | None = Field(None, ge=8, le=1_048_576)
    eval_steps: int | None = Field(None, ge=0, le=10_000_000)
    logging_steps: int | None = Field(None, ge=1, le=10_000_000)
    gradient_checkpointing: AutoOrBool | None = None
    memory_budget_gib: float | None = Field(None, gt=0, le=1e5)
    padding_free: AutoOrBool | None = None
    liger_kernel: AutoOrBool | None = None
    release_freed_memory: AutoOrBool | None = None
    packing: bool | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    device: Literal["auto", "cpu", "cuda"] | None = None
    optim: Literal[OPTIMIZERS] | None = Field(None, description="The Trainer's optimizer names (training.optim)")


class CheckpointSettings(Body):
    every_steps: int | None = Field(None, ge=0, le=10_000_000)
    keep_last: int | None = Field(None, ge=1, le=100)
    best_metric: Literal["eval_loss"] | None = None
    greater_is_better: bool | None = None


METHOD_FIELDS = {"sft": set(), "dpo": {"beta", "loss_type", "loss_weights", "label_smoothing"},
                 "kto": {"beta", "loss_type", "desirable_weight", "undesirable_weight"}, "orpo": {"beta"},
                 "simpo": {"beta", "gamma", "cpo_alpha", "label_smoothing"}}  # conf/method/<name>.yaml's keys
DPOLoss = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm"]


class MethodSettings(Body):
    """The training method (conf/method/) and its documented parameters; only the chosen method's are allowed."""
    name: Literal["sft", "dpo", "kto", "orpo", "simpo"]
    beta: float | None = Field(None, gt=0, le=100)
    loss_type: DPOLoss | Literal["kto", "apo_zero_unpaired"] | Annotated[list[DPOLoss], Field(min_length=1,
                                                                                            max_length=8)] | None = None
    loss_weights: list[Annotated[float, Field(ge=0, le=1e3)]] | None = Field(None, max_length=8)
    label_smoothing: float | None = Field(None, ge=0, lt=0.5)
    desirable_weight: float | None = Field(None, gt=0, le=100)
    undesirable_weight: float | None = Field(None, gt=0, le=100)
    gamma: float | None = Field(None, ge=0, le=100)
    cpo_alpha: float | None = Field(None, ge=0, le=100)

    @model_validator(mode="after")
    def fields_of_the_method(self):
        extra = sorted(set(self.model_fields_set) - {"name"} - METHOD_FIELDS[self.name])
        if extra:
            raise ValueError(f"method {self.name} has no setting {', '.join(extra)}; its settings: "
                             f"{', '.join(sorted(METHOD_FIELDS[self.name])) or 'none'}")
        return self


class ArtifactSettings(Body):
    name: Name | None = Field(None, description="artifact.name: the artifact a training job publishes a version of")


class TrainRequest(Body):
    """A training job: `qrtrain train` with these settings (every field optional; defaults as the CLI's)."""

    model: Name | None = Field(None, description="A model option (GET /api/options)")
    model_path: RequestPath | None = Field(None, description="A local model folder to load instead (model.path)")
    model_type: Name | None = None
    method: MethodSettings | None = Field(None, description="e.g. {\"name\": \"dpo\", \"beta\": 0.1}")
    init_adapter: VersionRef | None = Field(None, description="NAME/vN under the service's root to continue (SFT -> DPO)")
    strategy: Name | None = None
    layer_decay: float | None = Field(None, gt=0, le=1, description="strategy.layer_decay (strategy=finetune)")
    quantization: Name | None = None
    extensions: dict[Name, dict[Name, Scalar]] | None = Field(
        None, max_length=16, description="Extension name -> its documented parameters, e.g. {\"ema\": {\"decay\": 0.95}}")
    tracking: list[Literal["tensorboard", "mlflow", "wandb", "trackio"]] | None = Field(
        None, max_length=4, description="Experiment trackers (conf/tracking/), with the service's local settings")
    data: DataSettings | None = None
    lora: LoraSettings | None = None
    training: TrainingSettings | None = None
    checkpoint: CheckpointSettings | None = None
    resume: Literal["auto", "never"] | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    artifact: ArtifactSettings | None = None


class GenerationSettings(Body):
    max_new_tokens: Literal["auto"] | Annotated[int, Field(ge=1, le=8192)] | None = None
    batch_size: int | None = Field(None, ge=1, le=1024)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)


class EvaluationSettings(Body):
    suite: Name | None = Field(None, description="An evaluation option (conf/evaluation)")
    questions: RequestPath | None = None
    corpus: RequestPath | None = None


class BenchmarkSettings(Body):
    """lm-evaluation-harness tasks by name from lm-eval's own registry (a folder of task files is not offered over
    HTTP: a task file can name Python code, `!function`)."""

    tasks: Annotated[list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")]],
                     Field(min_length=1, max_length=16)]
    num_fewshot: int | None = Field(None, ge=0, le=64)
    limit: int | None = Field(None, ge=1, le=1_000_000)
    batch_size: int | None = Field(None, ge=1, le=1024)
    chat_template: bool | None = None


class EvaluateRequest(Body):
    """`qrtrain evaluate TARGET`: an artifact (its latest version) or NAME/vN under the service's root."""

    target: VersionRef
    evaluation: EvaluationSettings | None = None
    model_path: RequestPath | None = Field(None, description="The base model folder (default: the recorded one)")
    generation: GenerationSettings | None = None
    benchmarks: BenchmarkSettings | None = None
    device: Literal["auto", "cpu", "cuda"] | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None


class RetrievalSettings(Body):
    k: int | None = Field(None, ge=1, le=64)
    chunk_words: int | None = Field(None, ge=1, le=10_000)
    chunk_overlap: int | None = Field(None, ge=0, le=100)


class CompareRequest(Body):
    """`qrtrain compare`: systems side by side on one suite; adapters are NAME or NAME/vN under the root."""

    model: Name | None = None
    systems: list[Literal["base", "rag", "adapter", "adapter_rag"]] | None = Field(None, min_length=1, max_length=4)
    adapters: list[VersionRef] | None = Field(None, max_length=16)
    artifact: ArtifactSettings | None = Field(None, description="artifact.name: whose latest version `adapter` means")
    evaluation: EvaluationSettings | None = None
    retrieval: RetrievalSettings | None = None
    generation: GenerationSettings | None = None
    benchmarks: BenchmarkSettings | None = None
    device: Literal["auto", "cpu", "cuda"] | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None

    @model_validator(mode="after")
    def distinct_systems(self):
        if self.systems and len(set(self.systems)) != len(self.systems):
            raise ValueError("systems: each system at most once")
        return self


# Where a request field lands in the composed config. Group choices become `group=option`; the rest `key=value`.
TRAIN_GROUPS = {"model": "model", "model_type": "model_type", "strategy": "strategy", "quantization": "quantization"}
TRAIN_KEYS = {"model_path": "model.path", "layer_decay": "strategy.layer_decay", "resume": "resume", "seed": "seed",
              "init_adapter": "init_adapter"}
EVALUATE_KEYS = {"model_path": "model.path", "device": "device", "dtype": "dtype"}
COMPARE_GROUPS = {"model": "model"}
COMPARE_KEYS = {"systems": "systems", "adapters": "adapters", "device": "device", "dtype": "dtype"}
SECTIONS = ("data", "lora", "training", "checkpoint", "artifact", "generation", "retrieval", "benchmarks")


def hydra_value(value) -> str:
    """A value in Hydra's override grammar. Strings are quoted; the allow-listed alphabets hold no quote or
    backslash, so a quoted string stays one literal string (no interpolation: no `$` is allowed)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return "'" + str(value) + "'"


def overrides(request: Body, groups: dict, keys: dict) -> list[str]:
    """The CLI tokens for the fields a request set (`null` where it set null), groups first."""
    given = request.model_dump(exclude_unset=True)
    tokens = [f"{groups[field]}={given[field]}" for field in groups if given.get(field) is not None]
    for field, key in keys.items():
        if field in given:
            tokens.append(f"{key}={hydra_value(given[field])}")
    if given.get("extensions") is not None:
        tokens.append(f"extensions=[{','.join(given['extensions'])}]")
        for name, settings in given["extensions"].items():
            tokens += [f"extensions.{name}.{key}={hydra_value(value)}" for key, value in settings.items()]
    if given.get("tracking") is not None:
        tokens.append(f"tracking=[{','.join(given['tracking'])}]")
    method = given.get("method") or {}
    if method:
        tokens.append(f"method={method['name']}")
        tokens += [f"method.{key}={hydra_value(value)}" for key, value in method.items() if key != "name"]
    for section in SECTIONS:
        for key, value in (given.get(section) or {}).items():
            tokens.append(f"{section}.{key}={hydra_value(value)}")
    evaluation = given.get("evaluation") or {}
    if evaluation.get("suite") is not None:
        tokens.append(f"evaluation={evaluation['suite']}")
    for key in ("questions", "corpus"):
        if key in evaluation:
            tokens.append(f"evaluation.{key}={hydra_value(evaluation[key])}")
    return tokens


def path_fields(request: Body, prefix: str = "") -> list[tuple[str, object]]:
    """(field path, value) of every field the schema marks as a path, where the request set it."""
    found = []
    for name, info in type(request).model_fields.items():
        value = getattr(request, name)
        if value is None:
            continue
        if isinstance(value, Body):
            found += path_fields(value, f"{prefix}{name}.")
        elif holds_path(info.annotation):
            found.append((f"{prefix}{name}", value))
    return found


def holds_path(annotation) -> bool:
    """Whether a type is, or contains (in a union or list), the RequestPath type."""
    return any(isinstance(part, IsPath) or holds_path(part) for part in get_args(annotation))


# The OpenAI-compatible route (/v1): the fields an inference request may carry, nothing more. The service
# forwards the checked body, with `model` (the endpoint) replaced by the engine's own model name.
class TextPart(Body):
    type: Literal["text"]
    text: Annotated[str, StringConstraints(max_length=200_000)]


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, StringConstraints(max_length=200_000)] | Annotated[list[TextPart], Field(max_length=64)]


class StreamOptions(Body):
    include_usage: bool = False


Endpoint = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")]
Stop = Annotated[str, StringConstraints(min_length=1, max_length=64)] | Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=4)]


class SamplingSettings(Body):
    """What both routes share: the endpoint, limits and sampling (n is 1: one answer per request)."""

    model: Endpoint = Field(description="The endpoint's name (`qrtrain deploy ... --name ENDPOINT`)")
    max_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    seed: int | None = Field(None, ge=0, le=MAX_INT)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    n: Literal[1] | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None


class ChatCompletionRequest(SamplingSettings):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)


class CompletionRequest(SamplingSettings):
    prompt: Annotated[str, StringConstraints(max_length=200_000)]
