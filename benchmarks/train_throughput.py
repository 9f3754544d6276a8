"""Training throughput, peak memory and model FLOP utilisation of the encoders with their adapters.

Run: ``.venv/bin/python benchmarks/train_throughput.py [--cases table vit scaling] [--device cpu] [--precision fp32]
[--batch N ...] [--sizes S ...] [--repeats 4] [--warmup 1] [--quick] [--peak-tflops T] [--threads N] [--output PATH]``
(the default CPU run: about 6 minutes on an idle 2-core machine; ``--quick`` about 2).

Case groups (``--cases``; ``--sizes`` and ``--batch`` replace the image sizes and batch sizes of every group chosen):

* ``table``: the embedded encoder (EfficientNet-Lite0 + MiniLM) with no adapter and with Mona at different placements,
  batch 32 at 224 and 192 px: the table of BENCHMARKS.md.
* ``vit``: a randomly initialised ViT-B/16-sized open_clip CLIP (the ``test/tiny-vit-clip`` encoder built at width
  768, 12 blocks of 12 heads, 16 px patches, MLP ratio 4; :data:`VIT_B16`) with the shipped Mona-hybrid
  (``configs/adapters/mona_hybrid_vit.yaml``) and LoRA (``configs/adapters/lora.yaml``) adapters: batch 8 at 224 px
  on a CPU (384 and 512 px with ``--sizes``), batch 32 at 224 and 384 px on a GPU.
* ``scaling``: the embedded encoder with the shipped Mona after stages 2-6 at 224, 384 and 512 px and batch 8, 16
  and 32, for the step time's growth with image size and batch size.

Each case builds the model (prompt-similarity head, two classes), takes ``--warmup`` training steps, then ``--repeats``
timed training steps (forward, cross entropy, backward, AdamW step; torch's fused AdamW on CUDA, as ``usvl fit``
takes it), one warm-up and ``--repeats`` timed forward passes in eval mode, and one more training step under
:class:`~torch.utils.flop_counter.FlopCounterMode` for the FLOPs of a step. ``--precision bf16`` runs the forward
passes under ``torch.autocast`` in bfloat16. Peak memory over the warm-up and timed steps: on CUDA the allocator's
peak (``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``); on a CPU every case runs in a process
of its own (forked), whose resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` once the
model is built) is read after the steps. Growth is the peak minus the memory in use before the warm-up step.

MFU (model FLOP utilisation) is the FLOP/s achieved over the device's peak: ``--peak-tflops``, or the peak of a known
GPU at the chosen precision (:data:`KNOWN_PEAKS`, dense). FlopCounterMode counts matrix multiplications,
convolutions and attention, not element-wise work or FFTs (Mona-hybrid's frequency filter), so the FLOPs and the MFU
are lower bounds of the work done.

Prints a Markdown table (one row per case), writes ``benchmarks/results/train_throughput.json`` (machine, versions,
command, settings, and per case the median, min, max and spread of the repeats) and prints its figure last: the
median training images/s of the first case.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.cli import instantiate_class
from record import REPO, machine, print_figure, summary, write_record
from torch.utils.flop_counter import FlopCounterMode

from usvl.models.adapters import MonaAdapter, NoAdapter
from usvl.models.encoders import LiTEffNetMiniLM, TinyViTCLIP, VisionLanguageEncoder
from usvl.models.heads import PromptSimilarityHead
from usvl.tasks import ClassificationTask
from usvl.tasks.optim import prefer_fused
from usvl.utils.allocator import keep_freed_memory
from usvl.utils.threads import configure_threads

MIB = 1024 * 1024
ADAPTER_CONFIGS = REPO / "configs" / "adapters"

VIT_B16 = {"width": 768, "depth": 12, "heads": 12, "patch_size": 16, "mlp_ratio": 4.0, "embed_dim": 512,
           "feature_taps": (3, 6, 9)}
""":class:`TinyViTCLIP` arguments of a ViT-B/16-sized image tower (CLIP ViT-B/16: 86 M parameters); the text tower
stays tiny, since the class text is fixed before training."""

ENCODERS: dict[str, Callable[[int], VisionLanguageEncoder]] = {
    "embedded": lambda size: LiTEffNetMiniLM(),
    "vit-b16": lambda size: TinyViTCLIP(img_size=size, **VIT_B16),
    "tiny-vit": lambda size: TinyViTCLIP(img_size=size),
}
"""Encoder name -> factory of the encoder at an image size (``tiny-vit``: the tests' 4-block ViT, for smoke runs)."""

ADAPTERS: dict[str, tuple[str, Callable[[], Any]]] = {
    "none": ("no adapter (linear probe)", NoAdapter),
    "mona-0-6": ("Mona after stages 0-6", MonaAdapter),
    "mona-2-6": ("Mona after stages 2-6", lambda: MonaAdapter(points=[2, 3, 4, 5, 6])),
    "mona-4-6": ("Mona after stages 4-6", lambda: MonaAdapter(points=[4, 5, 6])),
    "mona-hybrid": ("Mona-hybrid after every block", lambda: adapter_from_config("mona_hybrid_vit.yaml")),
    "lora": ("LoRA r=16 on the attention", lambda: adapter_from_config("lora.yaml")),
}
"""Adapter name -> (label in the table, factory)."""

KNOWN_PEAKS: list[tuple[str, str, float]] = [
    ("H200", "bf16", 989.0), ("H200", "fp32", 67.0),
    ("H100 PCIe", "bf16", 756.0), ("H100 PCIe", "fp32", 51.0),
    ("H100", "bf16", 989.0), ("H100", "fp32", 67.0),
    ("A100", "bf16", 312.0), ("A100", "fp32", 19.5),
]
"""(substring of ``torch.cuda.get_device_name``, precision, dense peak TFLOP/s), first match wins. fp32 is the
peak without tensor cores: torch does not use TF32 for fp32 matrix multiplications unless told to."""


@dataclass(frozen=True)
class Case:
    """One measurement: an encoder with an adapter at an image size and batch size.

    Attributes:
        encoder: A key of :data:`ENCODERS`.
        adapter: A key of :data:`ADAPTERS`.
        size: Image size (square).
        batch: Batch size.
        channels_last: Channels-last memory format (the default of the tasks).
    """

    encoder: str
    adapter: str
    size: int
    batch: int
    channels_last: bool = True

    @property
    def label(self) -> str:
        """The adapter's label in the table, with the memory format when it is not the default."""
        label = ADAPTERS[self.adapter][0]
        return label if self.channels_last else f"{label}, contiguous memory"


def adapter_from_config(name: str) -> Any:
    """The adapter of a shipped fragment ``configs/adapters/<name>``."""
    return instantiate_class((), yaml.safe_load((ADAPTER_CONFIGS / name).read_text()))


def group_cases(group: str, sizes: list[int], batches: list[int]) -> list[Case]:
    """The cases of a group (``table``, ``vit`` or ``scaling``) at the given sizes and batch sizes."""
    if group == "table":
        return [case for size in sizes for batch in batches for case in (
            Case("embedded", "none", size, batch), Case("embedded", "mona-0-6", size, batch),
            Case("embedded", "mona-2-6", size, batch), Case("embedded", "mona-2-6", size, batch, False),
            Case("embedded", "mona-4-6", size, batch))]
    if group == "vit":
        return [Case("vit-b16", adapter, size, batch) for size in sizes for batch in batches
                for adapter in ("mona-hybrid", "lora")]
    if group == "scaling":
        return [Case("embedded", "mona-2-6", size, batch) for size in sizes for batch in batches]
    raise ValueError(f"Unknown case group '{group}'; use table, vit or scaling")


def default_axes(group: str, device: str, quick: bool) -> tuple[list[int], list[int]]:
    """Image sizes and batch sizes of a group when the command line gives none."""
    gpu = device != "cpu"
    if group == "table":
        return ([224] if quick else [224, 192]), [32]
    if group == "vit":
        if gpu:
            return ([224] if quick else [224, 384]), [32]
        return [224], [4 if quick else 8]
    return ([224, 384] if quick else [224, 384, 512]), ([8, 32] if quick else [8, 16, 32])


def build_cases(groups: list[str], device: str, quick: bool, sizes: list[int] | None,
                batches: list[int] | None) -> list[Case]:
    """Every case of the groups, in order; ``sizes`` and ``batches`` replace each group's own."""
    cases = []
    for group in groups:
        default_sizes, default_batches = default_axes(group, device, quick)
        cases += group_cases(group, sizes or default_sizes, batches or default_batches)
    return cases


def peak_tflops(device: torch.device, precision: str, given: float | None) -> tuple[float | None, str | None]:
    """The peak TFLOP/s for MFU and where it comes from: ``given``, a known GPU, or none (``(None, None)``)."""
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for part, known_precision, value in KNOWN_PEAKS:
        if part in name and known_precision == precision:
            return value, f"known peak of {part} at {precision} (dense)"
    return None, None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that the clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """``torch.autocast`` to bfloat16 for ``bf16``, nothing for ``fp32``."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class PeakMemory:
    """Peak memory from the moment of creation: CUDA's allocator peak, or a CPU process's resident-set peak.

    On a CPU the process's high-water mark (``VmHWM``) is reset to the current resident set through
    ``/proc/self/clear_refs`` (Linux 4.0+); where that is refused, the peak is the process's since it started
    (:attr:`reset` is False), an upper bound.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.start = torch.cuda.memory_allocated(device)
            self.reset = True
        else:
            self.reset = self._reset_high_water_mark()
            self.start = self._status("VmRSS")

    def read(self) -> dict[str, Any]:
        """``peak_mib`` (the peak in use) and ``growth_mib`` (the peak minus the memory in use at creation)."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = self._status("VmHWM")
        return {"peak_mib": round(peak / MIB, 1), "growth_mib": round((peak - self.start) / MIB, 1),
                "peak_reset": self.reset,
                "measure": "cuda max_memory_allocated" if self.device.type == "cuda" else "process VmHWM (RSS)"}

    @staticmethod
    def _reset_high_water_mark() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    @staticmethod
    def _status(key: str) -> int:
        """A memory line of ``/proc/self/status`` in bytes."""
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)


@dataclass
class Setup:
    """A built case: the task, its optimizer and a batch on the device."""

    task: ClassificationTask
    optimizer: torch.optim.Optimizer
    images: torch.Tensor
    labels: torch.Tensor


def build(case: Case, device: torch.device) -> Setup:
    """The task (encoder, adapter, prompt-similarity head, random class text), AdamW and a random uint8 batch."""
    torch.manual_seed(0)
    encoder = ENCODERS[case.encoder](case.size)
    adapter = ADAPTERS[case.adapter][1]()
    task = ClassificationTask(encoder, PromptSimilarityHead, 2, adapter=adapter, channels_last=case.channels_last)
    task.set_text_embeddings(torch.randn(2, 4, encoder.text_dim))
    task.to(device)
    optimizer = prefer_fused(torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-3))
    images = torch.randint(0, 256, (case.batch, 1, case.size, case.size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (case.batch,), device=device)
    return Setup(task, optimizer, images, labels)


def train_step(setup: Setup, precision: str) -> None:
    """One training step: forward (under autocast for bf16), cross entropy, backward, optimizer step."""
    with autocast(setup.images.device, precision):
        loss = F.cross_entropy(setup.task(setup.images), setup.labels)
    setup.optimizer.zero_grad()
    loss.backward()
    setup.optimizer.step()


def forward(setup: Setup, precision: str) -> None:
    """One inference forward pass."""
    with torch.no_grad(), autocast(setup.images.device, precision):
        setup.task(setup.images)


def timings(step: Callable[[], None], device: torch.device, repeats: int) -> Iterator[float]:
    """Seconds of each of ``repeats`` calls of ``step``, the device synchronised around each."""
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        yield time.perf_counter() - start


def step_flops(setup: Setup, precision: str) -> int:
    """FLOPs of one training step, as :class:`FlopCounterMode` counts them."""
    with FlopCounterMode(display=False) as counter:
        train_step(setup, precision)
    return counter.get_total_flops()


def measure(case: Case, device: str = "cpu", precision: str = "fp32", repeats: int = 4, warmup: int = 1,
            peak: float | None = None) -> dict[str, Any]:
    """Train and inference images/s, peak memory, FLOPs per step and MFU of one case, in this process.

    Args:
        case: What to measure.
        device: The torch device.
        precision: ``fp32`` or ``bf16`` (autocast).
        repeats: Timed training steps and timed forward passes, each.
        warmup: Untimed training steps before the timed ones (one untimed forward pass precedes the timed ones).
        peak: The device's peak TFLOP/s for the MFU (None: no MFU).

    Returns:
        The case's record: the case, ``train_images_per_s`` and ``inference_images_per_s`` (summaries of the
        repeats), ``step_seconds``, ``memory``, ``trainable_params``, ``flops_per_step`` (and in GFLOP),
        ``achieved_tflops`` and ``mfu``.
    """
    where = torch.device(device)
    setup = build(case, where)
    setup.task.train()
    memory = PeakMemory(where)
    for _ in range(warmup):
        train_step(setup, precision)
    train = list(timings(lambda: train_step(setup, precision), where, repeats))
    synchronize(where)
    peak_memory = memory.read()
    setup.task.eval()
    forward(setup, precision)
    inference = list(timings(lambda: forward(setup, precision), where, repeats))
    setup.task.train()
    flops = step_flops(setup, precision)
    achieved = flops / statistics.median(train) / 1e12
    return {"case": asdict(case), "label": case.label, "device": device, "precision": precision,
            "train_images_per_s": summary([case.batch / s for s in train], digits=2),
            "inference_images_per_s": summary([case.batch / s for s in inference], digits=2),
            "step_seconds": summary(train, digits=4), "memory": peak_memory,
            "trainable_params": sum(p.numel() for p in setup.task.parameters() if p.requires_grad),
            "flops_per_step": flops, "gflops_per_step": round(flops / 1e9, 3), "achieved_tflops": round(achieved, 6),
            "mfu": round(achieved / peak, 6) if peak else None}


def measure_isolated(case: Case, device: str, precision: str, repeats: int, warmup: int,
                     peak: float | None) -> dict[str, Any]:
    """:func:`measure` in a forked process of its own on a CPU (a clean heap for the memory peak), here on CUDA.

    CUDA cases run in this process (CUDA does not survive a fork); the allocator's peak is reset per case.
    """
    if device.startswith("cuda"):
        result = measure(case, device, precision, repeats, warmup, peak)
        torch.cuda.empty_cache()
        return result
    with multiprocessing.get_context("fork").Pool(1) as pool:
        return pool.apply(measure, (case, device, precision, repeats, warmup, peak))


def table_row(result: dict[str, Any]) -> str:
    """The Markdown row of a case's record."""
    case, memory = result["case"], result["memory"]
    mfu = "—" if result["mfu"] is None else f"{100 * result['mfu']:.1f} %"
    return (f"| {case['encoder']} | {result['label']} | {case['size']} | {case['batch']} "
            f"| {result['train_images_per_s']['median']:.1f} | {result['inference_images_per_s']['median']:.1f} "
            f"| {memory['peak_mib']:,.0f} | {memory['growth_mib']:,.0f} | {result['gflops_per_step']:,.1f} "
            f"| {result['achieved_tflops']:.3f} | {mfu} |")


TABLE_HEADER = ("| encoder | adapter | size | batch | train img/s | inference img/s | peak MiB | growth MiB "
                "| GFLOP/step | TFLOP/s | MFU |\n|---|---|---|---|---|---|---|---|---|---|---|")


def parse_options() -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=["table", "vit", "scaling"], default=["table", "vit", "scaling"])
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: torch.autocast")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes of every group chosen")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="image sizes of every group chosen")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per case (default 4, --quick 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps per case before the timed ones")
    parser.add_argument("--quick", action="store_true", help="fewer sizes, batch sizes and repeats (a smoke run)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s, for the MFU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: USVL_THREADS or cores)")
    parser.add_argument("--output", type=Path, default=None, help="default benchmarks/results/train_throughput.json")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. the machine's load)")
    return parser.parse_args()


def main() -> None:
    options = parse_options()
    threads = configure_threads(options.threads)
    keep_freed_memory()  # as every usvl command does (forked cases inherit it); USVL_ALLOCATOR=system turns it off
    repeats = options.repeats or (2 if options.quick else 4)
    cases = build_cases(options.cases, options.device, options.quick, options.sizes, options.batch)
    load_before = os.getloadavg()
    peak, peak_source = peak_tflops(torch.device(options.device), options.precision, options.peak_tflops)
    print(f"device={options.device} precision={options.precision} threads={threads} repeats={repeats} (median); "
          f"{len(cases)} cases; peak TFLOP/s {peak or 'unknown'}")
    print(TABLE_HEADER, flush=True)
    results = []
    for case in cases:
        results.append(measure_isolated(case, options.device, options.precision, repeats, options.warmup, peak))
        print(table_row(results[-1]), flush=True)
    first = results[0]
    record = {
        "figure": {"name": "train_images_per_s", "value": first["train_images_per_s"]["median"],
                   "meaning": f"median training images/s of the first case: {first['case']['encoder']}, "
                              f"{first['label']}, {first['case']['size']} px, batch {first['case']['batch']}"},
        "settings": {"cases": options.cases, "device": options.device, "precision": options.precision,
                     "repeats": repeats, "warm_up_steps": options.warmup, "quick": options.quick, "threads": threads,
                     "peak_tflops": peak, "peak_source": peak_source, "vit_b16": VIT_B16},
        "machine": machine(load_before),
        "results": results,
        "note": options.note,
    }
    write_record("train_throughput", record, options.output)
    print_figure("train_images_per_s", record["figure"]["value"])


if __name__ == "__main__":
    main()
