"""The training loop: optimiser recipes, one epoch, evaluation, and a resumable ``fit``.

Reproducible and resumable: the batch order, the augmentation and dropout of epoch e are drawn from
generators seeded by (seed, e), and ``last.pt`` after every epoch holds the model, optimiser,
scheduler, scaler and history. So a run resumed from ``last.pt`` continues exactly where it stopped
and ends with the same weights as an uninterrupted one (bit for bit on the CPU).
"""
import contextlib
import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from capsule_classifier.augment import augment_geometry, augment_intensity, fixed_affine, paste_tumours
from capsule_classifier.checkpoint import model_record, prior_from_counts
from preprocess import distributed
from preprocess.checkpoint_io import load_checkpoint_file, save_checkpoint
from preprocess.tensorboard_log import log_scalars, tensorboard_writer
from preprocess.weight_average import exponential_average
from capsule_classifier.report import classification_metrics
from capsule_classifier.stretch_adversary import StretchAdversary, last_stage, reversal_strength, training_stretches

RECIPES = ("onecycle", "study_sgd")
EVAL_BATCH = 64
# test-time warps (scale, degrees): the slice itself, scaled by 0.9 and 1.1, rotated by -10 and +10
# degrees; all inside the training augmentation's range (augment.MAX_SCALE, MAX_ROTATION_DEG)
TEST_TIME_WARPS = ((1.0, 0.0), (0.9, 0.0), (1.1, 0.0), (1.0, -10.0), (1.0, 10.0))
MIN_SCHEDULE_STEPS = 10   # one-cycle needs a few steps in each phase


@dataclass
class TrainConfig:
    """How one model is trained. ``train.py`` builds it from its flags of the same names, and a test
    keeps these defaults equal to the script's."""
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    recipe: str = "onecycle"         # "onecycle": AdamW + one-cycle LR; "study_sgd": SGD, fixed LR
    label_smoothing: float = 0.1
    augmentation: str = "mri"
    vertical_flips: bool = False     # augmentation and test-time views include up-down flips
    amp: object = "auto"             # mixed precision (True, False, "auto": where the device has
                                     # bfloat16): bfloat16, or float16 on older GPUs
    channels_last: bool = False
    seed: int = 0
    ema_decay: float = 0.998         # > 0: evaluate and save an exponential moving average of the weights
    mask_weight: float = 0.5         # > 0: add this times the tumour-mask loss (models with a mask head)
    mixup: float = 0.0               # > 0: mix each batch with a shuffled copy, weight ~ Beta(mixup, mixup)
    tumour_paste: float = 0.5        # > 0: about this share of each batch gets another slice's tumour
                                     # pasted in (needs tumour masks; augment.paste_tumours)
    paste_at: str = "donor"          # where a pasted tumour lands: "donor" (where it sat in its own
                                     # slice), "host" (on the slice's own tumour) or "either" (a coin)
    paste_donor: str = "any"         # which slices give the pasted tumours: "any" or "other_class"
    paste_levels: str = "raw"        # "raw": pasted after the intensity augmentation, as it is; "matched":
                                     # before it, scaled to the slice's tissue level (augment.paste_tumours)
    prior_correction: float = 1.0    # scoring only: probabilities divided by the training class shares
                                     # to this power (correct_for_prior); resuming may change it (the
                                     # epochs validated before keep their scores and best.pt)
    test_time_warps: bool = True     # scoring only: average the final scores over TEST_TIME_WARPS of
                                     # each slice as well (5x the views; per-epoch validation stays single-view)
    stretch_adversary: float = 0.0   # > 0: weight of a class-conditional stretch adversary behind a gradient
                                     # reversal (residual capsule network; capsule_classifier/stretch_adversary.py)
    stretch_adversary_reads: str = "mean"   # its head reads the last stage averaged ("mean") or every position ("map")


NO_MASKS = "a data file has no tumor_masks"


def tumour_paste_problem(has_masks):
    """Why ``--tumour_paste`` cannot be used (None: it can)."""
    return None if has_masks else NO_MASKS


def mask_loss_problem(has_mask_head, has_masks):
    """Why the tumour-mask loss cannot be used (None: it can)."""
    if not has_mask_head:
        return "only the residual capsule network has a mask head"
    return tumour_paste_problem(has_masks)


def make_optimiser(model, config, steps_per_epoch, extra=None):
    """(optimiser, per-step scheduler or None) for the recipe named in ``config``; ``extra`` (a module
    or None) trains alongside the model (the stretch adversary)."""
    modules = [model] if extra is None else [model, extra]
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    if config.recipe == "study_sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum), None
    if config.recipe != "onecycle":
        raise ValueError(f"unknown recipe {config.recipe!r}; use one of {RECIPES}")
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=max(MIN_SCHEDULE_STEPS, config.epochs * steps_per_epoch), pct_start=0.25)
    return optimiser, scheduler


def make_average(model, config):
    """An ``AveragedModel`` (weights and batch-norm statistics) when ``config.ema_decay``, else None."""
    return exponential_average(model, config.ema_decay)


def _to_device(images, device, channels_last):
    x = images.to(device, non_blocking=True).float().unsqueeze(1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def cpu_has_native_bf16():
    """True when the CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), where bf16 autocast
    speeds training up (measured in bench/bench_training_epoch.py); elsewhere it is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_amp(flag, device):
    """The ``amp`` setting (a bool, or "true", "false", "auto") as a bool: ``"auto"`` is on for CUDA
    and for CPUs with native bfloat16."""
    if isinstance(flag, bool):
        return flag
    text = str(flag).strip().lower()
    if text == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"amp must be true, false or 'auto', got {flag!r}")


def autocast_dtype(device):
    """bfloat16 on CPUs and on GPUs that support it (no loss scaling, no float16 overflow in the
    capsule routing); float16 on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _autocast(device, enabled):
    return torch.autocast(device.type, dtype=autocast_dtype(device),
                          enabled=enabled and device.type in ("cuda", "cpu"))


def mask_loss(mask_logits, masks):
    """Binary cross-entropy of the mask head's logits against the tumour masks pooled to their size
    (the fraction of each cell the tumour covers)."""
    target = F.adaptive_avg_pool2d(masks.float(), mask_logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(mask_logits.float(), target)


def _epoch_seed(seed, epoch):
    return int(seed) * 1_000_003 + int(epoch)


def mix_batch(images, masks, weight, generator):
    """Mixup (Zhang et al. 2018): each image (and tumour mask) blended with a partner from the same
    batch, ``weight`` x own + (1 - weight) x partner's; returns (images, masks, partner indices)."""
    partner = torch.randperm(images.shape[0], generator=generator, device=images.device)
    images = weight * images + (1 - weight) * images[partner]
    if masks is not None:
        masks = weight * masks + (1 - weight) * masks[partner]
    return images, masks, partner


def blend_targets(targets, partner, partner_share):
    """Per-sample class distributions (B, C) when slices are mixed: (1 - share) x a sample's own
    distribution + share x its partner's; ``partner_share`` a number or one per sample."""
    share = torch.as_tensor(partner_share, dtype=targets.dtype, device=targets.device).reshape(-1, 1)
    return (1 - share) * targets + share * targets[partner]


@contextlib.contextmanager
def capture_output(module):
    """A dict whose "output" is ``module``'s latest output while the block runs (the hook is removed
    however the block ends); ``module`` None: an empty dict and no hook."""
    captured = {}
    hook = None if module is None else module.register_forward_hook(
        lambda _module, _inputs, output: captured.__setitem__("output", output))
    try:
        yield captured
    finally:
        if hook is not None:
            hook.remove()


def train_epoch(model, data, config, optimiser, scheduler, scaler, device, epoch, description, average=None,
                adversary=None, stretches=None):
    """One pass over ``data`` (LabelledImages); returns (mean loss, accuracy, images per second).
    ``average`` (an ``AveragedModel``) is updated after every step. ``adversary`` (a
    ``StretchAdversary``) with ``stretches`` (the stretch index of every slice of ``data``) adds
    ``config.stretch_adversary`` x its loss on the last stage's features."""
    model.train()
    if adversary is not None:
        adversary.train()
        stretches_all = torch.as_tensor(stretches)
    seed = _epoch_seed(config.seed, epoch)
    torch.manual_seed(seed)
    # under torchrun every process takes its share of each global batch, with its own augmentation
    generator = torch.Generator(device=device).manual_seed(seed + 7919 * distributed.rank())
    order = np.random.default_rng(seed).permutation(len(data))
    batches = [order[k:k + config.batch_size] for k in range(0, len(order), config.batch_size)]
    if len(batches) > 1 and len(batches[-1]) < max(2, distributed.world_size()):   # batch norm needs two
        batches = batches[:-1]
    batches = [rows[distributed.rank()::distributed.world_size()] for rows in batches]
    labels_all = torch.as_tensor(data.labels)
    num_classes = getattr(model, "module", model).config["num_classes"]      # the bare model under DDP
    mixup_rng = np.random.default_rng([seed, distributed.rank()])
    total_loss, correct, seen, started = 0.0, 0, 0, time.time()
    bar = tqdm(batches, desc=description, unit="batch", leave=False, dynamic_ncols=True,
               **distributed.progress_bar_options())
    # the adversary reads the last stage's output (it is refused under torchrun, so ``model`` is the bare one)
    with capture_output(last_stage(model) if adversary is not None else None) as captured:
        for step, rows in enumerate(bar):
            index = torch.as_tensor(rows)
            images = _to_device(data.images[index], device, config.channels_last)
            labels = labels_all[index].to(device)
            masks = (data.masks[index].to(device).unsqueeze(1) if config.mask_weight or config.tumour_paste
                     else None)
            # pasting with matched levels comes between the geometry and the intensity changes, so one
            # gamma and contrast treat a pasted tumour and its new surroundings alike
            matched = config.tumour_paste > 0 and config.paste_levels == "matched"
            images, labels, masks = augment_geometry(images, labels, config.augmentation, generator,
                                                     config.vertical_flips, masks)
            if not matched:
                images = augment_intensity(images, config.augmentation, generator)
            targets = labels                  # class indices, or (B, C) distributions once slices are mixed
            if config.tumour_paste > 0 or config.mixup > 0:
                targets = F.one_hot(labels, num_classes).float()
            if config.tumour_paste > 0:
                images, masks, donor, share = paste_tumours(images, masks, config.tumour_paste, generator,
                                                              at=config.paste_at, labels=labels,
                                                              donors=config.paste_donor, match_levels=matched)
                targets = blend_targets(targets, donor, share)
            if matched:
                images = augment_intensity(images, config.augmentation, generator)
            if config.mixup > 0:
                weight = float(mixup_rng.beta(config.mixup, config.mixup))
                images, masks, partner = mix_batch(images, masks, weight, generator)
                targets = blend_targets(targets, partner, 1 - weight)
            with _autocast(device, config.amp):
                if not config.mask_weight:
                    logits = model(images)
                else:
                    # a model with a tumour-levels expert also returns the expert's own logits
                    logits, mask_logits, *expert_logits = model(images, with_mask=True)
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
                if config.mask_weight:
                    loss = loss + config.mask_weight * mask_loss(mask_logits, masks)
                    for expert in expert_logits:
                        loss = loss + F.cross_entropy(expert.float(), targets, label_smoothing=config.label_smoothing)
                if adversary is not None:
                    progress = (epoch + step / len(batches)) / config.epochs
                    stretch_logits = adversary(captured.pop("output"), reversal_strength(progress))
                    # the study's augmentation follows each slice by its rotated copies
                    batch_stretches = stretches_all[index].repeat_interleave(len(labels) // len(index))
                    loss = loss + config.stretch_adversary * adversary.loss(
                        stretch_logits, batch_stretches.to(device), labels)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            if average is not None:
                average.update_parameters(getattr(model, "module", model))     # the bare model under DDP
            total_loss += loss.item() * len(labels)
            correct += (logits.argmax(1) == (targets.argmax(1) if targets.dim() == 2 else targets)).sum().item()
            seen += len(labels)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", img_s=f"{seen / (time.time() - started):.0f}")
    total_loss, correct, seen = distributed.sum_over_processes([total_loss, correct, seen], device)
    return total_loss / max(seen, 1), correct / max(seen, 1), seen / (time.time() - started)


def flip_views(x, vertical=True):
    """The image batch and its left-right flip, plus (``vertical``) its up-down and both-ways flips
    (test-time averaging)."""
    views = [x, x.flip(-1)]
    return views + [x.flip(-2), x.flip(-1).flip(-2)] if vertical else views


def test_time_views(x, flips=True, vertical=True, warps=False):
    """The views of an image batch that scoring averages over: the batch (with ``warps``, each of
    TEST_TIME_WARPS of it), each with its flips (``flip_views``) when ``flips``."""
    warped = [x if (scale, degrees) == (1.0, 0.0) else fixed_affine(x, scale, degrees)
              for scale, degrees in (TEST_TIME_WARPS if warps else ((1.0, 0.0),))]
    return [view for w in warped for view in (flip_views(w, vertical) if flips else [w])]


def correct_for_prior(probabilities, prior, strength):
    """Probabilities (N, C) divided by ``prior`` ** ``strength`` and renormalised (post-hoc logit
    adjustment, Menon et al. 2021: with strength 1 the training class shares stop counting, as if
    every class had been equally common in training; 0 leaves them unchanged)."""
    if not strength or prior is None:
        return probabilities
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (probabilities.shape[1],) or (prior <= 0).any():
        raise ValueError(f"class prior {prior.tolist()}: needs one positive share per class "
                         f"({probabilities.shape[1]})")
    adjusted = probabilities / prior ** strength
    return (adjusted / adjusted.sum(1, keepdims=True)).astype(probabilities.dtype)


@torch.no_grad()
def predict(model, images, device, batch_size=EVAL_BATCH, channels_last=False, amp=False, embed=False,
            flips=False, vertical_flips=True, prior=None, prior_correction=0.0, warps=False):
    """Class probabilities (N, C) of images (N, S, S), or penultimate features when ``embed``.

    ``flips``: average the probabilities over the image and its flips (left-right, and with
    ``vertical_flips`` up-down and both; 2x or 4x the cost): the views the training augmentation
    showed the network (``checkpoint.trained_vertical_flips``). ``warps``: over TEST_TIME_WARPS of
    the image as well (5x the cost; ``test_time_views``). ``prior`` (the training class
    shares, ``checkpoint.training_prior``) and ``prior_correction``: see ``correct_for_prior``.
    """
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = _to_device(torch.as_tensor(images[start:start + batch_size]), device, channels_last)
        with _autocast(device, amp):
            if embed:
                y = model.embed(x)
            else:
                views = test_time_views(x, flips, vertical_flips, warps)
                y = sum(torch.softmax(model(v).float(), dim=1) for v in views) / len(views)
        out.append(y.float().cpu())
    out = torch.cat(out).numpy()
    return out if embed else correct_for_prior(out, prior, prior_correction)


def _state(model, average, model_name, train_data, optimiser, scheduler, scaler, history, best, config,
           epoch, counts, adversary=None):
    """last.pt: ``state_dict`` holds the weights to use (the average when there is one);
    the raw training weights and the average's count (and the stretch adversary's weights) are kept
    to resume exactly."""
    record = model_record(model_name, average.module if average is not None else model, train_data.image_size)
    if average is not None:
        record.update(train_state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                      ema_count=int(average.n_averaged))
    if adversary is not None:
        record.update(adversary_state_dict={k: v.detach().cpu() for k, v in adversary.state_dict().items()})
    record.update(optimiser=optimiser.state_dict(), scheduler=scheduler.state_dict() if scheduler else None,
                  scaler=scaler.state_dict(), history=history, best=best, epoch=epoch,
                  train_config=asdict(config), train_data=data_fingerprint(train_data), class_counts=counts)
    return record


def class_counts(data, num_classes):
    """Slices per class (a list of ints)."""
    return np.bincount(np.asarray(data.labels), minlength=num_classes).tolist()


def data_fingerprint(data):
    """What identifies the training data of a run: slice count, image size and a hash of the
    slices' source ids in order (so another file, fold or size is recognised on resume)."""
    return source_fingerprint(data.source_ids, data.image_size)


def source_fingerprint(source_ids, image_size):
    """``data_fingerprint`` of slices with these source ids (in order) at ``image_size``."""
    digest = hashlib.sha256("\n".join(map(str, source_ids)).encode()).hexdigest()[:16]
    return {"slices": int(len(source_ids)), "image_size": int(image_size), "source_ids_sha256": digest}


# settings added after runs had been saved, and what a run saved without them did
SAVED_WITHOUT = {"tumour_paste": 0.0, "paste_at": "host", "paste_donor": "any", "paste_levels": "raw",
                 "stretch_adversary": 0.0, "stretch_adversary_reads": "mean"}
SCORING_ONLY = ("prior_correction", "test_time_warps")   # change how a run is scored, not what it trains: free on resume


def setting_changes(saved_config, config, skip=SCORING_ONLY):
    """(name, value, the run's value) for every setting of ``config`` (a TrainConfig as training runs
    it, see ``effective_config``) that differs from a run's saved ``train_config``; the settings in
    ``skip`` are not compared."""
    saved = {**SAVED_WITHOUT, **saved_config}
    if not (saved["tumour_paste"] and config.tumour_paste):
        for name in ("paste_at", "paste_donor", "paste_levels"):
            saved.pop(name)                   # where tumours land, whose and how bright is moot when
                                              # either run pastes none
    if not (saved["stretch_adversary"] and config.stretch_adversary):
        saved.pop("stretch_adversary_reads")  # what the head reads is moot when either run has none
    return [(name, value, saved[name]) for name, value in asdict(config).items()
            if name in saved and name not in skip and saved[name] != value]


def check_resumable(state, config, train_data, path):
    """Refuse to resume ``path`` with settings or data other than the run's own, naming them."""
    differ = [f"--{name}={value!r} (the run used {old!r})"
              for name, value, old in setting_changes(state.get("train_config", {}), config)]
    saved_data = state.get("train_data")
    data = data_fingerprint(train_data) if saved_data else None
    if saved_data and saved_data != data:
        what = ("image_size" if saved_data["image_size"] != data["image_size"] else "data_path / fold")
        differ.append(f"the training data ({what}: {data['slices']} slices at {data['image_size']} px, "
                      f"the run had {saved_data['slices']} at {saved_data['image_size']} px"
                      f"{', other slices' if saved_data['slices'] == data['slices'] else ''})")
    if differ:
        raise ValueError(f"cannot resume {path}: " + "; ".join(differ) + ". Resume with the run's own "
                         "flags, or start a new run (another --run_name)")


def build_stretch_adversary(model, train_data, config, device):
    """(StretchAdversary, stretch index per training slice) when ``config.stretch_adversary`` > 0,
    else (None, None); refused where it cannot work, naming why."""
    if not config.stretch_adversary:
        return None, None
    if config.stretch_adversary < 0:
        raise ValueError(f"--stretch_adversary={config.stretch_adversary}: 0 (off) or a positive weight")
    if distributed.is_distributed():
        raise ValueError("--stretch_adversary is not supported under torchrun (its head is not synchronised)")
    last_stage(model)                   # refuses networks without a residual trunk
    stretches, counts = training_stretches(train_data)
    adversary = StretchAdversary(model.config["widths"][-1], counts, config.stretch_adversary_reads)
    return adversary.to(device), stretches


def unusable_settings(config, has_mask_head, has_masks):
    """{setting: why} for the mask loss and tumour pasting of ``config`` that the model or the data
    cannot use (training switches them off)."""
    why = {"mask_weight": config.mask_weight and mask_loss_problem(has_mask_head, has_masks),
           "tumour_paste": config.tumour_paste and tumour_paste_problem(has_masks)}
    return {name: reason for name, reason in why.items() if reason}


def effective_config(config, has_mask_head, has_masks, device, log=None):
    """``config`` as training runs it (and saves it in its checkpoints): mixed precision resolved for
    ``device``, the settings of ``unusable_settings`` off (each said through ``log``)."""
    off = unusable_settings(config, has_mask_head, has_masks)
    for name, reason in off.items():
        if log:
            log(f"{name}={getattr(config, name)} ignored: {reason}")
    return replace(config, amp=resolve_amp(config.amp, device), **{name: 0.0 for name in off})


def fit(model, model_name, train_data, val_data, config, run_dir, device, resume=False,
        on_epoch_end=None, log=tqdm.write):
    """Train ``model`` on ``train_data``, validate every epoch on ``val_data`` (None: no validation).

    With ``config.ema_decay`` the validated and saved weights are the exponential moving average.

    Writes ``run_dir/best.pt`` (best validation macro-F1; without ``val_data`` the newest model) and
    ``run_dir/last.pt`` (every epoch).
    With ``resume`` it continues from ``run_dir/last.pt`` when that exists. ``on_epoch_end(epoch)``
    is called after each epoch's checkpoint is written. Returns the history (list of dicts) and the
    best record ({"epoch", "macro_f1", "accuracy"}).
    """
    last_path, best_path = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
    config = effective_config(config, getattr(model, "mask_head", None) is not None, train_data.masks is not None,
                              device, log)
    if distributed.is_distributed() and device.type == "cuda":
        # batch statistics over the global batch; PyTorch has no synchronised batch norm on CPUs,
        # where each process normalises over its share of the batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    trained = model
    if distributed.is_distributed():
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    adversary, stretches = build_stretch_adversary(model, train_data, config, device)
    steps = max(1, math.ceil(len(train_data) / config.batch_size))
    optimiser, scheduler = make_optimiser(model, config, steps, extra=adversary)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and autocast_dtype(device) == torch.float16)
    average = make_average(model, config)
    evaluated = average.module if average is not None else model
    history, best, start = [], {"epoch": None, "macro_f1": -1.0, "accuracy": None}, 0
    if resume and os.path.isfile(last_path):
        state = load_checkpoint_file(last_path, map_location=device)
        check_resumable(state, config, train_data, last_path)
        model.load_state_dict(state.get("train_state_dict", state["state_dict"]))
        if average is not None:
            average.module.load_state_dict(state["state_dict"])
            average.n_averaged.fill_(state["ema_count"])
        if adversary is not None:
            adversary.load_state_dict(state["adversary_state_dict"])
        optimiser.load_state_dict(state["optimiser"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best, start = state["history"], state["best"], state["epoch"]
        log(f"resuming {run_dir} after epoch {start}")
    elif os.path.isfile(last_path):
        raise FileExistsError(f"{last_path} exists: pass --resume=True to continue that run, "
                              f"or choose another --run_name")
    image_size = train_data.image_size
    writer = tensorboard_writer(run_dir, start) if distributed.is_main() else None
    num_classes = getattr(trained, "module", trained).config["num_classes"]
    counts = class_counts(train_data, num_classes)
    prior = prior_from_counts(counts)
    for epoch in range(start, config.epochs):
        started = time.time()
        loss, accuracy, speed = train_epoch(trained, train_data, config, optimiser, scheduler, scaler,
                                            device, epoch, f"epoch {epoch + 1}/{config.epochs}", average,
                                            adversary, stretches)
        record = {"epoch": epoch + 1, "train_loss": loss, "train_accuracy": accuracy, "val_loss": None,
                  "val_accuracy": None, "val_macro_f1": None, "images_per_s": speed}
        if adversary is not None:
            record["stretch_loss"] = adversary.epoch_loss()
        metrics = None
        if val_data is not None:
            # bfloat16 on the CPU only trains: validation runs in float32 there
            probabilities = predict(evaluated, val_data.images, device, channels_last=config.channels_last,
                                    amp=config.amp and device.type == "cuda", prior=prior,
                                    prior_correction=config.prior_correction)
            metrics = classification_metrics(val_data.labels, probabilities)
            record.update(val_loss=float(F.nll_loss(torch.log(torch.as_tensor(probabilities).clamp_min(1e-8)),
                                                    torch.as_tensor(val_data.labels))),
                          val_accuracy=metrics["accuracy"], val_macro_f1=metrics["macro_f1"])
        history.append({**record, "seconds": time.time() - started})
        # best.pt: the best validation macro-F1 so far; without a validation part, the newest model
        if metrics is None or metrics["macro_f1"] > best["macro_f1"]:
            best = {"epoch": epoch + 1, "macro_f1": metrics["macro_f1"] if metrics else None,
                    "accuracy": metrics["accuracy"] if metrics else None}
            saved = model_record(model_name, evaluated, image_size)
            saved.update(epoch=epoch + 1, val_metrics=metrics, train_config=asdict(config), class_counts=counts)
            if distributed.is_main():
                save_checkpoint(saved, best_path)
        if distributed.is_main():
            save_checkpoint(_state(model, average, model_name, train_data, optimiser, scheduler, scaler, history,
                                   best, config, epoch + 1, counts, adversary), last_path)
        distributed.barrier()       # every process reads the checkpoints rank 0 has just written
        validated = (f"val loss {record['val_loss']:.3f}  val acc {metrics['accuracy']:.3f}  "
                     f"val F1 {metrics['macro_f1']:.3f}  " if metrics else "")
        adversarial = (f"stretch loss {record['stretch_loss']:.3f} (blind {adversary.blind_loss:.3f})  "
                       if adversary is not None else "")
        log(f"epoch {epoch + 1}/{config.epochs}  loss {loss:.3f}  train acc {accuracy:.3f}  {validated}"
            f"{adversarial}{speed:.0f} img/s  {time.time() - started:.0f}s")
        scalars = {"loss/train": loss, "accuracy/train": accuracy,
                   "learning_rate": optimiser.param_groups[0]["lr"], "images_per_s": speed}
        if metrics:
            scalars.update({"loss/validation": record["val_loss"], "accuracy/validation": metrics["accuracy"],
                            "macro_f1/validation": metrics["macro_f1"]})
        if adversary is not None:
            scalars["loss/stretch"] = record["stretch_loss"]
        log_scalars(writer, epoch + 1, scalars)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    if writer is not None:
        writer.close()
    return history, best
