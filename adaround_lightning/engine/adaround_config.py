"""How each layer's (or block's) rounding is optimised: :class:`AdaroundConfig`.

Example:
    >>> AdaroundConfig(iters=100, granularity="layer").granularity == Granularity.LAYER
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adaround_lightning.core.choices import Choice
from adaround_lightning.quant.loss import Reconstruction

__all__ = ["AdaroundConfig", "BlockBudget", "Granularity"]


class Granularity(Choice):
    """What one fit reconstructs (``adaround.granularity``)."""

    #: One fit per block: the block output error, all its layers' ``V`` together (BRECQ).
    BLOCK = "block"
    #: One fit per layer: its output error (AdaRound as published).
    LAYER = "layer"


#: The paper's learning rate and steps per layer (Nagel et al. 2020, section 5).
PAPER_LR = 1e-3
PAPER_ITERS = 10000
#: Weight bit widths at which the network-level refinement runs by default: none, since it paid
#: at no bit width on the BENCHMARKS.md checkpoints (docs/refinement.md).
DEFAULT_REFINE_BITS: tuple[int, ...] = ()
#: Steps of the refinement by default (``iters`` if fewer).
DEFAULT_REFINE_STEPS = 300
#: Cap of the default learning rate of very short fits.
MAX_DEFAULT_LR = 5e-2


class BlockBudget(Choice):
    """The steps of a block fit (``adaround.block_budget``), unless ``block_iters`` is set."""

    #: ``iters`` steps per fit, a block's as a layer's (BRECQ's convention).
    FIT = "fit"
    #: ``iters`` times the block's layers: the same steps per layer as layer-wise.
    LAYER = "layer"


@dataclass
class AdaroundConfig:
    """How each layer's rounding is optimised: the algorithm (``adaround.*``).

    How the engine runs it (cache placement, batching of passes, step scheduling) is
    :class:`~adaround_lightning.engine.engine_config.EngineConfig` (``engine.*``).

    Attributes:
        iters: Optimisation steps per layer (the paper uses 10k).
        batch_size: Calibration samples per step.
        num_samples: Calibration samples used (the first ``num_samples`` given).
        lr: Adam learning rate for ``V``; None (default): :meth:`lr_for` the fit's steps,
            the paper's 1e-3 at its 10k steps and ``10 / steps`` for shorter fits.
        reg_param: lambda of eq. (25); None picks 0.01 for ``"paper"``, 0.001 for ``"mean"``.
        beta_range: Start and end of the annealed ``beta`` of eq. (24).
        warm_start: Fraction of ``iters`` without the rounding regularizer.
        reconstruction: ``"paper"`` (sum over channels, mean over the rest) or ``"mean"``.
        include_activation: Put the ReLU/ReLU6 that directly follows a layer in its target.
        seed: Seed of the calibration batches.
        granularity: ``block`` (default, BRECQ-style: one fit per block, the block output
            error, all its layers' ``V`` together; layers outside blocks are still fitted one
            by one) or ``layer`` (AdaRound as published: one fit per layer, its output error).
            Block-wise kept more accuracy in BENCHMARKS.md at the same steps per layer.
        act_in_loop: With ``quant.act_bits``: calibrate each layer's input quantizer when its
            block is reached and reconstruct with quantized activations, so every layer learns
            its rounding on the inputs the fully quantized network gives it (QDrop's setting).
            Off: weights first, activation ranges calibrated afterwards (AIMET's workflow).
        block_iters: Steps of each block fit (``granularity=block``); None: ``block_budget``.
        block_budget: Without ``block_iters``: ``fit`` (default) gives a block fit ``iters``
            steps, as BRECQ does, so a block costs about what its layers cost layer-wise;
            ``layer`` gives it ``iters`` times its layers (the same steps per layer, about
            that many times slower; see BENCHMARKS.md, issue #20).
        stop_when_binary: End a fit once every ``h(V)`` is clipped to exactly 0 or 1: no later
            step can change a rounding then, so the result is the same and the rest of the
            steps are saved (logged, and ``steps_run`` in the layer report).
        drop_prob: QDrop: during an in-loop reconstruction, each input element keeps its float
            value with this probability (0: always quantized, as in BRECQ).
        bias_correction: After each layer is rounded, shift its bias by the mean per-channel
            output error of the quantized network on the calibration data
            (:mod:`adaround_lightning.graph.bias_correction`); later layers are fitted on the
            corrected network. On by default (more accuracy at every measured W4/W3 cell of
            BENCHMARKS.md); False is AdaRound as published.
        blocks: More blocks for ``granularity=block``: ``fnmatch`` patterns of module names or
            class names (``["EncoderBlock"]``, ``["encoder.layers.*"]``); each matching
            module's layers are fitted together on its output. torchvision's residual blocks
            are blocks already. Each layer's report names the block it was fitted in.
        learn_scale: Learn each quantizer's scale with its ``V`` (issue #23): a log-ratio
            ``rho`` per channel, per group (``quant.group_size``) or per tensor,
            ``W~ = exp(rho) s0 (clip(floor(W/s0) + z + h(V)) - z)``, trained by the same
            reconstruction loss. Integers and zero points ``z`` stay; exports carry
            ``s0 exp(rho)`` and the grid check reads ``floor(W/s0)`` on ``s0``
            (``floor_scale``). Off: AdaRound's fixed grid.
        scale_lr: Adam's learning rate of ``rho`` with ``learn_scale``.
        straight_through: Each step's forward uses the hard rounding ``1[V >= 0]`` that the
            fit ends with, and ``V`` gets the gradient of ``h(V)`` (a straight-through
            estimator); no rounding regularizer and no annealing. For short fits of large
            blocks (the causal LM recipe: 200 steps per decoder layer), where the annealed
            relaxation ends far from binary and its final rounding loses what it learned.
        fisher: Weigh each element of a block fit's output error by the Fisher information of
            the block's output (BRECQ): the squared gradient of the KL divergence between the
            float and the quantized network's output distributions, normalised to mean 1
            (:mod:`~adaround_lightning.engine.fit.fisher`). Costs one forward pass of the
            network and a backward pass of its tail per block. Needs ``granularity=block``
            and a network whose output is ``(N, classes)`` scores; layers fitted alone keep
            the plain error (logged).
        fisher_damping: ``delta`` of the Fisher weight ``(g^2 + delta m) / ((1 + delta) m)``:
            0 is the Fisher weight alone, large values the plain error.
        refine_bits: After the walk, refine every layer's rounding together on the network's
            output (:mod:`~adaround_lightning.engine.fit.network_refinement`) when the
            smallest weight bit width is one of these; ``[]``: never.
        refine_steps: Steps of the refinement (it ends earlier once every ``h(V)`` is binary);
            None: :meth:`refinement_steps`, 300 or ``iters`` if fewer.
        refine_lr: Adam's learning rate of ``V`` in the refinement.
        refine_block_weight: Weight of the blocks' relative output errors in the refinement's
            loss, beside the network output's divergence (0: the output alone).
    """

    iters: int = 10000
    batch_size: int = 32
    num_samples: int = 1024
    lr: float | None = None
    reg_param: float | None = None
    beta_range: tuple[float, float] = (20.0, 2.0)
    warm_start: float = 0.2
    reconstruction: Reconstruction = Reconstruction.PAPER
    include_activation: bool = True
    seed: int = 0
    granularity: Granularity = Granularity.BLOCK
    act_in_loop: bool = False
    drop_prob: float = 0.5
    block_iters: int | None = None
    block_budget: BlockBudget = BlockBudget.FIT
    stop_when_binary: bool = True
    bias_correction: bool = True
    blocks: list[str] = field(default_factory=list)
    learn_scale: bool = False
    scale_lr: float = 1e-3
    straight_through: bool = False
    fisher: bool = False
    fisher_damping: float = 1.0
    refine_bits: list[int] = field(default_factory=lambda: list(DEFAULT_REFINE_BITS))
    refine_steps: int | None = None
    refine_lr: float = 0.01
    refine_block_weight: float = 0.1

    def __post_init__(self) -> None:
        self._check_numbers()
        self.granularity = Granularity.parse(self.granularity, "adaround.granularity")
        self.block_budget = BlockBudget.parse(self.block_budget, "adaround.block_budget")
        self.reconstruction = Reconstruction.parse(self.reconstruction, "adaround.reconstruction")
        self._check_flags_and_lists()
        self._check_refinement()

    def _check_numbers(self) -> None:
        if self.block_iters is not None and (
            isinstance(self.block_iters, bool)
            or not isinstance(self.block_iters, int)
            or self.block_iters < 1
        ):
            raise ValueError(
                f"adaround.block_iters must be a positive integer or null, got {self.block_iters!r}"
            )
        if not 0.0 <= self.drop_prob < 1.0:
            raise ValueError(f"adaround.drop_prob must be in [0, 1), got {self.drop_prob}")
        for name in ("iters", "batch_size", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"adaround.{name} must be a positive integer, got {value!r}")
        if not self.scale_lr > 0:
            raise ValueError(f"adaround.scale_lr must be > 0, got {self.scale_lr}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"adaround.lr must be > 0 or null, got {self.lr}")
        self.beta_range = tuple(float(b) for b in self.beta_range)  # type: ignore[assignment]
        if len(self.beta_range) != 2 or min(self.beta_range) <= 0:
            raise ValueError(
                f"adaround.beta_range must be two positive numbers, got {self.beta_range}"
            )
        if not 0.0 <= self.warm_start < 1.0:
            raise ValueError(f"adaround.warm_start must be in [0, 1), got {self.warm_start}")
        if isinstance(self.fisher_damping, bool) or not float(self.fisher_damping) >= 0:
            raise ValueError(f"adaround.fisher_damping must be >= 0, got {self.fisher_damping!r}")
        self.fisher_damping = float(self.fisher_damping)
        if self.reg_param is not None and self.reg_param < 0:
            raise ValueError(f"adaround.reg_param must be >= 0, got {self.reg_param}")

    def _check_refinement(self) -> None:
        if isinstance(self.refine_bits, str | int) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 2 <= b <= 16
            for b in self.refine_bits
        ):
            raise ValueError(
                f"adaround.refine_bits must be a list of bit widths from 2 to 16 ([] to turn the "
                f"refinement off), got {self.refine_bits!r}"
            )
        self.refine_bits = sorted(set(self.refine_bits))
        steps = self.refine_steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(
                f"adaround.refine_steps must be a positive integer or null, got {steps!r}"
            )
        if not self.refine_lr > 0:
            raise ValueError(f"adaround.refine_lr must be > 0, got {self.refine_lr}")
        if not self.refine_block_weight >= 0:
            raise ValueError(
                f"adaround.refine_block_weight must be >= 0, got {self.refine_block_weight}"
            )

    @property
    def refinement_steps(self) -> int:
        """``refine_steps``, or by default :data:`DEFAULT_REFINE_STEPS` (``iters`` if fewer).

        Example:
            >>> [AdaroundConfig(iters=n).refinement_steps for n in (500, 20)]
            [300, 20]
        """
        if self.refine_steps is not None:
            return self.refine_steps
        return min(DEFAULT_REFINE_STEPS, self.iters)

    def refines(self, smallest_bits: int) -> bool:
        """Whether the refinement runs on a network whose smallest weight bit width is this.

        Example:
            >>> AdaroundConfig().refines(2), AdaroundConfig(refine_bits=[2, 3]).refines(2)
            (False, True)
        """
        return smallest_bits in self.refine_bits

    def _check_flags_and_lists(self) -> None:
        for name in (
            "include_activation",
            "act_in_loop",
            "bias_correction",
            "stop_when_binary",
            "straight_through",
            "learn_scale",
            "fisher",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"adaround.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if isinstance(self.blocks, str) or not all(isinstance(p, str) and p for p in self.blocks):
            raise ValueError(
                f"adaround.blocks must be a list of module-name or class-name patterns, "
                f"got {self.blocks!r}"
            )
        self.blocks = list(self.blocks)
        if self.fisher and self.granularity == Granularity.LAYER:
            raise ValueError(
                "adaround.fisher weighs block fits, and adaround.granularity=layer has none: "
                "set adaround.granularity=block or adaround.fisher=false"
            )

    def block_steps(self, layers: int) -> int:
        """Steps of a block fit of ``layers`` layers.

        Example:
            >>> AdaroundConfig(iters=500).block_steps(3), AdaroundConfig(
            ...     iters=500, block_budget="layer").block_steps(3)
            (500, 1500)
        """
        if self.block_iters is not None:
            return self.block_iters
        return self.iters * (layers if self.block_budget == BlockBudget.LAYER else 1)

    def lr_for(self, steps: int) -> float:
        """Adam's learning rate for a fit of ``steps`` steps: ``lr``, or the default rule.

        The rule keeps the distance ``V`` can travel, about ``lr * steps`` for Adam, at the
        paper's 10 (1e-3 over 10k steps): ``10 / steps``, within [1e-3, 5e-2]. At lr 1e-3 a
        500-step fit can move ``V`` by 0.5 at most, and only weights whose fractional part is
        near 1/2 can flip (``V`` starts at the logit of that part, within +-2.4). On the
        quickstart (W3, one 500-step fit per block) 1e-3 gave 90.14 %, 3e-3 90.84 %, 1e-2
        90.96 %, 3e-2 90.98 % (BENCHMARKS.md, issue #20).

        Example:
            >>> AdaroundConfig().lr_for(10000), AdaroundConfig().lr_for(500)
            (0.001, 0.02)
            >>> AdaroundConfig(lr=0.001).lr_for(500)
            0.001
        """
        if self.lr is not None:
            return self.lr
        return min(MAX_DEFAULT_LR, max(PAPER_LR, PAPER_LR * PAPER_ITERS / steps))
