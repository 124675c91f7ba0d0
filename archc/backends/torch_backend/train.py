"""``archc train --backend torch``: the spec's recipe with DistributedDataParallel.

The same command runs alone (``archc train ...``, one process) or under ``torchrun``
(one process per GPU, one node or several): the trainer reads torchrun's ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` and joins the process group (NCCL on GPU, gloo on CPU).
On GPU it trains under bf16 autocast with channels_last tensors; ``--compile`` adds
torch.compile. docs/training.md shows the launch lines.

The recipe, made explicit (the same numbers as the Keras trainer, see archc.training.kit):

- loss: cross-entropy with the recipe's label smoothing, the mean over each replica's
  batch; DDP averages the gradients, so the gradient is that of the global-batch mean;
- weight decay: L2 on every parameter of two or more dimensions (conv, separable and
  dense kernels; never biases or BN weight/bias), with the convention of Keras'
  ``kernel_regularizer=l2(wd)``: ``wd * sum(w**2)`` added to the loss. torch's optimizers
  add ``weight_decay * w`` to the gradient, the gradient of ``weight_decay / 2 * sum(w**2)``,
  so the kernels' parameter group gets ``weight_decay = 2 * wd``;
- learning rate: ``LambdaLR`` stepping once per optimizer step, the step's rate from
  :func:`archc.ir.recipe.learning_rate_at`;
- EMA (Polyak averaging): :class:`WarmEMA` over the parameters, from the initial weights,
  with the warm-up of :func:`archc.ir.recipe.ema_decay_at`; evaluation and
  ``final_ema.pt`` use it with the live BN statistics;
- BN running statistics: DDP broadcasts rank 0's before every forward; before every
  checkpoint, evaluation and at the end they are averaged over the ranks (as the Keras
  trainer does), so that every rank holds the same model.

Rank 0 logs and writes checkpoints; every rank reads the checkpoint to resume, so OUT
must be on storage all nodes share.

The loop itself (resume, the cadence of logs, checkpoints and evaluations, digests, final
files) is :func:`archc.training.loop.train`'s; this module holds the data pipeline and
:class:`TorchEngine`, the framework's side of each step.
"""

from __future__ import annotations

import os
from pathlib import Path

from archc.ir.recipe import ema_decay_at
from archc.syntax.errors import UserError, one_line
from archc.training import kit, loop

CHECKPOINT_SUFFIX = ".pt"
FORMAT = "archc-torch-checkpoint-1"


class Distributed:
    """This process's place in the job: torchrun's environment, or one process alone."""

    def __init__(self, config: kit.RunConfig):
        import torch
        import torch.distributed as dist

        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        cuda = torch.cuda.is_available() if config.device == "auto" else config.device == "cuda"
        if cuda and not torch.cuda.is_available():
            raise UserError("--device cuda: expected a CUDA device, found none")
        if cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.control = None  # the default group, or a gloo one beside NCCL: small CPU all-reduces
        if self.enabled:
            backend = "nccl" if cuda else "gloo"
            store = _round_store(self.world)  # None: env:// as usual
            rendezvous = {"store": store, "rank": self.rank, "world_size": self.world} if store is not None else {}
            dist.init_process_group(backend=backend, device_id=self.device if cuda else None, **rendezvous)
            self.control = dist.new_group(backend="gloo") if cuda else None
        self.dist = dist

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, tensor):
        if self.enabled and self.world > 1:
            self.dist.all_reduce(tensor, op=self.dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled and self.world > 1:
            self.dist.barrier()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank: a one-number all-reduce on the CPU (on GPU
        over a gloo group, so that the step does not wait for the device)."""
        if not (self.enabled and self.world > 1):
            return flag
        import torch

        value = torch.tensor([int(flag)])
        self.dist.all_reduce(value, group=self.control)
        return bool(value.item())

    def close(self) -> None:
        if self.enabled:
            self.dist.destroy_process_group()


# -- data --------------------------------------------------------------------------------------
#
# Workers decode and resize to uint8 (simplejpeg or Pillow with reduced-size JPEG decode,
# torch's uint8 resize: :func:`load_jpeg`); batches travel as
# uint8 NHWC in pinned memory (a quarter of float32's bytes) and become float in [-1, 1]
# on the device (:func:`to_input`). The synthetic source skips the loader: its batches are
# made on the device from two small tables.


class Samples:
    """A map-style dataset over an image folder: item (index, flip, box) -> (uint8 HWC, label),
    ``box`` the random crop's four numbers (:func:`archc.training.kit.random_box`), the
    evaluation's central fraction, or ``None`` for the whole image."""

    def __init__(self, source, training):
        self.source = source
        self.augment = training.augment
        self.errors = kit.decode_errors()

    def __getitem__(self, item):
        import torch

        index, flip, box = item
        if isinstance(box, tuple):
            draw, area, aspect = box, self.augment.crop_area, self.augment.crop_aspect
            region = lambda h, w: kit.random_box(h, w, draw, area, aspect)  # noqa: E731
        elif box is not None and box < 1:
            region = lambda h, w: kit.central_box(h, w, box)  # noqa: E731
        else:
            region = None
        source = self.source
        try:
            image = load_jpeg(source.files[index], source.height, source.width, source.channels, region, flip)
            if image is None:  # not a JPEG, or no simplejpeg here: Pillow
                image = torch.from_numpy(source.load(index, region, flip))
        except self.errors as exc:  # passed the check before step 1, fails now: skipped, counted
            return kit.Unreadable(source.files[index], one_line(f"{type(exc).__name__}: {exc}"))
        return image, source.label(index)


def collate(items):
    """(uint8 images, labels, the batch's :class:`archc.training.kit.Unreadable` files) of
    the items that decoded; a batch whose files all fail ends the run in one line."""
    import torch

    good = [item for item in items if not isinstance(item, kit.Unreadable)]
    failed = [item for item in items if isinstance(item, kit.Unreadable)]
    if not good:
        raise UserError(f"{failed[0].path}: expected an image it can decode, found a whole batch that fails ({failed[0].reason})")
    return torch.stack([image for image, _ in good]), torch.tensor([label for _, label in good], dtype=torch.int64), failed


def _decoder():
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


_SIMPLEJPEG = _decoder()


def load_jpeg(path: str, height: int, width: int, channels: int, box=None, flip: bool = False):
    """A JPEG as a uint8 height x width x channels tensor, the region ``box`` picks
    (:func:`archc.training.kit.load_image`'s arguments), or ``None`` for other files (and
    grey inputs, or without simplejpeg): the same crop as ``load_image``, faster per core.

    Decoded at reduced size in the DCT domain (1/2, 1/4 or 1/8) where the region still
    covers the input at that scale (simplejpeg: libjpeg-turbo with its fast integer DCT
    and upsampling); the region is cut out of the reduced
    image on whole pixels (its edges move by less than half a reduced pixel) and resized
    by torch's uint8 bilinear, antialiased like Pillow's."""
    import math

    import torch
    import torch.nn.functional as F

    if channels != 3 or _SIMPLEJPEG is None:
        return None
    with open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        full_h, full_w, _, _ = _SIMPLEJPEG.decode_jpeg_header(data)
        top, left, h, w = box(full_h, full_w) if box is not None else (0, 0, full_h, full_w)
        pixels = _SIMPLEJPEG.decode_jpeg(
            data,
            colorspace="RGB",
            fastdct=True,
            fastupsample=True,
            min_height=math.ceil(full_h * height / h),
            min_width=math.ceil(full_w * width / w),
        )
    except ValueError:  # a file libjpeg-turbo refuses (truncated, damaged): Pillow decides
        return None
    sy, sx = full_h / pixels.shape[0], full_w / pixels.shape[1]
    y0, x0 = round(top / sy), round(left / sx)
    y1, x1 = max(y0 + 1, round((top + h) / sy)), max(x0 + 1, round((left + w) / sx))
    x = torch.from_numpy(pixels[y0:y1, x0:x1]).permute(2, 0, 1)[None]  # channels_last: no copy
    if x.shape[2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    image = x[0].permute(1, 2, 0)
    if flip:
        image = image.flip(1)
    return image.contiguous()


class Plan:
    """This rank's training batches from step ``start`` to ``total``, epoch after epoch, made
    lazily (an ImageNet run has millions): lists of (index, flip, crop draws) items, or of
    indices for the synthetic source. One loader iterates the whole run, so its workers
    live from the first step to the last."""

    def __init__(self, prepared, schedule: kit.Schedule, start: int, total: int, rank: int, augment: bool, seed: int):
        self.prepared, self.schedule, self.start, self.total = prepared, schedule, start, total
        self.rank, self.augment, self.seed = rank, augment, seed

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self):
        source, schedule = self.prepared.train, self.schedule
        for epoch, skip, end in kit.epoch_spans(schedule.steps_per_epoch, self.start, self.total):
            order = kit.epoch_order(source.size, epoch, self.seed)
            flipped, draws = kit.epoch_augmentation(self.prepared.training, source, epoch, self.seed, self.augment)
            for s in range(skip, end):
                index = kit.replica_indices(order, s, schedule.global_batch, schedule.batch_size, self.rank)
                if source.kind == kit.SYNTHETIC:
                    yield index
                else:
                    yield [(int(i), bool(flipped[i]), tuple(draws[i].tolist()) if draws is not None else None) for i in index]


class SyntheticBatches:
    """Batches of the synthetic source made on the device: one gather and one add each
    (:class:`archc.training.kit.SyntheticTables`)."""

    def __init__(self, source, device):
        import torch

        tables = source.tables()
        self.rows = torch.as_tensor(tables.rows, device=device)
        self.noise = torch.as_tensor(tables.noise, device=device)
        self.device = device

    def __call__(self, index):
        import numpy as np
        import torch

        index = torch.from_numpy(np.asarray(index, dtype=np.int64))
        if self.device.type == "cuda":  # pinned: the copy does not wait for the GPU
            index = index.pin_memory().to(self.device, non_blocking=True)
        noise, labels = kit.synthetic_lookup(index, len(self.rows))
        images = self.noise.index_select(0, noise)
        images.view(len(index), images.shape[1], -1).add_(self.rows.index_select(0, labels)[:, None, :])
        return images, labels

    def stream(self, batches):
        return (self(index) for index in batches)


def loader(source, training, batches, workers: int, pin: bool):
    import torch

    # its own generator: making an iterator would otherwise draw from the global RNG (which
    # drives dropout), and a resumed run makes one more iterator than an uninterrupted one
    return torch.utils.data.DataLoader(
        Samples(source, training),
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=pin,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(0),
    )


def to_input(x, memory_format):
    """uint8 NHWC on the device -> float32 NCHW in [-1, 1] (``kit.INPUT_SCALE`` and
    ``kit.INPUT_OFFSET``) in ``memory_format``: NHWC is channels_last already."""
    import torch

    return (x.permute(0, 3, 1, 2).to(torch.float32) / kit.INPUT_SCALE - kit.INPUT_OFFSET).contiguous(memory_format=memory_format)


def eval_batches(prepared, rank: int, world: int):
    """This rank's evaluation batches: every ``world``-th image, the recipe's central crop."""
    source, batch = prepared.val, prepared.training.batch_size
    mine = list(range(rank, source.size, world))
    if source.kind == kit.SYNTHETIC:
        return [mine[k : k + batch] for k in range(0, len(mine), batch)]
    fraction = kit.eval_fraction(prepared.training)
    return [[(i, False, fraction) for i in mine[k : k + batch]] for k in range(0, len(mine), batch)]


# -- the model and the optimizer ----------------------------------------------------------------


def make_optimizer(training, model):
    import torch

    kernels = [p for p in model.parameters() if p.requires_grad and kit.is_kernel(p)]
    others = [p for p in model.parameters() if p.requires_grad and not kit.is_kernel(p)]
    groups = [
        {"params": kernels, "weight_decay": 2.0 * training.weight_decay},  # = Keras l2(wd): wd * sum(w**2) in the loss
        {"params": others, "weight_decay": 0.0},
    ]
    opt = training.optimizer
    lr = training.learning_rate.initial
    if opt.kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, nesterov=opt.nesterov)
    return torch.optim.RMSprop(groups, lr=lr, alpha=opt.rho, eps=opt.epsilon, momentum=opt.momentum)


def make_scheduler(optimizer, schedule: kit.Schedule):
    import torch

    initial = schedule.training.learning_rate.initial
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.learning_rate(step) / initial)


class WarmEMA:
    """The EMA of the trainable weights with the warm-up of
    :func:`archc.ir.recipe.ema_decay_at`, starting from the initial weights.

    Not ``torch.optim.swa_utils.AveragedModel``: its update reads its step counter from a
    tensor, which costs a host-device sync every step (a blocking copy of the CPU counter,
    or a read of a GPU one). Here the counter is a Python int and the update one
    ``torch._foreach_lerp_`` with a Python weight: nothing waits for the GPU."""

    def __init__(self, decay: float, model):
        import copy

        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.updates = 0

    def update_parameters(self, model) -> None:
        import torch

        self.updates += 1
        keep = ema_decay_at(self.decay, self.updates)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in model.parameters()], 1.0 - keep)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def make_ema(training, model):
    return WarmEMA(training.ema.decay, model) if training.ema is not None else None


def average_buffers(model, job: Distributed) -> None:
    """Average the floating-point buffers (BN running statistics) over the ranks."""
    import torch

    if not (job.enabled and job.world > 1):
        return
    with torch.no_grad():
        buffers = [b for b in model.buffers() if b.is_floating_point()]
        if buffers:
            flat = torch.cat([b.reshape(-1) for b in buffers])
            job.all_sum(flat)
            flat /= job.world
            offset = 0
            for b in buffers:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()


def ema_model(ema, model):
    """The EMA module with the live model's buffers (BN statistics), ready to evaluate."""
    import torch

    if ema is None:
        return None
    with torch.no_grad():
        for mine, live in zip(ema.module.buffers(), model.buffers()):
            mine.copy_(live)
    return ema.module


# -- the run -------------------------------------------------------------------------------------


def run(config: kit.RunConfig) -> None:
    import torch

    job = Distributed(config)
    try:
        torch.manual_seed(config.seed)
        prepared = kit.prepare(config)
        schedule = kit.Schedule.for_run(prepared, job.world)
        loop.train(prepared, schedule, TorchEngine(config, job, prepared, schedule))
    finally:
        job.close()


class TorchEngine:
    """The loop's engine (:class:`archc.training.loop.Engine`) for torch: the model under
    DDP (or alone), its optimizer, schedule and EMA, bf16 autocast and channels_last on GPU."""

    checkpoint_suffix = CHECKPOINT_SUFFIX

    def __init__(self, config: kit.RunConfig, job: Distributed, prepared, schedule: kit.Schedule):
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from archc.codegen.backend import get

        self.torch, self.job, self.config, self.prepared, self.schedule = torch, job, config, prepared, schedule
        self.training = training = prepared.training
        self.cuda = cuda = job.device.type == "cuda"
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and cuda)
        self.channels_last = config.channels_last == "on" or (config.channels_last == "auto" and cuda)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.workers = config.loader_workers if config.loader_workers is not None else (4 if cuda else 0)
        self.kind = f"torch/{'ddp' if job.enabled else 'single'}"
        self.replicas, self.is_main, self.rank_name = job.world, job.is_main, f"rank-{job.rank}"

        module = get("torch").load(prepared.model_file)
        self.net = net = module.create_model().to(job.device, memory_format=self.memory_format)
        self.optimizer = make_optimizer(training, net)
        self.scheduler = make_scheduler(self.optimizer, schedule)
        self.ema = make_ema(training, net)
        model = DistributedDataParallel(net, device_ids=[job.local_rank] if cuda else None) if job.enabled else net
        self.step_model = torch.compile(model) if config.compile else model
        self.window = torch.zeros(2, dtype=torch.float64, device=job.device)  # loss sum, steps
        val = prepared.val
        self.val_synthetic = SyntheticBatches(val, job.device) if val is not None and val.kind == kit.SYNTHETIC else None
        self.averaged = None
        self.unreadable = 0  # files skipped because they failed to decode during the run
        net.train()

    def describe(self) -> str:
        job, config = self.job, self.config
        where = f"{job.world} process(es), {'DDP ' + ('nccl' if self.cuda else 'gloo') if job.enabled else 'no process group'}"
        return (
            f"torch on {job.device.type}, {where}, global batch {self.schedule.global_batch}, {'bf16 autocast' if self.bf16 else 'fp32'}"
            f"{', channels_last' if self.channels_last else ''}{', torch.compile' if config.compile else ''}"
        )

    def restore(self, path: Path, signature: dict) -> int:
        torch, job = self.torch, self.job
        state = kit.read_checkpoint(path, lambda p: torch.load(p, map_location=job.device, weights_only=True))
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(f"{path}: expected an archc torch checkpoint, found something else; use another --out or --no-resume")
        kit.check_resumable(state["signature"], signature, path)
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        rng = state.get("rng") or []
        if len(rng) == job.world:
            torch.set_rng_state(rng[job.rank]["cpu"].cpu())
            if self.cuda and rng[job.rank].get("cuda") is not None:
                torch.cuda.set_rng_state(rng[job.rank]["cuda"].cpu())
        return int(state["step"])

    def save(self, path: Path, signature: dict, step: int) -> None:
        torch, job = self.torch, self.job
        average_buffers(self.net, job)
        rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if self.cuda else None}
        states = [None] * job.world
        if job.enabled and job.world > 1:
            job.dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if job.is_main:
            state = {
                "format": FORMAT,
                "step": step,
                "signature": signature,
                "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": states,
            }
            kit.atomic_write(path, lambda tmp: torch.save(state, tmp))

    def batches(self, start: int, total: int):
        config, prepared = self.config, self.prepared
        plan = Plan(prepared, self.schedule, start, total, self.job.rank, config.augment, config.seed)
        if prepared.train.kind == kit.SYNTHETIC:
            return SyntheticBatches(prepared.train, self.job.device).stream(plan)
        return iter(loader(prepared.train, self.training, plan, self.workers, self.cuda))

    def inputs(self, batch):
        """(float input, labels) of a batch, on the device; its files that failed to decode
        are reported and counted."""
        x, y, *failed = batch
        for item in failed[0] if failed else ():
            self.unreadable += 1
            kit.report_unreadable(item, self.unreadable, self.job.rank)
        return to_input(x.to(self.job.device, non_blocking=True), self.memory_format), y.to(self.job.device, non_blocking=True)

    def step(self, batch) -> None:
        import torch.nn.functional as F

        torch = self.torch
        x, y = self.inputs(batch)
        with torch.autocast(self.job.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.step_model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.training.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.window[0] += loss.detach().double()
        self.window[1] += 1

    def mean_loss(self) -> float:
        loss_sum, steps = self.job.all_sum(self.window).tolist()
        self.window.zero_()
        return loss_sum / steps

    def evaluate(self):
        """Every rank evaluates its shard (:func:`eval_batches`); the sums are all-reduced."""
        import torch.nn.functional as F

        torch, job = self.torch, self.job
        average_buffers(self.net, job)
        target = ema_model(self.ema, self.net) or self.net
        target.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=job.device)
        batches = eval_batches(self.prepared, job.rank, job.world)
        if self.val_synthetic is not None:
            stream = self.val_synthetic.stream(batches)
        else:
            stream = loader(self.prepared.val, self.training, batches, self.workers, self.cuda)
        with torch.no_grad(), torch.autocast(job.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for batch in stream:
                x, y = self.inputs(batch)
                logits = target(x).float()
                sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
                sums[1] += (logits.argmax(1) == y).sum().double()
                sums[2] += len(y)
        job.all_sum(sums)
        target.train()
        loss, correct, count = sums.tolist()
        return "ema" if self.ema is not None else "live", loss / count, correct / count, int(count)

    def digests(self) -> dict:
        average_buffers(self.net, self.job)
        self.averaged = ema_model(self.ema, self.net)

        def arrays(module):
            return [t.detach().float().cpu().numpy() for t in module.state_dict().values() if t.is_floating_point()]

        return {
            "params": kit.digest(p.detach().float().cpu().numpy() for p in self.net.parameters()),
            "state": kit.digest(arrays(self.net)),
            "ema": kit.digest(arrays(self.averaged)) if self.averaged is not None else None,
        }

    def save_final(self, out: Path) -> Path:
        torch = self.torch
        kit.atomic_write(out / "final.pt", lambda tmp: torch.save(self.net.state_dict(), tmp))
        if self.averaged is None:
            return out / "final.pt"
        kit.atomic_write(out / "final_ema.pt", lambda tmp: torch.save(self.averaged.state_dict(), tmp))
        return out / "final_ema.pt"

    def barrier(self) -> None:
        self.job.barrier()

    def agree(self, stop: bool) -> bool:
        return self.job.any(stop)


def _round_store(world: int):
    """The rendezvous store, its keys under this restart's number: after torchrun restarts
    a group (``--max-restarts``), the new group's processes share the agent's store with
    the old group's, whose addresses would otherwise be read back (a connect to a dead
    process, refused). None without torchrun's agent (init_process_group's own env://)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    import torch.distributed as dist

    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timedelta(minutes=30))
    return dist.PrefixStore(f"archc/round{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)
