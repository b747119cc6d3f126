"""How the engine runs a calibration: :class:`EngineConfig` (``engine.*`` on the command line).

None of these settings changes what AdaRound optimises (:class:`AdaroundConfig` holds that): they
decide where the activation cache lives, how the forward passes that fill it are batched, and how
the fit step is scheduled. Most give the same integers whatever their value; ``channels_last``
and ``cache_dtype`` change float rounding only.

Example:
    >>> EngineConfig(cache_device="disk").cache_device == CacheDevice.DISK
    True
"""

from __future__ import annotations

from dataclasses import dataclass

from adaround_lightning.engine.cache.storage import CacheDevice, CacheDtype

__all__ = ["ENGINE_FIELDS", "EngineConfig"]


@dataclass
class EngineConfig:
    """How a calibration runs (the same optimisation, at another speed or memory use).

    Attributes:
        forward_batch_size: Batch size of the forward passes that fill the caches.
        steps_per_batch: Optimizer steps per Lightning training step (manual optimization when
            > 1). Same batches, same steps, same result; Lightning's per-step overhead is paid
            once per this many steps.
        skip_settled: Once an element's ``h(V)`` is clipped to 0 or 1 (its rounding final),
            later steps compute the soft rounding and Adam's update of the other elements only
            (:mod:`~adaround_lightning.engine.fit.active_set`): the same integers, less
            elementwise work per step as the fit goes on. Off under DDP (logged).
        cache_device: Where cached activations live: ``auto`` (the accelerator while they fit,
            then host memory, then disk), ``accelerator``, ``cpu`` or ``disk``
            (:mod:`adaround_lightning.engine.cache.storage`).
        cache_budget_gb: Cap on the cache's bytes in memory (accelerator and host together);
            None: half of the free device memory and half of the available RAM. With a budget,
            the forward passes that fill the cache also run in chunks sized to it.
        cache_dtype: Storage dtype of the cache: ``float32``, ``bfloat16`` or ``float16``;
            compute stays float32.
        stream: Each block's input from the previous block's cached input wherever the network
            is a chain of blocks (:mod:`adaround_lightning.engine.cache.stream`); False: from
            the images for every block (a full pass per block; the same integers, slower).
        channels_last: Keep 4-D activations (convolution inputs) in NHWC order, so the
            caching passes and the fits run their convolutions channels-last: on this
            project's 2-core CPU the MobileNetV2 walk took 45 s instead of 63 s. False: NCHW
            (results differ from it in float rounding only).
        reuse_host_memory: Keep freed host memory in the process for the next forward pass
            instead of returning it to the kernel (:mod:`adaround_lightning.core.host_memory`):
            large activation chunks no longer page-fault on every pass (on this machine the
            kernel time of a ResNet50 pass fell from 45% to 12%). The peak is unchanged; the
            memory stays with the process until it exits. It changes glibc's ``mallopt`` for
            the whole process, so it is opt-in from Python; the CLI turns it on and logs it.
    """

    forward_batch_size: int = 256
    steps_per_batch: int = 8
    skip_settled: bool = True
    cache_device: CacheDevice = CacheDevice.AUTO
    cache_budget_gb: float | None = None
    cache_dtype: CacheDtype = CacheDtype.FLOAT32
    stream: bool = True
    channels_last: bool = True
    reuse_host_memory: bool = False

    def __post_init__(self) -> None:
        for name in ("forward_batch_size", "steps_per_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"engine.{name} must be a positive integer, got {value!r}")
        if self.cache_budget_gb is not None and not float(self.cache_budget_gb) > 0:
            raise ValueError(
                f"engine.cache_budget_gb must be > 0 or null, got {self.cache_budget_gb}"
            )
        self.cache_device = CacheDevice.parse(self.cache_device, "engine.cache_device")
        self.cache_dtype = CacheDtype.parse(self.cache_dtype, "engine.cache_dtype")
        for name in ("skip_settled", "stream", "channels_last", "reuse_host_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"engine.{name} must be true or false, got {getattr(self, name)!r}"
                )


#: The settings that moved from ``adaround.*`` to ``engine.*``.
ENGINE_FIELDS = tuple(EngineConfig.__dataclass_fields__)
