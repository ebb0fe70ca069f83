"""The bad inputs of benchmarks/bad_input_table.py: CLI commands, Python calls, and the files they point at.

A CLI case is ``[VAR=VALUE ...] COMMAND ARGS`` (run as ``pdm-bench COMMAND ARGS`` with those environment variables);
``{name}`` is a path that :func:`prepare` made. A Python case is an expression run in-process with ``pb`` (pdm_bench),
``api``, ``torch``, ``T`` (an untrained :class:`pdm_bench.Trained` stand-in) and ``P`` (those paths) in scope.
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

CLI_CASES: list[tuple[str, str]] = []  # (section, case)


def section(name: str, *cases: str) -> None:
    CLI_CASES.extend((name, case) for case in cases)


section("train: names and values",
        "train --defense pmd", "train --defense ''", "train --dataset mnsit", "train --dataset mnist",
        "train --dataset mnist --data-dir /nonexistent", "train --preset fast", "train --epochs 0",
        "train --epochs 2.5", "train --seed -1", "train --seed abc", "train --seed 99999999999999999999",
        "train --device cuda:abc", "train --device tpu", "train --device cuda:7", "train --device ''",
        "train --nosuch-flag", "train extra_argument", "nosuchcommand")
section("train: defense options",
        "train -o q=2", "train -o q=abc", "train -o q=nan", "train -o nosuch=1", "train -o q", "train -o =1",
        "train -o q=0.3 -o q=0.7", "train -o partners=everyone", "train --defense baseline -o q=0.5",
        "train --defense rce -o q=0.5", "train -o rvl_weight=-1", "train -o rvl_weight=inf",
        "train -o rvl_weight=nan", "train -o siamese_weight=1e400",
        "train -o classification_weight=0 -o partner_classification_weight=0 -o siamese_weight=0 -o rvl_weight=0",
        "train --defense siamese_rvl -o classification_weight=0 -o partner_classification_weight=0 "
        "-o siamese_weight=0 -o rvl_weight=0", "train -o rvl_reduction=max")
section("train: folders and paths",
        "train --results-dir {file}/results", "train --results-dir ''", "train --results-dir /sys/pdm-results",
        "train --cache-dir {file}", "train --cache-dir {file}/cache", "train --cache-dir ''",
        "train --cache-dir /sys/pdm-cache", "train --cache-dir '~nosuchuser/cache'",
        "train --dataset mnist --data-dir '~nosuchuser/data'", "train --dataset mnist --data-dir {file}",
        "train --dataset mnist --data-dir ''")
section("data files",
        "train --dataset folder:", "train --dataset folder:/nonexistent", "train --dataset folder:{one_class}",
        "train --dataset 'folder:~nosuchuser/images'", "train --dataset folder:{file}",
        "train --dataset folder:{no_test}", "train --dataset folder:{empty_class}", "train --dataset folder:{no_classes}",
        "train --dataset folder:{not_image}", "train --dataset folder:{truncated_png}",
        "train --dataset folder:{mismatched}", "train --dataset folder:{mixed_sizes}",
        "train --dataset folder:{float_tiff}",
        "train --dataset mnist --data-dir {mnist_bad_gzip}", "train --dataset mnist --data-dir {mnist_truncated}",
        "train --dataset mnist --data-dir {mnist_magic}", "train --dataset mnist --data-dir {mnist_missing}",
        "train --dataset mnist --data-dir {mnist_label}", "train --dataset mnist --data-dir {mnist_count}",
        "train --dataset mnist --data-dir {mnist_size}", "train --dataset mnist --data-dir {empty}",
        "train --dataset cifar10 --data-dir {empty}", "train --dataset cifar10 --data-dir {cifar_missing}",
        "train --dataset cifar10 --data-dir {cifar_corrupt}", "train --dataset cifar10 --data-dir {cifar_code}",
        "train --dataset cifar10 --data-dir {cifar_shape}", "train --dataset cifar10-jpeg --data-dir {empty}")
section("cache and model files",
        "train --cache-dir {cache_nan}", "run --threat gray --cache-dir {cache_nan}",
        "train --cache-dir {cache_no_key}", "train --cache-dir {cache_not_json}", "train --cache-dir {cache_list_json}",
        "train --cache-dir {cache_corrupt_pt}", "train --cache-dir {cache_other_config}",
        "train --cache-dir {cache_other_network}", "train --cache-dir {cache_swapped}",
        "train --cache-dir {cache_bad_accuracy}")
section("run: threat model and detector",
        "run", "run --threat gary", "run --threat gray --defense pmd", "run --threat gray --n-samples 5000",
        "run --threat gray --n-samples 0", "run --threat gray --n-samples -5", "run --threat gray --n-samples abc",
        "run --threat gray --results-dir {garbage}", "run --threat gray --results-dir ''",
        "run --threat gray --results-dir {csv_is_dir}", "run --threat gray --results-dir {runs_not_json}",
        "run --threat gray --results-dir {torn_header}", "run --threat gray --results-dir /sys/pdm-results",
        "run --threat gray --bandwidth inf", "run --threat gray --bandwidth -1", "run --threat gray --bandwidth nan",
        "run --threat gray --bandwidth 1e-300", "run --threat gray --bandwidth 1e300",
        "run --threat gray --bandwidth 0.5 --detector-option bandwidth=0.3",
        "run --threat gray --kde-points 10 --detector-option points_per_class=20", "run --threat gray --kde-points 0",
        "run --threat gray --detector kdee", "run --threat gray --detector-option points=5",
        "run --threat gray --detector-option bandwidth=abc", "run --threat gray --detector lid --bandwidth 0.5",
        "run --threat gray --detector lid --detector-option head_attack=fgsn-0.1",
        "run --threat gray --detector lid --detector-option head_images=3",
        "run --threat gray --detector lid --detector-option k=1",
        "run --threat gray --detector lid --detector-option k=100000",
        "run --threat gray --detector lid --detector-option points_per_class=1",
        "run --threat gray --detector lid --detector-option layers=nosuch",
        "run --threat gray --detector lid --detector-option layers=stem,stem",
        "run --threat gray --detector mahalanobis --detector-option input_noise=-1",
        "run --threat gray --detector mahalanobis --detector-option classes=all",
        "run --threat gray --detector mahalanobis --detector-option points_per_class=0")
section("run: gray box",
        "run --threat gray --attacks fgsm-2", "run --threat gray --attacks fgsm-0", "run --threat gray --attacks fgsm-abc",
        "run --threat gray --attacks cw,cw", "run --threat gray --attacks ,,,", "run --threat gray --attacks ''",
        "run --threat gray --attacks pgd", "run --threat gray --attacks cw -t attacks=jsma",
        "run --threat gray --attack-backend tf", "run --threat gray -t resiliency=maybe", "run --threat gray -t nosuch=1",
        "run --threat gray --cw-iterations 5", "run --threat gray -t batch_size=0")
section("run: white box",
        "run --threat white --attacks cw", "run --threat white --cw-iterations 0", "run --threat white --cw-iterations abc",
        "run --threat white --cw-search-steps 0", "run --threat white --cw-initial-const -1",
        "run --threat white --cw-learning-rate nan", "run --threat white --cw-learning-rate inf",
        "run --threat white --wb-kde-points 0", "run --threat white --wb-threshold mean",
        "run --threat white --cw-iterations 10 -t max_iter=20", "run --threat white --eps 0.1",
        "run --threat white --detector lid --bandwidth 1")
section("run: black box",
        "run --threat black --wb-confidence -1", "run --threat black --wb-confidence nan", "run --threat black --proxy-depth 7",
        "run --threat black --proxy-depth 0", "run --threat black --proxy-depth abc", "run --threat black --proxy-epochs -3",
        "run --threat black --proxy-epochs 0", "run --threat black --attacks cw",
        "run --threat black --proxy-depth 8 -t proxy_depth=14")
section("run: adaptive",
        "run --threat adaptive -t schedule=cosine", "run --threat adaptive -t max_doublings=0",
        "run --threat adaptive --norm linf --eps 5", "run --threat adaptive --norm l2 --eps 1e9",
        "run --threat adaptive --norm l3", "run --threat adaptive --eps 0", "run --threat adaptive --eps abc",
        "run --threat adaptive --eps 0.1 -t eps=0.2", "run --threat adaptive --norm l2 -t norm=linf",
        "run --threat adaptive -t iterations=0", "run --threat adaptive -t restarts=0",
        "run --threat adaptive -t weights=-1", "run --threat adaptive -t square_iterations=-1",
        "run --threat adaptive -t check_doubling=maybe", "run --threat adaptive --attacks cw")
section("report",
        "report --results-dir /nonexistent", "report --results-dir {empty}", "report --results-dir {file}",
        "report --results-dir ''", "report --results-dir {garbage}", "report --results-dir {csv_is_dir}",
        "report --results-dir {runs_not_json}", "report --results-dir {torn_header}", "report --results-dir {empty} --out ''",
        "report --results-dir {empty} --out {file}", "report --nosuch")
section("paper",
        "paper --threats gray,nois", "paper --seeds 1,1", "paper --seeds a,b", "paper --seeds -1", "paper --seeds ''",
        "paper --seed 3 --seeds 0,1", "paper --defenses ''", "paper --defenses pdm,pdm", "paper --defenses pdm --train-only pdm",
        "paper --train-only pmd", "paper --threats ''", "paper --threats gray,gray", "paper --threats white --attacks cw",
        "paper --threats gray --cw-iterations 5", "paper --threats gray,white -t attacks=cw", "paper --bandwidth 0.5",
        "paper --detectors kde,kde", "paper --detectors kdee", "paper --detector lid --detectors kde", "paper --jobs 0",
        "paper --dataset digits --n-samples 5000", "paper --dataset digits --n-samples 0", "paper --dataset mnsit",
        "paper --dataset mnist", "paper --dataset digits --preset fast", "paper --dataset digits --epochs 0",
        "paper --dataset digits --results-dir ''", "paper --dataset digits --cache-dir '~nosuchuser/cache'",
        "paper --dataset digits --device tpu", "paper --dataset digits --threats adaptive --norm linf --eps 5",
        "paper --dataset digits --threats adaptive --norm l2 --eps 1e9")
section("paper: slurm",
        "paper --executor pbs", "paper --executor slurm --jobs 2", "paper --executor slurm --slurm-gpus-per-job -2",
        "paper --executor slurm --slurm-mem 0", "paper --executor slurm --slurm-partition nosuch", "paper --slurm-mem 8",
        "paper --executor slurm --slurm-time 0", "paper --executor slurm --slurm-cpus-per-job 0",
        "paper --executor slurm --max-parallel 0")
section("list", "list --nosuch", "list extra_argument")
section("plugins",
        "PYTHONPATH={plugins} train --defense missing_module", "PYTHONPATH={plugins} train --defense raising",
        "PYTHONPATH={plugins} train --defense exiting", "PYTHONPATH={plugins} train --defense not_a_defense",
        "PYTHONPATH={plugins} train --defense wrong_name", "PYTHONPATH={plugins} train --defense runtime_options",
        "PYTHONPATH={plugins} run --threat gray --detector exiting_detector",
        "PYTHONPATH={plugins} run --threat raising_threat")
section("environment",
        "OMP_NUM_THREADS=abc train", "OMP_NUM_THREADS=0 train", "MKL_NUM_THREADS=-2 train",
        "PDM_BENCH_DATA={file} train --dataset mnist", "PDM_BENCH_DATA='~nosuchuser/data' train --dataset mnist",
        "PDM_BENCH_DATA=/nonexistent train --dataset mnist", "PDM_BENCH_CACHE={file}/cache train",
        "PDM_BENCH_CACHE='~nosuchuser/cache' train", "PDM_BENCH_CACHE=/sys/pdm-cache train",
        "CUDA_VISIBLE_DEVICES='' train --device cuda")
section("faults",
        "run --threat gray --results-dir /proc/pdm-results", "train --results-dir /proc/self/status",
        "report --results-dir {empty} --out /sys/pdm-report", "run --threat gray --results-dir {results_file_is_dir}")

PYTHON_CASES: list[tuple[str, str]] = [(sec, case) for sec, cases in {
    "train()": ["pb.train(epochs=2.5)", "pb.train(epochs='3')", "pb.train(epochs=-1)", "pb.train(seed='0')",
                "pb.train(seed=-1)", "pb.train(seed=1.0)", "pb.train(options=['q=0.3'])", "pb.train(options='q=0.3')",
                "pb.train(options={'q': 2})", "pb.train(options={'nosuch': 1})", "pb.train(options={1: 2})",
                "pb.train(options={'rvl_weight': float('nan')})",
                "pb.train(options=dict(classification_weight=0, partner_classification_weight=0, siamese_weight=0, "
                "rvl_weight=0))", "pb.train(device=0)", "pb.train(device='tpu')", "pb.train(defense=None)",
                "pb.train(defense='pmd')", "pb.train(dataset=None)", "pb.train(dataset='mnsit')", "pb.train(preset=1)",
                "pb.train(preset='fast')", "pb.train(data_dir=3)", "pb.train(cache_dir=3)",
                "pb.train(cache_dir='~nosuchuser/c')", "pb.train(dataset='folder:~nosuchuser/x')",
                "pb.train(dataset='mnist', data_dir='~nosuchuser/d')", "pb.train(results_dir='')",
                "pb.train(results_dir=P['file'] + '/r')", "pb.train(progress='yes')", "pb.train(log=None)",
                "pb.train(geometry=1)", "pb.train('digits')", "pb.train(nosuch=1)"],
    "load()": ["pb.load()", "pb.load(epochs='3')", "pb.load(defense='pmd')", "pb.load(seed=None)"],
    "evaluate()": ["pb.evaluate(None)", "pb.evaluate('model')", "pb.evaluate(T, n_samples='20')",
                   "pb.evaluate(T, threat='gary')", "pb.evaluate(T, threat=3)", "pb.evaluate(T, detector=None)",
                   "pb.evaluate(T, detector='kdee')", "pb.evaluate(T, threat='gray', nosuch=1)",
                   "pb.evaluate(T, results_dir=None)", "pb.evaluate(T, geometry='no')", "pb.evaluate(T, log=3)",
                   "pb.evaluate(T, threat=api.make_threat('gray'), attacks='cw')"],
    "report()": ["pb.report(None)", "pb.report([])", "pb.report(3)", "pb.report('/nonexistent')",
                 "pb.report(P['file'])", "pb.report(P['empty'], out=3)", "pb.report([P['empty'], None])"],
    "Study": ["pb.Study(defenses='pmd')", "pb.Study(defenses=None)", "pb.Study(defenses=[1])", "pb.Study(seeds='0')",
              "pb.Study(seeds=['0'])", "pb.Study(seeds=[0.5])", "pb.Study(seeds=[-1])", "pb.Study(n_samples='20')",
              "pb.Study(n_samples=0)", "pb.Study(epochs=2.5)", "pb.Study(dataset=None)", "pb.Study(preset='fast')",
              "pb.Study(device='tpu')", "pb.Study(detector='kdee')", "pb.Study(detector=None)",
              "pb.Study(threats=['gray', 'gray'])", "pb.Study(threats='gray,nois')",
              "pb.Study(threat_options={'gray': {'attacks': 'pgd'}})", "pb.Study(threat_options=[1])",
              "pb.Study(threat_options={'gray': 'attacks=cw'})", "pb.Study(executor='pbs')",
              "pb.Study(results_dir='')", "pb.Study(progress='yes')", "pb.Study(log='print')",
              "pb.Study(dataset='digits').run(jobs=0)", "pb.Study(dataset='digits').run(jobs='2')",
              "pb.Study(dataset='digits').run(out=3)", "pb.Study(dataset='digits', n_samples=5000).run()",
              "pb.Study(dataset='mnsit').run()", "pb.Study(dataset='digits', cache_dir='~nosuchuser/c').run()"],
    "wrap()": ["pb.wrap(None, embedding='x', dataset='digits')",
               "pb.wrap(torch.nn.Linear(64, 10), embedding=3, dataset='digits')",
               "pb.wrap(torch.nn.Linear(64, 10), embedding='nosuch', dataset='digits')",
               "pb.wrap(torch.nn.Linear(64, 10), embedding='x', dataset='mnsit')"],
    "components": ["api.make_detector('kde', {'bandwidth': 1e-300})", "api.make_detector('kde', [('bandwidth', 1)])",
                   "api.make_detector(None)", "api.make_detector('lid', {'k': 'many'})",
                   "api.make_threat('adaptive', {'eps': '5'})", "api.make_threat('gray', 'attacks=cw')",
                   "api.make_threat(3)", "api.make_threat('white', {'max_iter': 0})"],
}.items() for case in cases]


def _write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path.parent)


def _images(root: Path, layout: dict[str, dict[str, int]], size: tuple[int, int] = (8, 8)) -> str:
    from PIL import Image

    for split, classes in layout.items():
        for cls, count in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("L", size, color=i * 60).save(root / split / cls / f"{i}.png")
    return str(root)


def _idx(magic: int, dims: tuple[int, ...], fill: int = 0) -> bytes:
    import math

    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + bytes([fill]) * math.prod(dims)


def _mnist(root: Path, **replace: bytes) -> str:
    files = {"train-images-idx3-ubyte": _idx(2051, (2, 28, 28)), "train-labels-idx1-ubyte": _idx(2049, (2,)),
             "t10k-images-idx3-ubyte": _idx(2051, (2, 28, 28)), "t10k-labels-idx1-ubyte": _idx(2049, (2,))}
    files.update(replace)
    for name, data in files.items():
        if data:
            _write(root / "mnist" / name, data)
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def prepare_files(root: Path) -> dict[str, str]:
    """Files some cases point at: folders, image sets, MNIST and CIFAR-10 files, results directories."""
    import numpy as np
    from PIL import Image

    paths = {"file": _write(root / "file.d" / "file", "not a folder") + "/file", "empty": str(root / "empty")}
    (root / "empty").mkdir()
    two = {"a": 2, "b": 2}
    paths |= {"one_class": _images(root / "one", {"train": {"a": 2}, "test": {"a": 2}}),
              "no_test": _images(root / "no_test", {"train": two}),
              "empty_class": _images(root / "empty_class", {"train": {"a": 2, "b": 0}, "test": two}),
              "no_classes": _images(root / "no_classes", {"train": {}, "test": {}}),
              "mismatched": _images(root / "mismatched", {"train": two, "test": {"a": 2, "c": 2}}),
              "mixed_sizes": _images(root / "mixed", {"train": two, "test": two})}
    (root / "no_classes" / "train").mkdir(parents=True)
    (root / "no_classes" / "test").mkdir(parents=True)
    Image.new("L", (9, 9)).save(root / "mixed" / "test" / "b" / "0.png")
    paths["not_image"] = _images(root / "not_image", {"train": two, "test": two})
    (root / "not_image" / "train" / "a" / "0.png").write_text("not a png")
    paths["truncated_png"] = _images(root / "truncated", {"train": two, "test": two})
    png = root / "truncated" / "train" / "b" / "1.png"
    png.write_bytes(png.read_bytes()[:30])
    paths["float_tiff"] = _images(root / "float", {"train": two, "test": two})
    Image.fromarray(np.ones((8, 8), np.float32)).save(root / "float" / "train" / "a" / "0.tif")
    good = _idx(2051, (2, 28, 28))
    paths |= {"mnist_bad_gzip": _mnist(root / "m1", **{"train-images-idx3-ubyte": b""}),
              "mnist_truncated": _mnist(root / "m2", **{"train-images-idx3-ubyte": good[:100]}),
              "mnist_magic": _mnist(root / "m3", **{"train-images-idx3-ubyte": _idx(2049, (2, 28, 28))}),
              "mnist_missing": _mnist(root / "m4", **{"t10k-labels-idx1-ubyte": b""}),
              "mnist_label": _mnist(root / "m5", **{"train-labels-idx1-ubyte": _idx(2049, (2,), fill=12)}),
              "mnist_count": _mnist(root / "m6", **{"train-labels-idx1-ubyte": _idx(2049, (3,))}),
              "mnist_size": _mnist(root / "m7", **{"train-images-idx3-ubyte": _idx(2051, (2, 8, 8))})}
    _write(root / "m1" / "mnist" / "train-images-idx3-ubyte.gz", gzip.compress(good)[:40])
    batches = root / "c" / "cifar-10-batches-py"
    paths["cifar_missing"] = _write(root / "c0" / "cifar-10-batches-py" / "data_batch_1", pickle.dumps({}))
    for name, data in {"cifar_corrupt": b"\x80\x04garbage", "cifar_code": pickle.dumps(Path("x")),
                       "cifar_shape": pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})}.items():
        for batch in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
            _write(root / name / batches.name / batch, data)
        paths[name] = str(root / name)
    paths |= _results_dirs(root)
    return paths


def _results_dirs(root: Path) -> dict[str, str]:
    from pdm_bench.results import COLUMNS

    paths = {"garbage": _write(root / "garbage" / "results.csv", "name,score\nx,1\n"),
             "torn_header": _write(root / "torn" / "results.csv", ",".join(COLUMNS)[:25] + "\n"),
             "runs_not_json": str(Path(_write(root / "runs_bad" / "runs" / "abc.json", "{not json")).parent)}
    (root / "csv_dir" / "results.csv").mkdir(parents=True)
    paths["csv_is_dir"] = str(root / "csv_dir")
    (root / "lock_dir" / ".results.lock").mkdir(parents=True)
    paths["results_file_is_dir"] = str(root / "lock_dir")
    return paths


PLUGINS = {
    "missing_module": ("pdm_bench.defenses", "pdm_no_such_module_xyz:Thing"),
    "raising": ("pdm_bench.defenses", "pdm_raising_plugin:Defense"),
    "exiting": ("pdm_bench.defenses", "pdm_exiting_plugin:Defense"),
    "not_a_defense": ("pdm_bench.defenses", "pdm_options_plugin:not_a_class"),
    "wrong_name": ("pdm_bench.defenses", "pdm_options_plugin:RuntimeOptions"),
    "runtime_options": ("pdm_bench.defenses", "pdm_options_plugin:RuntimeOptions2"),
    "exiting_detector": ("pdm_bench.detectors", "pdm_exiting_plugin:Detector"),
    "raising_threat": ("pdm_bench.threat_models", "pdm_raising_plugin:Threat"),
}
OPTIONS_PLUGIN = '''
from dataclasses import dataclass
from pdm_bench.defenses.base import Defense
from pdm_bench.defenses.baseline import Baseline

def not_a_class():
    pass

@dataclass(frozen=True, kw_only=True)
class RuntimeOptions(Baseline):
    name = "runtime"
    x: int = 0

@dataclass(frozen=True, kw_only=True)
class RuntimeOptions2(Baseline):
    name = "runtime_options"
    x: int = 0

    def __post_init__(self):
        raise RuntimeError("option x is not ready")
'''


def prepare_plugins(site: Path) -> dict[str, str]:
    """One installed distribution whose entry points fail in each way (see ``PLUGINS``)."""
    _write(site / "pdm_raising_plugin.py", "raise RuntimeError('this plugin is broken at import')\n")
    _write(site / "pdm_exiting_plugin.py", "import sys\nsys.exit('plugin gave up')\n")
    _write(site / "pdm_options_plugin.py", OPTIONS_PLUGIN)
    info = site / "pdm_bad_plugins-0.1.0.dist-info"
    _write(info / "METADATA", "Metadata-Version: 2.1\nName: pdm-bad-plugins\nVersion: 0.1.0\n")
    groups: dict[str, list[str]] = {}
    for name, (group, target) in PLUGINS.items():
        groups.setdefault(group, []).append(f"{name} = {target}\n")
    _write(info / "entry_points.txt", "".join(f"[{g}]\n" + "".join(lines) for g, lines in groups.items()))
    return {"plugins": str(site)}


def prepare_caches(root: Path) -> dict[str, str]:
    """Caches holding a damaged model of ``train``'s default config (digits, pdm, quick, seed 0); none is trained."""
    import torch

    from pdm_bench import api
    from pdm_bench.training import model_entry

    paths = {}
    kinds = ("nan", "no_key", "not_json", "list_json", "corrupt_pt", "other_config", "other_network", "swapped",
             "bad_accuracy")
    for kind in kinds:
        cache = root / f"cache_{kind}"
        config = api.resolve_model(dataset="digits", defense="pdm", options=None, preset="quick", epochs=None, seed=0,
                                   data_dir=None, cache_dir=cache, device="cpu")
        entry = model_entry(cache, config.data, config.defense, config.plan)
        model = config.defense.build_model(config.plan.model)
        if kind == "nan":
            next(iter(model.parameters())).data.fill_(float("nan"))
        entry.finish(model.state_dict(), test_accuracy=0.1 if kind != "swapped" else 0.99, history=[], trained_on={})
        meta = json.loads(entry.meta_path.read_text())
        if kind == "no_key":
            del meta["test_accuracy"]
        if kind == "other_config":
            meta["config"]["plan"]["epochs"] += 1
        if kind == "bad_accuracy":
            meta["test_accuracy"] = 7.5
        entry.meta_path.write_text({"not_json": "{nope", "list_json": "[1, 2]"}.get(kind, json.dumps(meta)))
        if kind == "corrupt_pt":
            entry.weights_path.write_bytes(entry.weights_path.read_bytes()[:100])
        if kind == "other_network":
            torch.save({"weights": torch.nn.Linear(2, 2).state_dict()}, entry.weights_path)
        paths[f"cache_{kind}"] = str(cache)
    return paths
