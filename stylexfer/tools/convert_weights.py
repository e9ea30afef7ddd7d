"""Convert weights published only as PyTorch pickles into safetensors: the LPIPS and FID-Inception weights
that ``eval.models.lpips`` / ``eval.models.fid`` point to, and LoRA adapters saved as pickles (JDiffusion's
DreamBooth example writes ``pytorch_lora_weights.bin``).

    python -m stylexfer.tools.convert_weights lpips --backbone squeezenet1_1-b8a52dc0.pth
    python -m stylexfer.tools.convert_weights fid --src pt_inception-2015-12-05-6726825d.pth
    python -m stylexfer.tools.convert_weights lora --src style/style_00/pytorch_lora_weights.bin

Sources (download them on a machine with network access):
- LPIPS backbone: torchvision's SqueezeNet 1.1 ImageNet weights
  (https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth); the LPIPS v0.1 linear heads ship
  inside the ``lpips`` package (``lpips/weights/v0.1/squeeze.pth``) and are taken from there.
- FID: pytorch-fid's port of the TF FID Inception
  (https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth),
  the network torchmetrics / torch-fidelity also use.

This is the one place stylexfer opens a pickle, with ``torch.load(weights_only=True)`` (PyTorch's
restricted unpickler: tensors and plain containers only, no code); every run reads the safetensors output.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from pathlib import Path

WEIGHTS_DIR = Path(os.environ.get("STYLEXFER_CACHE", Path.home() / ".cache" / "stylexfer")) / "metric-weights"
DEFAULT_OUT = {
    "lpips": WEIGHTS_DIR / "lpips-squeeze-v0.1.safetensors",
    "fid": WEIGHTS_DIR / "fid-inception-2015-12-05.safetensors",
}
_ALIAS = re.compile(r"^lin\d+\.")  # lpips keeps lin0..lin6 as aliases of lins.0..6: stored once


def _read_pickle(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise SystemExit(f"error: {path}: no such file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"error: {path}: not a PyTorch weights file ({str(e).splitlines()[0]})") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _save(state: dict, out: Path, meta: dict) -> Path:
    from safetensors.torch import save_file

    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def lpips_state(backbone: dict, linear: dict) -> dict:
    """LPIPS-SqueezeNet's state dict from torchvision's ``features.N.*`` and lpips' ``linK.*`` weights."""
    import lpips

    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="squeeze", pretrained=False, pnet_rand=True, verbose=False)
    state = {}
    for key, own in model.state_dict().items():
        if _ALIAS.match(key):
            continue
        if key.startswith("net.slice"):  # net.slice3.6.expand1x1.weight <- features.6.expand1x1.weight
            src = "features." + key.split(".", 2)[2]
            value = backbone.get(src)
        elif key.startswith("lins."):  # lins.2.model.1.weight <- lin2.model.1.weight
            value = linear.get("lin" + key[len("lins.") :])
        else:  # the scaling layer's constant buffers
            value = own
        if value is None or tuple(value.shape) != tuple(own.shape):
            raise SystemExit(
                f"error: LPIPS weight {key}: {'missing' if value is None else f'shape {tuple(value.shape)}'} "
                f"in the source files (expected {tuple(own.shape)})"
            )
        state[key] = value.float()
    return state


def fid_state(src: dict) -> dict:
    """pytorch-fid InceptionV3 (all four blocks) state dict from the FID Inception weights."""
    from ..metrics import fid_network, fid_structure

    def loaded():
        net = fid_structure()
        net.load_state_dict(src)  # strict: the file must be the FID Inception
        return net

    return fid_network(3, structure=loaded).state_dict()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m stylexfer.tools.convert_weights", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    lp = sub.add_parser("lpips", help="LPIPS-SqueezeNet v0.1 (eval.models.lpips)")
    lp.add_argument("--backbone", type=Path, required=True, help="torchvision squeezenet1_1-b8a52dc0.pth")
    lp.add_argument("--linear", type=Path, default=None, help="LPIPS v0.1 squeeze.pth (default: the lpips package's)")
    lp.add_argument("--out", type=Path, default=DEFAULT_OUT["lpips"])
    fp = sub.add_parser("fid", help="FID Inception (eval.models.fid)")
    fp.add_argument("--src", type=Path, required=True, help="pt_inception-2015-12-05-6726825d.pth")
    fp.add_argument("--out", type=Path, default=DEFAULT_OUT["fid"])
    lo = sub.add_parser("lora", help="a LoRA adapter saved as a pickle (diffusers keys kept as they are)")
    lo.add_argument("--src", type=Path, required=True, help="pytorch_lora_weights.bin")
    lo.add_argument("--out", type=Path, default=None, help="default: pytorch_lora_weights.safetensors beside --src")
    args = p.parse_args(argv)
    if args.what == "lora":
        state = _read_pickle(args.src)
        bad = [k for k, v in state.items() if not hasattr(v, "shape")] if isinstance(state, dict) else ["(not a dict)"]
        if bad:
            raise SystemExit(f"error: {args.src}: not a LoRA state dict (no tensor at {bad[0]})")
        out = _save(state, args.out or args.src.with_suffix(".safetensors"), {"format": "pt", "source": args.src.name})
        print(f"wrote {out} ({len(state)} tensors); load_lora_weights() on its folder reads it")
        return 0
    if args.what == "lpips":
        import lpips

        linear = args.linear or Path(lpips.__file__).parent / "weights" / "v0.1" / "squeeze.pth"
        state = lpips_state(_read_pickle(args.backbone), _read_pickle(linear))
        out = _save(state, args.out, {"format": "pt", "net": "lpips-squeeze-v0.1", "backbone": args.backbone.name})
    else:
        state = fid_state(_read_pickle(args.src))
        out = _save(
            state, args.out, {"format": "pt", "net": "pytorch-fid InceptionV3 blocks 0-3", "source": args.src.name}
        )
    print(f"wrote {out} ({len(state)} tensors); set eval.models.{args.what}={out} if it is not the default path")
    return 0


if __name__ == "__main__":
    sys.exit(main())
