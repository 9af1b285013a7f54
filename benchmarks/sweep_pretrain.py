"""Pre-training sweep of the CPU stand-ins (steps x arch x seed), one process per model,
one thread each.

Measures per model: seconds, final loss, and per evaluation behaviour the distinguishability of the
final features (all 1000 prompts), and the model's own Yes/No accuracy. Run by hand:
``python benchmarks/sweep_pretrain.py OUTDIR [processes] [steps] [archs] [seeds]``.
"""

import itertools
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path


def job(args):
    steps, arch, seed = args
    import torch

    torch.set_num_threads(1)
    from dpo_utils import data, embeddings, metrics, models, pretraining

    pt = pretraining.pretraining_text("persona")
    start = time.perf_counter()
    tok = models.train_tokenizer(pt.texts)
    model = models.tiny_model(arch, tok, seed)
    log = models.pretrain(model, tok, pt.texts, steps, seed)
    seconds = time.perf_counter() - start
    persona = data.load_persona("persona", list(data.EVALUATION_BEHAVIORS))
    fs = embeddings.persona_features(model, tok, persona, cache=False)
    acc = fs.answer_accuracy()
    rows = []
    for name, (f, s) in fs.groups("final").items():
        rows.append(
            dict(
                steps=steps,
                arch=arch,
                seed=seed,
                behavior=name,
                seconds=seconds,
                loss=sum(r["loss"] for r in log[-20:]) / 20,
                dist=float(metrics.distinguishability(f, s)),
                lm_accuracy=acc[name],
            )
        )
    return rows


if __name__ == "__main__":
    out = Path(sys.argv[1])
    procs = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    steps = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "900,400,200").split(",")]
    archs = (sys.argv[4] if len(sys.argv) > 4 else "llama,mistral").split(",")
    seeds = [int(x) for x in (sys.argv[5] if len(sys.argv) > 5 else "1,2,3").split(",")]
    grid = list(itertools.product(steps, archs, seeds))
    with Pool(procs) as pool:
        results = pool.map(job, grid, chunksize=1)
    rows = [r for part in results for r in part]
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(rows))
    print("done", len(rows))
