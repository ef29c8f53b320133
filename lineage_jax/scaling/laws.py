r"""Scaling laws as pure functions, and the published constants as named presets.

Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (N: non-embedding parameters,
D: tokens, C in PF-days = 8.64e19 FLOPs, loss in nats per token of their WebText2 BPE)::

    L(N) = (N_c / N)^α_N                         eq. 1.1
    L(D) = (D_c / D)^α_D                         eq. 1.2
    L(C_min) = (C_c^min / C_min)^α_C^min         eq. 1.3
    L(N, D) = [(N_c / N)^(α_N / α_D) + D_c / D]^α_D      eq. 1.5
    N_opt(C) = N_e · C^p_N,  p_N = 0.73          eq. 1.7 and §6.1 (with B ∝ C^0.24, S ∝ C^0.03)

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla), eq. 2 and 4::

    L(N, D) = E + A / N^α + B / D^β
    N_opt(C) = G · (C/6)^a,  D_opt(C) = G⁻¹ · (C/6)^b,  G = (αA / (βB))^(1/(α+β)),
    a = β / (α+β),  b = α / (α+β)

which follow from minimising L under C = 6·N·D. With the rounded constants of eq. 10 this gives
N_opt ≈ 32B at Gopher's 5.76e23 FLOPs (~93 tokens per parameter), where the paper's Table 3 lists
40B for Approach 3: Besiroglu et al. 2024 trace the gap to the fit and its rounding; their refit
(preset ``epoch``) gives ~20 tokens per parameter, in line with Approaches 1 and 2.

Kaplan's N excludes embeddings and his loss is in nats of a different tokenizer and data set, so
the presets' losses are not comparable across presets, only their allocations.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from lineage_jax.config import ConfigError

PF_DAY = 1e15 * 24 * 3600      # FLOPs in a petaflop/s-day: Kaplan's unit of compute


@dataclasses.dataclass(frozen=True)
class Parametric:
    """Chinchilla's L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022, eq. 2)."""
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "parametric"
    source: str = ""

    def loss(self, n, d):
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    @property
    def a(self) -> float:
        """N_opt ∝ C^a, a = β/(α+β)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ∝ C^b, b = α/(α+β)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / (self.alpha + self.beta))

    def n_opt(self, c):
        """Eq. 4: the loss-minimising N under the budget C = 6·N·D."""
        return self.G * (c / 6.0) ** self.a

    def d_opt(self, c):
        return (c / 6.0) / self.n_opt(c)

    def flops_for_params(self, n):
        """The budget C at which N is compute-optimal (eq. 4 solved for C)."""
        return 6.0 * (n / self.G) ** (1.0 / self.a)

    def constants(self) -> dict:
        return {"name": self.name, "form": "parametric", "E": self.E, "A": self.A, "B": self.B,
                "alpha": self.alpha, "beta": self.beta, "a": self.a, "b": self.b, "G": self.G, "source": self.source}


@dataclasses.dataclass(frozen=True)
class Kaplan:
    """Kaplan et al. 2020's power laws (eq. 1.1-1.5) and their compute-efficient allocation (§6)."""
    alpha_n: float = 0.076
    n_c: float = 8.8e13
    alpha_d: float = 0.095
    d_c: float = 5.4e13
    alpha_c: float = 0.050
    c_c: float = 3.1e8           # PF-days
    p_n: float = 0.73            # N_opt = n_e · (C / PF-day)^p_n
    n_e: float = 1.3e9
    name: str = "kaplan"
    source: str = ("Kaplan et al. 2020, Scaling Laws for Neural Language Models: eq. 1.1-1.5, Table 5 "
                   "(alpha_N=0.076, N_c=8.8e13, alpha_D=0.095, D_c=5.4e13, alpha_C^min=0.050, "
                   "C_c^min=3.1e8 PF-days), eq. 1.7 and §6.1 (N_opt = 1.3e9 * C^0.73, C in PF-days)")

    def loss_n(self, n):
        return (self.n_c / n) ** self.alpha_n

    def loss_d(self, d):
        return (self.d_c / d) ** self.alpha_d

    def loss(self, n, d):
        """Eq. 1.5: L(N, D) = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D."""
        return ((self.n_c / n) ** (self.alpha_n / self.alpha_d) + self.d_c / d) ** self.alpha_d

    def loss_c(self, c):
        """Eq. 1.3: L(C_min), C in FLOPs (converted to PF-days here)."""
        return (self.c_c / (c / PF_DAY)) ** self.alpha_c

    @property
    def a(self) -> float:
        return self.p_n

    @property
    def b(self) -> float:
        return 1.0 - self.p_n

    def n_opt(self, c):
        return self.n_e * (c / PF_DAY) ** self.p_n

    def d_opt(self, c):
        return c / (6.0 * self.n_opt(c))

    def flops_for_params(self, n):
        return PF_DAY * (n / self.n_e) ** (1.0 / self.p_n)

    def constants(self) -> dict:
        return {"name": self.name, "form": "kaplan", **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                                         if f.name != "name"}}


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """N_opt = k · C^a with no loss model: what an IsoFLOP fit (Approach 1 or 2) alone gives."""
    k: float
    a: float
    name: str = "power-law"
    source: str = ""

    @property
    def b(self) -> float:
        return 1.0 - self.a

    def n_opt(self, c):
        return self.k * c ** self.a

    def d_opt(self, c):
        return c / (6.0 * self.n_opt(c))

    def flops_for_params(self, n):
        return (n / self.k) ** (1.0 / self.a)

    def constants(self) -> dict:
        return {"name": self.name, "form": "power-law", "k": self.k, "a": self.a, "b": self.b, "source": self.source}


CHINCHILLA = Parametric(
    E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="chinchilla",
    source="Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, eq. 10 (Approach 3: "
           "E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28; a=0.46, b=0.54)")
EPOCH = Parametric(
    E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, name="epoch",
    source="Besiroglu et al. 2024 (Epoch AI), Chinchilla Scaling: A replication attempt, Approach 3 refit on "
           "Chinchilla's own points (E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658; ~20 tokens per "
           "parameter)")
KAPLAN = Kaplan()
PRESETS = {"kaplan": KAPLAN, "chinchilla": CHINCHILLA, "epoch": EPOCH}


def from_scaling_json(path: str | Path):
    """The law a ``lineage scaling fit`` found: Approach 3's parametric form, else Approach 2's
    (then 1's) power law N_opt = k·C^a, which predicts an allocation but no loss."""
    p = Path(path)
    try:
        fit = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--constants={path}: cannot read it as JSON ({e})") from None
    if not isinstance(fit, dict):
        raise ConfigError(f"--constants={path}: not a scaling.json object")
    if "approach3" in fit:
        c = fit["approach3"]
        return Parametric(c["E"], c["A"], c["B"], c["alpha"], c["beta"], name=str(p), source=f"approach 3 fit in {p}")
    for key in ("approach2", "approach1"):
        if key in fit and "k" in fit[key]:
            return PowerLaw(fit[key]["k"], fit[key]["a"], name=str(p), source=f"{key} fit in {p}")
    raise ConfigError(f"--constants={path}: holds no fitted law (approach1/2/3); see its 'skipped' entry")


def constants(name: str):
    """A preset by name (kaplan, chinchilla, epoch) or a scaling.json path."""
    if name in PRESETS:
        return PRESETS[name]
    if name.endswith(".json") or Path(name).is_file():
        if not Path(name).is_file():
            raise ConfigError(f"--constants={name}: no such file")
        return from_scaling_json(name)
    raise ConfigError(f"--constants={name}: allowed {', '.join(PRESETS)}, or a scaling.json path")


def predict(law, *, flops: float | None = None, params: float | None = None) -> dict:
    """The compute-optimal point for a budget (``flops``) or for a model size (``params``):
    n_opt, d_opt, flops, tokens_per_param, loss (None where the law has no loss model), constants."""
    if (flops is None) == (params is None):
        raise ConfigError("give one of --flops C or --params N")
    given, what = (flops, "--flops") if flops is not None else (params, "--params")
    if not (isinstance(given, (int, float)) and math.isfinite(given) and given > 0):
        raise ConfigError(f"{what}={given}: must be a positive finite number")
    if flops is not None:
        n, c = float(law.n_opt(flops)), float(flops)
    else:
        n, c = float(params), float(law.flops_for_params(params))
    d = c / (6.0 * n)
    loss = float(law.loss(n, d)) if hasattr(law, "loss") else None
    return {"n_opt": n, "d_opt": d, "flops": c, "tokens_per_param": d / n, "loss": loss,
            "constants": law.constants()}
