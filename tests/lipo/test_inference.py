import math

import pytest
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
                                                max_inversion_iters=2, gap_threshold=0.0, gp_input="latent",
                                                inversion_select="closest")  # the seed's design
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


def test_invbo_with_the_gp_on_embeddings_searches_the_latent_and_adds_embeddings(pool, pool_embeddings, encoder):
    inference, gp, _, known = _embedding_gp_inference(
        pool, pool_embeddings, encoder, n=30, epochs=10, evaluate=lambda t: 1.0 - instruction_quality(t),
        iterations=2, num_restarts=2, raw_samples=16, acq_maxiter=5, inversion_n_steps=10, gp_retrain_epochs=5,
        inversion_select="acquisition")
    result = inference.run()
    new = [r["instruction"] for r in result["history"] if not r["duplicate"]]
    assert len(new) == 2  # acquisition selection skips already evaluated candidates
    assert gp.n == 30 + len(new) and gp.X.shape[1] == 384
    for k, text in enumerate(new):  # the GP got the re-encoded embedding of each new instruction
        assert torch.allclose(gp.X[30 + k].float(), encoder.encode_tensor(text), atol=1e-6)
    assert all(math.isfinite(r["predicted_error"]) for r in result["history"])


def _embedding_gp_inference(pool, pool_embeddings, encoder, n: int = 40, epochs: int = 20, evaluate=None,
                            evaluate_at=None, **overrides):
    """(inference, gp, inverter, known): a GP on the embeddings of the first n instructions (debug preset with
    `overrides`), the nearest-neighbour inverter over the whole pool."""
    config = LIPOConfig.preset("debug").replace(embedding_dim=384, gp_input="embedding", **overrides)
    vae = InstructionVAE(config).eval()
    errors = torch.tensor([1.0 - instruction_quality(t) for t in pool[:n]])
    gp = GPWithEI(384, gp_latent_dim=4)
    gp.set_data(pool_embeddings[:n].double(), errors)
    gp.fit(epochs=epochs, lr=0.01, patience=5)
    inverter = NearestNeighbourInverter(pool, pool_embeddings, encoder, rewrite="none",
                                        neighbours=config.inversion_neighbours)
    known = {t: float(e) for t, e in zip(pool[:n], errors, strict=True)}
    inference = LIPOInference(vae, gp, encoder, inverter, evaluate, config, known=known, evaluate_at=evaluate_at)
    return inference, gp, inverter, known


def test_acquisition_selection_takes_the_unevaluated_candidate_of_highest_log_ei(pool, pool_embeddings, encoder):
    inference, gp, inverter, known = _embedding_gp_inference(pool, pool_embeddings, encoder,
                                                             inversion_select="acquisition", inversion_neighbours=6)
    target = pool_embeddings[3]  # a known instruction: its own text is the closest candidate
    candidates = inverter.candidates(target, k=6)
    assert candidates[0] == pool[3] and len(candidates) == 6
    fresh = [c for c in candidates if c not in known]
    chosen = inference.select_candidate(target, fallback=pool[3])
    assert chosen in fresh
    scores = gp.log_ei(encoder.encode_batch_tensor(fresh).double())
    assert chosen == fresh[int(scores.argmax())]


def test_union_selection_adds_the_unevaluated_pool_to_the_inversion_candidates(pool, pool_embeddings, encoder):
    inference, gp, inverter, known = _embedding_gp_inference(pool, pool_embeddings, encoder, inversion_select="union",
                                                             inversion_neighbours=4)
    assert inference.pool == list(pool)  # the inverter's pool by default
    fresh_pool = [t for t in pool if t not in known]
    scores = gp.log_ei(encoder.encode_batch_tensor(fresh_pool).double())
    best_pool = fresh_pool[int(scores.argmax())]
    for target_row in (3, 45, 60):  # a known instruction, and two unevaluated ones
        candidates = [c for c in inverter.candidates(pool_embeddings[target_row], k=4) if c not in known]
        chosen, source = inference.select_with_source(pool_embeddings[target_row], fallback=pool[3])
        assert chosen == best_pool  # candidates are pool texts here, so the union's best is the pool's best
        assert source == ("inversion" if best_pool in candidates else "pool")
    # acquisition selection stays inside the inverter's candidates
    narrow = LIPOInference(inference.vae, gp, encoder, inverter, None,
                           inference.config.replace(inversion_select="acquisition"), known=known)
    candidates = [c for c in inverter.candidates(pool_embeddings[3], k=4) if c not in known]
    assert narrow.select_candidate(pool_embeddings[3], fallback=pool[3]) in candidates
    # explicit pool features must match the pool
    with pytest.raises(ValueError):
        LIPOInference(inference.vae, gp, encoder, inverter, None, inference.config, known=known, pool=pool[:5],
                      pool_features=pool_embeddings[:4])


def test_mean_ranking_takes_the_candidate_of_lowest_predicted_error(pool, pool_embeddings, encoder):
    inference, gp, inverter, known = _embedding_gp_inference(pool, pool_embeddings, encoder, inversion_select="union",
                                                             inversion_neighbours=4, invbo_rank="mean")
    fresh_pool = [t for t in pool if t not in known]
    features = encoder.encode_batch_tensor(fresh_pool).double()
    mean, _ = gp.predict(features)
    best_mean = fresh_pool[int(mean.argmin())]
    assert inference.score(features).tolist() == pytest.approx((-mean).tolist())
    for target_row in (3, 60):
        assert inference.select_candidate(pool_embeddings[target_row], fallback=pool[3]) == best_mean
    # with invbo_rank="log_ei" (the default) the same call takes the highest LogEI
    by_ei = LIPOInference(inference.vae, gp, encoder, inverter, None, inference.config.replace(invbo_rank="log_ei"),
                          known=known)
    scores = gp.log_ei(features)
    assert by_ei.select_candidate(pool_embeddings[3], fallback=pool[3]) == fresh_pool[int(scores.argmax())]
    # acquisition selection ranks the inverter's candidates by predicted error too
    narrow = LIPOInference(inference.vae, gp, encoder, inverter, None,
                           inference.config.replace(inversion_select="acquisition"), known=known)
    candidates = [c for c in inverter.candidates(pool_embeddings[60], k=4) if c not in known]
    cand_mean, _ = gp.predict(encoder.encode_batch_tensor(candidates).double())
    assert narrow.select_candidate(pool_embeddings[60], fallback=pool[3]) == candidates[int(cand_mean.argmin())]


def test_racing_screens_out_a_proposal_worse_than_the_incumbent_without_a_gp_observation(pool, pool_embeddings,
                                                                                         encoder):
    asked = []

    def evaluate_at(text, questions):  # every answer wrong: far worse than the incumbent
        asked.append((text, questions))
        return 1.0

    inference, gp, _, known = _embedding_gp_inference(
        pool, pool_embeddings, encoder, n=30, epochs=10, evaluate_at=evaluate_at, iterations=2, num_restarts=2,
        raw_samples=16, acq_maxiter=5, inversion_n_steps=5, gp_retrain_epochs=5, inversion_select="union",
        invbo_race_alpha=0.05)
    result = inference.run()
    assert all(r["raced_out"] and r["fidelity"] == 20 for r in result["history"])  # race_fidelities(40, 10, 2)
    assert [q for _, q in asked] == [20, 20] and len({t for t, _ in asked}) == 2  # no proposal raced twice
    assert gp.n == 30 and set(inference.screened) == {t for t, _ in asked}
    assert result["best_error"] == min(known.values())


def test_racing_with_gp_fidelity_all_keeps_the_screened_proposal_as_a_noisy_observation(pool, pool_embeddings,
                                                                                        encoder):
    inference, gp, _, known = _embedding_gp_inference(
        pool, pool_embeddings, encoder, n=30, epochs=10, evaluate_at=lambda text, questions: 1.0, iterations=2,
        num_restarts=2, raw_samples=16, acq_maxiter=5, inversion_n_steps=5, gp_retrain_epochs=5,
        inversion_select="union", invbo_race_alpha=0.05, gp_fidelity="all")
    result = inference.run()
    assert all(r["raced_out"] for r in result["history"])
    assert gp.n == 32 and gp.noisy  # both screened proposals became observations, with binomial noise
    assert (gp.y_var[30:] > 0).all() and (gp.y_var[:30] == 0).all()
    assert result["best_error"] == min(known.values())  # a screened error never becomes the incumbent
