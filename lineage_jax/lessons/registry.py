"""The lessons, by name: the one list that ``lineage lesson``, its tests and docs/lineage.md read.

How to add a lesson. Write ``lineage_jax/lessons/NAME.py`` exposing

    Config         a frozen dataclass of the lesson's knobs (int, float, bool, str fields), defaults =
                   the full run; ``__post_init__`` raises ConfigError as ``field=value: what is allowed``
    QUICK          a dict of Config fields for ``--quick``: a smoke run of at most 30 s on 2 CPU cores
    supports(rows) whether the measured rows bear the claim out (the verdict is read off the
                   measurement, never set by hand)
    run(cfg, out_dir, progress=True) -> harness.LessonResult   (``harness.result(...)``; train with
                   ``harness.fit``, draw with ``harness.figure``, nothing printed)
    report(result) optional: extra text lines for the terminal

then add one ``Lesson(...)`` line below, a row in docs/lineage.md and tests in tests/lessons/NAME.py.
The entry holds the metadata, so listing lessons imports no lesson module (and no JAX);
``load`` imports the module only when the lesson runs.
"""
from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from lineage_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Lesson:
    name: str
    era: str                     # when the idea entered the lineage
    paper: str
    claim: str                   # one line, what the run measures; `supported` says whether it held
    module: str                  # dotted path, imported by `load`
    flags: tuple[str, ...] = ()  # Config fields also given as --kebab-case flags (besides field=value)

    def metadata(self) -> dict[str, str]:
        return {"name": self.name, "era": self.era, "paper": self.paper, "claim": self.claim}


# Listed in the lineage's order: by era, then as written (chapters append their lessons here).
LESSONS: dict[str, Lesson] = {lesson.name: lesson for lesson in sorted((
    Lesson("backprop", "1986", "Rumelhart, Hinton & Williams 1986, Learning representations by back-propagating "
           "errors; Linnainmaa 1970",
           "the delta rule by hand = a tape autodiff = jax.grad = finite differences (float64, rel. error <= 1e-6); "
           "it trains XOR and two spirals to 100% training accuracy",
           "lineage_jax.lessons.backprop"),
    Lesson("relu", "2011", "Glorot, Bordes & Bengio 2011, Deep Sparse Rectifier Neural Networks; Krizhevsky et al. "
           "2012, Fig. 1",
           "in a deep plain net sigmoid's gradients vanish (first layer < 1% of the last) and it stalls; ReLU zeroes "
           "~50% of units and trains; the tanh/ReLU steps-to-25%-error ratio is reported beside AlexNet's ~6x",
           "lineage_jax.lessons.relu", flags=("depth", "steps", "seed")),
    Lesson("alexnet", "2012", "Krizhevsky, Sutskever & Hinton 2012, ImageNet Classification with Deep "
           "Convolutional Neural Networks",
           "an AlexNet-shaped CNN (ReLU, LRN, overlapping pooling, dropout, the two-tower split) reaches >= 97% "
           "test accuracy on the 1,797 8x8 digits scikit-learn ships",
           "lineage_jax.lessons.alexnet", flags=("steps", "seed")),
    Lesson("dropout", "2014", "Srivastava et al. 2014, Dropout: A Simple Way to Prevent Neural Networks from "
           "Overfitting",
           "on a small training set (512 examples, 20% noisy labels) dropout (p = 0.5 on hidden units) shrinks the "
           "train/test accuracy gap without lowering test accuracy",
           "lineage_jax.lessons.dropout", flags=("rate", "steps", "seed")),
    Lesson("seq2seq_reverse", "2014", "Sutskever, Vinyals & Le 2014, Sequence to Sequence Learning with Neural "
           "Networks, §3.3-3.4",
           "a deep (4-layer) LSTM encoder-decoder that reads the source reversed reaches a lower held-out "
           "perplexity and a higher held-out exact match than one reading it forward, at an equal training budget",
           "lineage_jax.lessons.seq2seq_reverse", flags=("layers", "steps", "seed")),
    Lesson("batchnorm", "2015", "Ioffe & Szegedy 2015, Batch Normalization; Ba, Kiros & Hinton 2016, Layer "
           "Normalization",
           "at a high learning rate the BN net reaches the target held-out accuracy in fewer steps than the plain "
           "net; BN's training mode at batch size 1 is far from its eval mode, LayerNorm's modes are identical",
           "lineage_jax.lessons.batchnorm", flags=("lrs", "steps", "seed")),
    Lesson("seq2seq_attention", "2015", "Sutskever, Vinyals & Le 2014; Bahdanau, Cho & Bengio 2015, Fig. 2-3; "
           "Luong, Pham & Manning 2015",
           "an LSTM encoder-decoder's exact match falls with source length more without attention (the "
           "fixed-length vector) than with Bahdanau's additive or Luong's global attention",
           "lineage_jax.lessons.seq2seq_attention", flags=("variants", "steps", "seed")),
    Lesson("translate", "2017", "Vaswani et al. 2017, Attention Is All You Need",
           "an attention-only encoder-decoder learns a translation task: held-out exact match >= 50% (chance <= 1e-4)",
           "lineage_jax.lessons.translate", flags=("task", "steps", "seed", "d_model", "layers")),
    Lesson("rnn_vs_transformer", "2017", "Vaswani et al. 2017, Attention Is All You Need, Table 1",
           "at matched parameters an LSTM needs n sequential steps per layer and a Transformer encoder none; the "
           "LSTM/Transformer training-step time ratio grows with sequence length n (64 -> 1024), and at equal wall time "
           "the Transformer's held-out accuracy is at least the LSTM's",
           "lineage_jax.lessons.rnn_vs_transformer", flags=("lengths", "seed")),
    Lesson("mixed_precision", "2018", "Micikevicius et al. 2018, Mixed Precision Training, Fig. 3",
           "as a net fits, its activation gradients fall below fp16's 2^-24: unscaled fp16 flushes >= 5% of them "
           "to zero, dynamic loss scaling recovers most of those (the far tail stays lost), bf16 loses < 0.1%",
           "lineage_jax.lessons.mixed_precision", flags=("steps", "seed")),
    Lesson("emergence", "2022", "Wei et al. 2022, Emergent Abilities of Large Language Models; Schaeffer, Miranda "
           "& Koyejo 2023, Are Emergent Abilities of Large Language Models a Mirage?",
           "across model sizes trained here on multi-digit addition, exact match jumps (a larger share of its rise "
           "between two neighbouring sizes) while per-token accuracy and log-likelihood rise smoothly, and exact "
           "match stays within 0.1 of p^L: the jump is a property of the metric",
           "lineage_jax.lessons.emergence", flags=("widths", "steps", "seed")),
    Lesson("lora", "2021", "Hu et al. 2021, LoRA: Low-Rank Adaptation of Large Language Models; Dettmers et al. "
           "2023, QLoRA: Efficient Finetuning of Quantized LLMs",
           "adapting a pretrained model to a new domain, LoRA at every rank (and QLoRA over NF4 weights) gets at "
           "least half of full fine-tuning's loss drop training a fraction of the parameters; the compiled step's "
           "optimiser state shrinks in proportion to the trainable parameters (within 5%); the NF4 kernels take "
           "~4.127 bits per weight",
           "lineage_jax.lessons.lora", flags=("steps", "ranks", "seed")),
    Lesson("icl", "2022", "Olsson et al. 2022, In-context Learning and Induction Heads; Brown et al. 2020, "
           "Language Models are Few-Shot Learners",
           "a 2-layer attention-only model trained on repeated random spans forms an induction head (prefix "
           "matching, copying) in a phase change, and its in-context loss drops; a control without repeats does "
           "not; few-shot lookup accuracy rises with the number of examples k, with no gradient step",
           "lineage_jax.lessons.icl", flags=("steps", "seed")),
    Lesson("cot", "2022", "Nye et al. 2021, Show Your Work: Scratchpads for Intermediate Computation; Wei et al. "
           "2022, Chain-of-Thought Prompting; Wang et al. 2023, Self-Consistency",
           "at equal parameters and equal training tokens, a model that writes a scratchpad (column sums with "
           "carries) before the answer beats one that answers directly on held-out multi-digit additions, and the "
           "margin grows with the number of digits",
           "lineage_jax.lessons.cot", flags=("steps", "seed", "max_digits")),
    Lesson("react", "2023", "Yao et al. 2023, ReAct: Synergizing Reasoning and Acting in Language Models",
           "at equal parameters and training steps, a model trained to call a calculator (its observations masked "
           "out of the loss) and run through the ReAct loop beats the same model answering directly on held-out "
           "multiplications, by >= 0.2 on average over the trained lengths and >= 0.3 on the largest numbers",
           "lineage_jax.lessons.react", flags=("steps", "seed", "max_digits")),
    Lesson("toolformer", "2023", "Schick et al. 2023, Toolformer: Language Models Can Teach Themselves to Use Tools, §2",
           "a model trained without tools keeps, by its own loss (L- - L+ >= tau_f), right calculator calls far more "
           "often than wrong ones; fine-tuned on the kept calls it gains >= 0.2 held-out multiplication accuracy "
           "and calls the tool more on multiplications than on one-digit additions",
           "lineage_jax.lessons.toolformer", flags=("base_steps", "seed", "tau")),
    Lesson("grpo", "2024", "Shao et al. 2024, DeepSeekMath, §4.1 (GRPO); DeepSeek-AI 2025, DeepSeek-R1; Liu et al. "
           "2025, Understanding R1-Zero-Like Training (Dr. GRPO)",
           "from an SFT start, GRPO with a verifier's reward (answer right, format followed) raises held-out "
           "addition accuracy by >= 5 points; the rows also track response length, pass@1 vs pass@k and Dr. GRPO",
           "lineage_jax.lessons.grpo", flags=("rl_steps", "seed")),
    Lesson("rlhf", "2022", "Ouyang et al. 2022, Training language models to follow instructions with human "
           "feedback; Rafailov et al. 2023, Direct Preference Optimization; Gao et al. 2023, Scaling Laws for "
           "Reward Model Overoptimization",
           "on a toy task whose human is a program, PPO on a learned reward (with a KL penalty to SFT) and DPO "
           "(on the same noisy comparisons) each raise the gold score of held-out responses over SFT, at a "
           "bounded KL to SFT",
           "lineage_jax.lessons.rlhf", flags=("seed",)),
    Lesson("cai", "2022", "Bai et al. 2022, Constitutional AI: Harmlessness from AI Feedback; Lee et al. 2023, "
           "RLAIF",
           "a judge that learned a written constitution from a few worked examples labels the human's comparison "
           "pairs about as well as the noisy human (agreement with gold within 5 points); SL-CAI (critique and "
           "revision of the policy's own samples), DPO on AI labels and the chain of both each raise the gold score "
           "over SFT, DPO on AI labels to within 0.1 of DPO on human labels",
           "lineage_jax.lessons.cai", flags=("seed",)),
    Lesson("diffusion", "2020", "Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models; Song, Meng & "
           "Ermon 2021, DDIM; Ho & Salimans 2022, Classifier-Free Diffusion Guidance; Rombach et al. 2022, "
           "High-Resolution Image Synthesis with Latent Diffusion Models",
           "on the 8x8 digits a class-conditional DDPM's samples are recognised by a classifier trained on real "
           "digits; DDIM's 50 steps come within 0.1 class accuracy and 1.5x FID of DDPM's 1000; guidance w = 3 "
           "raises class accuracy over the conditional model (w = 1) and the unconditional one (w = 0, by >= 0.3); "
           "a denoising step in the autoencoder's latent space costs at most half the FLOPs of a pixel step",
           "lineage_jax.lessons.diffusion", flags=("steps", "seed")),
    Lesson("clip", "2021", "Radford et al. 2021, Learning Transferable Visual Models From Natural Language "
           "Supervision (CLIP); Schuhmann et al. 2022, LAION-5B (CLIP-score filtering)",
           "a small CLIP trained contrastively on captioned shapes classifies images of colour-shape combinations "
           "it never saw zero-shot, by prompt ensembles, at >= 3x chance among 12 classes and >= 50% among the 4 "
           "held-out ones (a supervised linear probe beside it); its own cosine scores filter the planted "
           "mismatched pairs with precision and recall >= 0.8",
           "lineage_jax.lessons.clip", flags=("steps", "seed")),
), key=lambda lesson: lesson.era)}


def get(name: str) -> Lesson:
    if name not in LESSONS:
        raise ConfigError(f"lesson {name!r}: unknown; known lessons: {', '.join(LESSONS)}")
    return LESSONS[name]


def load(name: str) -> ModuleType:
    """The lesson's module (this is where JAX gets imported)."""
    return importlib.import_module(get(name).module)
