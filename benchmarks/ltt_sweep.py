"""LTT validity sweep: train several configurations side by side (one process each) and report sample validity.

    python benchmarks/ltt_sweep.py --steps 2500 --out /tmp/sweep            # every variant, in parallel
    python benchmarks/ltt_sweep.py --variant base --steps 200 --out /tmp/s  # one variant in this process

For each variant: validity of ODE-prior samples at several decoder temperatures, of a flow-matching prior
fitted on the frozen encoder, of encoder z0 (rolled out by the drift), of the encoder's whole path (the
decoder reading a real latent path: does the latent carry the block?), and of an untrained prior.
Used to choose the defaults of LTTConfig; benchmarks/ltt.py is the benchmark of record.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from latentspace.core.training import TrainConfig  # noqa: E402
from latentspace.ltt import tasks  # noqa: E402
from latentspace.ltt.config import LTTConfig  # noqa: E402
from latentspace.ltt.train import encoder_z0, evaluate_validity, fit_prior, train, untrained_prior  # noqa: E402

# name -> (LTTConfig changes, TrainConfig changes, batch size)
VARIANTS = {
    "base": ({}, {}, 128),
    "fp32": ({}, {"mixed_precision": "no"}, 128),
    "noise01": ({"latent_noise": 0.1}, {"mixed_precision": "no"}, 128),
    "noise01_z0ep": ({"latent_noise": 0.1, "w_latent_z0": 0.5}, {"mixed_precision": "no"}, 128),
    "big": ({"d_model": 128, "decoder_layers": 4, "latent_noise": 0.1}, {"mixed_precision": "no"}, 128),
    "bs256": ({"latent_noise": 0.1}, {"mixed_precision": "no", "lr": 2e-3}, 256),
    "roll25": ({"latent_noise": 0.1, "rollout_frac": 0.25}, {"mixed_precision": "no"}, 128),
}


def block_starts(tokens: torch.Tensor) -> torch.Tensor:
    """Index of the first body character equal to the prompt letter, -1 if none: tokens (B, T) -> (B,)."""
    body = tokens[:, tasks.PROMPT_LEN:]
    hit = body == tokens[:, 1:2]
    first = hit.float().argmax(1)
    return torch.where(hit.any(1), first, torch.full_like(first, -1))


def run_variant(name: str, steps: int, n: int, out: Path, prior_steps: int = 400) -> dict:
    model_changes, train_changes, batch_size = VARIANTS[name]
    config = LTTConfig().replace(**model_changes)
    train_config = TrainConfig(steps=steps, lr=1e-3, warmup_steps=100, log_every=50, eval_every=max(1, steps // 5),
                               seed=0).replace(**train_changes)
    t0 = time.time()
    model, result = train(config, train_config, batch_size=batch_size, quiet=True, eval_samples=256)
    train_s = time.time() - t0
    device = next(model.parameters()).device
    report = {"variant": name, "steps": steps, "batch_size": batch_size, "train_s": train_s, "device": str(device),
              "final": result.metrics}
    for temperature in (1.0, 0.8, 0.5, 0.0):
        model.config.temperature = temperature
        report[f"valid_ode_T{temperature}"] = evaluate_validity(model, n, seed=1)
    model.config.temperature = 1.0
    report["valid_encoder_z0"] = evaluate_validity(model, n, z0=encoder_z0(model, n, 1), seed=1)
    report["valid_untrained"] = evaluate_validity(model, n, prior=untrained_prior(model), seed=1)
    report["valid_flow"] = evaluate_validity(model, n, prior=fit_prior(model, "flow", prior_steps), seed=1)
    generator = torch.Generator().manual_seed(5)
    real = tasks.generate(n, config.seq_len, config.block_len, config.noise_p, generator=generator).to(device)
    with torch.no_grad():
        recon = model.decode(model.encoder(real), temperature=1.0,
                             generator=torch.Generator(device=device).manual_seed(0))
    report["valid_encoder_path"] = float(tasks.valid_mask(recon.cpu(), config.seq_len, config.block_len)
                                         .float().mean())
    report["block_start_match_encoder_path"] = float((block_starts(recon) == block_starts(real)).float().mean())
    report["letter_match_encoder_path"] = float((recon[:, 1] == real[:, 1]).float().mean())
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--prior-steps", type=int, default=400)
    parser.add_argument("--deadline-s", type=float, default=560.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.variant:
        torch.set_num_threads(1)
        print(json.dumps(run_variant(args.variant, args.steps, args.n, args.out, args.prior_steps)))
        return
    started = time.time()
    procs = {}
    for name in args.variants.split(","):
        log = open(args.out / f"{name}.log", "w")
        command = [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--n", str(args.n),
                   "--prior-steps", str(args.prior_steps), "--out", str(args.out)]
        procs[name] = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, args.deadline_s - (time.time() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"{name}: out of time")
    keys = ["valid_ode_T1.0", "valid_ode_T0.8", "valid_ode_T0.5", "valid_ode_T0.0", "valid_flow", "valid_encoder_z0",
            "valid_encoder_path", "block_start_match_encoder_path", "valid_untrained", "train_s"]
    print("| variant | " + " | ".join(keys) + " | recon |")
    for name in procs:
        path = args.out / f"{name}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | {r['final'].get('recon', 0):.4f} |")
        else:
            print(f"| {name} | (failed: see {name}.log) |")


if __name__ == "__main__":
    main()
