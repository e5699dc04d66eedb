"""``run(config)``: measure every model at every thread count, each in a fresh process, then report."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import report as reports
from benchmarks.config import BenchConfig, BenchError
from edge_app.runtime import default_num_threads, load_runtime, read_artifact, resolve_model
from edge_app.runtime.errors import CheckFailed, EdgeclsError

log = logging.getLogger("edgecls")


def bench_device_facts(device: str = "cpu") -> dict:
    """:func:`edge_app.runtime.device.device_facts` plus what a benchmark adds: runtime, delegate, CPU clock, load, nice.

    Example:
        >>> bench_device_facts()["runtime"]
        'ai-edge-litert'
    """
    from edge_app.runtime.device import device_facts

    facts = device_facts()
    runtime = load_runtime()
    facts["runtime"], facts["runtime_version"] = runtime.name, runtime.version
    # What is expected; what each model got is read back from its interpreter: the rows' "kernels".
    facts["delegate"] = "XNNPACK expected" if device == "cpu" else f"Edge TPU ({device}) expected"
    facts["device"] = device
    facts["cpu_max_mhz"] = _khz_file_mhz("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    facts["cpu_cur_mhz"] = _khz_file_mhz("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    try:
        facts["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        facts["loadavg_1m"] = None
    facts["nice"] = os.nice(0) if hasattr(os, "nice") else None
    facts["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return facts


def _khz_file_mhz(path: str) -> float | None:
    try:
        return int(Path(path).read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


def check_models(models: tuple[str, ...], device: str) -> list[Path]:
    """Resolve every MODEL to its ``.tflite`` file and check it is one, before anything is timed."""
    paths = []
    for model in models:
        path = resolve_model(model, device)
        if path.is_dir() or not path.is_file():
            raise BenchError(f"model {path} is not a file; pass a .tflite file or a run directory")
        artifact = read_artifact(path)  # raises ModelError naming the file when it is not a TFLite model
        if artifact.edgetpu and not device.startswith("edgetpu"):
            raise BenchError(f"{path} is compiled for the Coral Edge TPU and cannot run on the CPU; bench it with "
                             "--device edgetpu on a machine with a Coral, or bench the model without '_edgetpu'")
        if path.resolve() in (p.resolve() for p in paths):
            log.warning("%s is named twice (%s resolves to it): measuring it once", path, model)
            continue
        paths.append(path)
    return paths


def check_pipeline_app() -> None:
    """Fail before timing anything when the live app that ``--pipeline`` times cannot be imported."""
    try:
        from edge_app.live.app import AppConfig, run  # noqa: F401
    except ImportError as e:
        raise BenchError(f"--pipeline times the live app (edge_app.live.app: AppConfig, run), which does not import "
                         f"here: {e}. Reinstall edgecls (pip install -e .), or bench without --pipeline") from e


def run_worker(job: dict, isolate: bool = True) -> dict:
    """Run one job (see :mod:`benchmarks.worker`) in a fresh Python process, or here when ``isolate`` is off."""
    job = {**job, "log_level": log.getEffectiveLevel()}
    if not isolate:
        from benchmarks.worker import run_job

        return run_job(job)
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(json.dumps(job))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        reply = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"the benchmark worker for {job['model']} died (exit code {proc.returncode}) "
                         "without an answer; see the messages above. Run with -v for more") from None
    if not reply["ok"]:
        error = EdgeclsError(reply["error"])
        error.exit_code = reply.get("exit_code", 2)
        raise error
    return reply["result"]


def run(config: BenchConfig) -> dict:
    """Measure, print the table on stdout, write the asked-for reports; returns the report dict.

    Example:
        >>> report = run(BenchConfig(models=("model_int8.tflite",), threads=(1, 2), json="bench.json"))
        >>> report["results"][0]["latency_ms"]["p50"]
    """
    paths = check_models(config.models, config.device)
    if config.pipeline:
        check_pipeline_app()
    threads = config.threads or (default_num_threads(),)
    device = bench_device_facts(config.device)
    if device.get("loadavg_1m") and device["loadavg_1m"] > 0.5 * (device.get("cpu_count") or 1):
        log.warning("load average is %.2f on %s cores: other work shares the CPU, expect noisy figures",
                    device["loadavg_1m"], device.get("cpu_count"))
    if config.duration is None and config.runs < 100:
        log.info("p99 from %d runs is about the slowest run, not a tail latency: use --runs 100 or more", config.runs)
    cores = device.get("cpu_count") or 0
    if cores and max(threads) > cores:
        log.warning("--threads %d is more than the %d cores here: LiteRT threads then wait on each other",
                    max(threads), cores)
    common = {"device": config.device, "labels": config.labels, "mean": config.mean, "std": config.std}
    results, pipelines = [], []
    for path in paths:
        accuracy = None
        for i, n in enumerate(threads):
            what = f"{config.duration:g} s" if config.duration else f"{config.runs} runs"
            log.info("benchmarking %s with %d thread%s (%s after %d warm-up)", path, n, "s" * (n > 1),
                     what, config.warmup)
            job = {"kind": "model", "model": str(path), "threads": n, "runs": config.runs,
                   "warmup": config.warmup, "duration": config.duration, **common,
                   # Accuracy does not depend on the thread count: measure it once per model.
                   "data": config.data if i == 0 else None, "max_per_class": config.max_per_class,
                   "accuracy_optional": len(paths) > 1,
                   "progress": sys.stderr.isatty()}
            row = run_worker(job, config.isolate)
            if i == 0:
                accuracy, accuracy_error = row["accuracy"], row.get("accuracy_error")
            row["accuracy"] = accuracy
            if accuracy_error:
                row["accuracy_error"] = accuracy_error
            results.append(row)
            if config.pipeline:
                log.info("timing the live pipeline of %s with %d thread%s on %s", path, n, "s" * (n > 1),
                         config.pipeline)
                pipelines.append(run_worker({"kind": "pipeline", "model": str(path), "source": config.pipeline,
                                             "threads": n, "max_frames": config.pipeline_frames,
                                             "invoke_fps": row["fps"], **common}, config.isolate))
    from edge_app.runtime.device import cpu_temperature_c, throttled

    device["cpu_temperature_c_end"], device["throttled_end"] = cpu_temperature_c(), throttled()
    report = {"device": device, "config": _config_dict(config, threads), "results": results}
    if pipelines:
        report["pipeline"] = pipelines
    if config.compare:
        report["comparison"] = reports.compare(report, config.compare)
    print(f"# {reports.device_line(device)}")
    print(reports.table(results))
    if config.data and (per_class := reports.per_class_lines(results)):
        print(per_class)
    if pipelines:
        print(reports.pipeline_table(pipelines))
    if config.compare:
        print(reports.compare_table(report["comparison"]))
    for written in reports.write_reports(report, config.json, config.md, config.csv, config.plot):
        log.info("wrote %s", written)
    if config.max_slowdown is not None:
        limit = 1 + config.max_slowdown / 100
        slower = [f"{r['name']} x{r['threads']} ({r['p50_ratio']:.2f}x)" for r in report["comparison"]["rows"]
                  if r["p50_ratio"] > limit]
        if slower:
            raise CheckFailed(f"p50 latency grew by more than {config.max_slowdown:g}% against {config.compare}: "
                              f"{', '.join(slower)}")
    return report


def _config_dict(config: BenchConfig, threads: tuple[int, ...]) -> dict:
    return {"models": list(config.models), "threads": list(threads), "runs": config.runs, "warmup": config.warmup,
            "duration": config.duration, "device": config.device, "data": config.data,
            "max_per_class": config.max_per_class, "pipeline": config.pipeline,
            "pipeline_frames": config.pipeline_frames, "isolated": config.isolate,
            "timing": "perf_counter_ns around set_tensor + invoke on a fixed random input"}
