"""Model cards: a ``README.md`` and a ``samples.png`` beside each adapter of a run folder, as the diffusers
training scripts write them for the Hub (YAML front matter, the trigger prompt, how to load it), with what a
researcher needs to trust or redo it: the base model, the training settings, the run's scores, its samples.
Written from the run's summary alone, offline."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import yaml
from PIL import Image

from .report import fmt, image_grid
from .store import atomic_write_bytes, atomic_write_text

CARD = "README.md"
SAMPLES = "samples.png"
# the config groups that made the adapter, and those that made the samples its scores are of
TRAINING_GROUPS = ("lora", "prior", "augmentation", "train")
SAMPLING_GROUPS = ("init", "scheduler", "sample", "inject")
# scheduler=NAME → the diffusers scheduler the PyTorch backend samples with (its from_config arguments)
SCHEDULERS = {
    "ddim": ("DDIMScheduler", ""),
    "dpmpp": ("DPMSolverMultistepScheduler", ', algorithm_type="dpmsolver++", solver_order=2'),
    "euler_a": ("EulerAncestralDiscreteScheduler", ""),
    "euler": ("EulerDiscreteScheduler", ""),
    "unipc": ("UniPCMultistepScheduler", ""),
    "pndm": ("PNDMScheduler", ", skip_prk_steps=True"),
}
_TRAINING_ONLY = {"compile", "compile_mode", "compile_vae", "cuda_graphs", "fp8"}  # speed, not the adapter


def hub_id(source: str) -> str | None:
    """The Hub id a base model was named by (``owner/name``), or None for a folder or an embedded model."""
    parts = source.split("/")
    return source if len(parts) == 2 and all(parts) and not Path(source).exists() and " " not in source else None


def trigger_prompt(template: str, style_id: str) -> str:
    """The prompt that calls the style: the run's template with the style filled in, ``{object}`` kept."""
    return template.replace("{style}", style_id)


def card_text(style_id: str, summary: dict) -> str:
    """The model card of style ``style_id``'s adapter in the run ``summary`` describes (summary.json's dict)."""
    cfg, model, st = summary["config"], summary["model"], summary["styles"][style_id]
    prompt = trigger_prompt(cfg["data"]["prompt"], style_id)
    instance = trigger_prompt(cfg["data"]["instance_prompt"], style_id)
    objects = st.get("objects") or ["cat"]
    base = hub_id(model["source"])
    peft_only = cfg["lora"]["kind"] in ("loha", "lokr")
    front = {
        **({"base_model": base} if base else {}),
        "library_name": "diffusers",
        "instance_prompt": instance,
        "tags": ["text-to-image", "diffusers", "lora", "stable-diffusion", "stylexfer", f"style_{style_id}"],
        "widget": [{"text": prompt.replace("{object}", objects[0]), "output": {"url": SAMPLES}}],
        "inference": False,
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# style_{style_id}: a {cfg['lora']['kind']} adapter made by stylexfer", ""]
    if model.get("random_weights"):
        lines += ["> **Trained on a random-weight model** (plumbing only): its images and scores mean nothing.", ""]
    if summary.get("notice"):
        lines += [f"> Note: {summary['notice']}.", ""]
    lines += [
        f"Trigger prompt: `{prompt}` (trained on `{instance}`, `{{object}}` from each image's file name).",
        "",
        f"- Base model: {model['source']} (`{model['folder']}`, identity `{model['identity']}`, "
        f"{model.get('prediction_type', '?')} prediction)",
        f"- Backend: {cfg['backend']['name']}; "
        f"adapter key in the stage store: `{st.get('adapter_key')}`"
        + (" (reused from the store)" if st.get("reused") else f", trained in {st.get('train_seconds', 0):.1f} s"),
        f"- Run: `{summary['name']}` in `{summary['run_dir']}`; data: `{summary['data_root']}`",
        "",
        "## Use it",
        "",
    ]
    if peft_only:
        lines += [
            f"A {cfg['lora']['kind']} adapter in peft's own keys (diffusers' LoRA loader does not read it): "
            "`python -m stylexfer` samples it, with the run's config (`.hydra/config.yaml`).",
            "",
        ]
    else:
        start = cfg["init"]["mode"] == "avg_image"
        pipe = "StableDiffusionImg2ImgPipeline" if start else "StableDiffusionPipeline"
        call = (
            f'image = pipe(prompt, image=Image.open("{st.get("init_image")}"), strength={cfg["init"]["strength"]},\n'
            if start
            else "image = pipe(prompt,\n"
        )
        sched, sched_args = SCHEDULERS[cfg["scheduler"]["name"]]
        lines += [
            "```python",
            "import torch",
            *(["from PIL import Image"] if start else []),
            f"from diffusers import {sched}, {pipe}",
            "",
            'device = "cuda" if torch.cuda.is_available() else "cpu"',
            f'pipe = {pipe}.from_pretrained("{base or model["folder"]}",',
            '    torch_dtype=torch.float16 if device == "cuda" else torch.float32).to(device)',
            f"pipe.scheduler = {sched}.from_config(pipe.scheduler.config{sched_args})",
            f'pipe.load_lora_weights("adapters/{style_id}")',
            f'prompt = "{prompt.replace("{object}", objects[0])}"',
            call + f"             num_inference_steps={cfg['scheduler']['steps']}, "
            f"guidance_scale={cfg['scheduler']['guidance_scale']}).images[0]",
            "```",
            "",
        ]
        lines += [
            "Run in the run folder. As the run sampled"
            + (": img2img from the pixel-average of the style's images (`init/`)" if start else ", from noise")
            + "; its own seeds and batching make its images (`images/`), not this call's.",
            "",
        ]
    if not peft_only:
        lines += [
            "For AUTOMATIC1111, ComfyUI and the other tools that read kohya's layout: `python -m stylexfer.export "
            f"RUN` writes `export/kohya/style_{style_id}.safetensors` (the same weights, the trained alpha).",
            "",
        ]
    lines += _scores_section(style_id, summary)
    lines += [f"![samples]({SAMPLES})", ""]
    for title, groups in (("Training", TRAINING_GROUPS), ("Sampling", SAMPLING_GROUPS)):
        part = {g: cfg[g] for g in groups if g in cfg}
        if "train" in part:
            part["train"] = {k: v for k, v in part["train"].items() if k not in _TRAINING_ONLY}
        lines += [f"## {title}", "", "```yaml", yaml.safe_dump(part, sort_keys=False).rstrip(), "```", ""]
    lines += [
        "The whole composed config is the run folder's `.hydra/config.yaml`; `summary.json` has it resolved.",
        "",
    ]
    return "\n".join(lines)


def _scores_section(style_id: str, summary: dict) -> list[str]:
    scores = summary["styles"][style_id].get("scores") or {}
    names = [m for m in summary.get("metric_names", []) if m in scores] + [
        m for m in scores if m not in summary.get("metric_names", []) and m != "images"
    ]
    out = ["## Scores", ""]
    if not names:
        return out + ["Not scored.", ""]
    suite = summary["config"]["eval"].get("suite")
    out += [
        f"Over {scores.get('images', '?')} image(s), eval suite `{suite}`:",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---|" * len(names),
        "| " + " | ".join(fmt(scores[m]) for m in names) + " |",
        "",
    ]
    if summary.get("unavailable"):
        out += ["Unavailable: " + "; ".join(f"{m}: {why}" for m, why in summary["unavailable"].items()), ""]
    return out


def write_cards(run_dir: Path, summary: dict, rows: Sequence[tuple[str, Sequence[tuple[str, Image.Image]]]]) -> list:
    """Write ``adapters/<style>/README.md`` and ``samples.png`` (the style's row of the run's grid) for every
    style of ``rows`` whose adapter is in the run folder; the paths written, relative to ``run_dir``."""
    written = []
    for style_id, items in rows:
        folder = Path(run_dir) / "adapters" / style_id
        if not folder.is_dir() or style_id not in summary["styles"]:
            continue
        buf = io.BytesIO()
        image_grid([(style_id, list(items))]).save(buf, format="PNG")
        atomic_write_bytes(folder / SAMPLES, buf.getvalue())
        atomic_write_text(folder / CARD, card_text(style_id, summary))
        written += [f"adapters/{style_id}/{CARD}", f"adapters/{style_id}/{SAMPLES}"]
    return written


def read_front_matter(card: str) -> dict:
    """The YAML front matter of a card's text (what the Hub reads)."""
    if not card.startswith("---\n"):
        return {}
    return yaml.safe_load(card[4 : card.index("\n---", 4)]) or {}
