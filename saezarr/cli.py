"""The `python -m saezarr` command line: build, export-npz, info, analyze, compare."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from saezarr.errors import InputError, SaezarrError, SaezarrNote, render

DEFAULT_CONFIG = Path(
    "gemma-scope-2b-pt-res-16k"
)  # a bundled catalogue (saezarr.inputs.catalogues.DEFAULT), in the package
DEMO_OUTPUT = Path("saezarr-demo.zarr")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    # idle OpenMP threads that spin would take the cores from the threads that compress and write; so would
    # numpy's OpenBLAS threads, which spin ~0.1 s of CPU after numpy's import and after each BLAS call
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), _library_log_lines():
            warnings.simplefilter("always", SaezarrNote)
            warnings.showwarning = _show_note
            return args.run(args)
    except SaezarrError as exc:
        print(f"saezarr: error: {_flags(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("saezarr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`saezarr catalogues | head`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush finds no pipe
        return 141


_show_warning = warnings.showwarning


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """A library note as one `saezarr: note:` line; any other warning as Python shows it."""
    if issubclass(category, SaezarrNote):
        print(f"saezarr: note: {_flags(str(message.args[0]))}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


class _LogLines(logging.Handler):
    """The library's log records of level INFO and up as `saezarr: ...` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        text = getattr(record.msg, "text", None)
        print(f"saezarr: {record.getMessage() if text is None else _flags(text)}", file=sys.stderr)


class _library_log_lines:
    """While a command runs, the `saezarr` logger's records are printed as one line each."""

    def __enter__(self) -> None:
        self.logger, self.handler = logging.getLogger("saezarr"), _LogLines(logging.INFO)
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


# the options whose flag is not their Python name with dashes: (name, value) -> flag, value None for any value
_FLAG_NAMES = {("config_file", None): "--config", ("compressed", "False"): "--uncompressed"}


def _flag(name: str, value: str | None) -> str:
    """The command-line form of an option a library message names: `--name-with-dashes [VALUE]`."""
    special = _FLAG_NAMES.get((name, value))
    if special is not None:
        return special
    flag = _FLAG_NAMES.get((name, None), f"--{name.replace('_', '-')}")
    return flag if value in (None, "True") else f"{flag} {value}"


def _flags(message: str) -> str:
    """A library message with the options it names written as command-line flags."""
    return render(message, _flag)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one `saezarr: error:` line."""

    def error(self, message: str):
        self.exit(2, f"saezarr: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="saezarr", description="Gemma Scope SAE features of Gemma-2 in one Zarr store.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_Parser)
    _add_build(commands)
    _add_export(commands)
    _add_info(commands)
    _add_analyze(commands)
    _add_compare(commands)
    _add_catalogues(commands)
    return parser


def _add_build(commands) -> None:
    p = commands.add_parser("build", help="build or resume a store from a labeled CSV")
    p.add_argument("--input", type=Path, help="CSV with columns sentence,concept_strength_label")
    p.add_argument("--output", type=Path, help="the Zarr store folder to write")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"SAE configuration file, or a bundled catalogue's name (`saezarr catalogues`; default: {DEFAULT_CONFIG})",
    )
    p.add_argument("--model", help="hub repo id or local folder; overrides the config file")
    p.add_argument("--sae-repo", help="hub repo id or local folder; overrides the config file")
    p.add_argument("--layers", help="only configs on these layers, e.g. 3,12")
    p.add_argument("--configs", help="only these configs, e.g. layer_12_l0_82,layer_3_l0_59")
    p.add_argument(
        "--fragments", choices=("token", "word", "final"), default=None, help="fragment granularity (default token)"
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="model dtype (default float32)")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="sentences per forward (default 16, or the store's own on --resume)",
    )
    p.add_argument(
        "--sae-memory",
        default=None,
        help="memory for SAE encoders per pass (default: on CUDA the free memory less a reserve, on CPU 8GiB)",
    )
    p.add_argument(
        "--chunk-fragments",
        type=_positive_int,
        default=None,
        help="fragments per chunk, the unit of writing and resuming (default 512)",
    )
    p.add_argument(
        "--workers", type=_positive_int, default=None, help="writer threads (default: one per usable core, at most 32)"
    )
    p.add_argument(
        "--max-chunks", type=_positive_int, default=None, help="stop after this many chunks (try a small part first)"
    )
    p.add_argument(
        "--residuals",
        nargs="?",
        const="all",
        default=None,
        help="also keep the residual stream: of every layer, or of these layers, e.g. --residuals 3,12",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted build")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    mode.add_argument(
        "--extend",
        action="store_true",
        help="grow the store at --output: the config file's new SAEs, the input's rows after the store's",
    )
    p.add_argument(
        "--force-unlock", action="store_true", help="take the store's lock even if another build seems to hold it"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--demo", action="store_true", help="build from the bundled sample with a tiny generated model (offline)"
    )
    _add_cluster_options(p, local=True)
    p.set_defaults(run=_run_build)


def _add_cluster_options(p, local: bool) -> None:
    """Options choosing the dask cluster a command runs on."""
    where = p.add_mutually_exclusive_group()
    if local:
        where.add_argument(
            "--local-workers",
            type=_positive_int,
            default=None,
            help="run on a local dask cluster of N single-thread worker processes (on CUDA: one per GPU)",
        )
    where.add_argument(
        "--scheduler", default=None, help="run on the dask cluster of this scheduler, e.g. tcp://host:8786"
    )
    where.add_argument(
        "--scheduler-file", type=Path, default=None, help="run on the dask cluster of this scheduler file"
    )
    p.add_argument(
        "--worker-timeout",
        type=_positive_float,
        default=None,
        help="seconds to wait for the scheduler and a first worker (default 60)",
    )
    p.add_argument(
        "--tls-ca-file", type=Path, default=None, help="TLS: the CA certificate the scheduler's is signed by"
    )
    p.add_argument("--tls-cert", type=Path, default=None, help="TLS: this client's certificate")
    p.add_argument("--tls-key", type=Path, default=None, help="TLS: this client's private key")


def _cluster_options(args):
    from saezarr.execution.connect import DEFAULT_WORKER_TIMEOUT, ClusterOptions

    return ClusterOptions(
        local_workers=getattr(args, "local_workers", None),
        scheduler=args.scheduler,
        scheduler_file=args.scheduler_file,
        worker_timeout=args.worker_timeout or DEFAULT_WORKER_TIMEOUT,
        tls_ca_file=args.tls_ca_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _run_build(args) -> int:
    from saezarr.build.pipeline import BuildOptions, build
    from saezarr.inputs.configs import parse_layers
    from saezarr.machine import parse_size

    _quiet_libraries()
    if args.demo:
        from saezarr.testing.synthetic import DEMO_CSV, ensure_demo

        if args.output is None and not args.resume:
            args.overwrite = True  # the default demo store is rebuilt each time
        args.input = args.input or DEMO_CSV
        args.output = args.output or DEMO_OUTPUT
        args.config = args.config or ensure_demo()
    if args.output is None or (args.input is None and not args.extend):
        raise SaezarrError("build: --input and --output are required (or use --demo)")
    options = BuildOptions(
        input=args.input,
        output=args.output,
        config_file=args.config or DEFAULT_CONFIG,
        model=args.model,
        sae_repo=args.sae_repo,
        layers=parse_layers(args.layers) if args.layers else None,
        configs=args.configs.split(",") if args.configs else None,
        fragments=args.fragments,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        sae_memory=parse_size(args.sae_memory, "--sae-memory") if args.sae_memory else None,
        chunk_fragments=args.chunk_fragments,
        workers=args.workers,
        resume=args.resume,
        overwrite=args.overwrite,
        force_unlock=args.force_unlock,
        quiet=args.quiet,
        max_chunks=args.max_chunks,
        residuals=_residual_layers(args.residuals),
        extend=args.extend,
        cluster=_cluster_options(args),
    )
    summary = build(options)
    print(summary.line())
    return 0


def _residual_layers(text: str | None):
    """--residuals: None (absent), "all" (given alone), or the layers listed."""
    from saezarr.inputs.configs import parse_layers

    if text is None or text == "all":
        return text
    try:
        return parse_layers(text)
    except SaezarrError as exc:
        raise InputError(_flags(exc.message).replace("--layers", "--residuals", 1)) from None


def _add_export(commands) -> None:
    p = commands.add_parser("export-npz", help="write one legacy .npz file per configuration")
    p.add_argument("store", type=Path)
    p.add_argument("--output", type=Path, required=True, help="folder for the .npz files")
    p.add_argument("--configs", help="only these configs, e.g. layer_12_l0_82,layer_3_l0_59")
    p.add_argument("--layers", help="only configs on these layers, e.g. 3,12")
    p.add_argument("--uncompressed", action="store_true", help="np.savez instead of np.savez_compressed")
    p.add_argument(
        "--jobs",
        type=_positive_int,
        default=None,
        help="files written at once (default: one per usable core, fewer if memory is short)",
    )
    p.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    p.add_argument(
        "--per-sentence",
        action="store_true",
        help="one sentence_NNNNNN.npz per sentence (all selected configs, and the residual stream if kept)",
    )
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from saezarr.export.per_config import export_npz
    from saezarr.export.per_sentence import export_per_sentence
    from saezarr.inputs.configs import parse_layers

    written = (export_per_sentence if args.per_sentence else export_npz)(
        args.store,
        args.output,
        configs=args.configs.split(",") if args.configs else None,
        layers=parse_layers(args.layers) if args.layers else None,
        compressed=not args.uncompressed,
        jobs=args.jobs,
        overwrite=args.overwrite,
    )
    print(f"saezarr: {written.line()}")
    return 0


def _add_info(commands) -> None:
    p = commands.add_parser("info", help="summarise a store")
    p.add_argument("store", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    import json

    from saezarr.store.reading import format_info, store_info

    info = store_info(args.store)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def _add_catalogues(commands) -> None:
    p = commands.add_parser("catalogues", help="list the bundled SAE catalogues, usable as build --config NAME")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_run_catalogues)


def _run_catalogues(args) -> int:
    import dataclasses
    import json

    from saezarr.inputs.catalogues import list_catalogues

    found = list_catalogues()
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in found], indent=2))
        return 0
    for catalogue in found:
        print(f"{catalogue.name}  {catalogue.n_configs} SAEs  {catalogue.model}  {catalogue.sae_repo}")
    return 0


def _add_analyze(commands) -> None:
    p = commands.add_parser("analyze", help="rank every SAE feature against the concept labels")
    p.add_argument("store", type=Path)
    p.add_argument("--output", type=Path, required=True, help="folder for the analysis files (must not exist)")
    p.add_argument("--configs", help="only these configs, e.g. layer_12_l0_82,layer_3_l0_59")
    p.add_argument("--layers", help="only configs on these layers, e.g. 3,12")
    p.add_argument(
        "--pool",
        choices=("final", "max", "mean"),
        default="final",
        help="one activation per sentence: its final token's, or the max or mean over its fragments",
    )
    p.add_argument("--min-pearson", type=float, default=0.4, help="filter: Pearson correlation at least this (-1..1)")
    p.add_argument("--min-tpr", type=float, default=0.5, help="filter: true positive rate at least this (0..1)")
    p.add_argument("--max-fpr", type=float, default=0.2, help="filter: false positive rate at most this (0..1)")
    p.add_argument("--top-n", type=_positive_int, default=50, help="features with examples and in the report")
    p.add_argument("--examples-per-label", type=_positive_int, default=5, help="example sentences per label")
    p.add_argument(
        "--permutations",
        type=_count,
        default=100,
        help="label permutations of the chance baseline (family-wise p-values); 0 turns it off (default 100)",
    )
    p.add_argument(
        "--folds",
        type=_count,
        default=5,
        help="folds of the held-out validation and the per-layer emergence curves; 0 turns them off (default 5)",
    )
    p.add_argument(
        "--probe-permutations",
        type=_count,
        default=None,
        help="permuted labellings behind the emergence curves' chance levels (default 20)",
    )
    p.add_argument("--seed", type=_count, default=0, help="seed of the permutations and folds (default 0)")
    p.add_argument("--allow-partial", action="store_true", help="analyse the finished configs of an unfinished store")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_cluster_options(p, local=False)
    p.set_defaults(run=_run_analyze)


def _run_analyze(args) -> int:
    from saezarr.analysis.run import AnalyzeOptions, analyze
    from saezarr.inputs.configs import parse_layers

    options = AnalyzeOptions(
        store=args.store,
        output=args.output,
        configs=args.configs.split(",") if args.configs else None,
        layers=parse_layers(args.layers) if args.layers else None,
        pool=args.pool,
        min_pearson=args.min_pearson,
        min_tpr=args.min_tpr,
        max_fpr=args.max_fpr,
        top_n=args.top_n,
        examples_per_label=args.examples_per_label,
        overwrite=args.overwrite,
        allow_partial=args.allow_partial,
        quiet=args.quiet,
        permutations=args.permutations,
        folds=args.folds,
        seed=args.seed,
        **({} if args.probe_permutations is None else {"probe_permutations": args.probe_permutations}),
        cluster=_cluster_options(args),
    )
    print(analyze(options).line())
    return 0


def _add_compare(commands) -> None:
    p = commands.add_parser("compare", help="compare analyses of several concepts on the same model and SAEs")
    p.add_argument("analyses", type=Path, nargs="+", metavar="DIR", help="`saezarr analyze` output folders")
    p.add_argument("--output", type=Path, required=True, help="folder for the comparison (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder saezarr compare wrote")
    p.set_defaults(run=_run_compare)


def _run_compare(args) -> int:
    from saezarr.analysis.compare import compare

    output = compare(args.analyses, args.output, args.overwrite)
    print(f"saezarr: compared {len(args.analyses)} analyses; wrote {output}")
    return 0


def _analysis_cluster(args):
    """With --scheduler or --scheduler-file, the analysis's units of work run on that cluster's workers."""
    import contextlib

    if args.scheduler is None and args.scheduler_file is None:  # nor import distributed (0.3-1 s)
        return contextlib.nullcontext()
    from saezarr.analysis.cache.files import cache_root
    from saezarr.clients import analysis_client

    return analysis_client(_cluster_options(args), args.store, cache_root())


def _positive_int(text: str) -> int:
    """Parse a positive integer option value."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _count(text: str) -> int:
    """Parse a non-negative integer option value."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    """Parse a positive number option value."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
