"""`qrtrain train`'s entry: the overrides go to Hydra's own run machinery, each job runs the story.

    qrtrain train model=tiny training.max_steps=5
    qrtrain train -m strategy=standard,finetune model=tiny training.max_steps=2
    qrtrain train --cfg job

Exit codes: 0 published, 1 training failed, 2 bad input (config, data, overrides), 130/143 interrupted.
"""

import errno
import os
import sys
import traceback
from pathlib import Path

from qrtrain.artifacts.versions import check_writable
from qrtrain.errors import QrtrainError
from qrtrain.events import emit

_task_started = False


def run_hydra(overrides: list[str]) -> int:
    """Hand the overrides to Hydra's own run machinery (multirun, launchers, sweepers, --cfg, --help)."""
    import hydra

    from qrtrain.config import conf_dir
    global _task_started
    _task_started = False
    checkpoints = sys.modules.get("qrtrain.training.checkpoints")  # loaded only once a run has trained
    if checkpoints is not None:
        checkpoints.forget_deferred_signal()
    if os.environ.get("QRTRAIN_DEBUG"):
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        check_override_syntax(overrides)
        check_before_hydra(overrides)
        check_writable(Path(artifact_root(overrides)))  # Hydra creates its run folder there first
    except QrtrainError as error:
        return report_end(error)
    sys.argv = ["qrtrain train", *overrides]
    main = hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")(hydra_task)
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        # Hydra exits 1 on a config it cannot compose (unknown option, bad override): that is a usage error.
        return 2 if code == 1 and not _task_started else code
    return 0


def check_before_hydra(overrides: list[str]) -> None:
    """A single run's config is composed and checked before Hydra creates its run folder from it (a bad
    artifact.name would otherwise fail there, in Hydra's words). Sweeps, Hydra flags and user config
    folders are left to Hydra and checked per job."""
    from qrtrain.config import check_config, compose, unknown_override_keys

    problems = unknown_override_keys(overrides)
    if problems:
        raise QrtrainError("invalid config:\n  " + "\n  ".join(problems) + "\nfix these overrides (qrtrain train "
                           "--help lists the keys)")
    if any(token.startswith(("-", "hydra", "+hydra", "~")) for token in overrides):
        return
    try:
        cfg = compose(overrides)
    except QrtrainError:
        return  # Hydra reports what it cannot compose, in its own words, as a usage error
    check_config(cfg)
    check_inputs_exist(cfg)


def check_inputs_exist(cfg) -> None:
    """Missing data files and model folders are said within a second or two, before anything heavy is
    imported or loaded (an uncached Hub id too: the Hugging Face cache is only looked up)."""
    from qrtrain.config import train_sources
    from qrtrain.models.loading import hub_model_folder, user_model_folder

    for key, source in [("data.train", s) for s in train_sources(cfg)] + [("data.eval", cfg.data.eval)]:
        if source is not None and not Path(source).exists():
            raise QrtrainError(f"{key}={source}: no such data file or folder (from {Path.cwd()}); check the path")
    if cfg.model.get("path"):
        user_model_folder(str(cfg.model.path))
    elif cfg.model.get("source") == "hub":  # a catalog model: in the local Hugging Face cache, or exit 2 now
        hub_model_folder(cfg.model)


def check_override_syntax(overrides: list[str]) -> None:
    """Name the key=value token that Hydra's override grammar rejects (Hydra's own message does not)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for token in overrides:
        if token.startswith("-") or "=" not in token:
            continue
        try:
            parser.parse_overrides([token])
        except OverrideParseException as error:
            raise QrtrainError(f"override {token!r} is not valid Hydra syntax ({error.message.splitlines()[0]}); "
                               "write key=value, lists as key=[a,b], quote values with spaces") from None


def artifact_root(overrides: list[str]) -> str:
    """artifact.root as the overrides set it (the last plain value), else the default."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    root = "outputs"
    for token in overrides:
        if token.startswith("artifact.root="):
            override = OverridesParser.create().parse_overrides([token])[0]
            if not override.is_sweep_override() and isinstance(override.value(), str):
                root = override.value()
    return root


def hydra_task(cfg) -> float:
    """One Hydra job: train and publish; returns the final evaluation loss (the sweep objective). Whatever
    ends it otherwise (bad input, an interruption, a crash) ends through `report_end`."""
    from hydra.core.hydra_config import HydraConfig

    global _task_started
    _task_started = True
    try:
        from qrtrain.training.train import train

        result = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except QrtrainError as error:
        sys.exit(report_end(error))
    except KeyboardInterrupt:
        emit("interrupted", message="interrupted (SIGINT) before training started", exit_code=130)
        raise
    except Exception as error:  # a crash, not bad input: say so, traceback only with --debug
        if os.environ.get("QRTRAIN_DEBUG"):
            raise
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            message = (f"the disk is full ({error.filename or 'while writing'}): nothing was published and complete "
                       "checkpoints are kept; free space, then run the same command to resume")
        else:
            message = f"training failed: {type(error).__name__}: {error} (rerun with --debug for the traceback)"
        sys.exit(report_end(QrtrainError(message, exit_code=1)))
    if result.exit_code:  # interrupted: how to resume
        sys.exit(report_end(QrtrainError(result.message, exit_code=result.exit_code), event="interrupted"))
    return result.objective


def report_end(error: QrtrainError, event: str = "failed") -> int:
    """The one way `qrtrain train` ends without publishing: the event, the message (the traceback too, with
    --debug), and the exit code to end with (2 bad input, 1 failed, 130/143 interrupted)."""
    from qrtrain.terminal import report_error

    if os.environ.get("QRTRAIN_DEBUG") and event == "failed":
        traceback.print_exception(error)
    emit(event, message=error.message, exit_code=error.exit_code)
    report_error(error)
    return error.exit_code
