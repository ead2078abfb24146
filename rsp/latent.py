"""The stochastic latent of RSP: posterior/prior distributions and the balanced, free-bits KL.

Discrete (the paper, docs/model.md#posterior-and-prior): `stoch` categorical variables with `discrete` classes each,
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
    # validate_args=False: a non-finite value must reach the loss, where the trainer detects it on
    # every rank at once, instead of raising inside one rank's forward.
    if kind == "discrete":
        logits = logits.reshape(-1, stoch, discrete)
        return td.Independent(td.OneHotCategoricalStraightThrough(logits=logits, validate_args=False), 1, validate_args=False)
    if kind == "gaussian":
        mean, raw_std = logits.chunk(2, dim=-1)
        normal = td.Normal(mean, F.softplus(raw_std) + GAUSSIAN_MIN_STD, validate_args=False)
        return td.Independent(normal, 1, validate_args=False)
    raise ValueError(f"unknown latent kind {kind!r}; valid: discrete, gaussian")


def rsample(logits: torch.Tensor, kind: str, stoch: int, discrete: int) -> torch.Tensor:
    """A reparameterized (B, sample_size) sample from the global RNG. Discrete: DreamerV2's
    straight-through one-hot, computed as torch.distributions' OneHotCategoricalStraightThrough
    computes it (same operations, same bits), but without the argument validation its inner
    Categorical always runs: that reads a flag back to the host (a GPU sync every step, and a
    graph break under torch.compile)."""
    if kind != "discrete":
        return distribution(logits, kind, stoch, discrete).rsample()
    logits = logits.reshape(-1, stoch, discrete)
    probs = (logits - logits.logsumexp(dim=-1, keepdim=True)).softmax(dim=-1)  # (B, stoch, discrete)
    index = categorical_sample(probs.reshape(-1, discrete)).reshape(probs.shape[:-1])  # (B, stoch)
    one_hot = F.one_hot(index, discrete).to(probs)
    return (one_hot + (probs - probs.detach())).flatten(1)


def categorical_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One class index per row of (n, k) probabilities: torch.multinomial(probs, 1, True)'s own
    method for one sample (an exponential race, argmax(p / E) with E ~ Exp(1)), with the same bits
    and the same RNG draws, minus its validity checks of `probs` (extra kernels every step, and a
    read back to the host in older torch versions; our probabilities come from a softmax)."""
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(dim=-1)


def sample_with_generator(logits: torch.Tensor, kind: str, stoch: int, discrete: int, generator: torch.Generator) -> torch.Tensor:
    """A (B, sample_size) sample drawn from `generator` instead of the global RNG, without
    gradient. Used for the prior's logging-only decoder pass, so that how often it is logged never
    changes the training trajectory."""
    with torch.no_grad():
        if kind == "discrete":
            probs = torch.nan_to_num(logits).reshape(-1, discrete).softmax(dim=-1)  # (B * stoch, discrete)
            idx = categorical_sample(probs, generator)
            return F.one_hot(idx, discrete).to(logits.dtype).reshape(logits.shape[0], stoch * discrete)
        mean, raw_std = logits.chunk(2, dim=-1)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (F.softplus(raw_std) + GAUSSIAN_MIN_STD) * noise


def kl_divergence(q_logits: torch.Tensor, p_logits: torch.Tensor, kind: str, stoch: int, discrete: int) -> torch.Tensor:
    """Analytic KL(q || p) per sample, summed over the latent variables: (B,).
    Categorical: sum_c q_c (log q_c - log p_c) on log-softmax-normalized logits (the formula of
    torch.distributions, computed directly so non-finite logits give a non-finite KL instead of a
    validation error inside one rank)."""
    if kind == "discrete":
        log_q = q_logits.reshape(-1, stoch, discrete).log_softmax(dim=-1)
        log_p = p_logits.reshape(-1, stoch, discrete).log_softmax(dim=-1)
        return (log_q.exp() * (log_q - log_p)).sum(dim=(-2, -1))
    return td.kl_divergence(distribution(q_logits, kind, stoch, discrete), distribution(p_logits, kind, stoch, discrete))


def balanced_kl(
    post_logits: torch.Tensor,
    prior_logits: torch.Tensor,
    kind: str,
    stoch: int,
    discrete: int,
    balance: float,
    freebit: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV2 KL balancing with free bits on the batch mean (docs/model.md#kl-balancing-and-free-bits):
    kl = mean_B[balance * KL(q || sg(p)) + (1 - balance) * KL(sg(q) || p)], loss = max(kl, freebit).
    The first term trains the posterior towards the prior, the second the prior towards the
    posterior; below `freebit` nats the loss is constant and passes no gradient.
    Returns (kl_loss, kl_value), both scalars."""
    post_to_prior = kl_divergence(post_logits, prior_logits.detach(), kind, stoch, discrete)  # (B,)
    prior_to_post = kl_divergence(post_logits.detach(), prior_logits, kind, stoch, discrete)  # (B,)
    kl_value = (balance * post_to_prior + (1.0 - balance) * prior_to_post).mean()
    return kl_value.clamp(min=freebit), kl_value
