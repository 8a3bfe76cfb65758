"""The `qrtrain` command line: a thin Typer app; each verb calls one function in its own module.

    qrtrain --help
    qrtrain train model=tiny training.max_steps=5
"""

import json
import os
import sys
from pathlib import Path

import typer

from qrtrain import __version__
from qrtrain.errors import QrtrainError
from qrtrain.events import check_events_file, emit
from qrtrain.terminal import report_error

app = typer.Typer(
    help="Fine-tune causal language models with LoRA/QLoRA and publish adapter artifacts you can verify.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qrtrain {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    if debug:
        os.environ["QRTRAIN_DEBUG"] = "1"
    check_events_file()


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    help="Fine-tune and publish a new artifact version. Takes Hydra overrides: qrtrain train --help lists them.",
)
def train(ctx: typer.Context) -> None:
    from qrtrain.training.run import run_hydra

    args = list(ctx.args)
    if "--debug" in args:
        args.remove("--debug")
        os.environ["QRTRAIN_DEBUG"] = "1"
    raise typer.Exit(run_hydra(args))  # run_hydra reports whatever ends a run unpublished


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evaluate(
    ctx: typer.Context,
    target: Path = typer.Argument(..., help="An artifact version (outputs/NAME/v1), an artifact (latest version) or a model folder."),
) -> None:
    """Measure loss, perplexity and answer quality on an evaluation suite. Extra args: key=value overrides."""
    from qrtrain.evaluation.evaluate import evaluate as run_evaluation

    emit("evaluating", verb="evaluate", target=str(target))
    try:
        folder = run_evaluation(target, list(ctx.args))
    except QrtrainError as error:
        fail(error)
    emit("done", report=str(folder))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def compare(ctx: typer.Context) -> None:
    """Base vs retrieval vs adapters on the same questions, with confidence intervals. Args: key=value overrides."""
    from qrtrain.evaluation.compare import compare as run_comparison

    emit("evaluating", verb="compare")
    try:
        folder = run_comparison(list(ctx.args))
    except QrtrainError as error:
        fail(error)
    emit("done", report=str(folder))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def synth(ctx: typer.Context) -> None:
    """Generate training data from documents or templates with a model, filtered, with provenance. Args: key=value."""
    from qrtrain.synth.synth import synth as run_synth

    try:
        folder = run_synth(list(ctx.args))
    except QrtrainError as error:
        fail(error)
    typer.echo(str(folder))


@app.command("package")
def package_artifact(
    target: Path = typer.Argument(..., help="An artifact version (outputs/NAME/v1) or artifact (its latest version)."),
    fmt: str = typer.Option(..., "--format", help="bundle | hf | merged | ollama | gguf"),
    output: Path = typer.Option(None, "--output", help="Where to write; default ROOT/packages/NAME-vN-FORMAT[.tar.gz] beside the artifact."),
    base: Path = typer.Option(None, "--base", help="The base model folder (default: the one in metadata.json)."),
    sign_key: Path = typer.Option(None, "--sign-key", help="Sign the package (hf, merged, ollama) with this private key."),
    sign_certificate: Path = typer.Option(None, "--sign-certificate", help="The signing certificate of --sign-key."),
    sign_chain: list[Path] = typer.Option(None, "--sign-chain", help="Certificates up to the root of trust (repeatable)."),
    quant: str = typer.Option(None, "--quant", help="--format gguf only: q8_0 (default) | f16."),
) -> None:
    """Package a verified version: a bundle, a Hub folder, a merged model, an Ollama adapter or one GGUF file."""
    from qrtrain.artifacts.package import package
    from qrtrain.artifacts.signing import SignWith

    emit("packaging", target=str(target), format=fmt)
    try:
        sign_with = SignWith(sign_key, sign_certificate, list(sign_chain or [])) if sign_key else None
        out = package(target, fmt, output, base, sign_with, quant)
    except QrtrainError as error:
        fail(error)
    emit("done", output=str(out))
    typer.echo(str(out))


@app.command()
def unpack(
    bundle: Path = typer.Argument(..., help="A bundle written by qrtrain package --format bundle."),
    dest: Path = typer.Argument(..., help="The folder to extract into."),
) -> None:
    """Extract a bundle safely: absolute paths, '..', links and devices are refused before anything is written."""
    from qrtrain.artifacts.package import unpack as unpack_bundle

    try:
        typer.echo(str(unpack_bundle(bundle, dest)))
    except QrtrainError as error:
        fail(error)


@app.command()
def verify(
    path: Path = typer.Argument(..., help="A version folder (outputs/NAME/v1) or an artifact folder (outputs/NAME: every version)."),
    base: Path = typer.Option(None, "--base", help="Also check this base model folder against the hashes in metadata.json."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
    key: Path = typer.Option(None, "--key", help="Check model.sig with this public key (PEM)."),
    chain: list[Path] = typer.Option(None, "--certificate-chain", help="Check model.sig against this certificate chain (repeatable)."),
    identity: str = typer.Option(None, "--identity", help="Sigstore: the signer's identity (an email or workflow URL); needs --issuer."),
    issuer: str = typer.Option(None, "--issuer", help="Sigstore: the OIDC issuer of --identity."),
    require_signature: bool = typer.Option(False, "--require-signature", help="Fail (exit 3) a version without a valid signature."),
) -> None:
    """Check an artifact exactly against its manifest (and its signature when given a key). Exit 0 verified,
    1 a check failed, 2 usage or I/O error, 3 the files verify but the signature does not."""
    from qrtrain.artifacts.signing import TrustWith
    from qrtrain.artifacts.verify import verify as verify_artifact

    try:
        if (identity is None) != (issuer is None):
            raise QrtrainError("--identity and --issuer go together (Sigstore: who signed, and who vouched for them)")
        trust = TrustWith(key, list(chain or []), identity, issuer, require_signature)
        code = verify_artifact(path, base, as_json, trust)
    except QrtrainError as error:
        fail(error)
    raise typer.Exit(code)


@app.command("sign")
def sign(
    target: str = typer.Argument(..., help="A version: NAME/vN (or NAME, its latest) under --root, or a version folder."),
    key: Path = typer.Option(None, "--key", help="The private key (PEM, elliptic curve) that signs."),
    certificate: Path = typer.Option(None, "--certificate", help="The signing certificate of --key (then the signature carries it)."),
    chain: list[Path] = typer.Option(None, "--certificate-chain", help="Certificates up to the root of trust (repeatable)."),
    sigstore: bool = typer.Option(False, "--sigstore", help="Sign keylessly with Sigstore (online: opens an OIDC login)."),
    root: Path = typer.Option(Path("outputs"), "--root", help="The artifact root (artifact.root when training)."),
) -> None:
    """Sign a version that verifies (OpenSSF model signing): model.sig covers every file of the version."""
    from qrtrain.artifacts.sign import sign as sign_version
    from qrtrain.artifacts.signing import SignWith

    try:
        if sigstore and key is not None:
            raise QrtrainError("--sigstore signs without a key: give either --key or --sigstore")
        typer.echo(str(sign_version(Path(target), root, SignWith(key, certificate, list(chain or []), sigstore))))
    except QrtrainError as error:
        fail(error)


@app.command("diff")
def diff(
    a: str = typer.Argument(..., help="A version: NAME/vN (or NAME, its latest) under --root, or a version folder."),
    b: str = typer.Argument(..., help="The version to compare it with."),
    root: Path = typer.Option(Path("outputs"), "--root", help="The artifact root (artifact.root when training)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Two versions side by side: config keys, data, base, method and parent, metrics with deltas, sizes."""
    from qrtrain.artifacts.diff import diff_versions, print_diff

    try:
        print_diff(diff_versions(a, b, root), as_json)
    except QrtrainError as error:
        fail(error)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def gate(
    ctx: typer.Context,
    candidate: str = typer.Argument(..., help="The version to judge: NAME/vN (or NAME, its latest) under --root, or a version folder."),
    baseline: str = typer.Option(..., "--baseline", help="NAME/vN, previous (the candidate's next lower version) or latest."),
    metric: list[str] = typer.Option(None, "--metric", help="A per-question metric (repeatable; default keyword_accuracy)."),
    max_drop: list[float] = typer.Option(None, "--max-drop", help="The largest drop allowed (one, or one per --metric; default 0.02)."),
    confidence: float = typer.Option(0.95, "--confidence", help="The bootstrap interval's level."),
    root: Path = typer.Option(Path("outputs"), "--root", help="The artifact root (artifact.root when training)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """For CI: exit 1 when the candidate is worse than the baseline on a metric beyond --max-drop (paired
    bootstrap), 0 when not worse. Extra args: evaluate's key=value overrides (the suite)."""
    from qrtrain.evaluation.gate import gate as run_gate
    from qrtrain.evaluation.gate import print_gate

    try:
        result = run_gate(candidate, baseline, list(metric or []), list(max_drop or [0.02]), root, list(ctx.args),
                          confidence)
    except QrtrainError as error:
        fail(error)
    print_gate(result, as_json)
    raise typer.Exit(0 if result["passed"] else 1)


@app.command()
def replay(
    target: str = typer.Argument(..., help="A version: NAME/vN (or NAME, its latest) under --root, or a version folder."),
    steps: int = typer.Option(None, "--steps", help="Replay the first N steps (default: all the recorded ones)."),
    root: Path = typer.Option(Path("outputs"), "--root", help="The artifact root (artifact.root when training)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Train the first steps again from the recorded config and compare the loss curve. Exit 0 reproduced,
    1 it differs, 2 a data or base model file differs from the recorded digest."""
    from qrtrain.training.replay import print_replay
    from qrtrain.training.replay import replay as run_replay

    try:
        result = run_replay(target, root, steps)
    except QrtrainError as error:
        fail(error)
    print_replay(result, as_json)
    raise typer.Exit(0 if result["reproduced"] else 1)


@app.command("list")
def list_artifacts(
    root: Path = typer.Option(Path("outputs"), "--root", help="The artifact root (artifact.root when training)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    checkpoints: bool = typer.Option(False, "--checkpoints", help="List the checkpoints of unfinished trainings."),
    clean: bool = typer.Option(False, "--clean-checkpoints", help="Delete the checkpoints no live run holds."),
) -> None:
    """List artifacts and versions: created, base model, settings, data, eval loss, size, verified."""
    from qrtrain.artifacts import listing

    try:
        if clean:
            removed = listing.remove_checkpoints(listing.checkpoint_folders(root))
            typer.echo(f"removed {len(removed)} checkpoint folder(s), "
                       f"{sum(r['size_bytes'] for r in removed) / 1e6:.1f} MB")
        elif checkpoints:
            listing.print_checkpoints(listing.checkpoint_folders(root), as_json)
        else:
            listing.print_versions(listing.list_versions(root), as_json)
    except QrtrainError as error:
        fail(error)


@app.command("models")
def models(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """The model catalog (model=NAME): Hub id, architecture, size, max_length, chat template, cached here or not."""
    from qrtrain.models.catalog import catalog, print_catalog

    try:
        print_catalog(catalog(), as_json)
    except QrtrainError as error:
        fail(error)


@app.command()
def deploy(
    target: str = typer.Argument(None, help="The version to deploy: NAME/vN (or NAME, its latest) under --root, or a version folder."),
    name: str = typer.Option(None, "--name", help="The endpoint: what clients send as `model` to qrtrain serve's /v1."),
    engine: str = typer.Option("transformers", "--engine", help="transformers | vllm | llama.cpp | ollama"),
    canary: int = typer.Option(0, "--canary", help="Send this percentage of the endpoint's requests to the new version."),
    promote: bool = typer.Option(False, "--promote", help="The endpoint's canary becomes live."),
    rollback: bool = typer.Option(False, "--rollback", help="Stop the canary, or return to the previous version."),
    stop: bool = typer.Option(False, "--stop", help="Stop every engine of the endpoint."),
    port: int = typer.Option(None, "--port", help="The engine's port on 127.0.0.1 (default: a free one)."),
    engine_arg: list[str] = typer.Option(None, "--engine-arg", help="One more argument for the engine (repeatable)."),
    min_agreement: float = typer.Option(0.9, "--min-agreement", help="The equivalence gate: least share of answers identical to evaluate's."),
    ready_timeout: float = typer.Option(300, "--ready-timeout", help="Seconds the engine may take to become ready."),
    device: str = typer.Option("auto", "--device", help="transformers serve's device (auto, cpu, cuda:0)."),
    root: Path = typer.Option(Path("outputs"), "--root", help="The artifact root (artifact.root when training)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Serve a verified version through an inference engine, checked (readiness, a smoke completion, the
    equivalence gate) before it takes traffic; without arguments, list the deployments. Exit 0 serving,
    1 a check failed (the previous version keeps serving), 2 bad input."""
    from qrtrain.deploy import deploy as deploying

    try:
        actions = [flag for flag, given in (("--promote", promote), ("--rollback", rollback), ("--stop", stop)) if given]
        if len(actions) > 1 or (actions and target):
            raise QrtrainError(f"{' and '.join(actions + (['a version'] if target else []))}: give one action at a time")
        if (target or actions) and not name:
            raise QrtrainError("--name ENDPOINT is needed: the endpoint clients send as `model`")
        if actions:
            action = {"--promote": deploying.promote, "--rollback": deploying.rollback, "--stop": deploying.stop}
            done = action[actions[0]](root, name)
            emit("done", endpoint=name, action=actions[0][2:])
            typer.echo(json.dumps(done, default=str) if as_json else f"{name}: {actions[0][2:]} done")
        elif target:
            emit("deploying", target=target, endpoint=name)
            request = deploying.DeployRequest(target, name, root, engine, canary, port, ready_timeout, min_agreement,
                                              list(engine_arg or []), device)
            done = deploying.deploy(request)
            emit("done", endpoint=name, version=done["version"], deployment=done["id"])
            gate = done["checks"]["equivalence"]
            typer.echo(json.dumps(done, default=str) if as_json else
                       f"{name}: {done['version']} is {done['status']}"
                       f"{f' ({canary}% of requests)' if done['status'] == 'canary' else ''} on {engine} "
                       f"(127.0.0.1:{done['port']}); equivalence gate: {gate['answer_agreement']:.3f} of "
                       f"{gate['n']} answers identical to evaluate's, "
                       + ", ".join(f"{k} {m['endpoint']:.3f} vs {m['recorded']:.3f}" for k, m in gate["metrics"].items()))
        else:
            deploying.print_deployments(deploying.deployments(root), as_json)
    except QrtrainError as error:
        fail(error)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address; any but localhost requires an API token."),
    port: int = typer.Option(8765, "--port"),
    root: Path = typer.Option(Path("outputs"), "--root", help="The artifact root; the service's state lives in ROOT/.service."),
    workers: int = typer.Option(1, "--workers", min=1, help="Jobs run at once; the rest wait in order."),
    data_root: list[Path] = typer.Option(None, "--data-root", help="Where request paths may point (repeatable; default: the current folder)."),
    trust_proxy: list[str] = typer.Option(None, "--trust-proxy", help="A reverse proxy's address whose X-Forwarded-For is believed (repeatable)."),
    trusted_key: Path = typer.Option(None, "--trusted-key", help="The public key (PEM) the registry checks signatures with."),
    health_interval: float = typer.Option(10, "--health-interval", help="Seconds between deployments' health checks (0: none)."),
) -> None:
    """Run the training service: job API, live events, the registry over HTTP and a dashboard at /."""
    from qrtrain.service.serve import serve as run_service

    try:
        run_service(host, port, root, workers, data_root or [Path.cwd()], trust_proxy or [], trusted_key, health_interval)
    except QrtrainError as error:
        fail(error)


def fail(error: QrtrainError) -> None:
    """Report a QrtrainError and exit with its code (the traceback too, with --debug)."""
    if os.environ.get("QRTRAIN_DEBUG"):
        import traceback

        traceback.print_exception(error)
    emit("failed", message=error.message, exit_code=error.exit_code)
    report_error(error)
    raise typer.Exit(error.exit_code)


def main() -> None:
    """Console-script entry point: QrtrainError becomes a message and its exit code."""
    try:
        app()
    except QrtrainError as error:
        if os.environ.get("QRTRAIN_DEBUG"):
            raise
        report_error(error)
        sys.exit(error.exit_code)
    except Exception as error:  # a bug or an unexpected failure: one line, the traceback with --debug
        if os.environ.get("QRTRAIN_DEBUG"):
            raise
        report_error(QrtrainError(f"{type(error).__name__}: {error} (rerun with --debug for the traceback)"))
        sys.exit(1)


if __name__ == "__main__":
    main()
