import math

import torch

from latentspace.lipo.config import LIPOConfig
from latentspace.lipo.evaluate import instruction_quality
from latentspace.lipo.gp import GPWithEI
from latentspace.lipo.inference import LIPOInference
from latentspace.lipo.inversion import NearestNeighbourInverter
from latentspace.lipo.vae import InstructionVAE, VAEWithAdapter


def test_invbo_iterations_invert_evaluate_and_update_the_gp(pool, pool_embeddings, encoder):
    config = LIPOConfig.preset("debug").replace(embedding_dim=384, iterations=2, num_restarts=2, raw_samples=16,
                                                acq_maxiter=5, inversion_n_steps=10, gp_retrain_epochs=5,
                                                max_inversion_iters=2, gap_threshold=0.0)
    vae = InstructionVAE(config).eval()
    with torch.no_grad():
        latents = vae.encode_mu(pool_embeddings[:30]).double()
    errors = torch.tensor([1.0 - instruction_quality(t) for t in pool[:30]])
    gp = GPWithEI(64, adapter=VAEWithAdapter(vae).adapter)
    gp.set_data(latents, errors)
    gp.fit(epochs=10, lr=0.01, patience=5)
    evaluated = []

    def evaluate(text):
        evaluated.append(text)
        return 1.0 - instruction_quality(text)

    inverter = NearestNeighbourInverter(pool, pool_embeddings, encoder, rewrite="none")
    known = {t: float(e) for t, e in zip(pool[:30], errors, strict=True)}
    inference = LIPOInference(vae, gp, encoder, inverter, evaluate, config, known=known)
    result = inference.run()
    assert len(result["history"]) == 2
    for record in result["history"]:
        assert record["instruction"] in pool
        assert record["inversion_iters"] == 2  # gap_threshold 0 forces every re-inversion
        assert math.isfinite(record["gap"]) and math.isfinite(record["predicted_error"])
        assert record["duplicate"] == (record["instruction"] in pool[:30]) or record["evaluated"]
    new = [r for r in result["history"] if not r["duplicate"]]
    assert len(evaluated) == len({r["instruction"] for r in new})
    assert gp.n == 30 + len(evaluated)
    assert result["best_error"] == min(inference.known.values())
