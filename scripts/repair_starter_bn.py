"""Re-estimate BatchNorm running statistics that a float16 save turned into inf/NaN.

    python scripts/repair_starter_bn.py [MODEL_DIR] [--batches 60] [--dry-run]

Until 2026-12-05 ``save_model(half=True)`` stored every tensor as float16, whose largest
value is 65504. The shipped starter's decoder had one BatchNorm channel
(``decoder.blocks.0.conv1.1``, channel 45) whose running variance was larger, so it was
saved as ``inf``: in eval mode that channel then outputs a constant, and every model
fine-tuned from the starter inherits the ``inf`` (an exponential average of inf stays inf).

This script feeds the model batches of its own training distribution (the synthetic
regions of ``scripts/train_starter.py`` + the MIT real sets when present, 8 x 128² patches,
same augmentation), records each BatchNorm layer's input per channel in eval mode, and
replaces only the non-finite running statistics: variance = measured variance / the median
measured/stored ratio of the same layer's finite channels (the batches here are not the
training batches, so the layer's finite channels calibrate the estimate). Everything else
is kept bit for bit; the model is saved again (float16 weights, float32 statistics).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from train_starter import DEFAULT_OUT, real_regions, synthetic_regions  # noqa: E402

from napari_nanodefect.core.segment.data import PatchSampler  # noqa: E402
from napari_nanodefect.core.segment.model import load_model, save_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default=str(DEFAULT_OUT))
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    m = load_model(args.model, device="cpu")
    mod = m.module.eval()
    bad = {name: bn for name, bn in mod.named_modules() if isinstance(bn, torch.nn.BatchNorm2d)
           and not (torch.isfinite(bn.running_var).all() and torch.isfinite(bn.running_mean).all())}
    if not bad:
        print("all BatchNorm statistics are finite: nothing to do")
        return
    sums: dict[str, list] = {name: [] for name in bad}

    def hook_for(name):
        def hook(_module, inp):
            x = inp[0].detach().double()
            sums[name].append((x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)))
        return hook

    handles = [bn.register_forward_pre_hook(hook_for(name)) for name, bn in bad.items()]
    d0 = m.config.object_diameter_px
    bs = m.config.background_size  # the model's own input flattening
    regions = synthetic_regions(120, args.seed, d0, background_size=bs) + real_regions(d0, 0, background_size=bs)
    sampler = PatchSampler(regions, patch=128, seed=args.seed, scale_jitter=0.35, invert_p=0.5)
    with torch.inference_mode():
        for _ in range(args.batches):
            mod(sampler.batch(8)["image"])
    for h in handles:
        h.remove()
    repairs = []
    for name, bn in bad.items():
        mean = torch.stack([s[0] for s in sums[name]]).mean(0).float()
        var = torch.stack([s[1] for s in sums[name]]).mean(0).float()
        ok = torch.isfinite(bn.running_var) & torch.isfinite(bn.running_mean)
        ratio = float(np.median((var[ok] / bn.running_var[ok]).numpy()))
        corr = float(np.corrcoef(np.log(var[ok].numpy()), np.log(bn.running_var[ok].numpy()))[0, 1])
        for c in torch.nonzero(~ok).ravel().tolist():
            new_var, new_mean = float(var[c] / ratio), float(mean[c])
            repairs.append({"layer": name, "channel": c, "running_var": [str(float(bn.running_var[c])), new_var],
                            "running_mean": [float(bn.running_mean[c]), new_mean if not torch.isfinite(bn.running_mean[c]) else float(bn.running_mean[c])],
                            "calibration": {"median_measured_over_stored": round(ratio, 3), "log_corr": round(corr, 4)}})
            with torch.no_grad():
                bn.running_var[c] = new_var
                if not torch.isfinite(bn.running_mean[c]):
                    bn.running_mean[c] = new_mean
    print(json.dumps(repairs, indent=1))
    if args.dry_run:
        return
    cfg = m.config
    cfg.training = dict(cfg.training or {})
    cfg.training["batchnorm_repair"] = {"script": "scripts/repair_starter_bn.py", "batches": args.batches,
                                        "repairs": repairs}
    extra = {p.name: p.read_bytes() for p in Path(args.model).iterdir() if p.name not in ("config.json", "model.safetensors")}
    out = Path(args.model)
    save_model(out, mod, cfg, half=True)  # atomic; it replaces the folder, so put NOTICE.txt etc. back
    for k, v in extra.items():
        (out / k).write_bytes(v)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
