"""What fine-tuning teaches the toy model and what it makes it forget - measured, in one run.

    python benchmarks/toy_forgetting.py --out runs/bench-toy            # full sweep (~20-40 min on 2 CPU cores)
    python benchmarks/toy_forgetting.py --out runs/bench-toy --quick    # a smoke run (numbers not meaningful)

A. the base ``toy`` model: colour and shape accuracy of its images for every world prompt (judge);
B. DreamBooth-LoRA on the held-out glyph (instance images in many colours, one instance prompt): how often the
   glyph appears for "a <colour> arrow", whether the colour follows the prompt, old-prompt accuracy lost;
C. DreamBooth on the person (a checkered two-tone star, 6 images): LoRA vs full fine-tuning, each without and
   with prior preservation, at several learning rates, over training seeds: person strength (pixel check and
   judge) against forgetting (old-prompt accuracy) and class-prompt drift ("a photo of a star" stays a plain
   star, no person leaking in). Table with mean +- std over seeds, and a scatter plot (PNG).

Every number is computed here from generated images; results are appended to ``OUT/results.jsonl`` as they come,
so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from sdtune.recipes.runs import run_state
from sdtune.run_folder import read_metrics
from sdtune.toy import world
from sdtune.toy.evaluate import (
    default_judge,
    default_suite,
    evaluate,
    load_toy_pipeline,
    old_prompts,
    summary,
    world_accuracy,
)
from sdtune.toy.finetune import dreambooth_config, run

CONCEPT_PROMPT = f"a photo of a {world.CONCEPT}"
KEYS = ("person_pixels", "person_judge", "old_colour", "old_both", "class_solid", "class_person_leak")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench-toy"))
    p.add_argument("--lora-lrs", default="3e-4,1e-3,3e-3")
    p.add_argument("--full-lrs", default="1e-4,2e-4,5e-4")
    p.add_argument("--seeds", default="0,1,2", help="training seeds (spread over seeds)")
    p.add_argument("--eval-seeds", type=int, default=6)
    p.add_argument("--person-seeds", type=int, default=24, help="images of the (single) person and class prompts")
    p.add_argument("--steps", type=int, default=600, help="DreamBooth steps")
    p.add_argument("--concept-steps", type=int, default=600)
    p.add_argument("--concept-lr", type=float, default=1e-3)
    p.add_argument("--class-images", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--shard", default="0/1", help="I/N: run every N-th DreamBooth run starting at I (start N "
                   "processes with the same --out on N cores; the last one to finish writes the report)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.lora_lrs, args.full_lrs, args.seeds = "1e-3", "1e-4", "0"
        args.eval_seeds, args.steps, args.concept_steps, args.class_images = 2, 20, 20, 4
    return args


def load_done(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows}


def record(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f}+-{statistics.stdev(values):.2f}"


def scatter_png(rows: list[dict], path: Path, base_old: float) -> Path:
    """Person strength (x) vs old-prompt accuracy (y), one colour per method, mean over seeds, with +-std bars."""
    from PIL import Image, ImageDraw

    size, pad = 520, 60
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    colours = {"lora": (40, 80, 225), "lora+prior": (40, 200, 210), "full": (220, 40, 40),
               "full+prior": (245, 130, 25)}

    def xy(x: float, y: float) -> tuple[float, float]:
        return pad + x * (size - 2 * pad), size - pad - y * (size - 2 * pad)

    d.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        d.text((xy(t, 0)[0] - 8, size - pad + 6), f"{t:.2f}", fill="black")
        d.text((8, xy(0, t)[1] - 6), f"{t:.2f}", fill="black")
    d.line([xy(0, base_old), xy(1, base_old)], fill=(150, 150, 150))
    d.text((xy(0.02, base_old)[0], xy(0, base_old)[1] - 14), "base", fill=(120, 120, 120))
    d.text((size // 2 - 90, size - 22), "person strength (pixel check)", fill="black")
    d.text((6, 6), "old-prompt colour+shape accuracy (y)", fill="black")
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["lr"]), []).append(r)
    for (method, lr), rs in groups.items():
        xs, ys = [r["person_pixels"] for r in rs], [r["old_both"] for r in rs]
        mx, my = statistics.mean(xs), statistics.mean(ys)
        sx = statistics.stdev(xs) if len(xs) > 1 else 0.0
        sy = statistics.stdev(ys) if len(ys) > 1 else 0.0
        c = colours.get(method, (0, 0, 0))
        d.line([xy(mx - sx, my), xy(mx + sx, my)], fill=c)
        d.line([xy(mx, my - sy), xy(mx, my + sy)], fill=c)
        px, py = xy(mx, my)
        d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=c)
        d.text((px + 6, py - 6), f"{lr:g}", fill=c)
    for i, (name, c) in enumerate(colours.items()):
        d.rectangle([size - 150, 40 + i * 16, size - 140, 50 + i * 16], fill=c)
        d.text((size - 134, 38 + i * 16), name, fill="black")
    img.save(path)
    return path


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = load_done(results)
    judge = default_judge()
    eval_seeds = list(range(100, 100 + args.eval_seeds))
    suite = default_suite(old=12)
    many = list(range(200, 200 + args.person_seeds))
    group_seeds = {"person": many, "cls": many}
    started = time.time()
    shard, shards = (int(v) for v in args.shard.split("/"))
    data = out / "data"
    concept_data, person_data = data / "concept-images", data / "person"
    if shard == 0:
        if not (concept_data / "scenes.jsonl").exists():  # scenes.jsonl is written last
            world.write_concept_set(concept_data, 24, seed=1, captioned=False)
        if not (person_data / "scenes.jsonl").exists():
            world.write_person_set(person_data, 6, seed=2)
    while not (person_data / "scenes.jsonl").exists():  # other shards wait for shard 0's data
        time.sleep(1)

    # A. the base model on every world prompt, and on the benchmark suite (the reference for forgetting)
    if shard == 0 and "base-all" not in done:
        row = {"key": "base-all", **world_accuracy(load_toy_pipeline("toy"), judge, eval_seeds[:4])}
        record(results, row)
        done["base-all"] = row
    if shard == 0 and "base" not in done:
        row = {"key": "base", "method": "base", **summary(evaluate(load_toy_pipeline("toy"), judge, suite, eval_seeds,
                                                                   group_seeds=group_seeds))}
        record(results, row)
        done["base"] = row

    # B. the held-out glyph, DreamBooth-LoRA (no captions: one instance prompt for every colour)
    if shard == 0 and "concept-lora" not in done:
        run_dir = out / "runs" / "concept-lora"
        shutil.rmtree(run_dir, ignore_errors=True)
        result = run(dreambooth_config("toy", concept_data, run_dir, steps=args.concept_steps, lr=args.concept_lr,
                                       instance_prompt=CONCEPT_PROMPT))
        evaluation = evaluate(load_toy_pipeline(str(run_dir)), judge, suite, eval_seeds)
        row = {"key": "concept-lora", "method": "concept-lora", "lr": args.concept_lr, "final_loss": result.final_loss,
               "concept_colour": evaluation["concept"]["colour"], **summary(evaluation)}
        record(results, row)
        done["concept-lora"] = row

    # C. DreamBooth on the person: method x prior x lr x seed
    grid = [(m, prior, float(lr), int(seed)) for m, lrs in (("lora", args.lora_lrs), ("full", args.full_lrs))
            for prior in (False, True) for lr in lrs.split(",") for seed in args.seeds.split(",")]
    keys = [f"db-{m}{'+prior' if prior else ''}-lr{lr:g}-s{seed}" for m, prior, lr, seed in grid]
    for i, (method, prior, lr, seed) in enumerate(grid):
        if i % shards == shard:
            name, key = f"{method}{'+prior' if prior else ''}", keys[i]
            if key in done:
                continue
            run_dir = out / "runs" / key
            t0, train_s = time.time(), None
            reuse = run_state(run_dir) == "finished" and read_metrics(run_dir).get("steps") == args.steps
            if not reuse:  # a finished run of these settings is evaluated again as is
                shutil.rmtree(run_dir, ignore_errors=True)
                run(dreambooth_config("toy", person_data, run_dir, steps=args.steps, lr=lr,
                                      lora_rank=8 if method == "lora" else None, seed=seed, prior=prior,
                                      class_dir=data / f"class-star-{shard}", num_class_images=args.class_images))
                train_s = round(time.time() - t0, 1)
            row = {"key": key, "method": name, "lr": lr, "seed": seed, "train_seconds": train_s,
                   **summary(evaluate(load_toy_pipeline(str(run_dir)), judge, suite, eval_seeds,
                                      group_seeds=group_seeds))}
            record(results, row)
            done[key] = row
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # keep the weights, drop resume state
            print(f"[bench] {key}: " + ", ".join(f"{k}={row[k]:.2f}" for k in KEYS), flush=True)

    done = load_done(results)  # other shards' runs too
    missing = [k for k in keys if k not in done]
    if missing or not {"base-all", "base", "concept-lora"} <= set(done):
        print(f"[bench] this shard is done; {len(missing)} runs of other shards still missing, no report yet")
    else:
        report(done, out, args)
    print(f"[bench] total {time.time() - started:.0f} s (this invocation)")
    return 0


def report(done: dict[str, dict], out: Path, args: argparse.Namespace) -> None:
    base_all, base, concept = done["base-all"], done["base"], done.get("concept-lora")
    lines = ["## Toy model benchmark (measured by benchmarks/toy_forgetting.py)", "",
             f"A. Base `toy` model, all {len(old_prompts())} world prompts x 4 seeds ({base_all['images']} images): "
             f"colour {base_all['colour']:.2f}, shape {base_all['shape']:.2f}, both {base_all['both']:.2f}.",
             "   Shape accuracy by shape: " + ", ".join(f"{k} {v:.2f}" for k, v in base_all["shape_by_prompt_shape"]
                                                      .items()), ""]
    if concept:
        lines += [f"B. DreamBooth-LoRA on the held-out glyph (24 instance images in many colours, prompt "
                  f"'{CONCEPT_PROMPT}', {args.concept_steps} steps, lr {concept['lr']:g}): the glyph appears in "
                  f"{concept['concept']:.2f} of images for 'a <colour> arrow' (base {base['concept']:.2f}), in the "
                  f"asked colour {concept.get('concept_colour', float('nan')):.2f}; "
                  f"old-prompt colour accuracy {base['old_colour']:.2f} -> {concept['old_colour']:.2f}, colour+shape "
                  f"{base['old_both']:.2f} -> {concept['old_both']:.2f}.", ""]
    lines += [f"C. DreamBooth on the person (6 images, {args.steps} steps, seeds {args.seeds}, "
              f"{args.eval_seeds} eval seeds per old prompt, {args.person_seeds} for the person and class prompts). "
              f"Base: old-prompt colour {base['old_colour']:.2f}, "
              f"colour+shape {base['old_both']:.2f}, "
              f"class prompt solid star {base['class_solid']:.2f}, person {base['person_pixels']:.2f}.", "",
              "| method | lr | person (pixels) | person (judge) | old colour acc | old colour+shape acc | class solid "
              "| class leak |", "|---|---|---|---|---|---|---|---|"]
    rows = [r for r in done.values() if r["key"].startswith("db-")]
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["lr"]), []).append(r)
    for (method, lr), rs in sorted(groups.items()):
        lines.append(f"| {method} | {lr:g} | " + " | ".join(mean_std([r[k] for r in rs]) for k in KEYS) + " |")
    if rows:
        plot = scatter_png(rows, out / "forgetting.png", base["old_both"])
        lines += ["", f"Plot: {plot} (x: person strength by pixel check, y: old-prompt colour+shape accuracy; "
                      "mean +- std over seeds, label = learning rate)"]
        lines += ["", "Forgetting at comparable strength: for each method, the learning rate whose mean person "
                      "strength (pixel check) reaches the threshold with the least forgetting (old-prompt colour+shape "
                      "accuracy, mean over seeds; base " f"{base['old_both']:.2f}):", "",
                  "| method | strength >= 0.3 | strength >= 0.5 |", "|---|---|---|"]
        for method in ("lora", "lora+prior", "full", "full+prior"):
            cells = []
            for threshold in (0.3, 0.5):
                means = {lr: (statistics.mean(r["old_both"] for r in rs),
                              statistics.mean(r["person_pixels"] for r in rs))
                         for (m, lr), rs in groups.items() if m == method}
                fits = [(old, lr, strength) for lr, (old, strength) in means.items() if strength >= threshold]
                if fits:
                    old_both, lr, strength = max(fits)
                    cells.append(f"{old_both:.2f} (lr {lr:g}, strength {strength:.2f})")
                else:
                    cells.append("not reached")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    (out / "README.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    sys.exit(main())
