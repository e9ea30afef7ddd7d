"""``python -m stylexfer.export RUN [RUN ...] --format kohya``: a run's adapters in the layout the tools people
generate with read (AUTOMATIC1111, ComfyUI, SD.Next, InvokeAI: kohya's sd-scripts' ``lora_unet_…`` /
``lora_te_…`` names), written to ``RUN/export/kohya/style_<id>.safetensors``.

diffusers' ``convert_state_dict_to_kohya`` is where this starts; for an SD 2 adapter it has three gaps, each
closed here: it writes every ``.alpha`` as the rank (the trained ``lora_alpha``, and its per-module pattern,
are what scale the update), it names the one text encoder ``lora_te1_`` (SD 1/2 tools read ``lora_te_``; ``te1``
is SDXL's first of two), and it drops DoRA magnitudes under the ``unet.``/``text_encoder.`` prefixes (written
here as ``dora_scale``, shape ``(out, 1)``: the output-axis layout LyCORIS and ComfyUI read). Framework-free:
numpy and safetensors only, so an adapter of either backend exports the same."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np

from .errors import ConfigError, StylexferError
from .store import atomic_write_bytes

log = logging.getLogger(__name__)

FORMATS = ("kohya",)
LORA_FILE = "pytorch_lora_weights.safetensors"
_PEFT_ONLY = ("loha", "lokr")  # stored in peft's own keys: no kohya LoRA layout to map them to
_PARTS = {"unet": ("lora_unet_", "unet_config"), "text_encoder": ("lora_te_", "text_encoder_config")}
# a diffusers LoRA file's key endings (peft's, diffusers' UNet and text-encoder spellings) → kohya's
_SUFFIX = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_linear_layer.down.weight": "lora_down.weight",
    "lora_linear_layer.up.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
}


def read_adapter(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and the header metadata of a diffusers LoRA file."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def part_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """Each part's peft config from a LoRA file's header: diffusers' ``lora_adapter_metadata`` (one JSON of
    ``unet.r``, ``text_encoder.lora_alpha``, …) or stylexfer's ``unet_config`` / ``text_encoder_config``."""
    configs = {p: json.loads(metadata[c]) for p, (_, c) in _PARTS.items() if c in metadata}
    for key, value in json.loads(metadata.get("lora_adapter_metadata") or "{}").items():
        part, _, name = key.partition(".")
        if part in _PARTS:
            configs.setdefault(part, {})[name] = value
    return configs


def module_alpha(config: dict, module: str) -> float:
    """The ``lora_alpha`` peft used for ``module`` (a dotted path): its ``alpha_pattern`` entry whose key ends the
    path (peft's rule), else the config's ``lora_alpha``."""
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){re.escape(pattern)}$", module) or re.fullmatch(pattern, module):
            return float(alpha)
    return float(config["lora_alpha"])


def kohya_name(part: str, module: str) -> str:
    """kohya's name of a LoRA'd module: ``unet`` + ``down_blocks.0.….to_out.0`` →
    ``lora_unet_down_blocks_0_…_to_out_0``. The text encoder's paths are CLIPTextModel's
    (``text_model.encoder.layers.…``), as kohya's SD 1/2 scripts name them."""
    if part == "text_encoder" and not module.startswith("text_model."):
        module = "text_model." + module
    return _PARTS[part][0] + module.replace(".", "_")


def to_kohya(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A diffusers LoRA file's tensors and metadata in kohya's layout: per module ``lora_down``/``lora_up`` (the same
    numbers), ``alpha`` (the trained alpha, float32 scalar) and, for DoRA, ``dora_scale``."""
    kind = metadata.get("stylexfer_peft_kind", "lora")
    if kind in _PEFT_ONLY:
        raise ConfigError(f"--format kohya: a {kind} adapter is stored in peft's own keys, not LoRA's; nothing to map")
    configs = part_configs(metadata)
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        part, _, rest = key.partition(".")
        suffix = next((s for s in sorted(_SUFFIX, key=len, reverse=True) if rest.endswith("." + s)), None)
        if part not in _PARTS or suffix is None:
            raise ConfigError(f"{key}: not a diffusers LoRA key (unet.… / text_encoder.… lora_A, lora_B, magnitude)")
        if part not in configs:
            raise ConfigError(f"{key}: the file's metadata has no {part} LoRA config to read its alpha from")
        module = rest[: -len(suffix) - 1]
        name = kohya_name(part, module)
        value = np.ascontiguousarray(value)
        out[f"{name}.{_SUFFIX[suffix]}"] = value.reshape(-1, 1) if suffix == "lora_magnitude_vector" else value
        out[f"{name}.alpha"] = np.asarray(module_alpha(configs[part], module), dtype=np.float32)
    unet = configs.get("unet", {})
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(unet.get("r", "")),
        "ss_network_alpha": str(unet.get("lora_alpha", "")),
        "ss_network_args": json.dumps({"dora_wd": "True", "wd_on_output": "True"} if kind == "dora" else {}),
        "stylexfer_kind": kind,
    }
    return out, meta


def write_exports(converted: list[tuple[Path, bytes]]) -> list[Path]:
    for target, data in converted:
        atomic_write_bytes(target, data)
        log.info("wrote %s", target)
    return [t for t, _ in converted]


def convert_run(run: Path, fmt: str = "kohya") -> list[tuple[Path, bytes]]:
    """Every adapter of the run folder ``run`` converted to ``fmt``: (the file to write, its bytes)."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown export format {fmt!r} (choose from {', '.join(FORMATS)})")
    run = Path(run)
    files = sorted((run / "adapters").glob(f"*/{LORA_FILE}"))
    if not files:
        raise ConfigError(f"{run}: no adapters/<style>/{LORA_FILE} here (not a finished run folder?)")
    from safetensors.numpy import save

    converted = []
    for f in files:
        try:
            tensors, meta = to_kohya(*read_adapter(f))
        except ConfigError as e:
            raise ConfigError(f"{f}: {e}") from None
        converted.append((run / "export" / fmt / f"style_{f.parent.name}.safetensors", save(tensors, meta)))
    return converted


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(prog="python -m stylexfer.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (experiments/<name>/<time>, a sweep's job)")
    ap.add_argument("--format", default="kohya", help=f"one of: {', '.join(FORMATS)}")
    args = ap.parse_args(argv)
    try:  # every run converted before anything is written
        converted = [item for run in args.runs for item in convert_run(run, args.format)]
    except StylexferError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for target in write_exports(converted):
        print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
