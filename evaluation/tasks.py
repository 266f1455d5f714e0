"""The evaluation tasks behind ``python evaluate.py task=...`` (``conf/evaluate.yaml``).

``aif`` (default): the primary model (an exported artifact, or a Lightning checkpoint of
``model``), any ``compare`` artifacts and the legacy detector on the same labelled cases (the data
config's ``split``); ``aif_ood``: the same on every out-of-distribution family
(:mod:`evaluation.ood_report`); ``mapping``: automated vs reference T2/ECV maps
(:mod:`evaluation.mapping_report`); ``myocardium_ood``: myocardium segmentation on every family
(:mod:`evaluation.myocardium_ood`). Each writes ``report.md``, ``metrics.json`` and
``figures/*.png`` into the run dir; headline metrics and figures also go to every configured
logger (W&B offline by default). :func:`evaluate` dispatches on ``cfg.task``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _aif_cases(cfg: DictConfig) -> tuple[Path, list[str], dict[str, str]]:
    """The data file, the case ids to evaluate and each case's patient (from the data config)."""
    import h5py

    from formats.aif_contract import scan_aif_file

    datamodule = hydra.utils.instantiate(cfg.data)
    if cfg.split == "all":
        datamodule.prepare_data()
        infos = scan_aif_file(datamodule.file, require_mask=True)
        case_ids = [info.case_id for info in infos]
    else:
        if cfg.split not in ("train", "val", "test"):
            raise ValueError(f"split={cfg.split!r}: expected test, val, train or all")
        datamodule.prepare_data()
        datamodule.setup("test")
        case_ids = list(datamodule.split[cfg.split])
        with h5py.File(datamodule.file, "r") as h5:  # checked by setup; attrs only
            ids = {c: h5[c].attrs["patient_id"] for c in case_ids}
        infos = [
            SimpleNamespace(case_id=c, patient_id=p.decode() if isinstance(p, bytes) else str(p))
            for c, p in ids.items()
        ]
    patients = {info.case_id: info.patient_id for info in infos}
    if cfg.get("max_cases"):
        case_ids = case_ids[: int(cfg.max_cases)]
    return Path(datamodule.file), case_ids, patients


def _predictors(cfg: DictConfig) -> list:
    from evaluation.predictors import artifact_predictor, checkpoint_predictor, with_tta
    from quantification.aif_preprocessing import AIFPreprocessing

    predictors = []
    if cfg.get("ckpt_path"):
        from hydra.core.hydra_config import HydraConfig

        name = HydraConfig.get().runtime.choices.get("model", "checkpoint")
        module = hydra.utils.instantiate(cfg.model)
        params = AIFPreprocessing(**OmegaConf.to_container(cfg.data.preprocessing))
        predictors.append(checkpoint_predictor(module, cfg.ckpt_path, params, name))
    elif cfg.get("artifact"):
        predictors.append(artifact_predictor(cfg.artifact))
    if cfg.get("tta") and predictors:
        predictors.append(with_tta(predictors[0]))
    for path in cfg.get("compare") or []:
        predictor = artifact_predictor(path)
        if predictor.name in {p.name for p in predictors}:
            predictor = artifact_predictor(path, name=f"{predictor.name} ({Path(path).name})")
        predictors.append(predictor)
    return predictors


def _log_to_loggers(cfg: DictConfig, metrics: dict, files: dict[str, Path]) -> None:
    """Headline scalars to every logger; figures and the comparison table to W&B ones."""
    from evaluation.aif_report import flat_scalars

    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    job_keys = [key for key in cfg if key != "hydra"]  # composed test configs carry hydra too
    for logger in loggers:
        logger.log_hyperparams(
            OmegaConf.to_container(OmegaConf.masked_copy(cfg, job_keys), resolve=True)
        )
        logger.log_metrics(flat_scalars(metrics))
        if type(logger).__name__ == "WandbLogger":
            figures = [k for k in files if str(files[k]).endswith(".png")]
            for key in figures:
                logger.log_image(key=f"eval/{key}", images=[str(files[key])])
            rows = [
                [
                    m,
                    s["n_cases"],
                    s["detection_rate"],
                    s["lv_dice_mean"],
                    s["lv_dice_sd"],
                    s["dice_gt_075"],
                    s["n_failures"],
                ]
                for m, s in metrics["methods"].items()
            ]
            columns = [
                "method",
                "cases",
                "detection",
                "dice_mean",
                "dice_sd",
                "dice_gt_075",
                "failures",
            ]
            logger.log_table(key="eval/detection", columns=columns, data=rows)
            logger.experiment.save(str(files["report"]), base_path=str(files["report"].parent))
        logger.finalize("success")


def _mapping_paths(cfg: DictConfig, modalities: tuple[str, ...]) -> dict[str, Path]:
    """File of each needed modality: configured, or the synthetic phantoms (written once)."""
    from datamodules.synthetic.mapping_phantom import mapping_phantom_paths, write_mapping_phantoms

    data = cfg.mapping_data
    given = {m: data.get(m) for m in modalities}
    if all(given.values()):
        return {m: Path(p) for m, p in given.items()}
    phantoms = mapping_phantom_paths(cfg.paths.data_dir, int(data.n_patients), int(data.seed))
    if not all(p.exists() for p in phantoms.values()):
        log.info("Writing %d synthetic mapping patients to %s", data.n_patients, cfg.paths.data_dir)
        write_mapping_phantoms(cfg.paths.data_dir, int(data.n_patients), int(data.seed))
    return {m: Path(given[m]) if given[m] else phantoms[m] for m in modalities}


def _evaluate_mapping(cfg: DictConfig, out_dir: Path) -> dict:
    """task=mapping: automated vs reference T2/ECV maps (method.md §B4), report in ``out_dir``."""
    from deployment.artifact import load_artifact
    from evaluation.mapping_evaluation import QUANTITIES, evaluate_mapping_cases
    from evaluation.mapping_report import write_mapping_report
    from exports.mapping_pipeline import MYOCARDIUM_TASK, MyocardiumSegmenter

    start = time.perf_counter()
    spec = cfg.evaluation
    if spec.quantity not in QUANTITIES:
        raise ValueError(f"evaluation.quantity={spec.quantity!r}: expected t2 or ecv")
    segmenters, sources = {}, {}
    for modality in QUANTITIES[spec.quantity]:
        path = (spec.get("artifacts") or {}).get(modality)
        if not path:
            raise ValueError(
                f"evaluation.artifacts.{modality}: expected the myocardium segmentation artifact "
                f"that segments the {modality} images (e.g. experiment=exp1); found none"
            )
        segmenter = MyocardiumSegmenter(load_artifact(path, expected_task=MYOCARDIUM_TASK))
        segmenters[modality] = lambda acq, s=segmenter: s(acq.images)
        sources[f"{modality} segmentation"] = str(path)
    paths = _mapping_paths(cfg, QUANTITIES[spec.quantity])
    sources |= {f"{m} data": str(paths[m]) for m in QUANTITIES[spec.quantity]}
    cases = evaluate_mapping_cases(
        paths,
        spec.quantity,
        segmenters,
        insertion=cfg.mapping_data.insertion,
        max_cases=cfg.get("max_cases"),
    )
    context = {"exp": spec.get("exp"), "network": spec.get("network"), "sources": sources}
    metrics, files = write_mapping_report(cases, spec.quantity, context, out_dir)
    metrics["elapsed_s"] = time.perf_counter() - start
    for logger in [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]:
        flat = {"eval/patient_success": metrics["patient_success"]["rate"]}
        boundary = metrics.get("boundary") or {}
        for key in ("hd95_mean", "assd_mean"):
            if boundary.get(key) is not None:
                flat[f"eval/myo_{key[:-5]}_{boundary['unit']}"] = boundary[key]
        for level, a in metrics["agreement"].items():
            if a is not None:
                flat |= {f"eval/{level}/bias": a["bland_altman"]["bias"]}
                flat |= {f"eval/{level}/{k}": a[k] for k in ("r", "slope") if a[k] is not None}
        logger.log_metrics(flat)
        if type(logger).__name__ == "WandbLogger" and "agreement" in files:
            logger.log_image(key="eval/mapping_agreement", images=[str(files["agreement"])])
        logger.finalize("success")
    log.info("Report: %s (%.1f s)", files["report"], metrics["elapsed_s"])
    return metrics


def _legacy_settings(cfg: DictConfig):
    from quantification.legacy_aif_detector import LegacyDetectorSettings

    legacy_cfg = OmegaConf.to_container(cfg.legacy)
    return LegacyDetectorSettings(**legacy_cfg) if legacy_cfg.pop("enabled") else None


def _evaluate_ood(cfg: DictConfig, out_dir: Path) -> dict:
    """task=aif_ood: the in-distribution test split, every family of ``ood.families`` and each
    file of ``ood.files``, one report row each (``evaluation.ood_report``)."""
    from evaluation.aif_evaluation import LEGACY, evaluate_aif_cases, file_case_ids
    from evaluation.ood_report import family_file, write_ood_report

    start = time.perf_counter()
    predictors, legacy = _predictors(cfg), _legacy_settings(cfg)
    sets: dict[str, tuple[Path, list[str]]] = {}
    if cfg.ood.include_test_split:
        path, case_ids, _ = _aif_cases(cfg)
        sets["in-distribution test split"] = (path, case_ids)
    for family in cfg.ood.families:
        path = family_file(cfg.paths.data_dir, family, int(cfg.ood.n_patients), int(cfg.ood.seed))
        sets[family] = (path, file_case_ids(path))
    for file in cfg.ood.files or []:
        sets[Path(file).name] = (Path(file), file_case_ids(file))
    results = {}
    for name, (path, case_ids) in sets.items():
        log.info("%s: %d cases of %s", name, len(case_ids), path)
        results[name] = evaluate_aif_cases(path, case_ids, predictors, legacy, int(cfg.batch_size))
    methods = [p.name for p in predictors] + ([LEGACY] if legacy is not None else [])
    context = {
        "files": {name: str(path) for name, (path, _) in sets.items()},
        "sources": {p.name: p.source for p in predictors},
        "elapsed_s": time.perf_counter() - start,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    metrics, files = write_ood_report(results, methods, context, out_dir)
    for family, by_method in metrics["families"].items():
        for method, s in by_method.items():
            log.info("%s / %s: LV found %.1f %%, LV Dice %.3f ± %.3f", family, method,
                     100 * s["detection_rate"], s["lv_dice_mean"], s["lv_dice_sd"])  # fmt: skip
    log.info("Report: %s (%.1f s)", files["report"], time.perf_counter() - start)
    return metrics


def _evaluate_myocardium_ood(cfg: DictConfig, out_dir: Path) -> dict:
    """task=myocardium_ood: every artifact of ``myocardium_ood.artifacts`` on every family and
    file (``evaluation.myocardium_ood``), one report row each."""
    from deployment.artifact import load_artifact
    from evaluation.myocardium_ood import MAPPING_PREFIX, evaluate_file, family_file, write_report
    from exports.mapping_pipeline import MYOCARDIUM_TASK, MyocardiumSegmenter

    start = time.perf_counter()
    spec = cfg.myocardium_ood
    mapping = [
        f.removeprefix(MAPPING_PREFIX) for f in spec.families if f.startswith(MAPPING_PREFIX)
    ]
    mapping_paths = _mapping_paths(cfg, tuple(mapping)) if mapping else {}
    files = {
        f: mapping_paths[f.removeprefix(MAPPING_PREFIX)]
        if f.startswith(MAPPING_PREFIX)
        else family_file(cfg.paths.data_dir, f, int(spec.n_slices), int(spec.seed))
        for f in spec.families
    } | {Path(file).name: Path(file) for file in spec.files or []}
    results = {}
    for artifact in spec.artifacts:
        segmenter = MyocardiumSegmenter(load_artifact(artifact, expected_task=MYOCARDIUM_TASK))
        results[Path(artifact).name] = by_family = {}
        for family, path in files.items():
            by_family[family] = evaluate_file(path, segmenter.probabilities, spec.max_images)
            log.info("%s / %s: %d images", Path(artifact).name, family, len(by_family[family]))
    context = {
        "artifacts": [str(a) for a in spec.artifacts],
        "files": {family: str(path) for family, path in files.items()},
        "elapsed_s": time.perf_counter() - start,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    metrics, report = write_report(results, context, out_dir)
    for artifact, families in metrics["families"].items():
        for family, s in families.items():
            log.info("%s / %s: DSC median %.3f, HD95 median %.1f px, QC pass %.1f %%", artifact,
                     family, s["dsc_median"], s["hd95_px_median"], 100 * s["qc_pass"])  # fmt: skip
    log.info("Report: %s (%.1f s)", report["report"], time.perf_counter() - start)
    return metrics


def evaluate(cfg: DictConfig) -> dict:
    """Run the configured evaluation; returns the metrics written to ``metrics.json``."""
    torch.set_num_threads(int(cfg.threads))
    out_dir = Path(cfg.paths.output_dir)
    if cfg.task == "mapping":
        return _evaluate_mapping(cfg, out_dir)
    if cfg.task == "aif_ood":
        return _evaluate_ood(cfg, out_dir)
    if cfg.task == "myocardium_ood":
        return _evaluate_myocardium_ood(cfg, out_dir)
    if cfg.task != "aif":
        raise ValueError(f"task={cfg.task!r}: expected aif, aif_ood, mapping or myocardium_ood")
    if cfg.get("evaluation") and cfg.evaluation.get("exp") is not None:
        raise ValueError(
            f"experiment=exp{cfg.evaluation.exp} is a mapping preset: add task=mapping"
        )
    return _evaluate_aif(cfg, out_dir)


def _evaluate_aif(cfg: DictConfig, out_dir: Path) -> dict:
    """task=aif: every predictor and the legacy detector on the same labelled cases."""
    from evaluation.aif_evaluation import LEGACY, evaluate_aif_cases
    from evaluation.aif_report import write_aif_report

    start = time.perf_counter()
    predictors, legacy = _predictors(cfg), _legacy_settings(cfg)
    path, case_ids, patients = _aif_cases(cfg)
    log.info("Evaluating %d cases of %s (%s split)", len(case_ids), path, cfg.split)
    cases = evaluate_aif_cases(
        path,
        case_ids,
        predictors,
        legacy,
        batch_size=int(cfg.batch_size),
        progress=lambda done, total: log.info("%d / %d cases", done, total),
    )
    methods = [p.name for p in predictors] + ([LEGACY] if legacy is not None else [])
    context = {
        "data_file": str(path),
        "split": cfg.split,
        "n_cases": len(cases),
        "n_patients": len({patients.get(c, c) for c in case_ids}),
        "sources": {p.name: p.source for p in predictors}
        | ({LEGACY: "quantification.legacy_aif_detector"} if legacy else {}),
        "elapsed_s": time.perf_counter() - start,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    metrics, files = write_aif_report(cases, methods, context, out_dir, int(cfg.n_examples))
    _log_to_loggers(cfg, metrics, files)
    for name, s in metrics["methods"].items():
        lv = s["boundary"]["lv"]
        log.info(
            "%s: detection %.1f %%, LV Dice %.3f ± %.3f, Dice > 0.75 %.1f %%, %d failures, "
            "LV HD95 %s px (%d empty)",
            name,
            100 * s["detection_rate"],
            s["lv_dice_mean"],
            s["lv_dice_sd"],
            100 * s["dice_gt_075"],
            s["n_failures"],
            "–" if lv["hd95_mean"] is None else f"{lv['hd95_mean']:.2f}",
            lv["n_empty_prediction"],
        )
    log.info("Report: %s (%.1f s)", files["report"], time.perf_counter() - start)
    return metrics
