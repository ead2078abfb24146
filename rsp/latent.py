"""The stochastic latent of RSP: posterior/prior distributions and the balanced, free-bits KL.

Discrete (the paper, spec §4): `stoch` categorical variables with `discrete` classes each,
sampled as straight-through one-hot vectors (DreamerV2), no unimix, no temperature.
Gaussian (an ablation; the reference's branch crashes): logits split into a mean and a raw
scale, std = softplus(raw) + GAUSSIAN_MIN_STD, reparameterized samples.
"""

from __future__ import annotations

import torch
import torch.distributions as td
import torch.nn.functional as F

# DreamerV2's floor on the Gaussian std: keeps KL(q || p) finite when a std collapses.
GAUSSIAN_MIN_STD = 0.1


def logits_size(kind: str, stoch: int, discrete: int) -> int:
    """Width of the posterior/prior head output."""
    return stoch * discrete if kind == "discrete" else 2 * stoch


def sample_size(kind: str, stoch: int, discrete: int) -> int:
    """Width of a flattened latent sample (the input of decoder_embed_stoch)."""
    return stoch * discrete if kind == "discrete" else stoch


def distribution(logits: torch.Tensor, kind: str, stoch: int, discrete: int) -> td.Distribution:
    """(B, logits_size) -> a distribution over (B, stoch, discrete) one-hots or (B, stoch) reals,
    independent across variables (event dims summed in log-probs and KLs)."""
    if kind == "discrete":
        logits = logits.reshape(-1, stoch, discrete)
        return td.Independent(td.OneHotCategoricalStraightThrough(logits=logits), 1)
    if kind == "gaussian":
        mean, raw_std = logits.chunk(2, dim=-1)
        return td.Independent(td.Normal(mean, F.softplus(raw_std) + GAUSSIAN_MIN_STD), 1)
    raise ValueError(f"unknown latent kind {kind!r}; valid: discrete, gaussian")


def sample_with_generator(
    logits: torch.Tensor, kind: str, stoch: int, discrete: int, generator: torch.Generator
) -> torch.Tensor:
    """A (B, sample_size) sample drawn from `generator` instead of the global RNG, without
    gradient. Used for the prior's logging-only decoder pass, so that how often it is logged never
    changes the training trajectory."""
    with torch.no_grad():
        if kind == "discrete":
            probs = logits.reshape(-1, discrete).softmax(dim=-1)  # (B * stoch, discrete)
            idx = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            return F.one_hot(idx, discrete).to(logits.dtype).reshape(logits.shape[0], stoch * discrete)
        mean, raw_std = logits.chunk(2, dim=-1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (F.softplus(raw_std) + GAUSSIAN_MIN_STD) * noise


def balanced_kl(
    post_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    kind: str,
    stoch: int,
    discrete: int,
    balance: float,
    freebit: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV2 KL balancing with free bits on the batch mean (spec §4):
    kl = mean_B[balance * KL(q || sg(p)) + (1 - balance) * KL(sg(q) || p)], loss = max(kl, freebit).
    The first term trains the posterior towards the prior, the second the prior towards the
    posterior; below `freebit` nats the loss is constant and passes no gradient.
    Returns (kl_loss, kl_value), both scalars."""
    dist = lambda logits: distribution(logits, kind, stoch, discrete)  # noqa: E731
    post_to_prior = td.kl_divergence(dist(post_logits), dist(prior_logits.detach()))  # (B,)
    prior_to_post = td.kl_divergence(dist(post_logits.detach()), dist(prior_logits))  # (B,)
    kl_value = (balance * post_to_prior + (1.0 - balance) * prior_to_post).mean()
    return kl_value.clamp(min=freebit), kl_value
