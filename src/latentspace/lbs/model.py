"""BaseLBS: a recurrent state-space model (RSSM) with a frozen causal LM as its text sensor and decoder.

Reads top to bottom like the seed (../shared/seeds/lbs.md): `__init__` (frozen LM + `<SUM0..k>`
tokens, GRU, prior/posterior/value heads, `proj_sum`, `proj_state`), `encode_text`, `filter_step`,
`value_loss`, `text_loss`, `kl_loss`, `training_step`. The seed's batch-1 path is kept (it is the slow
reference and the speed baseline); the fast path is `window_loss`: many texts encoded in one padded
batch, the frozen LM's SUM hidden states cached by text hash, and the filter run over (B series,
T steps) windows with truncated BPTT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import gaussian
from ..core.backbones import EmbeddingCache, byte_tokenizer, load_causal_lm, tiny_causal_lm
from ..core.checkpoint import CheckpointMixin, load_checkpoint
from ..core.errors import CheckpointError, ConfigError, DataError
from ..core.gaussian import DiagGaussian
from .config import LBSConfig

log = logging.getLogger("latentspace")

ENCODE_PROMPT = "Information encoded into a sequence of vectors.\n{text}\n"
FORECAST_PROMPT = "Given this belief state, generate a textual forecast.\nDate: {date}\n"


def build_backbone(cfg: LBSConfig, sum_tokens: Sequence[str]):
    """The frozen causal LM and its tokenizer with the `<SUM>` tokens added.

    "tiny-llama" / "tiny-granite" build a small model from a config (offline, seeded); anything else
    goes to `core.backbones.load_causal_lm` (hub id or local path) and gets its embeddings resized.
    """
    if cfg.is_tiny:
        kind = {"tiny-llama": "llama", "tiny-granite": "granitemoehybrid"}.get(cfg.backbone)
        if kind is None:
            raise CheckpointError(f"unknown tiny backbone {cfg.backbone!r}: expected tiny-llama or tiny-granite")
        tokenizer = byte_tokenizer(extra_special_tokens=list(sum_tokens))
        model, tokenizer = tiny_causal_lm(kind, hidden_size=cfg.tiny_hidden, layers=cfg.tiny_layers,
                                          heads=cfg.tiny_heads, tokenizer=tokenizer, seed=cfg.seed)
        model = model.to(cfg.torch_dtype)
    else:
        model, tokenizer = load_causal_lm(cfg.backbone, dtype=cfg.torch_dtype)
        tokenizer.add_special_tokens({"additional_special_tokens": list(sum_tokens)})
        model.resize_token_embeddings(len(tokenizer))
    tokenizer.padding_side = cfg.padding_side
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), tokenizer


def highway_inputs(y: torch.Tensor, q: int, features: str = "level", alpha: float = 1.0):
    """The highway's inputs at every step of standardised series y (B, L), causally.

    Returns:
        feats (B, L, F): at step t, from y[t - q .. t] (padded on the left with y[:, 0]): the values
            ("level"), the values minus the smoothed level ("deviation"), the first differences ("diff"),
            or deviation and differences ("devdiff"; F = 2q, else q);
        anchor (B, L): the smoothed level minus y[t] (exponential smoothing with `alpha`, started at
            y[:, 0]; 0 for alpha = 1), the step from the last value to where forecasts are anchored.
    """
    b, length = y.shape
    if alpha < 1.0:
        levels, lv = [], y[:, 0]
        for t in range(length):  # exponential smoothing: l_t = alpha y_t + (1 - alpha) l_{t-1}
            lv = y[:, 0] if t == 0 else alpha * y[:, t] + (1.0 - alpha) * lv
            levels.append(lv)
        level = torch.stack(levels, 1)  # (B, L)
    else:
        level = y
    lags = torch.cat([y[:, :1].expand(b, q), y], dim=1).unfold(1, q + 1, 1)  # (B, L, q + 1): y[t - q .. t]
    parts = []
    if features == "level":
        parts.append(lags[..., 1:])
    if features in ("deviation", "devdiff"):
        parts.append(lags[..., 1:] - level[..., None])
    if features in ("diff", "devdiff"):
        parts.append(lags[..., 1:] - lags[..., :-1])
    if not parts:
        raise ConfigError(f"unknown highway features {features!r}")
    return torch.cat(parts, -1), level - y


def fit_highway_coef(z: torch.Tensor, q: int, features: str, alpha: float, steps: int, ridge: float,
                     window: int | None = None) -> torch.Tensor | None:
    """Ridge least squares of the highway on a series z (T,): (F + 1, steps) weights and bias, or None if short.

    Target of step k at origin t: z[t + k] minus the anchor (see `highway_inputs`); the bias is not shrunk.
    """
    if window is not None and window < len(z):
        rows = z.unfold(0, window, 1)  # (n, W): row i ends at t = i + W - 1
        feats, anchor = highway_inputs(rows, q, features, alpha)
        feats, anchor = feats[:, -1], anchor[:, -1]  # (n, F), (n,)
        ends = torch.arange(window - 1, len(z))
    else:
        feats, anchor = highway_inputs(z[None], q, features, alpha)
        feats, anchor, ends = feats[0], anchor[0], torch.arange(len(z))
    keep = (ends >= q) & (ends + steps < len(z))
    feats, anchor, ends = feats[keep], anchor[keep], ends[keep]
    n = len(ends)
    if n < 2 * (feats.shape[1] + 1):
        return None
    targets = torch.stack([z[ends + k] - z[ends] - anchor for k in range(1, steps + 1)], 1)  # (n, K)
    x = torch.cat([feats, torch.ones(n, 1, dtype=z.dtype)], 1)  # (n, F + 1)
    gram = x.T @ x + ridge * n * torch.eye(x.shape[1], dtype=z.dtype)
    gram[-1, -1] -= ridge * n  # the bias is not shrunk
    return torch.linalg.solve(gram, x.T @ targets)  # (F + 1, K)


class BaseLBS(CheckpointMixin, nn.Module):
    """LLM-integrated Bayesian state space: GRU prior, text+value posterior, value and text decoders.

    Args:
        cfg: the model settings (`LBSConfig`).
        model, tokenizer: an already-built frozen backbone (with the SUM tokens added); built from
            `cfg.backbone` when omitted.
    """

    family = "lbs"
    config_class = LBSConfig

    def __init__(self, cfg: LBSConfig | None = None, model=None, tokenizer=None):
        super().__init__()
        self.cfg = cfg or LBSConfig()
        self.config = self.cfg
        sum_tokens = [f"<SUM{i}>" for i in range(self.cfg.sum_tokens)]
        if model is None:
            model, tokenizer = build_backbone(self.cfg, sum_tokens)
        self.model = model  # frozen: the sensor (encode_text) and the decoder (text_loss)
        self.tokenizer = tokenizer
        hidden = self.model.config.hidden_size
        d = self.cfg.latent_dim
        # THE TEMPORAL ENGINE: x_{t-1} -> h_t
        self.gru = nn.GRU(d, d, num_layers=self.cfg.gru_layers, batch_first=True)
        # THE TRANSITION PRIOR p(x_t | h_t): [d] -> [2d]
        self.mlp_prior = nn.Linear(d, d * 2)
        # THE POSTERIOR FILTER q(x_t | h_t, y_t, s_t): [d + 1 + d] -> [2d]
        self.mlp_post = nn.Linear(d * 2 + 1, d * 2)
        # VALUE DECODER x_t -> y_t (standardised)
        self.mlp_val = nn.Linear(d, 1)
        if self.cfg.value_zero_init:  # the forecast starts as the highway's; the latent learns a correction
            nn.init.zeros_(self.mlp_val.weight)
        # SEMANTIC COMPRESSION HEAD: LM hidden -> d
        self.proj_sum = nn.Linear(hidden, d)
        # SEMANTIC GENERATION HEAD: d -> prefix_tokens * LM hidden (the soft prompt)
        self.proj_state = nn.Linear(d, self.cfg.prefix_tokens * hidden)
        # LINEAR HIGHWAY (LSTNet): the last q standardised values -> a correction for each of `overshoot`
        # steps ahead. Zero at init, so training starts from the pure state-space forecast; it gives the
        # model the linear (ARIMA-like) structure a few hundred steps cannot teach the GRU reliably.
        # With a statistical highway source (ARIMA / ETS, `stat_table`) the forecast's linear part is that
        # forecaster's instead, and this layer is not built.
        width = self.cfg.highway * (2 if self.cfg.highway_features == "devdiff" else 1)
        linear = self.cfg.highway and not self.cfg.stat_kinds
        self.highway = nn.Linear(width, self.cfg.overshoot) if linear else None
        if self.highway is not None:
            nn.init.zeros_(self.highway.weight)
            nn.init.zeros_(self.highway.bias)
            self.highway.requires_grad_(self.cfg.highway_train)
        ids = tokenizer.convert_tokens_to_ids(sum_tokens)
        self.register_buffer("sum_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        # the statistical highway's forecasters fitted on the training part {kind: spec} (`fit_highway`): model
        # state, not config; saved in the checkpoint's metadata ("highway_stat")
        self.highway_stat: dict[str, dict] = {}
        self.cache = EmbeddingCache(namespace=f"{self.cfg.backbone}|{self.cfg.seed}|{self.cfg.sum_tokens}|"
                                              f"{self.cfg.max_text_chars}")

    # ---- plumbing -----------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.mlp_val.weight.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # the backbone stays frozen and deterministic
        return self

    def state_dict(self, *args, **kwargs):
        """Heads always; the backbone only when it is a tiny one built here (a hub model is reloaded by id)."""
        state = super().state_dict(*args, **kwargs)
        if not self.cfg.is_tiny:
            prefix = kwargs.get("prefix", "")
            for key in [k for k in state if k.startswith(prefix + "model.")]:
                del state[key]
        return state

    def save(self, directory, metadata: dict | None = None) -> Path:
        """The checkpoint folder; the fitted statistical forecasters go in its metadata ("highway_stat")."""
        return super().save(directory, {**(metadata or {}), "highway_stat": self.highway_stat})

    @classmethod
    def load(cls, directory, device: str | torch.device = "cpu"):
        """A saved model. Checkpoints written before the fitted forecasters left the config (`highway_stat` as
        JSON text in config.json) are converted on load."""
        header, state = load_checkpoint(directory, family=cls.family, device=device)
        config = dict(header["config"])
        legacy = config.pop("highway_stat", "")
        model = cls._build_from_checkpoint(cls.config_class.from_dict(config), Path(directory))
        from .stat import parse_specs

        model.highway_stat = dict(header.get("metadata", {}).get("highway_stat") or parse_specs(legacy))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{directory}: weights do not match the {cls.__name__} built from its config "
                                  f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model.to(device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if self.cfg.is_tiny:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("model.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"LBS state mismatch: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
        return result

    @classmethod
    def _build_from_checkpoint(cls, config: LBSConfig, directory: Path):
        return cls(config)

    def _prompt_ids(self, text: str) -> list[int]:
        text = text[: self.cfg.max_text_chars]
        return self.tokenizer(ENCODE_PROMPT.format(text=text)).input_ids + self.sum_ids.tolist()

    # ---- encode_text: the semantic bottleneck ---------------------------------------------------------------

    @torch.no_grad()
    def sum_hidden(self, texts: Sequence[str]) -> torch.Tensor:
        """The frozen LM's last-layer states at the SUM positions of many texts in one padded batch.

        Padding follows `tokenizer.padding_side`; position ids count real tokens only, so a padded row
        sees the same positions as its unpadded encoding.

        Returns:
            (N, K, H) with K = sum_tokens.
        """
        rows = [self._prompt_ids(t) for t in texts]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        left = self.tokenizer.padding_side == "left"
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            sl = slice(length - len(r), length) if left else slice(0, len(r))
            ids[i, sl] = torch.tensor(r)
            mask[i, sl] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # (N, L)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
        hidden = out.hidden_states[-1]  # (N, L, H)
        last = (mask * torch.arange(length, device=self.device)).argmax(1)  # (N,) index of the last real token
        k = self.cfg.sum_tokens
        idx = last[:, None] - torch.arange(k - 1, -1, -1, device=self.device)[None]  # (N, K) SUM positions
        gathered = hidden.gather(1, idx[..., None].expand(-1, -1, hidden.shape[-1]))  # (N, K, H)
        return gathered.float()

    def sum_hidden_cached(self, texts: Sequence[str]) -> torch.Tensor:
        """`sum_hidden` through the text-hash cache: each distinct text meets the LM once. (N, K, H) on CPU."""
        return self.cache.encode(list(texts), lambda chunk: self.sum_hidden(chunk), batch_size=self.cfg.encode_batch)

    def project_sum(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """SUM hidden states (..., K, H) -> semantic observations s (..., D); rows with mask 0 (no text) are 0."""
        s = self.proj_sum(hidden.to(self.device, self.proj_sum.weight.dtype)).mean(dim=-2)  # (..., D)
        if not self.cfg.use_text:
            return torch.zeros_like(s)
        if mask is not None:
            s = s * mask.to(s.dtype).unsqueeze(-1)
        return s

    def encode_text(self, text: str | Sequence[str], cache: bool = True) -> torch.Tensor:
        """Texts -> semantic observations s: (1, D) for one string, (N, D) for a list; '' encodes to 0."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise DataError("encode_text needs at least one text")
        hidden = self.sum_hidden_cached(texts) if cache else self.sum_hidden(texts).cpu()
        mask = torch.tensor([bool(t) for t in texts])
        return self.project_sum(hidden, mask)

    def encode_text_reference(self, text: str) -> torch.Tensor:
        """The seed's encode_text: one text, no padding, no cache; (1, D)."""
        input_ids = torch.tensor([self._prompt_ids(text)], device=self.device)
        with torch.no_grad():
            out = self.model(input_ids=input_ids, output_hidden_states=True)
        sum_hidden = out.hidden_states[-1][0, -self.cfg.sum_tokens:].float()  # (K, H)
        s = self.proj_sum(sum_hidden)  # (K, D)
        return s.mean(dim=0, keepdim=True)  # (1, D)

    # ---- filter_step: predict, then correct ----------------------------------------------------------------

    def initial_state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero latent x (B, D) and GRU memory h (layers, B, D)."""
        d = self.cfg.latent_dim
        return (torch.zeros(batch, d, device=self.device),
                torch.zeros(self.cfg.gru_layers, batch, d, device=self.device))

    def prior(self, h_top: torch.Tensor) -> DiagGaussian:
        """p(x_t | h_t) from the top GRU layer's state (B, D). GoalLBS steers its mean."""
        return DiagGaussian.from_params(self.mlp_prior(h_top))

    def posterior(self, h_top: torch.Tensor, y_t: torch.Tensor, s_t: torch.Tensor) -> DiagGaussian:
        """q(x_t | h_t, y_t, s_t): h (B, D), y (B,), s (B, D)."""
        return DiagGaussian.from_params(self.mlp_post(torch.cat([h_top, y_t.unsqueeze(1), s_t], dim=-1)))

    def filter_step(self, x_prev, h_prev, y_t, s_t, sample: bool = True):
        """One predict-correct step.

        Args:
            x_prev: previous latent (B, D); h_prev: GRU memory (layers, B, D); y_t: value (B,) or scalar;
            s_t: semantic observation (B, D) or (D,).
            sample: draw x_t from the posterior (training); False returns its mean (filtering for forecasts).

        Returns:
            x_t (B, D), (prior_mu, prior_logvar), (post_mu, post_logvar), h_t (layers, B, D).
        """
        if y_t.dim() == 0:
            y_t = y_t.unsqueeze(0)
        if s_t.dim() == 1:
            s_t = s_t.unsqueeze(0)
        _, h_t = self.gru(x_prev.unsqueeze(1), h_prev)  # (B, 1, D) in, h_t (layers, B, D)
        prior = self.prior(h_t[-1])
        post = self.posterior(h_t[-1], y_t.to(s_t.dtype), s_t)
        x_t = post.rsample() if sample else post.mu
        return x_t, (prior.mu, prior.logvar), (post.mu, post.logvar), h_t

    def highway_forecast(self, y_abs: torch.Tensor, horizon: int) -> torch.Tensor:
        """The linear highway's additive correction from the last q values of y_abs (B, L): (B, horizon).

        y_abs are standardised values on the absolute scale (not instance-normalised), so the highway can
        learn mean reversion as well as momentum. The correction is relative to the last value: with
        `highway_alpha` < 1 it includes the step from the last value to the smoothed level. Steps beyond
        `overshoot` reuse the last step's weights; without a highway (q = 0) the correction is 0.
        """
        b = y_abs.shape[0]
        if self.highway is None:
            return torch.zeros(b, horizon, device=y_abs.device)
        feats, anchor = highway_inputs(y_abs.to(self.highway.weight.dtype), self.cfg.highway,
                                       self.cfg.highway_features, self.cfg.highway_alpha)
        out = self.highway(feats[:, -1]) + anchor[:, -1:]  # (B, overshoot)
        idx = torch.arange(horizon, device=out.device).clamp(max=self.cfg.overshoot - 1)
        return out[:, idx]  # (B, H)

    @property
    def uses_stat(self) -> bool:
        """Whether the highway is a statistical forecaster (its forecasts come in as `base`)."""
        return bool(self.cfg.stat_kinds)

    def stat_table(self, z, horizon: int) -> torch.Tensor:
        """The statistical highway at every step of a standardised series z (T,): (T, horizon), row t the
        forecast of z[t + 1 .. t + horizon] from z[: t + 1] (mean of the fitted forecasters) minus z[t]."""
        from .stat import stat_table

        specs = self.highway_stat
        missing = [k for k in self.cfg.stat_kinds if k not in specs]
        if missing:
            raise ConfigError(f"the statistical highway {missing} is not fitted: call fit_highway on the training "
                              "part first")
        z = np.asarray(torch.as_tensor(z, dtype=torch.float64).cpu(), dtype=np.float64).ravel()
        table = np.mean([stat_table(specs[k], z, horizon) for k in self.cfg.stat_kinds], axis=0)  # (T, H)
        return torch.as_tensor(table - z[:, None], dtype=torch.float32)

    def forecast_offset(self, x: torch.Tensor, y: torch.Tensor, level: torch.Tensor, horizon: int,
                        base: torch.Tensor | None = None) -> torch.Tensor:
        """What a forecast adds to the decoded prior rollout: (B, H).

        Args:
            x: the filtered latent the rollout starts from (B, D); y: the context values (B, L) as the
                model saw them; level: (B, 1) the level instance normalisation subtracted (0 without).
            base: (B, H) the statistical highway's forecast minus the last value (`stat_table` at the
                last context step); needed, and only used, with a statistical `highway_source`.

        The level comes back, the highway adds its correction (linear, or the statistical forecaster's),
        and with `persistence` the rollout is read as a change: the last observed value minus the decoded
        start, so a latent that predicts no change forecasts exactly the highway's forecast.
        """
        if self.uses_stat:
            if base is None:
                raise ConfigError(f"highway_source={self.cfg.highway_source!r} needs the statistical forecast "
                                  "(base = model.stat_table(z, horizon) at the last context step)")
            offset = level + base.to(y.device, y.dtype)[:, :horizon]
        else:
            offset = level + self.highway_forecast(y + level, horizon)  # (B, H)
        if self.cfg.persistence:
            offset = offset + (y[:, -1:] - self.mlp_val(x).to(y.dtype))  # (B, 1)
        return offset

    @torch.no_grad()
    def fit_highway(self, z: torch.Tensor, ridge: float | None = None, window: int | None = None) -> None:
        """Initialise the highway by ridge least squares on a training series z (T,) (standardised).

        Step k's weights predict z[t + k] minus the anchor (the last value z[t], or the smoothed level with
        `highway_alpha` < 1) from the highway's features at t, so the forecast starts as a direct linear
        autoregression on top of the state-space model's persistence; training then adjusts both together.
        With `window`, the features at t are computed from the `window` steps ending at t only, exactly as a
        forecast with that context sees them; otherwise from the whole series before t.
        """
        if self.uses_stat:  # ARIMA / ETS of least AIC on the training part: model state (`highway_stat`)
            from .stat import fit_stat_spec

            z = np.asarray(torch.as_tensor(z, dtype=torch.float64).cpu(), dtype=np.float64).ravel()
            self.highway_stat = {k: fit_stat_spec(z, k) for k in self.cfg.stat_kinds}
            return
        if self.highway is None:
            return
        coef = fit_highway_coef(torch.as_tensor(z, dtype=torch.float64).flatten(), self.cfg.highway,
                                self.cfg.highway_features, self.cfg.highway_alpha, self.cfg.overshoot,
                                self.cfg.highway_ridge if ridge is None else ridge, window)
        if coef is None:
            return  # too short for a stable fit: stay at zero
        self.highway.weight.copy_(coef[:-1].T.to(self.highway.weight.dtype))
        self.highway.bias.copy_(coef[-1].to(self.highway.bias.dtype))

    # ---- losses ---------------------------------------------------------------------------------------------

    def value_loss(self, x_t: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        """MSE between mlp_val(x_t) (..., 1) and the standardised value y_t (...)."""
        return F.mse_loss(self.mlp_val(x_t).squeeze(-1), y_t)

    def _text_batch(self, texts: Sequence[str], dates: Sequence[str]):
        """Right-padded (prompt + text) ids (N, L), their mask and labels scoring the text tokens only."""
        rows, labels = [], []
        for text, date in zip(texts, dates, strict=True):
            prompt = self.tokenizer(FORECAST_PROMPT.format(date=date)).input_ids
            target = self.tokenizer(text, add_special_tokens=False).input_ids[: self.cfg.max_target_tokens]
            rows.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        lab = torch.full((len(rows), length), -100, dtype=torch.long)
        for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            lab[i, : len(lb)] = torch.tensor(lb)
        return ids.to(self.device), mask.to(self.device), lab.to(self.device)

    def soft_prompt(self, x_t: torch.Tensor) -> torch.Tensor:
        """Latent (N, D) -> prefix embeddings (N, P, H) in the LM's dtype."""
        emb = self.model.get_input_embeddings()
        return self.proj_state(x_t).view(x_t.shape[0], self.cfg.prefix_tokens, -1).to(emb.weight.dtype)

    def text_loss(self, x_t: torch.Tensor, texts: str | Sequence[str], dates: str | Sequence[str] = "2025-01-01",
                  reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy of each step's text given the soft prompt proj_state(x_t) and the step's real date.

        Args:
            x_t: latents (N, D); texts, dates: N strings (a single string for N = 1).
            reduction: "mean" over texts (each text's mean token loss), or "none": (N,).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        dates = [dates] * len(texts) if isinstance(dates, str) else list(dates)
        ids, mask, labels = self._text_batch(texts, dates)  # (N, L)
        prefix = self.soft_prompt(x_t)  # (N, P, H)
        embeds = torch.cat([prefix, self.model.get_input_embeddings()(ids)], dim=1)  # (N, P + L, H)
        full_mask = torch.cat([torch.ones(ids.shape[0], self.cfg.prefix_tokens, dtype=mask.dtype,
                                          device=mask.device), mask], dim=1)
        logits = self.model(inputs_embeds=embeds, attention_mask=full_mask).logits[:, self.cfg.prefix_tokens:]
        # position j predicts token j + 1
        token_loss = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                     reduction="none")  # (N, L - 1)
        counts = (labels[:, 1:] != -100).sum(1).clamp(min=1)
        per_text = token_loss.sum(1) / counts  # (N,)
        return per_text if reduction == "none" else per_text.mean()

    def kl_loss(self, prior_mu, prior_logvar, post_mu, post_logvar, step=None, total_steps=None) -> torch.Tensor:
        """KL(posterior || prior) with the seed's annealed free nats (per sample, core.gaussian), mean over batch."""
        balance = None if self.cfg.kl_balance < 0 else self.cfg.kl_balance
        return gaussian.kl_loss(DiagGaussian(post_mu, post_logvar), DiagGaussian(prior_mu, prior_logvar),
                                free_nats=self.cfg.kl_free_nats, step=step, total_steps=total_steps, balance=balance)

    def kl_loss_reference(self, prior_mu, prior_logvar, post_mu, post_logvar, step, total_steps) -> torch.Tensor:
        """The seed's formula: KL summed over everything, then the annealed free nats, clamped at 0."""
        kl = -0.5 * torch.sum(1 + post_logvar - prior_logvar - (post_mu - prior_mu).pow(2) / prior_logvar.exp()
                              - post_logvar.exp() / prior_logvar.exp())
        free_nats = self.cfg.kl_free_nats * max(0.0, 1.0 - step / total_steps)
        return torch.clamp(kl - free_nats, min=0.0)

    # ---- training_step: the seed's batch-1 orchestrator (the slow reference) -----------------------------

    def training_step(self, y_t, text, x_prev, h_prev, step, total_steps, date: str = "2025-01-01"):
        """The seed's per-step loop body: encode one text (LM pass 1), filter, value/text (LM pass 2)/KL losses.

        Returns:
            loss, x_t.detach(), h_t.detach(), (L_val, L_text, L_kl)
        """
        s_t = self.encode_text_reference(text) if self.cfg.use_text else torch.zeros(1, self.cfg.latent_dim,
                                                                                     device=self.device)
        x_t, prior, post, h_t = self.filter_step(x_prev, h_prev, y_t, s_t)
        L_val = self.value_loss(x_t, y_t.reshape(1))  # noqa: N806 (the seed's names)
        L_text = self.text_loss(x_t.detach(), text or " ", date)  # noqa: N806
        L_kl = self.kl_loss(prior[0], prior[1], post[0], post[1], step, total_steps)  # noqa: N806
        loss = self.cfg.alpha_val * L_val + self.cfg.alpha_text * L_text + self.cfg.alpha_kl * L_kl
        return loss, x_t.detach(), h_t.detach(), (L_val.item(), L_text.item(), L_kl.item())

    # ---- the fast path: (B, T) windows, cached SUM states, truncated BPTT ---------------------------------

    def window_loss(self, y: torch.Tensor, hidden: torch.Tensor, text_mask: torch.Tensor,
                    texts: Sequence[Sequence[str]], dates: Sequence[Sequence[str]], step: int | None = None,
                    total_steps: int | None = None, bptt: int = 16, generator: torch.Generator | None = None,
                    level: torch.Tensor | None = None, base: torch.Tensor | None = None):
        """Loss of B windows of T steps.

        Args:
            y: standardised values (B, T); hidden: cached SUM states (B, T, K, H); text_mask: (B, T) 1 where
                the step has text; texts, dates: B lists of T strings (for text_loss).
            bptt: the latent and GRU state are detached every `bptt` steps (truncated BPTT).
            level: (B, 1) the level subtracted from y by instance normalisation (default 0); the highway
                sees y + level, the absolute standardised values.
            base: (B, T, overshoot) the statistical highway at each step (`stat_table`), with a statistical
                `highway_source`.

        Returns:
            loss, metrics {val, pred, text, kl}
        """
        y = y.to(self.device)
        b, t_len = y.shape
        s = self.project_sum(hidden, text_mask.to(self.device))  # (B, T, D)
        x, h = self.initial_state(b)
        xs, hs, priors, posts = [], [], [], []
        for t in range(t_len):
            if t and bptt and t % bptt == 0:
                x, h = x.detach(), h.detach()
            x, prior, post, h = self.filter_step(x, h, y[:, t], s[:, t])
            xs.append(x)
            hs.append(h)
            priors.append(prior)
            posts.append(post)
        x_all = torch.stack(xs, 1)  # (B, T, D)
        hs = [h.transpose(0, 1) for h in hs]  # (B, layers, D) each
        prior_mu, prior_logvar = (torch.stack([p[i] for p in priors], 1) for i in range(2))  # (B, T, D)
        post_mu, post_logvar = (torch.stack([p[i] for p in posts], 1) for i in range(2))
        l_val = self.value_loss(x_all, y)
        y_abs = y if level is None else y + level.to(y.device)
        l_pred = self.overshoot_loss(x_all, torch.stack(hs, 1), y, y_abs, base)
        l_kl = self.kl_loss(prior_mu, prior_logvar, post_mu, post_logvar, step, total_steps)
        loss = self.cfg.alpha_val * l_val + self.cfg.alpha_pred * l_pred + self.cfg.alpha_kl * l_kl
        metrics = {"val": float(l_val.detach()), "pred": float(l_pred.detach()), "kl": float(l_kl.detach())}
        if self.cfg.alpha_text > 0 and self.cfg.text_loss_samples > 0:
            where = text_mask.nonzero().tolist()  # [(b, t)] with text
            if where:
                pick = torch.randperm(len(where), generator=generator)[: self.cfg.text_loss_samples].tolist()
                bt = [where[i] for i in pick]
                x_sel = x_all[[i for i, _ in bt], [j for _, j in bt]].detach()  # (S, D), detached as in the seed
                l_text = self.text_loss(x_sel, [texts[i][j] for i, j in bt], [dates[i][j] for i, j in bt])
                loss = loss + self.cfg.alpha_text * l_text
                metrics["text"] = float(l_text.detach())
        return loss, metrics

    def overshoot_loss(self, x_all: torch.Tensor, h_all: torch.Tensor, y: torch.Tensor,
                       y_abs: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
        """Value loss of open-loop prior rollouts (prior means) from every filtered state, 1..overshoot steps.

        This trains exactly the path a forecast takes (filter, then prior only, read as a change from
        the last value with `persistence`, plus the highway's correction), so information a text carries
        about steps ahead (a regime announced before it shows) is rewarded.

        Args:
            x_all: posterior samples (B, T, D); h_all: GRU memories (B, T, layers, D); y: values (B, T);
            y_abs: the same values on the absolute standardised scale, for the highway (default y).
            base: (B, T, >= overshoot) the statistical highway's forecasts minus y at each step (needed with a
                statistical `highway_source`).
        """
        b, t_len, d = x_all.shape
        x = x_all.reshape(b * t_len, d)  # (B*T, D): every step is a forecast origin
        h = h_all.reshape(b * t_len, *h_all.shape[2:]).transpose(0, 1).contiguous()  # (layers, B*T, D)
        # (B, T): observed value minus the decoded start, so the rollout is read as a change
        start = y - self.mlp_val(x).view(b, t_len) if self.cfg.persistence else None
        highway = None
        if self.uses_stat:
            if base is None:
                raise ConfigError(f"highway_source={self.cfg.highway_source!r}: overshoot_loss needs base")
            highway = base.to(y.device, y.dtype)
        elif self.highway is not None:
            y_abs = y if y_abs is None else y_abs
            feats, anchor = highway_inputs(y_abs, self.cfg.highway, self.cfg.highway_features,
                                           self.cfg.highway_alpha)  # (B, T, F), (B, T)
            highway = self.highway(feats) + anchor[..., None]  # (B, T, overshoot)
        losses = []
        for k in range(1, min(self.cfg.overshoot, t_len - 1) + 1):
            _, h = self.gru(x.unsqueeze(1), h)
            x = self.prior(h[-1]).mu  # (B*T, D)
            pred = self.mlp_val(x).view(b, t_len)[:, : t_len - k]  # origin t predicts y[t + k]
            if start is not None:
                pred = pred + start[:, : t_len - k]
            if highway is not None:
                pred = pred + highway[:, : t_len - k, k - 1]
            losses.append(F.mse_loss(pred, y[:, k:]))
        return torch.stack(losses).mean()


LBS = BaseLBS  # the seed's class name
