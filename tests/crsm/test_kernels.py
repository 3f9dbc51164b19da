import threading

import torch
from threadpoolctl import threadpool_limits

from latentspace.crsm.config import CRSMConfig
from latentspace.crsm.kernels import NUMPY_MAX_ROWS, ReferenceKernels, numpy_blas_single_threaded, search_kernels
from latentspace.crsm.model import CRSM

from .conftest import tiny_crsm


def test_fused_search_kernels_match_the_models_own_functions():
    model, latent, _ = tiny_crsm()
    with torch.no_grad():
        latents = torch.randn(6, latent.shape[-1])
        tokens = torch.tensor([0, 5, 17, 100, 259, 3])
        fused, plain = search_kernels(model), ReferenceKernels(model)
        torch.testing.assert_close(fused.dynamics(latents, tokens), model.dynamics_step(latents, tokens))
        out = torch.empty(6, latent.shape[-1])
        assert fused.dynamics(latents, tokens, out=out) is out
        (ft, fp, fv), (pt, pp, pv) = fused.heads(latents, 4), plain.heads(latents, 4)
        assert ft == pt and len(ft) == 24
        torch.testing.assert_close(torch.tensor(fp), torch.tensor(pp))
        torch.testing.assert_close(torch.tensor(fv), model.value(latents))
        torch.testing.assert_close(torch.tensor(pv), model.value(latents))
        # priors are the renormalised top-k of the full softmax
        probs = torch.softmax(model.logits(latents), -1).topk(4, -1).values
        torch.testing.assert_close(torch.tensor(fp).view(6, 4), probs / probs.sum(-1, keepdim=True))
        # the same transition, in place in a state buffer
        buffer = torch.cat([latents, torch.zeros(3, latent.shape[-1])])
        reference = buffer.clone()
        fused.transition(buffer, [4, 0, 2], [7, 7, 200], slice(6, 9))
        plain.transition(reference, [4, 0, 2], [7, 7, 200], slice(6, 9))
        torch.testing.assert_close(buffer, reference)
        # kept while the weights are unchanged; an update rebuilds them, as does rebuild=True
        assert search_kernels(model) is fused
        assert search_kernels(model, rebuild=True) is not fused
        fused = search_kernels(model)
        model.dynamics.net[4].bias.add_(1.0)
        assert search_kernels(model) is not fused
        rebuilt = search_kernels(model).dynamics(latents, tokens)
        torch.testing.assert_close(rebuilt, model.dynamics_step(latents, tokens))


def test_a_subclass_that_overrides_the_heads_gets_the_reference_kernels():
    class Custom(CRSM):
        def value(self, latent):
            return torch.zeros(len(latent))

    model = Custom(CRSMConfig.preset("tiny")).eval()
    kernels = search_kernels(model)
    assert isinstance(kernels, ReferenceKernels)
    assert kernels.heads(torch.randn(3, 32), 4)[2] == [0.0, 0.0, 0.0]


def test_numpy_and_torch_paths_of_the_fused_kernels_agree():
    model, latent, _ = tiny_crsm()
    with threadpool_limits(2, user_api="blas"):  # a multithreaded OpenBLAS: the kernels stay in PyTorch
        if not numpy_blas_single_threaded():
            assert not search_kernels(model).dynamics.numpy and not search_kernels(model).heads.numpy
    with threadpool_limits(1, user_api="blas"), torch.no_grad():
        fused, plain = search_kernels(model, rebuild=True), ReferenceKernels(model)  # built under one BLAS thread
        assert fused.dynamics.numpy and fused.heads.numpy  # CPU float32, one BLAS thread
        for n in (1, 5, NUMPY_MAX_ROWS, NUMPY_MAX_ROWS + 3):  # NumPy products up to NUMPY_MAX_ROWS rows, then torch
            buffer = torch.randn(2 * n + 4, latent.shape[-1])
            parents = [int(i) for i in torch.randint(0, n, (n,))]
            tokens = [int(t) for t in torch.randint(0, model.config.vocab_size, (n,))]
            rows = slice(n + 2, 2 * n + 2)
            expected = model.dynamics_step(buffer[parents], torch.tensor(tokens))
            out = fused.transition(buffer, parents, tokens, rows)
            assert out.data_ptr() == buffer[rows].data_ptr()  # written in place
            torch.testing.assert_close(buffer[rows], expected)
            generic = buffer.clone()
            plain.transition(generic, parents, tokens, rows)
            torch.testing.assert_close(generic[rows], expected)
            fused.dynamics.numpy = fused.heads.numpy = False  # the torch path on the same batch
            torch_path = buffer.clone()
            fused.transition(torch_path, parents, tokens, rows)
            ft, fp, fv = fused.heads(buffer[rows], 4)
            fused.dynamics.numpy = fused.heads.numpy = True
            torch.testing.assert_close(torch_path[rows], buffer[rows])
            nt, np_, nv = fused.heads(buffer[rows], 4)
            pt, pp, pv = plain.heads(buffer[rows], 4)
            assert nt == ft == pt
            torch.testing.assert_close(torch.tensor(np_), torch.tensor(pp))
            torch.testing.assert_close(torch.tensor(fp), torch.tensor(pp))
            torch.testing.assert_close(torch.tensor(nv), torch.tensor(pv))
            torch.testing.assert_close(torch.tensor(fv), torch.tensor(pv))


def test_numpy_kernels_reuse_their_scratch_arrays_per_thread():
    model, latent, _ = tiny_crsm()
    with threadpool_limits(1, user_api="blas"), torch.no_grad():
        fused = search_kernels(model, rebuild=True)  # built under one BLAS thread
        assert fused.dynamics.numpy and fused.heads.numpy
        batches = [torch.randn(n, latent.shape[-1]) for n in (3, 8, 3, 1, 8)]
        tokens = [[int(t) for t in torch.randint(0, model.config.vocab_size, (len(b),))] for b in batches]

        def run():  # every batch's transition and heads, in order (the same row count comes back: arrays reused)
            out = []
            for batch, toks in zip(batches, tokens, strict=True):
                buffer = torch.cat([batch, torch.zeros_like(batch)])
                n = len(batch)
                fused.transition(buffer, list(range(n)), toks, slice(n, 2 * n))
                out.append((buffer[n:].clone(), fused.heads(buffer[n:], 4)))
            return out

        expected = [(model.dynamics_step(b, torch.tensor(t)), None) for b, t in zip(batches, tokens, strict=True)]
        serial = run()
        for (states, heads), (reference, _) in zip(serial, expected, strict=True):
            torch.testing.assert_close(states, reference)
            assert heads == fused.heads(states, 4)  # lists, not views of the scratch arrays
        assert fused.heads._work.get(8, 4) is fused.heads._work.get(8, 4)
        results, seen = [], []

        def worker():
            with threadpool_limits(1, user_api="blas"):
                seen.append(fused.heads._work.get(8, 4))
                results.append([run() for _ in range(20)])

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert seen[0] is not seen[1] and seen[0] is not fused.heads._work.get(8, 4)  # one set per thread
        for runs in results:
            for out in runs:
                for (states, heads), (states_serial, heads_serial) in zip(out, serial, strict=True):
                    assert torch.equal(states, states_serial) and heads == heads_serial
