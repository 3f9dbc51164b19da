"""LLM inversion measured on the real instruction-induction tables: does latent -> text give usable instructions?

Three phases (the middle one needs the task LLM, a GPU makes it minutes):

    python benchmarks/lipo_ii_inversion.py prepare   # CPU: VAE + GP per task and seed -> decoded targets
    python benchmarks/lipo_ii_inversion.py generate  # LLM: candidates from each target's nearest pool
                                                     #      instructions, each scored on selection + credit
    python benchmarks/lipo_ii_inversion.py report    # CPU: keep the candidate closest to its target

prepare: for each development task and seed, a random budget-sized subset of the pool (what LIPO has evaluated
at the benchmark's horizon) trains the GP on its selection errors, on the VAE latents of their MiniLM
embeddings; qLogEI's optimum z* is decoded to a target embedding, and the `neighbours` pool instructions nearest
to it are the LLM's material. report: `ii_inversion_cosine` is the mean cosine between the target and the
re-encoded chosen instruction; `ii_inversion_win_frac` is the share of targets whose chosen instruction beats,
on the held-out credit examples, the pool's best instruction by selection accuracy (exhaustive APE's pick);
`..._vs_incumbent` compares with the best of the evaluated subset instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import torch

from latentspace.lipo.induction import DEV_TASKS, read_table

HERE = Path(__file__).parent
WORK = HERE / "tables" / "lipo_ii"


def prepare(args) -> None:
    from latentspace.lipo.config import LIPOConfig
    from latentspace.lipo.encoder import GTRInstructionEncoder
    from latentspace.lipo.gp import GPWithEI
    from latentspace.lipo.hyperband import binomial_error_variance
    from latentspace.lipo.vae import InstructionVAE, train_vae

    config = LIPOConfig()
    encoder = GTRInstructionEncoder(config.encoder_model)
    out = {}
    for name in DEV_TASKS:
        table = read_table(WORK / f"{name}.json")
        pool = table["instructions"]
        emb = encoder.encode_batch_tensor(pool)
        vconf = config.replace(embedding_dim=int(emb.shape[1]), validation_size=100)
        torch.manual_seed(vconf.seed)
        vae = InstructionVAE(vconf)
        train_vae(vae, emb, vconf, quiet=True)
        with torch.no_grad():
            latents = vae.encode_mu(emb).double()
        unit = torch.nn.functional.normalize(emb.float(), dim=-1)
        errors = 1.0 - table["selection"].mean(1)
        targets = []
        for seed in range(args.seeds):
            ids = np.random.default_rng(seed).choice(len(pool), size=args.evaluated, replace=False)
            err = torch.tensor(errors[ids])
            gp = GPWithEI(latents.shape[1], vconf.gp_latent_dim, seed=seed, **vconf.gp_options())
            gp.set_data(latents[ids], err, binomial_error_variance(err, torch.full_like(err, 100.0), 100))
            gp.fit(**vconf.for_hyperband_gp())
            z, _ = gp.optimize(vconf.num_restarts, vconf.raw_samples, vconf.latent_margin, vconf.acq_maxiter, seed=seed)
            with torch.no_grad():
                target = torch.nn.functional.normalize(vae.decode(z.float().unsqueeze(0)), dim=-1)[0]
            near = (unit @ target).argsort(descending=True)[: args.neighbours].tolist()
            targets.append({"seed": seed, "evaluated": ids.tolist(), "target": target.tolist(),
                            "neighbours": [pool[i] for i in near]})
        out[name] = targets
        print(f"{name}: {len(targets)} targets", file=sys.stderr, flush=True)
    (WORK / "inversion_targets.json").write_text(json.dumps(out) + "\n")


def generate(args) -> None:
    from latentspace.core.backbones import load_causal_lm
    from latentspace.lipo.induction import (
        AnswerCache,
        LLMTaskModel,
        answer_all,
        llm_inversion_candidates,
        load_task,
        outcomes,
    )

    targets = json.loads((WORK / "inversion_targets.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tokenizer = load_causal_lm("smollm2-135m", dtype=dtype, device=device)
    table0 = read_table(WORK / f"{DEV_TASKS[0]}.json")
    llm = LLMTaskModel(model, tokenizer, batch_size=512 if device == "cuda" else 32, model_id=table0["model"])
    cache = AnswerCache(args.cache)
    out = {}
    for name, items in targets.items():
        task = load_task(name)
        cands = llm_inversion_candidates(llm, [t["neighbours"] for t in items], per_target=args.per_target)
        flat = list(dict.fromkeys(c for cs in cands for c in cs))
        sel = outcomes(answer_all(llm, table0["prompt_format"], flat, task.selection, cache), task.selection,
                       "contains")
        cred = outcomes(answer_all(llm, table0["prompt_format"], flat, task.credit, cache), task.credit, "contains")
        score = {c: (s.count("1") / len(s), r.count("1") / len(r)) for c, s, r in zip(flat, sel, cred, strict=True)}
        out[name] = [{"candidates": cs, "scores": [score[c] for c in cs]} for cs in cands]
        print(f"{name}: {len(flat)} candidates", file=sys.stderr, flush=True)
    (WORK / "inversion_candidates.json").write_text(json.dumps(out) + "\n")


def report(args) -> None:
    from _common import machine

    from latentspace.lipo.config import LIPOConfig
    from latentspace.lipo.encoder import GTRInstructionEncoder

    targets = json.loads((WORK / "inversion_targets.json").read_text())
    cands = json.loads((WORK / "inversion_candidates.json").read_text())
    encoder = GTRInstructionEncoder(LIPOConfig().encoder_model)
    cos, wins, wins_inc, per_task = [], [], [], {}
    for name, items in targets.items():
        table = read_table(WORK / f"{name}.json")
        sel, cred = table["selection"].mean(1), table["credit"].mean(1)
        pool_pick = float(cred[int(np.argmax(sel))])
        rows = []
        for item, cand in zip(items, cands[name], strict=True):
            if not cand["candidates"]:
                continue
            emb = torch.nn.functional.normalize(encoder.encode_batch_tensor(cand["candidates"]).float(), dim=-1)
            sims = emb @ torch.tensor(item["target"])
            best = int(sims.argmax())
            credit = cand["scores"][best][1]
            incumbent = float(cred[item["evaluated"][int(np.argmax(sel[item["evaluated"]]))]])
            cos.append(float(sims[best]))
            wins.append(credit > pool_pick)
            wins_inc.append(credit > incumbent)
            rows.append({"instruction": cand["candidates"][best], "cosine": float(sims[best]), "credit_acc": credit,
                         "pool_pick_credit_acc": pool_pick, "incumbent_credit_acc": incumbent})
        per_task[name] = rows
    metrics = {"ii_inversion_cosine": round(float(np.mean(cos)), 4),
               "ii_inversion_win_frac": round(float(np.mean(wins)), 4),
               "ii_inversion_win_frac_vs_incumbent": round(float(np.mean(wins_inc)), 4),
               "ii_inversion_targets": len(cos)}
    result = {"family": "lipo", "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": machine(note="prepare and report on this CPU; generate on the GPU named in build.json"),
              "command": "python benchmarks/lipo_ii_inversion.py prepare && ... generate && ... report",
              "metrics": metrics, "per_task": per_task}
    (HERE / "results" / "lipo_ii_inversion.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("prepare", "generate", "report"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--evaluated", type=int, default=33, help="pool instructions the GP has seen")
    parser.add_argument("--neighbours", type=int, default=6)
    parser.add_argument("--per-target", type=int, default=8)
    parser.add_argument("--cache", default=str(WORK / "inversion_answers.jsonl"))
    args = parser.parse_args()
    {"prepare": prepare, "generate": generate, "report": report}[args.phase](args)


if __name__ == "__main__":
    main()
