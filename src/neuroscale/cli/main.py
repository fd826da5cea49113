"""``neuroscale`` command line: a BIDS App (``bids_dir output_dir {participant,group}``).

The CLI only parses arguments, starts (or connects to) the Dask cluster, calls a pipeline and
maps :class:`~neuroscale.errors.NeuroscaleError` to a one-line message and a non-zero exit
code.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from neuroscale import __version__
from neuroscale.errors import ConfigurationError, NeuroscaleError


def _seed(text: str) -> tuple[float, float, float, float]:
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or not all(math.isfinite(v) for v in parts) or parts[3] <= 0:
        raise argparse.ArgumentTypeError(
            f"--seed expects X,Y,Z,RADIUS_MM (finite world coordinates in mm, radius > 0), "
            f"got {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_output_locations(bids_dir: Path, out_dir: Path, work_dir: Path) -> None:
    """Refuse output/work locations that would write into the raw data or over a file.

    fMRIPrep refuses an output folder equal to the BIDS folder (suggesting
    ``<bids_dir>/derivatives/<pipeline>``) and a working directory inside it; neuroscale
    refuses any output or working directory inside the raw dataset except under its
    ``derivatives/`` folder, where BIDS puts derivative datasets.
    """
    derivatives = bids_dir / "derivatives"
    for what, path in (("output_dir", out_dir), ("--work-dir", work_dir)):
        if path.exists() and not path.is_dir():
            raise ConfigurationError(f"{what} exists and is not a directory", path)
        if _inside(path, bids_dir) and not (path != derivatives and _inside(path, derivatives)):
            raise ConfigurationError(
                f"{what} is inside the BIDS dataset {bids_dir} (the raw data): write "
                f"derivatives outside it or under {derivatives}/ (e.g. "
                f"{derivatives / 'neuroscale'})", path)
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigurationError(f"{what}: {parent} is not a directory", path)
                break


def _optional_float(text: str) -> float | None:
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a frequency in Hz or 'none', got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (BIDS-Apps conventions)."""
    parser = argparse.ArgumentParser(
        prog="neuroscale",
        description="Out-of-core fMRI analysis of a BIDS dataset on Dask (BIDS App). "
        "Also: `neuroscale catalog ...` for data management.",
    )
    parser.add_argument("bids_dir", type=Path, help="root of the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where the derivatives are written")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="participant: per-run analysis; group: QC table and summaries")
    parser.add_argument("--version", action="version", version=f"neuroscale {__version__}")
    sel = parser.add_argument_group("selection")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", metavar="LABEL",
                     help="participants to analyse (with or without 'sub-'); default all")
    sel.add_argument("--bids-filter-file", type=Path, metavar="FILE",
                     help="JSON filter as fMRIPrep's, e.g. {\"bold\": {\"task\": \"oneback\"}}")
    ana = parser.add_argument_group("analysis")
    ana.add_argument("--atlas", type=Path, action="append", default=[], metavar="PATH",
                     help="MNI152NLin2009cAsym-space label image (repeatable), brought into each "
                     "run's native space through the T1w registration; label names from a "
                     "table beside it (.txt/.csv/.tsv/.lut). With --no-registration: a label "
                     "image in the BOLD's world space")
    ana.add_argument("--atlas-space", choices=["MNI152NLin2009cAsym", "bold"],
                     default="MNI152NLin2009cAsym",
                     help="space of every --atlas: MNI152NLin2009cAsym (default; needs the "
                     "T1w registration, or fMRIPrep derivatives in an MNI space) or bold (a "
                     "label image in the BOLD's own world space, e.g. scanner space with "
                     "--no-registration: resampled nearest neighbour, no transform)")
    ana.add_argument("--seed", type=_seed, action="append", default=[], metavar="X,Y,Z,RADIUS_MM",
                     help="seed sphere in world coordinates, mm (repeatable)")
    ana.add_argument("--mask", type=Path, metavar="PATH",
                     help="brain mask on the BOLD grid (default: computed from the mean EPI)")
    ana.add_argument("--nuisance-strategy", default="36P",
                     help="confound regression (XCP-D's names): 36P (default), 27P, 24P, "
                     "acompcor, acompcor_gsr, gsr_only, none, or a custom strategy YAML file")
    ana.add_argument("--fd-threshold", type=float, default=0.5, metavar="MM",
                     help="censor volumes with framewise displacement above MM before "
                     "connectivity, as XCP-D (default 0.5; 0 disables)")
    pre = parser.add_argument_group("preprocessing")
    pre.add_argument("--derivatives", action="append", default=[], metavar="fmriprep=PATH",
                     help="use fMRIPrep's preprocessed BOLD, brain mask and confounds from PATH "
                     "instead of preprocessing the raw runs")
    pre.add_argument("--no-motion-correction", action="store_true",
                     help="do not realign the raw runs (no motion parameters, no FD)")
    pre.add_argument("--no-registration", action="store_true",
                     help="no T1w processing and no registration to MNI (EPI-only)")
    pre.add_argument("--template", type=Path, metavar="PATH",
                     help="MNI152NLin2009cAsym brain template (default: shipped with neuroscale)")
    ana.add_argument("--high-pass", type=_optional_float, default=0.01, metavar="HZ",
                     help="high-pass cut-off in Hz (default 0.01; 'none' to disable)")
    ana.add_argument("--low-pass", type=_optional_float, default=0.1, metavar="HZ",
                     help="low-pass cut-off in Hz (default 0.1; 'none' to disable)")
    ana.add_argument("--dc-threshold", type=float, default=0.25, metavar="R",
                     help="correlation threshold for degree centrality (default 0.25)")
    ana.add_argument("--no-centrality", action="store_true",
                     help="skip degree centrality (the costliest map on large runs)")
    ana.add_argument("--no-report", action="store_true", help="do not write HTML reports")
    ana.add_argument("--catalog", metavar="URL",
                     help="register every derivative, with its sources and parameters, in this "
                     "neuroscale catalog (e.g. sqlite:///lab.db; see `neuroscale catalog init`)")
    ana.add_argument("--catalog-collection", metavar="PATH",
                     help="catalog collection of the results (default: your /home/USER/neuroscale)")
    exe = parser.add_argument_group("execution")
    exe.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                     help="address of an existing Dask scheduler (default: a local cluster)")
    exe.add_argument("--cluster", metavar="NAME|slurm|pbs|sge",
                     help="where the workers run: 'local' (default), 'slurm', 'pbs' or 'sge' "
                     "(jobs through dask-jobqueue: pip install 'neuroscale[cluster]'), or a "
                     "profile of the Dask config (neuroscale.profiles.NAME, e.g. in "
                     "~/.config/dask/neuroscale.yaml)")
    exe.add_argument("--n-workers", type=int, metavar="N", help="local workers (default: cores)")
    exe.add_argument("--threads-per-worker", type=int, metavar="N",
                     help="threads per local worker (default 1)")
    exe.add_argument("--memory-limit", metavar="SIZE",
                     help="memory bound of each local worker, e.g. 2GB")
    exe.add_argument("--queue", metavar="NAME", help="batch cluster: partition / queue")
    exe.add_argument("--account", metavar="NAME", help="batch cluster: account / project charged")
    exe.add_argument("--cores", type=int, metavar="N", help="batch cluster: CPU cores per job")
    exe.add_argument("--memory", metavar="SIZE", help="batch cluster: memory per job, e.g. 32GB")
    exe.add_argument("--walltime", metavar="HH:MM:SS", help="batch cluster: job time limit")
    exe.add_argument("--jobs", type=int, metavar="N",
                     help="batch cluster: number of jobs (default 1 or the profile's)")
    exe.add_argument("--adaptive", metavar="MIN:MAX",
                     help="batch cluster: scale between MIN and MAX jobs with the work")
    exe.add_argument("--max-concurrent-subjects", type=int, metavar="N",
                     help="participants processed at once on the cluster (default: one per two "
                     "workers); one subject's failure never stops the others")
    exe.add_argument("--gpu", action="store_true",
                     help="compute ALFF/fALFF and degree centrality on the CUDA GPU (CuPy: pip "
                     "install 'neuroscale[gpu]'); fails at once where there is none")
    exe.add_argument("--work-dir", type=Path, metavar="DIR",
                     help="working copies and intermediates (default: OUTPUT_DIR_work beside OUTPUT_DIR)")
    exe.add_argument("--no-progress", action="store_true", help="no progress bars")
    exe.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _run_app(args: argparse.Namespace) -> int:
    from neuroscale.compute.cluster import cluster_client

    out_dir: Path = args.output_dir.resolve()
    bids_dir: Path = args.bids_dir.resolve()
    if out_dir == bids_dir:
        raise ConfigurationError("output_dir must differ from bids_dir (suggestion: "
                                 f"{bids_dir / 'derivatives' / 'neuroscale'})", out_dir)
    work_dir = (args.work_dir or out_dir.parent / f"{out_dir.name}_work").resolve()
    _check_output_locations(bids_dir, out_dir, work_dir)
    if args.analysis_level == "group":
        from neuroscale.pipelines.group import run_group

        result = run_group(out_dir)
        print(f"Group report: {result.report}")
        print(f"Group QC table: {result.qc_table}")
        return 0

    from neuroscale.pipelines.participant import (
        ParticipantConfig,
        run_participant,
        validate_config,
    )

    derivatives: dict[str, Path] = {}
    if args.derivatives:
        from neuroscale.bids.fmriprep import parse_derivatives_arg

        derivatives = parse_derivatives_arg(args.derivatives)
    filters = None
    if args.bids_filter_file is not None:
        from neuroscale.bids.layout import load_bids_filter_file

        filters = load_bids_filter_file(args.bids_filter_file)
    config = ParticipantConfig(
        high_pass=args.high_pass,
        low_pass=args.low_pass,
        nuisance_strategy=args.nuisance_strategy,
        dc_threshold=args.dc_threshold,
        atlases=[Path(p).resolve() for p in args.atlas],
        atlas_space=args.atlas_space,
        seeds=list(args.seed),
        mask=args.mask.resolve() if args.mask else None,
        work_dir=work_dir,
        centrality=not args.no_centrality,
        catalog=args.catalog,
        catalog_collection=args.catalog_collection,
        report=not args.no_report,
        progress=not args.no_progress,
        max_concurrent_subjects=args.max_concurrent_subjects,
        motion_correction=not args.no_motion_correction,
        registration=not args.no_registration,
        template=args.template.resolve() if args.template else None,
        fd_threshold=args.fd_threshold if args.fd_threshold > 0 else None,
        derivatives=derivatives,
        gpu=args.gpu,
    )
    if args.gpu:  # before anything starts: one line where there is no GPU
        from neuroscale.compute.gpu import require_gpu

        print(f"neuroscale: GPU: {require_gpu().describe()} (ALFF/fALFF, degree centrality)",
              file=sys.stderr)
    from neuroscale.bids.layout import find_bold_runs

    # validate the dataset and the options before starting a cluster
    find_bold_runs(bids_dir, participant_labels=args.participant_label, filters=filters)
    if args.catalog:  # and that the results can be registered
        from neuroscale.catalog.api import open_for_pipeline

        open_for_pipeline(args.catalog, args.catalog_collection)[0].close()
    validate_config(config)
    from neuroscale.compute.logs import start_log_file

    log_file = start_log_file(work_dir)  # tracebacks and Dask's records go there
    with cluster_client(args.scheduler, cluster=args.cluster, n_workers=args.n_workers,
                        threads_per_worker=args.threads_per_worker,
                        memory_limit=args.memory_limit, queue=args.queue,
                        account=args.account, cores=args.cores, memory=args.memory,
                        walltime=args.walltime, jobs=args.jobs,
                        adaptive=args.adaptive, log_file=log_file) as client:
        outcomes = run_participant(bids_dir, out_dir, config,
                                   participant_labels=args.participant_label,
                                   filters=filters, client=client)
    failed = [o for o in outcomes if o.error is not None]
    for outcome in outcomes:
        status = "FAILED" if outcome.error else "ok"
        print(f"{outcome.run.relpath}: {status}"
              + (f" ({outcome.error})" if outcome.error else
                 f" ({len(outcome.computed)} outputs written, {len(outcome.skipped)} up to date)"))
    reports = sorted({str(o.report) for o in outcomes if o.report is not None})
    for report in reports:
        print(f"Report: {report}")
    if failed:
        print(f"neuroscale: {len(failed)} of {len(outcomes)} runs failed; details in {log_file}",
              file=sys.stderr)
        return max(getattr(o.error, "exit_code", 1) for o in failed)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neuroscale`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "catalog":
        return _catalog(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s")
    # OPENBLAS_CORETYPE is the user's to set (numpy#19685 is avoided in the code: correlations
    # are float32 GEMMs on z-scored tiles, never np.corrcoef on large arrays); setting it here
    # made the CLI's workers round differently from the Python API's
    try:
        from neuroscale import settings

        settings.validate()  # a mistyped setting stops here, in one line
        return _run_app(args)
    except NeuroscaleError as exc:
        print(f"neuroscale: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print("neuroscale: interrupted", file=sys.stderr)
        return 130
    finally:
        from neuroscale.compute.logs import stop_log_file

        stop_log_file()


def _catalog(argv: list[str]) -> int:
    try:
        from neuroscale.catalog import cli as catalog_cli
    except ImportError as exc:
        print(f"neuroscale: error: the catalog needs the [catalog] extra "
              f"(pip install 'neuroscale[catalog]'): {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="neuroscale")
    sub = parser.add_subparsers(dest="command", required=True)
    catalog_cli.add_subparser(sub)
    args: Any = parser.parse_args(["catalog", *argv])
    try:
        return int(catalog_cli.run(args))
    except NeuroscaleError as exc:
        print(f"neuroscale catalog: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
