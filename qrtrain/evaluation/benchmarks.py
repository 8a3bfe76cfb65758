"""Standard benchmarks through lm-evaluation-harness (`lm-eval`), beside qrtrain's own metrics.

    qrtrain evaluate outputs/NAME/v1 benchmarks.tasks=[mmlu,gsm8k]            # needs the network for the data
    qrtrain evaluate outputs/NAME/v1 benchmarks.tasks=[my_task] benchmarks.include_path=my_tasks/   # offline
    qrtrain compare adapters=[NAME/v1] benchmarks.tasks=[hellaswag] benchmarks.limit=200

lm-eval's own Hugging Face backend loads the base with the version's adapter applied (`peft=`) and the
version's tokenizer; each task's metrics land in the report as `lm_eval/TASK/METRIC`, with lm-eval's
standard error as a 95% interval (mean +- 1.96 SE), and lm-eval's full results under `benchmarks`.
A task of your own is a YAML file in --include_path's sense (`benchmarks.include_path=DIR`), e.g. a
multiple-choice task over a local JSONL file (`dataset_path: json`, `dataset_kwargs.data_files`).
"""

from pathlib import Path

from qrtrain.errors import QrtrainError


def task_manager(cfg):
    """lm-eval's TaskManager for benchmarks.tasks (None without tasks), once lm-eval is installed and every task is
    known: checked before any model is loaded. Tasks all found in include_path skip indexing lm-eval's own
    14,000 (about 10 s)."""
    tasks = list(cfg.benchmarks.tasks or [])
    if not tasks:
        return None
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise QrtrainError("benchmarks.tasks needs lm-evaluation-harness: pip install lm-eval "
                           "(or `pip install 'qrtrain[benchmarks]'`)") from None
    include = cfg.benchmarks.include_path
    if include and not Path(include).is_dir():
        raise QrtrainError(f"benchmarks.include_path={include}: no such folder (a folder of lm-eval task YAML files)")
    manager = TaskManager(include_path=str(include), include_defaults=False) if include else None
    if manager is None or not set(tasks) <= set(manager.all_tasks):
        manager = TaskManager(include_path=str(include) if include else None)
    unknown = [t for t in tasks if t not in set(manager.all_tasks)]
    if unknown:
        raise QrtrainError(f"benchmarks.tasks: lm-eval knows no task {', '.join(unknown)}; `lm-eval ls tasks` lists "
                           "them, and benchmarks.include_path=DIR adds your own YAML tasks")
    return manager


def run_benchmarks(cfg, manager, base: Path, artifact: Path | None, device: str, dtype) -> dict | None:
    """{"metrics": {lm_eval/TASK/METRIC: {mean, ci95, n}}, "results": lm-eval's results, ...}; None without tasks
    (`manager` is task_manager(cfg)'s)."""
    if manager is None:
        return None
    import lm_eval

    from qrtrain.terminal import say

    tasks = list(cfg.benchmarks.tasks)
    model_args = {"pretrained": str(base), "dtype": str(dtype).removeprefix("torch."), "device": device,
                  "tokenizer": str(artifact or base)}
    if artifact is not None:
        model_args["peft"] = str(artifact)
    say(f"lm-eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else ''}: {', '.join(tasks)} on "
        f"{artifact or base}")
    output = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=tasks,
                                     task_manager=manager,
                                     num_fewshot=cfg.benchmarks.num_fewshot, limit=cfg.benchmarks.limit,
                                     batch_size=cfg.benchmarks.batch_size, log_samples=False,
                                     apply_chat_template=bool(cfg.benchmarks.chat_template),
                                     random_seed=cfg.generation.seed, numpy_random_seed=cfg.generation.seed,
                                     torch_random_seed=cfg.generation.seed)
    metrics = {}
    for task, values in output["results"].items():
        samples = (output.get("n-samples") or {}).get(task, {}).get("effective")
        for key, value in values.items():
            name, _, _filter = key.partition(",")
            if (name.endswith("_stderr") or name == "sample_len" or not isinstance(value, (int, float))
                    or isinstance(value, bool)):
                continue
            stderr = values.get(f"{name}_stderr,{_filter}")
            ci = ([value - 1.96 * stderr, value + 1.96 * stderr]
                  if isinstance(stderr, (int, float)) and not isinstance(stderr, bool) else None)
            label = f"lm_eval/{task}/{name}" + (f"/{_filter}" if _filter not in ("", "none") else "")
            metrics[label] = {"mean": float(value), "ci95": ci, "n": samples}
    return {"tasks": tasks, "metrics": metrics, "results": output["results"], "n-shot": output.get("n-shot"),
            "model_args": model_args,
            "versions": output.get("versions"), "lm_eval_version": output.get("lm_eval_version"),
            "limit": cfg.benchmarks.limit, "chat_template": bool(cfg.benchmarks.chat_template)}
